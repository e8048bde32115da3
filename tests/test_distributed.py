"""trainer.strategy=ddp: 2 CPU ranks through the real torchrun train as one process does, write one
run, stop together on a signal and resume with 1 or 2 ranks; the refusals are one line."""
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from mlpkit.callbacks import Callback
from mlpkit.checkpoint import load_checkpoint
from mlpkit.config import validate
from mlpkit.distributed import GradientSync, check_ranks_fit
from mlpkit.errors import ConfigError
from mlpkit.rundir import resumed_config
from tests.conftest import ROOT, compose_config, run_cli

# moons: 700 training rows, batches of 64: 11 steps an epoch, the last of 60 rows (30 a rank)
RUN = ["data=moons", "model.hidden_sizes=[16]", "trainer.max_epochs=3", "trainer.device=cpu",
       "trainer.progress=false", "trainer.checkpoint_min_seconds=0"]
SIGNAL_STEP = 15  # rank 0 signals itself after step 15: every rank stops after step 16, inside epoch 2


class SignalRankZero(Callback):
    """Rank 0 sends itself SIGTERM after step SIGNAL_STEP, as a kill of one rank would; the other rank
    hears of it through the next step's all-reduce."""

    def on_train_batch_end(self, trainer, loss):
        if trainer.step == SIGNAL_STEP and os.environ.get("RANK") == "0":
            os.kill(os.getpid(), signal.SIGTERM)


def torchrun(run_dir, *overrides, ranks=2, timeout=120):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
               str(ROOT / "train.py"), f"hydra.run.dir={run_dir}", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def weights(run_dir):
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


def largest_difference(first, second):
    return max((first[name] - second[name]).abs().max().item() for name in first)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The same run in one process and on 2 ranks, each trained once for the module."""
    base = tmp_path_factory.mktemp("uninterrupted")
    single = run_cli(base / "single", *RUN)
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = torchrun(base / "ddp", *RUN)
    assert ddp.returncode == 0, (ddp.stdout + ddp.stderr)[-3000:]
    return {"single": base / "single", "ddp": base / "ddp"}


@pytest.mark.slow
def test_two_ranks_train_the_weights_one_process_trains_into_one_run(uninterrupted):
    single, ddp = uninterrupted["single"], uninterrupted["ddp"]
    assert largest_difference(weights(ddp), weights(single)) < 1e-5  # float sums in another order: ~3e-8
    assert len(list(ddp.glob("events.out.tfevents.*"))) == 1
    assert sorted(path.name for path in ddp.parent.iterdir()) == ["ddp", "single"]  # no directory per rank
    metrics, alone = (json.loads((run / "metrics.json").read_text()) for run in (ddp, single))
    assert metrics["steps"] == alone["steps"] == 33
    for split in ("val", "test"):  # every rank evaluated the whole split
        assert metrics[split] == pytest.approx(alone[split], rel=1e-5, abs=1e-6)
    log = (ddp / "train.log").read_text()
    assert log.count("epoch 3/3") == 1 and log.count("run directory:") == 1  # rank 0's lines only


@pytest.mark.slow
def test_a_signal_stops_every_rank_after_one_step_and_the_run_resumes_with_one_or_two_ranks(uninterrupted, tmp_path):
    killed = tmp_path / "killed"
    stopped = torchrun(killed, *RUN, "trainer.callbacks=[tests.test_distributed.SignalRankZero]")
    output = stopped.stdout + stopped.stderr
    assert stopped.returncode != 0 and output.count("exitcode  : 143") == 2, output[-3000:]  # both ranks
    state = load_checkpoint(killed / "checkpoints" / "last.pt")
    assert state["step"] == SIGNAL_STEP + 1 and state["extra"]["epoch_order"] is not None  # mid-epoch, agreed
    assert (killed / "train.log").read_text().count("stopped by signal 15 at step 16") == 1
    assert json.loads((killed / "metrics.json").read_text())["status"] == "stopped"

    one_rank, two_ranks = tmp_path / "one_rank", tmp_path / "two_ranks"
    shutil.copytree(killed, one_rank)
    shutil.copytree(killed, two_ranks)
    resumed = run_cli(one_rank, f"resume={one_rank}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    resumed = torchrun(two_ranks, f"resume={two_ranks}")
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    assert largest_difference(weights(one_rank), weights(uninterrupted["single"])) < 1e-5
    assert all(torch.equal(value, weights(uninterrupted["ddp"])[name]) for name, value in weights(two_ranks).items())


def test_ddp_without_torchrun_is_refused_in_one_line(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ConfigError, match="trainer.strategy=ddp .*torchrun --nproc_per_node=N"):
        validate(compose_config("trainer.strategy=ddp"))
    validate(compose_config("trainer.strategy=single"))


@pytest.mark.parametrize("overrides, words", [
    (["trainer.device=cuda:0"], "trainer.device=cuda:0 .*would put all 2 ranks on one GPU"),
    (["trainer.strategy=single"], "trainer.strategy=single .*under torchrun"),
    (["data.cv_folds=3"], "data.cv_folds=3 .*0 with trainer.strategy=ddp"),
])
def test_torchrun_refuses_what_cannot_run_on_its_ranks(monkeypatch, overrides, words):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=words):
        validate(compose_config(*overrides))


def test_more_ranks_than_rows_of_a_batch_is_refused():
    with pytest.raises(ConfigError, match="trainer.batch_size=4 .*at least 8"):
        check_ranks_fit(8, 700, 4)
    with pytest.raises(ConfigError, match="WORLD_SIZE=8 .*at most 6 ranks"):
        check_ranks_fit(8, 6, 64)
    with pytest.raises(ConfigError, match="single row"):  # 700 % 64 = 60 rows: 1 a rank of 60 ranks
        check_ranks_fit(60, 700, 128, norm="batch")
    check_ranks_fit(2, 700, 64, norm="batch")


def test_a_resume_that_changes_the_strategy_is_refused():
    saved = OmegaConf.to_container(compose_config(*RUN), resolve=True)
    with pytest.raises(ConfigError, match="trainer.strategy"):
        resumed_config(saved, compose_config(*RUN, "trainer.strategy=single"), ["trainer.strategy=single"], "run")
    resumed_config(saved, compose_config(*RUN), [], "run")  # auto: any number of ranks


def test_the_ranks_shares_cover_a_batch_once_in_order():
    for rows in (1, 2, 7, 60, 64):
        shares = [GradientSync(3, rank).share(rows) for rank in range(3)]
        assert [row for share in shares for row in range(rows)[share]] == list(range(rows))


@pytest.mark.slow
def test_two_ranks_stream_a_parquet_directory_into_one_run(tmp_path):
    """data.stream=true under torchrun: rank 0 scans the files once, each rank reads the row groups dealt
    to it, and the run ends with the whole splits' metrics, close to one process's."""
    from tests.test_stream import write_table

    write_table(tmp_path / "table", rows=2400, files=2, row_group_size=200)
    stream = ["data=csv", "data.target=label", f"data.path={tmp_path / 'table'}", "data.stream=true",
              "data.shuffle_buffer=200", "model.hidden_sizes=[16]", "optimizer.lr=0.02", "trainer.max_epochs=3",
              "trainer.device=cpu", "trainer.progress=false", "trainer.batch_size=64"]
    ddp = torchrun(tmp_path / "ddp", *stream)
    assert ddp.returncode == 0, (ddp.stdout + ddp.stderr)[-3000:]
    single = run_cli(tmp_path / "single", *stream)
    assert single.returncode == 0, single.stderr[-2000:]
    metrics, alone = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("ddp", "single"))
    assert metrics["steps"] == alone["steps"]  # the same global batches an epoch
    assert metrics["test"]["accuracy"] == pytest.approx(alone["test"]["accuracy"], abs=0.05)
    assert (tmp_path / "ddp" / "train.log").read_text().count("streamed from 2 Parquet file(s), 12 row groups") == 1
