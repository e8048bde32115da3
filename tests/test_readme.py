"""The README's commands run for real (with one short epoch), so the README cannot go stale."""
import re
import shlex
import subprocess

import pytest

from tests.conftest import FAST, ROOT, run_cli

README = (ROOT / "README.md").read_text()


def readme_commands(prefix: str) -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.DOTALL)
    lines = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line.startswith(prefix)]


def test_readme_shows_the_set_up_and_test_commands():
    assert readme_commands("make train") and readme_commands("make test")
    assert "make test" in (ROOT / ".ci" / "run").read_text()


TRAIN_COMMANDS = readme_commands("python train.py")


@pytest.mark.parametrize("command", TRAIN_COMMANDS)
def test_readme_train_command_runs(tmp_path, command):
    overrides = shlex.split(command)[2:]
    if any(o.startswith("resume=") for o in overrides):
        # The README resumes the run of the command before it: make that run first.
        previous = shlex.split(TRAIN_COMMANDS[TRAIN_COMMANDS.index(command) - 1])[2:]
        assert run_cli(tmp_path / "run", *previous, *FAST, cwd=ROOT).returncode == 0
        overrides = [f"resume={tmp_path / 'run'}" if o.startswith("resume=") else o for o in overrides]
    if "-m" in overrides:
        sweep_dir = tmp_path / "sweep"
        result = run_cli(tmp_path / "run", *overrides, *FAST, f"hydra.sweep.dir={sweep_dir}", cwd=ROOT)
        assert result.returncode == 0, result.stderr
        jobs = [path.parent for path in sweep_dir.glob("*/metrics.json")]
        assert len(jobs) >= 2, result.stderr
        return
    result = run_cli(tmp_path / "run", *overrides, *FAST, cwd=ROOT)  # README paths are from the root
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "run" / "metrics.json").exists()


def test_make_train_passes_overrides(tmp_path):
    run_dir = tmp_path / "run"
    args = f"ARGS=trainer.max_epochs=1 trainer.progress=false hydra.run.dir={run_dir}"
    result = subprocess.run(["make", "--no-print-directory", "train", args], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert (run_dir / "metrics.json").exists()
