"""The README's commands run for real (with one short epoch), so the README cannot go stale.

Each ```bash block runs top to bottom in a fresh directory (with the repository's examples/ beside
it), the way a user would type it: later commands use what earlier ones wrote.
"""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FAST, ROOT

README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
RUNNABLE = ("python train.py", "python scripts/", "mlpkit-")


def block_commands(block: str) -> list[str]:
    lines = [line.split("  #")[0].strip() for line in block.splitlines()]
    return [line for line in lines if line.startswith(RUNNABLE)]


def to_argv(command: str, cwd: Path) -> list[str]:
    words = shlex.split(command)
    if words[0] == "python":
        argv = [sys.executable, str(ROOT / words[1]), *words[2:]]
    else:  # an installed console script
        argv = [str(Path(sys.executable).parent / words[0]), *words[1:]]
    if words[:2] == ["python", "train.py"]:
        argv += FAST
        flags = [a for a in argv[2:] if a.startswith("-")]  # argparse wants -m before the overrides
        argv = argv[:2] + flags + [a for a in argv[2:] if not a.startswith("-")]
        latest = sorted(cwd.glob("outputs/*/*/checkpoints"), key=lambda p: p.stat().st_mtime)
        argv = [f"resume={latest[-1].parent}" if a.startswith("resume=") and latest else a for a in argv]
    return argv


@pytest.mark.slow
def test_readme_shows_the_set_up_and_test_commands():
    commands = [line.strip() for block in BLOCKS for line in block.splitlines()]
    assert any(c.startswith("make train") for c in commands)
    assert any(c.startswith("make test") for c in commands)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("block", [b for b in BLOCKS if block_commands(b)],
                         ids=lambda b: block_commands(b)[0][:60])
@pytest.mark.slow
def test_readme_block_runs(tmp_path, block):
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    for command in block_commands(block):
        result = subprocess.run(to_argv(command, tmp_path), cwd=tmp_path, capture_output=True, text=True,
                                timeout=300, env=env)
        assert result.returncode == 0, f"{command}\n{result.stderr[-3000:]}"
        if command.startswith("python train.py"):  # every training command leaves a finished run
            assert list(tmp_path.glob("**/metrics.json")), command


@pytest.mark.slow
def test_make_train_passes_overrides(tmp_path):
    run_dir = tmp_path / "run"
    args = f"ARGS=trainer.max_epochs=1 trainer.progress=false hydra.run.dir={run_dir}"
    result = subprocess.run(["make", "--no-print-directory", "train", args], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert (run_dir / "metrics.json").exists()
