"""Shared helpers: compose configs like the CLI does (and report its mistakes as the CLI would), and run
the real CLI, a script or a fresh interpreter in a temporary directory. Tests that start a process or
train a real run are marked ``slow``: ``make test-fast`` leaves them out, and an unmarked test that starts
a process fails, saying so (``processes_only_in_slow_tests``)."""
from __future__ import annotations

import ctypes.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parent.parent
# scikit-learn's results (mlpkit/cache.py) are cached for the suite's processes in a folder of its
# own, not in the user's ~/.cache; tests of the cache itself point it elsewhere.
os.environ["MLPKIT_CACHE_DIR"] = str(Path(tempfile.gettempdir()) / f"mlpkit-test-cache-{os.getuid()}")
CONFIG_DIR = ROOT / "configs"
FAST = ["trainer.max_epochs=1", "trainer.progress=false"]
TINY = ("trainer.max_epochs=2", "model.hidden_sizes=[16]", "trainer.progress=false")
IRIS = ROOT / "examples" / "iris.csv"


def compose_config(*overrides: str):
    """The config `python train.py <overrides>` would run with."""
    import mlpkit.schema  # noqa: F401 (registers the groups' schemas with Hydra)

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=False)


def assembled(*overrides: str, data=None, checkpoint_dir=None, callbacks=(), logger=None):
    """A run's parts as `python train.py <overrides>` builds them (``mlpkit.assemble``), on the CPU,
    on ``data`` when given (else the config's)."""
    import torch

    from mlpkit.assemble import assemble, load_data

    cfg = compose_config("trainer.device=cpu", "trainer.progress=false", *overrides)
    data = data if data is not None else load_data(cfg, torch.device("cpu"))
    return assemble(cfg, data, checkpoint_dir=checkpoint_dir, callbacks=callbacks, logger=logger)


def hydra_error(*overrides: str, config_name: str = "train") -> str:
    """The one line the command line prints (after ``Config error: ``) for a Hydra composition error,
    an unknown key or choice or an override that does not parse, composed in-process."""
    from mlpkit.config import describe_hydra_error

    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            compose(config_name=config_name, overrides=list(overrides))
    except Exception as error:  # described outside the context: describe_hydra_error composes again
        line = describe_hydra_error(error, list(overrides), config_name)
        assert line is not None, f"not a config mistake: {error!r}"
        return line
    raise AssertionError(f"{' '.join(overrides)} composed without an error")


def run_cli(run_dir: Path, *overrides: str, args: tuple[str, ...] = (), env: dict | None = None,
            timeout: int = 180, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `python train.py` for real, its run directory pinned to ``run_dir``."""
    flags = [o for o in overrides if o.startswith("-")]  # argparse wants -m before the overrides
    overrides = tuple(o for o in overrides if not o.startswith("-"))
    command = [sys.executable, str(ROOT / "train.py"), *flags, *args, f"hydra.run.dir={run_dir}",
               *overrides]
    inherited = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    full_env = {**inherited, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(command, cwd=cwd or run_dir.parent, capture_output=True, text=True, timeout=timeout,
                          env=full_env)


def run_cli_in_one_interpreter(commands: list[tuple[Path, tuple[str, ...]]], timeout: int = 600,
                               env: dict | None = None) -> list[subprocess.CompletedProcess]:
    """Several ``python train.py <overrides>`` commands (run directory, overrides; flags such as --help
    go first, as in ``run_cli``), one after another in one fresh interpreter (``run_in_one_interpreter``),
    each started in its run directory's parent."""
    return run_in_one_interpreter(
        [([str(ROOT / "train.py"), *[o for o in overrides if o.startswith("-")], f"hydra.run.dir={run_dir}",
           *[o for o in overrides if not o.startswith("-")]], run_dir.parent) for run_dir, overrides in commands],
        timeout=timeout, env=env)


def run_in_one_interpreter(commands: list[tuple[list[str], Path]], timeout: int = 600,
                           env: dict | None = None) -> list[subprocess.CompletedProcess]:
    """Several ``python <script> <arguments>`` commands (argv from the script's path on, working
    directory), one after another in one fresh interpreter: each script runs as ``__main__`` as its own
    process would run it, each command's stdout, stderr and exit code kept apart; the interpreter's
    start-up (torch and Hydra imported) is paid once, not per command. For what a command prints and
    exits with; ``run_cli`` starts a process per command (signals, concurrency, a fresh process's imports)."""
    plan = [[[str(part) for part in argv], str(cwd)] for argv, cwd in commands]
    for _, cwd in commands:
        Path(cwd).mkdir(parents=True, exist_ok=True)
    inherited = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env = {**inherited, "PYTHONUNBUFFERED": "1", **(env or {})}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory(prefix="cli_plan_") as folder:
        plan_file = Path(folder) / "plan.json"
        plan_file.write_text(json.dumps(plan))
        code = f"from tests.conftest import run_plan; run_plan({str(plan_file)!r})"
        ran = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                             timeout=timeout, env=env)
        assert ran.returncode == 0, ran.stderr[-3000:]
        codes = json.loads(plan_file.with_suffix(".codes.json").read_text())
        return [subprocess.CompletedProcess(argv, returncode,
                                            Path(f"{plan_file}.{number}.out").read_text(),
                                            Path(f"{plan_file}.{number}.err").read_text())
                for number, ((argv, _), returncode) in enumerate(zip(plan, codes))]


def run_plan(plan_file: str) -> None:
    """In the fresh interpreter of ``run_in_one_interpreter``: each command's script as ``__main__``,
    its stdout and stderr redirected (file descriptors 1 and 2) to files of their own; writes the exit codes."""
    import runpy

    codes = []
    for number, (argv, cwd) in enumerate(json.loads(Path(plan_file).read_text())):
        os.chdir(cwd)
        sys.stdout.flush(), sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        with open(f"{plan_file}.{number}.out", "w") as out, open(f"{plan_file}.{number}.err", "w") as err:
            os.dup2(out.fileno(), 1), os.dup2(err.fileno(), 2)
            try:
                sys.argv = list(argv)
                runpy.run_path(argv[0], run_name="__main__")
                code = 0
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
            except BaseException:  # noqa: BLE001 (an uncaught exception: the process would exit 1)
                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush(), sys.stderr.flush()
                os.dup2(saved[0], 1), os.dup2(saved[1], 2)
                os.close(saved[0]), os.close(saved[1])
        codes.append(code)
    Path(plan_file).with_suffix(".codes.json").write_text(json.dumps(codes))


def script(name: str, *overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``python scripts/<name>.py <overrides>`` (evaluate, predict, plot_activations) from ``cwd``."""
    return subprocess.run([sys.executable, str(ROOT / "scripts" / f"{name}.py"), *overrides], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def python_c(code: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """Run ``python -c <code>`` in a fresh interpreter from the repository root: what a new process
    imports (``sys.modules``) can only be seen there."""
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def read_scalars(event_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag TensorBoard would show for a run directory: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(event_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def stop_after_saving_step(monkeypatch, step: int) -> None:
    """Stop the run as a kill would, right after the checkpoint of ``step`` (mid-epoch) is written."""
    from mlpkit.checkpointing import Checkpointer
    from mlpkit.errors import TrainingStopped

    save = Checkpointer.save

    def save_then_stop(self, trainer, **kind):
        save(self, trainer, **kind)
        if trainer.step == step:
            raise TrainingStopped.by_signal("killed for the test", signal.SIGTERM)

    monkeypatch.setattr(Checkpointer, "save", save_then_stop)


def ctrl_c_reaches_it() -> None:
    """preexec_fn for a child that a test interrupts: a shell starts background jobs (CI runners
    may too) with SIGINT ignored, and the child would inherit that; a terminal's child would not."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory) -> dict[str, Path]:
    """Two runs trained once per session (per pytest-xdist worker): a bundled binary set whose classes have names
    (sigmoid head), and a regression on the user's own CSV file. Use ``runs``, not this."""
    base = tmp_path_factory.mktemp("trained_runs")
    commands = {
        "cancer": ("data=breast_cancer",),
        "iris": ("data=csv", f"data.path={IRIS}", "data.target=petal_width",
                 "data.features=[sepal_length,sepal_width,petal_length]"),
    }
    # through train.py, both in one fresh interpreter: its start-up costs more than these runs
    results = run_cli_in_one_interpreter([(base / name, (*overrides, *TINY)) for name, overrides in commands.items()])
    for name, result in zip(commands, results):
        assert result.returncode == 0, f"{name}: {result.stderr}"
    return {name: base / name for name in commands}


@pytest.fixture(scope="module")
def runs(trained_runs, tmp_path_factory) -> dict[str, Path]:
    """The trained runs, copied afresh for each test module: evaluate writes evaluation.json and
    figures into a run directory, so one module's tests never see what another's wrote."""
    base = tmp_path_factory.mktemp("runs")
    return {name: Path(shutil.copytree(source, base / name)) for name, source in trained_runs.items()}


SLOW_ONLY = "this test starts a process ({what}): mark it @pytest.mark.slow (make test-fast leaves those out)"
# Processes a library starts to look at the machine, whichever test first asks: ctypes.util.find_library
# (`ldconfig -p`, else gcc or ld; torch's first import asks for libdl) and platform's `uname -p`.
PROBES = {os.path.abspath(ctypes.util.__file__), os.path.abspath(platform.__file__)}


def refuse_processes(monkeypatch) -> None:
    """Every way a test could start a process (subprocess, os.fork/forkpty/posix_spawn/system,
    multiprocessing) fails the test with SLOW_ONLY instead, for as long as ``monkeypatch`` holds;
    the PROBES a library makes go ahead."""
    import multiprocessing.process

    popen_init = subprocess.Popen.__init__

    def refused_popen(self, args, *rest, **kwargs):
        if any(frame.f_code.co_filename in PROBES for frame, _ in traceback.walk_stack(None)):
            return popen_init(self, args, *rest, **kwargs)
        pytest.fail(SLOW_ONLY.format(what=f"subprocess {args!r}"[:300]))

    def refuse(module: str, name: str):
        def refused(*args, **kwargs):
            pytest.fail(SLOW_ONLY.format(what=f"{module}.{name}"))
        # pickled under the name it replaces, as the original would be: a test may pickle a payload
        # that names os.system without calling it (tests/test_checkpoint.py)
        refused.__module__, refused.__qualname__ = module, name
        return refused

    monkeypatch.setattr(subprocess.Popen, "__init__", refused_popen)
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start",
                        refuse("multiprocessing.process", "BaseProcess.start"))
    for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system"):
        if hasattr(os, name):
            monkeypatch.setattr(os, name, refuse("os", name))


@pytest.fixture(autouse=True)
def processes_only_in_slow_tests(request, monkeypatch) -> None:
    """``make test-fast`` runs the tests not marked slow; one that starts a process fails, saying so."""
    if not request.node.get_closest_marker("slow"):
        refuse_processes(monkeypatch)


def pytest_collection_modifyitems(items):
    """A test on the trained `runs` trains them through the real CLI first: it is slow, marked or not."""
    for item in items:
        if "runs" in getattr(item, "fixturenames", ()) and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)
