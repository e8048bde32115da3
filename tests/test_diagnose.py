"""The remedy loop: diagnose a config over seeds, train the remedies its verdict names, recommend one
(mlpkit/diagnosis.py), from Python and as `python scripts/diagnose.py`; what it refuses."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from mlpkit.diagnosis import _judge, diagnose
from mlpkit.errors import ConfigError
from mlpkit.remedies import remedies_for, settled, with_remedy
from mlpkit.sweeps import find_jobs
from tests.conftest import ROOT, compose_config

QUICK = ["trainer.max_epochs=2", "trainer.progress=false", "trainer.device=cpu"]
VANISHING = ["experiment=vanishing_gradients", *QUICK]  # 8 sigmoid layers of 64: vanishing within 5 steps
HEALTHY = ["model.hidden_sizes=[32]", *QUICK]


def names(remedies) -> list[str]:
    return [remedy.name for remedy in remedies]


# --- which remedies, as which overrides (no training) ---------------------------------------------
def test_each_verdict_names_its_remedies_and_the_last_resort_comes_last():
    deep_sigmoid = compose_config("experiment=vanishing_gradients")
    vanishing = remedies_for(["vanishing"], deep_sigmoid)
    assert names(vanishing) == ["relu_kaiming", "layer_norm", "batch_norm", "residual", "shallower"]
    assert vanishing[0].overrides == ("activation=relu", "model.init=kaiming_normal")
    assert vanishing[-1].last_resort and vanishing[-1].overrides == ("model.hidden_sizes=[64,64]",)
    assert names(remedies_for(["exploding"], compose_config("optimizer.lr=0.5"))) == ["clip", "lr_div10", "lr_auto"]
    assert remedies_for(["exploding"], compose_config("optimizer.lr=0.5"))[1].overrides == ("optimizer.lr=0.05",)
    assert names(remedies_for(["dead"], compose_config())) == ["leaky", "elu", "lr_div10"]
    both = remedies_for(["dead", "exploding"], compose_config())  # a remedy two verdicts name is tried once
    assert names(both) == ["leaky", "elu", "lr_div10", "clip", "lr_auto"]


def test_a_remedy_the_config_already_has_or_cannot_take_is_left_out():
    narrowing = compose_config("activation=sigmoid", "model.hidden_sizes=[64,32]", "model.norm=batch")
    assert names(remedies_for(["vanishing"], narrowing)) == ["relu_kaiming", "layer_norm"]  # no skip, not shallower
    relu = compose_config("activation=leaky", "model.hidden_sizes=[64,64,64]", "model.residual=true")
    assert names(remedies_for(["vanishing"], relu)) == ["kaiming", "layer_norm", "batch_norm", "shallower"]
    assert names(remedies_for(["exploding"], compose_config("optimizer.lr=auto", "trainer.gradient_clip_val=0.5"))) == []


def test_a_variant_is_the_users_overrides_with_the_remedys_keys_replaced():
    user = ["activation=leaky", "activation.negative_slope=0.2", "optimizer.lr=0.1", "model.hidden_sizes=[64,64]"]
    assert with_remedy(user, ["activation=relu", "optimizer.lr=0.01"]) == [
        "model.hidden_sizes=[64,64]", "activation=relu", "optimizer.lr=0.01"]
    # an experiment that sets activation.name itself would keep sigmoid under activation=relu: the name is pinned
    relu = remedies_for(["vanishing"], compose_config("experiment=vanishing_gradients"))[0]
    assert settled(["experiment=vanishing_gradients"], relu).overrides[-1] == "activation.name=relu"
    assert settled(["activation=sigmoid"], relu) == relu


def row(variant: str, verdicts: list[str], scores: list[float | None], last_resort: bool = False) -> dict:
    """A table row as the diagnosis reads it from its runs' metrics.json (one verdict per seed here)."""
    return {"variant": variant, "verdicts": {kind: verdicts.count(kind) for kind in verdicts},
            "seeds": len(verdicts), "healthy_seeds": verdicts.count("healthy"), "scores": scores,
            "last_resort": last_resort}


def test_only_a_remedy_that_turns_every_seed_healthy_and_scores_better_is_recommended():
    rows = [row("baseline", ["vanishing", "vanishing"], [2.25, 2.35]),
            row("layer_norm", ["vanishing", "healthy"], [0.5, 0.6]),  # better, but not healthy on every seed
            row("batch_norm", ["healthy", "healthy"], [2.4, 2.5]),  # healthy, but worse
            row("clip", ["dead", "dead"], [2.28, 2.3]),
            row("shallower", ["healthy", "healthy"], [1.0, 1.1], last_resort=True)]
    _judge(rows, "loss", "min")
    assert [r["outcome"] for r in rows[1:4]] == [
        "still vanishing 1/2; val_loss lower: better", "flips to healthy; val_loss higher: not better",
        "now dead 2/2; val_loss lower: better (within seed noise)"]
    assert [r["variant"] for r in rows if r["recommended"]] == ["shallower"]  # the last resort, as nothing else works
    rows.append(row("residual", ["healthy", "healthy"], [1.9, 2.0]))
    _judge(rows, "loss", "min")
    assert [r["variant"] for r in rows if r["recommended"]] == ["residual"]  # worse than shallower, not a last resort
    _judge(rows, "loss", "max")  # accuracy-like: higher is better, so only batch_norm beats the baseline
    assert [r["variant"] for r in rows if r["recommended"]] == ["batch_norm"]
    assert rows[1]["outcome"] == "still vanishing 1/2; val_loss lower: not better"


# --- bad input (nothing trains) -------------------------------------------------------------------
@pytest.mark.parametrize("overrides, seeds, message", [
    (HEALTHY, 0, "diagnose.seeds=0 is not valid: expected an integer >= 1"),
    ([*HEALTHY, "diagnose.seeds=two"], None, "diagnose.seeds=two is not valid: expected an integer >= 1"),
    ([*HEALTHY, "resume=outputs/x"], 2, "resume=outputs/x is not valid: expected no resume in a diagnosis"),
    ([*HEALTHY, "optimizer.lr=-1"], 2, "optimizer.lr=-1 is not valid: expected a finite positive number"),
    ([*HEALTHY, "model.hiden_sizes=[8]"], 2, "model.hiden_sizes"),
    ([*HEALTHY, "data.cv_folds=3"], 2, "data.cv_folds=3 is not valid: expected 0 in a diagnosis"),
])
def test_bad_input_is_one_line_before_anything_trains(tmp_path, overrides, seeds, message):
    with pytest.raises(ConfigError) as error:
        diagnose(overrides, sweep_dir=tmp_path / "sweep", seeds=seeds)
    assert str(error.value).startswith(message) and "\n" not in str(error.value), str(error.value)
    assert not (tmp_path / "sweep").exists()


# --- diagnoses that train -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vanishing(tmp_path_factory):
    return diagnose(VANISHING, sweep_dir=tmp_path_factory.mktemp("diagnose") / "sweep", seeds=2)


@pytest.mark.slow
def test_a_deep_sigmoid_net_is_diagnosed_vanishing_and_relu_kaiming_is_recommended(vanishing):
    rows = {row["variant"]: row for row in vanishing.table}
    assert list(rows) == ["baseline", "relu_kaiming", "layer_norm", "batch_norm", "residual", "shallower"]
    assert not vanishing.healthy and rows["baseline"]["gradients"] == "vanishing 2/2"
    assert rows["relu_kaiming"]["gradients"] == "healthy 2/2" and rows["relu_kaiming"]["recommended"]
    assert [row["variant"] for row in vanishing.table if row["recommended"]] == ["relu_kaiming"]
    expected = [*VANISHING, "activation=relu", "model.init=kaiming_normal", "activation.name=relu"]
    assert vanishing.recommended == expected
    copy_line = "python train.py experiment=vanishing_gradients " + " ".join(expected[1:])
    assert copy_line in str(vanishing)
    written = json.loads((vanishing.sweep_dir / "diagnosis.json").read_text())
    assert written["recommended"] == expected and written["command"] == copy_line
    assert (vanishing.sweep_dir / "diagnosis.md").read_text() == str(vanishing)
    assert len(find_jobs(vanishing.sweep_dir)) == 12 and (vanishing.sweep_dir / "sweep_report.md").is_file()
    assert list(vanishing.frame()["variant"]) == list(rows)


@pytest.mark.slow
def test_the_table_says_what_each_remedy_did_honestly(vanishing):
    baseline = vanishing.table[0]
    for row in vanishing.table[1:]:
        still = row["verdicts"].get("vanishing")
        assert (f"still vanishing {still}/2" in row["outcome"]) if still else ("still" not in row["outcome"])
        assert row["outcome"].startswith("flips to healthy") == (row["gradients"] == "healthy 2/2")
        lower = row["score_mean"] < baseline["score_mean"]
        assert f"val_loss {'lower: better' if lower else 'higher: not better'}" in row["outcome"]
        assert row["recommended"] == (row["variant"] == "relu_kaiming")


@pytest.mark.slow
def test_the_tables_numbers_are_the_runs_metrics(vanishing):
    for row in vanishing.table:
        metrics = [json.loads((Path(run_dir) / "metrics.json").read_text()) for run_dir in row["run_dirs"]]
        assert [m["val"]["loss"] for m in metrics] == row["scores"]
        assert row["score_mean"] == pytest.approx(statistics.fmean(row["scores"]))
        assert row["score_std"] == pytest.approx(statistics.stdev(row["scores"]))
        ratios = [m["gradient_health"]["first_last_grad_ratio"]["median"] for m in metrics]
        assert row["grad_ratio_median"] == pytest.approx(statistics.median(ratios))
        verdicts = [kind for m in metrics for kind in (m["gradient_health"]["verdicts"] or ["healthy"])]
        assert row["verdicts"] == {kind: verdicts.count(kind) for kind in verdicts}
        cell = f"{row['score_mean']:.4g} ± {row['score_std']:.2g}"
        assert f"| {row['gradients']} | {row['grad_ratio_median']:.2g} | {cell} |" in str(vanishing)


@pytest.mark.slow
def test_a_healthy_config_says_so_and_trains_nothing_else(tmp_path):
    result = diagnose(HEALTHY, sweep_dir=tmp_path, seeds=2)
    assert result.healthy and result.recommended is None and len(result.table) == 1
    assert result.table[0]["gradients"] == "healthy 2/2"
    assert "**Healthy**: no gradient verdict over seeds 0-1" in str(result)
    assert sorted(path.name for path in find_jobs(tmp_path)) == ["0_baseline_seed0", "1_baseline_seed1"]


@pytest.mark.slow
def test_too_short_a_run_is_not_called_healthy(tmp_path):
    result = diagnose([*HEALTHY, "trainer.limit_train_batches=2"], sweep_dir=tmp_path, seeds=1)  # 4 steps
    assert result.status == "not judged" and not result.healthy and result.recommended is None
    assert "**Not judged**" in str(result) and "train longer" in str(result)


# --- the command line -----------------------------------------------------------------------------
@pytest.mark.slow
def test_the_command_line_diagnoses_into_its_run_directory(tmp_path):
    run_dir = tmp_path / "run"
    done = diagnose_script(run_dir, "diagnose.seeds=1", *HEALTHY)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "**Healthy**: no gradient verdict over seed 0 (healthy 1/1)" in done.stdout
    assert (run_dir / "diagnosis.md").read_text() in done.stdout
    assert [path.name for path in find_jobs(run_dir)] == ["0_baseline_seed0"]  # the command's own dir is no job


@pytest.mark.slow
@pytest.mark.parametrize("arguments, message", [  # the others are the Python path's refusals, tested above
    (("-m",), "hydra.mode=MULTIRUN is not valid: expected a single command (no -m): a diagnosis runs its own sweep"),
    (("optimizer.lr=-1",), "optimizer.lr=-1 is not valid: expected a finite positive number"),
])
def test_the_command_line_refuses_bad_input_in_one_line(tmp_path, arguments, message):
    done = diagnose_script(tmp_path / "run", *HEALTHY, *arguments)
    errors = [line for line in done.stderr.splitlines() if line.startswith("Config error")]
    assert done.returncode == 2 and len(errors) == 1 and message in errors[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr and not list((tmp_path / "run").glob("0_*"))


def diagnose_script(run_dir, *arguments: str):
    """``python scripts/diagnose.py <arguments>``, its run directory pinned to ``run_dir``."""
    import subprocess
    import sys

    flags = [argument for argument in arguments if argument.startswith("-")]  # argparse wants -m first
    rest = [argument for argument in arguments if not argument.startswith("-")]
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "diagnose.py"), *flags, f"hydra.run.dir={run_dir}",
                           *rest], cwd=run_dir.parent, capture_output=True, text=True, timeout=300)
