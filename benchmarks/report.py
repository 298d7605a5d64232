"""How a benchmark run reads: the table on screen (fixed-width columns, printed row by row), the
progress bar on stderr, and the same table in Markdown for the results folder."""
from __future__ import annotations

import shutil
import sys


# (row key, heading, width, formatter); text columns are left-aligned, numbers right-aligned.
COLUMNS = [
    ("workload", "workload", 8, None),
    ("mode", "mode", 7, None),
    ("impl", "impl", 14, None),
    ("median_ms", "median ms", 10, "{:.4g}".format),
    ("speedup_vs_plain", "vs plain", 9, "{:.2f}x".format),
    ("speedup_vs_compile_plain", "vs compile(plain)", 17, "{:.2f}x".format),
    ("GB_per_s", "GB/s", 8, "{:.3g}".format),
    ("copy_fraction", "of copy", 8, "{:.1%}".format),
    ("peak_MiB", "peak MiB", 9, "{:.3g}".format),
]


def cells(row: dict) -> list:
    """The row's values as the table shows them ("-" for a value not measured)."""
    return ["-" if row[key] is None else fmt(row[key]) if fmt else str(row[key]) for key, _, _, fmt in COLUMNS]


def _line(values) -> str:
    return "  ".join(v.ljust(width) if fmt is None else v.rjust(width)
                     for v, (_, _, width, fmt) in zip(values, COLUMNS)).rstrip()


def header() -> str:
    """The table's heading and a rule under it."""
    heading = _line([name for _, name, _, _ in COLUMNS])
    return heading + "\n" + "-" * len(heading)


def table_row(row: dict) -> str:
    return _line(cells(row))


def markdown(rows, summary: str, legend=()) -> str:
    """The whole table in Markdown, under a one-line summary of the run, with the legend's lines
    (what the workloads and implementations are) under it."""
    lines = [summary, "", "| " + " | ".join(name for _, name, _, _ in COLUMNS) + " |",
             "|" + "".join("---|" if fmt is None else "---:|" for _, _, _, fmt in COLUMNS)]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    if legend:
        lines += ["", *legend]
    return "\n".join(lines) + "\n"


def bar(done: int, total: int, label: str, width: int = 20) -> str:
    """`[#####...............] 7/12 W2 fwd+bwd`: measurements done out of total, and the one running."""
    filled = width * done // max(total, 1)
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label}"


class Progress:
    """A progress bar on stderr, redrawn in place with \\r when stderr is a terminal. Elsewhere (a
    CI log, a pipe) it writes nothing: the table rows, printed as each workload and mode finishes,
    show the progress there. Table lines go through Progress.print, so the bar never garbles them."""

    def __init__(self, total: int, stream=None):
        self.total, self.done = total, 0
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self._shown = ""

    def show(self, label: str) -> None:
        """Draw the bar with `label`, the measurement now running."""
        if self.live:
            columns = shutil.get_terminal_size().columns
            self._draw(bar(self.done, self.total, label)[:columns - 1])

    def advance(self) -> None:
        self.done += 1

    def print(self, text: str) -> None:
        """Print text on stdout with the bar cleared off the line first (the next show() redraws it)."""
        self.clear()
        print(text, flush=True)

    def clear(self) -> None:
        if self._shown:
            self.stream.write("\r" + " " * len(self._shown) + "\r")
            self.stream.flush()
            self._shown = ""

    def _draw(self, text: str) -> None:
        self.stream.write("\r" + text + " " * max(len(self._shown) - len(text), 0))
        self.stream.flush()
        self._shown = text
