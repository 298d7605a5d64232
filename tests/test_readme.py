"""The README's example runs, and its set-up commands are the ones CI runs."""
import pathlib
import re
import subprocess

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _block_after(marker: str) -> str:
    match = re.search(re.escape(marker) + r"\s*```\w*\n(.*?)```", README, re.S)
    assert match, f"README.md has no fenced block after {marker}"
    return match.group(1)


def test_example_runs():
    namespace = {}
    exec(compile(_block_after("<!-- example -->"), "README example", "exec"), namespace)
    assert bool(namespace["out"].loss.isfinite())
    assert all(p.grad is not None and bool(p.grad.isfinite().all()) for p in namespace["model"].parameters())


def test_ci_runs_the_readme_commands():
    for step in ("main", "test"):
        command = _block_after(f"<!-- ci:{step} -->").strip()
        script = (
            f'source <(sed -n "/^readme_command()/,/^}}/p" {ROOT / ".ci/run"}); '
            f"cd {ROOT} && readme_command {step}"
        )
        extracted = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout.strip()
        assert extracted == command
        assert "torch==2.13.0" in command
    assert _block_after("<!-- ci:main -->").strip().endswith("fastelbo demo")  # the main job
