"""The PNG of a benchmark run: speedup per workload and implementation (fwd+bwd), one panel per
baseline (plain PyTorch, torch.compile of it). Needs matplotlib (the `fastelbo[demo]` extra),
imported only when a plot is drawn; it draws with the Agg backend and leaves pyplot's global state
alone."""
from __future__ import annotations

BASELINES = {"plain": "speedup_vs_plain", "compile(plain)": "speedup_vs_compile_plain"}
LABELS = {"plain": "plain PyTorch (eager)", "compile(plain)": "torch.compile(plain)"}
MODE = "fwd+bwd"
LEFT_OUT = ("reference",)  # context in the table, not in the plot: its bars (0.1x) would squash the others


def speedup_plot(rows, path: str, title: str) -> bool:
    """Draw the grouped bar chart of the fwd+bwd rows to `path` (the reference path's left out):
    log y, bars grow up (faster) or down (slower) from the line at 1x. False, and nothing written,
    when the run measured neither baseline."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in rows if r["mode"] == MODE and r["impl"] not in LEFT_OUT]
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    baselines = [b for b in BASELINES if b in impls]
    if not baselines:
        return False
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    by_key = {(r["workload"], r["impl"]): r for r in rows}
    color = {impl: f"C{i}" for i, impl in enumerate(impls)}  # one colour per impl in both panels

    fig = Figure(figsize=(6 * len(baselines), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(baselines), squeeze=False)[0]
    for ax, baseline in zip(axes, baselines):
        shown = [i for i in impls if i != baseline]
        width = 0.8 / max(len(shown), 1)
        extent = [1.0]
        for k, impl in enumerate(shown):
            xs, ys = [], []
            for j, w in enumerate(workloads):
                value = by_key[(w, impl)][BASELINES[baseline]]
                if value is not None:
                    xs.append(j + (k - (len(shown) - 1) / 2) * width)
                    ys.append(value)
            bars = ax.bar(xs, [y - 1 for y in ys], width, bottom=1.0, color=color[impl], label=impl)
            ax.bar_label(bars, labels=[f"{y:.2f}" for y in ys], fontsize=6)
            extent += ys
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        low, high = min(extent) / 1.5, max(extent) * 1.5
        ax.set_ylim(low, high)
        ticks = [t for t in (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100) if low <= t <= high]
        ax.set_yticks(ticks, [f"{t:g}x" for t in ticks])
        ax.set_yticks([], minor=True)
        ax.set_xticks(range(len(workloads)), workloads)
        ax.set_ylabel(f"speedup over {LABELS[baseline]}")
        ax.set_title(f"vs {baseline} ({MODE})")
    handles = {h.get_label(): h for ax in axes for h in ax.get_legend_handles_labels()[0]}
    fig.legend([handles[i] for i in impls if i in handles], [i for i in impls if i in handles],
               loc="outside lower center", ncols=len(handles), fontsize=8)
    fig.suptitle(title)
    fig.savefig(path, dpi=120)
    return True
