"""The README's commands run for real (with one short epoch), so the README cannot go stale.

Each ```bash block runs top to bottom in a fresh directory (with the repository's examples/ beside
it), the way a user would type it: later commands use what earlier ones wrote. Every command goes
through its real entry point (train.py, the script, the console script) with its real arguments, all
of them in one fresh interpreter started once (an interpreter's start-up, torch and Hydra imported,
costs more than most of these one-epoch runs); the other tests start the commands as processes.
"""
import json
import os
import re
import shlex
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest

from tests.conftest import FAST, ROOT

README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
RUNNABLE = ("python train.py", "python scripts/", "mlpkit-")
SHORT_BENCHMARK = ["--rounds", "1", "--epochs", "1"]  # the benchmark's own test measures it for real


def block_commands(block: str) -> list[str]:
    lines = [line.split("  #")[0].strip() for line in block.splitlines()]
    return [line for line in lines if line.startswith(RUNNABLE)]


def to_argv(command: str) -> list[str]:
    """The command's argv: a script's path, or an installed console script's name, then its arguments."""
    words = shlex.split(command)
    if words[0] != "python":
        return words
    argv = [str(ROOT / words[1]), *words[2:]]
    if words[:2] == ["python", "scripts/benchmark.py"]:
        argv += SHORT_BENCHMARK
    if words[:2] == ["python", "scripts/diagnose.py"]:
        argv += [*FAST, "diagnose.seeds=1"]  # its remedies over one seed: the path, not the statistics
    if words[:2] == ["python", "train.py"]:
        argv += FAST
        if any(word.startswith("data.cv_folds=") for word in words):
            argv += ["data.cv_folds=2"]
        flags = [a for a in argv[1:] if a.startswith("-")]  # argparse wants -m before the overrides
        argv = argv[:1] + flags + [a for a in argv[1:] if not a.startswith("-")]
    return argv


def latest_resume(argv: list[str], cwd: Path) -> list[str]:
    """``resume=<the README's example path>`` pointed at the run the block's earlier command made."""
    latest = sorted(cwd.glob("outputs/*/*/checkpoints"), key=lambda p: p.stat().st_mtime)
    return [f"resume={latest[-1].parent}" if a.startswith("resume=") and latest else a for a in argv]


def run_blocks(plan_file: str) -> None:
    """In a fresh interpreter: each block's commands in its directory, as ``__main__`` of their script or
    through their console script's entry point, their output in a file per command; stops a block at
    its first failing command. Writes ``{block: [[command, exit code, error], ...]}`` beside the plan."""
    import runpy
    from importlib.metadata import entry_points

    sys.path.insert(0, str(ROOT))
    plan = json.loads(Path(plan_file).read_text())
    results = {}
    for block, (directory, commands) in plan.items():
        os.chdir(directory)
        results[block] = []
        for number, command in enumerate(commands):
            argv = latest_resume(to_argv(command), Path(directory))
            code, error, started = 0, "", time.perf_counter()
            sys.stdout.flush(), sys.stderr.flush()
            saved = os.dup(1), os.dup(2)
            with open(Path(directory) / f"command_{number}.log", "w") as log:
                os.dup2(log.fileno(), 1), os.dup2(log.fileno(), 2)
                try:
                    sys.argv = list(argv)
                    if argv[0].endswith(".py"):
                        runpy.run_path(argv[0], run_name="__main__")
                    else:  # an installed console script: it must exist, and its entry point is called
                        if not (Path(sys.executable).parent / argv[0]).exists():
                            raise FileNotFoundError(f"no console script {argv[0]} beside {sys.executable}")
                        (entry,) = entry_points(group="console_scripts", name=argv[0])
                        entry.load()()
                except SystemExit as stop:
                    code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
                except BaseException:
                    code, error = 1, traceback.format_exc()
                finally:
                    sys.stdout.flush(), sys.stderr.flush()
                    os.dup2(saved[0], 1), os.dup2(saved[1], 2)
                    os.close(saved[0]), os.close(saved[1])
            output = (Path(directory) / f"command_{number}.log").read_text()
            output += f"\n[{time.perf_counter() - started:.1f} s]"
            finished_runs = len(list(Path(directory).glob("**/metrics.json")))
            results[block].append([command, code, error or output[-3000:], finished_runs])
            if code != 0:
                break
    Path(plan_file).with_suffix(".results.json").write_text(json.dumps(results))


RUN_BLOCKS = [b for b in BLOCKS if block_commands(b)]


@pytest.fixture(scope="module")
def block_results(tmp_path_factory) -> dict[str, list]:
    """Every README block run once, in one fresh interpreter, each in its own directory."""
    base = tmp_path_factory.mktemp("readme")
    plan = {}
    for number, block in enumerate(RUN_BLOCKS):
        directory = base / f"block_{number}"
        directory.mkdir()
        (directory / "examples").symlink_to(ROOT / "examples")
        plan[str(number)] = (str(directory), block_commands(block))
    plan_file = base / "plan.json"
    plan_file.write_text(json.dumps(plan))
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    code = f"from tests.test_readme import run_blocks; run_blocks({str(plan_file)!r})"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            timeout=1800, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(plan_file.with_suffix(".results.json").read_text())
    return {number: (Path(plan[number][0]), ran) for number, ran in results.items()}


@pytest.mark.slow
def test_readme_shows_the_set_up_and_test_commands():
    commands = [line.strip() for block in BLOCKS for line in block.splitlines()]
    assert any(c.startswith("make train") for c in commands)
    assert any(c.startswith("make test") for c in commands)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("number", range(len(RUN_BLOCKS)), ids=[block_commands(b)[0][:60] for b in RUN_BLOCKS])
@pytest.mark.slow
def test_readme_block_runs(block_results, number):
    directory, ran = block_results[str(number)]
    commands = block_commands(RUN_BLOCKS[number])
    assert [command for command, *_ in ran] == commands[:len(ran)]
    for command, code, output, finished_runs in ran:
        assert code == 0, f"{command}\n{output}"
        if command.startswith("python train.py") and "lr_find.run=true" not in command:  # it only tests lrs
            # every training command leaves a finished run
            assert finished_runs > 0, command
    assert len(ran) == len(commands)


@pytest.mark.slow
def test_make_train_passes_overrides(tmp_path):
    run_dir = tmp_path / "run"
    args = f"ARGS=trainer.max_epochs=1 trainer.progress=false hydra.run.dir={run_dir}"
    result = subprocess.run(["make", "--no-print-directory", "train", args], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert (run_dir / "metrics.json").exists()


def test_the_benchmark_commands_behind_the_readmes_performance_summary_are_accepted(monkeypatch):
    """The README's Performance section quotes figures whose commands are in benchmarks/RESULTS.md's
    summary: each command's flags are still the benchmark's (parsed by its own parser; nothing timed)."""
    import argparse

    from tests.test_benchmark import load_benchmark_module

    results = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    assert "(benchmarks/RESULTS.md)" in README
    summary = results.split("## Where mlpkit stands", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"`(python scripts/benchmark\.py[^`]*)`", summary.replace("\n", " "))
    assert len(commands) >= 4, commands
    benchmark, parse = load_benchmark_module(), argparse.ArgumentParser.parse_args

    class Parsed(Exception):
        pass

    def parse_then_stop(self, args=None, namespace=None):
        parse(self, args, namespace)  # a flag the script does not take exits with 2
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    for command in commands:
        monkeypatch.setattr(sys, "argv", ["benchmark.py", *shlex.split(command)[2:]])
        with pytest.raises(Parsed):
            benchmark.main()
