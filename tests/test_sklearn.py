"""mlpkit.sklearn: the estimators scikit-learn users drop into their code, checked the way scikit-learn
checks its own (parametrize_with_checks), in pipelines, searches and pickles, with their bad input
refused in one line and the gradient verdict a command-line run gives."""
from __future__ import annotations

import logging
import pickle
import random
import textwrap

import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits, load_iris
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks

import mlpkit
from mlpkit.errors import ConfigError
from mlpkit.sklearn import MLPClassifier, MLPRegressor
from tests.conftest import python_c, read_scalars

IRIS = load_iris(return_X_y=True)
FAST = {"max_epochs": 3, "random_state": 0}
SMALL = {"max_epochs": 20, "batch_size": 16, "random_state": 0}  # iris's 150 rows: enough steps to learn


@pytest.mark.slow
@parametrize_with_checks([MLPClassifier(), MLPRegressor()])
def test_scikit_learn_estimator_checks(estimator, check):
    """Every check scikit-learn runs on its own estimators, at the default parameters."""
    check(estimator)


def test_importable_from_mlpkit_and_nothing_done_in_init():
    estimator = mlpkit.MLPClassifier(hidden_sizes=(0,), activation="nope")  # refused at fit, not here
    assert estimator.get_params()["hidden_sizes"] == (0,)
    assert clone(estimator).get_params() == estimator.get_params()
    assert mlpkit.MLPRegressor is MLPRegressor


def test_classifier_learns_digits_and_reports_its_gradients():
    X, y = load_digits(return_X_y=True)
    estimator = MLPClassifier(**FAST).fit(X[:1500], y[:1500])
    assert estimator.score(X[1500:], y[1500:]) > 0.85
    assert estimator.classes_.tolist() == list(range(10))
    assert estimator.n_features_in_ == 64 and estimator.n_iter_ == 3
    assert len(estimator.loss_curve_) == 3 and estimator.loss_curve_[-1] < estimator.loss_curve_[0]
    assert [entry["epoch"] for entry in estimator.history_] == [1, 2, 3]
    assert estimator.gradient_health_["judged"] and estimator.gradient_health_["healthy"]
    probabilities = estimator.predict_proba(X[:5])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-6)
    assert (estimator.classes_[probabilities.argmax(axis=1)] == estimator.predict(X[:5])).all()
    assert estimator.decision_function(X[:5]).shape == (5, 10)
    assert estimator.config_["model"]["hidden_sizes"] == [128, 64] and estimator.config_["data"]["source"] == "arrays"


def test_deep_sigmoid_stack_is_judged_vanishing_with_its_remedy():
    """What no other estimator says: why the network does not train, and what to try."""
    X, y = load_digits(return_X_y=True)
    estimator = MLPClassifier(hidden_sizes=(32,) * 8, activation="sigmoid", **FAST).fit(X, y)
    health = estimator.gradient_health_
    assert health["healthy"] is False and "vanishing" in health["verdicts"]
    assert "relu-family activation" in health["verdicts"]["vanishing"]["message"]


def test_binary_labels_of_any_type_and_decision_function():
    X, y = load_breast_cancer(return_X_y=True)
    labels = np.where(y == 1, "benign", "malignant")
    estimator = MLPClassifier(**FAST).fit(X, labels)
    assert estimator.classes_.tolist() == ["benign", "malignant"]
    decision = estimator.decision_function(X)
    assert decision.shape == (len(X),)
    # a positive decision favours classes_[1], as scikit-learn's binary classifiers do
    assert (np.where(decision > 0, "malignant", "benign") == estimator.predict(X)).all()
    assert estimator.score(X, labels) > 0.9


def test_regressor_predicts_in_the_targets_units():
    X, y = load_diabetes(return_X_y=True)
    estimator = MLPRegressor(max_epochs=40, random_state=0).fit(X, y * 1000)
    predicted = estimator.predict(X)
    assert predicted.shape == (len(X),)
    assert 50_000 < predicted.mean() < 250_000  # the targets' thousands, not standardised units
    assert estimator.score(X, y * 1000) > 0.4


def test_dataframes_in_give_the_arrays_results_and_feature_names():
    pandas = pytest.importorskip("pandas")
    X, y = IRIS
    frame = pandas.DataFrame(X, columns=["sepal_length", "sepal_width", "petal_length", "petal_width"])
    from_frame = MLPClassifier(**FAST).fit(frame, pandas.Series(y))
    from_array = MLPClassifier(**FAST).fit(X, y)
    assert from_frame.feature_names_in_.tolist() == list(frame.columns)
    np.testing.assert_array_equal(from_frame.predict_proba(frame), from_array.predict_proba(X))
    with pytest.raises(ValueError, match="feature names should match"):
        from_frame.predict(frame[frame.columns[::-1]])


def test_column_transformer_with_pandas_output_names_the_features():
    pandas = pytest.importorskip("pandas")
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    X, y = IRIS
    frame = pandas.DataFrame(X[:, :3], columns=["a", "b", "c"]).assign(kind=np.where(X[:, 3] > 1, "wide", "narrow"))
    columns = ColumnTransformer([("numbers", StandardScaler(), ["a", "b", "c"]),
                                 ("kind", OneHotEncoder(sparse_output=False), ["kind"])])
    pipeline = make_pipeline(columns.set_output(transform="pandas"), MLPClassifier(**SMALL)).fit(frame, y)
    assert pipeline[-1].feature_names_in_.tolist() == ["numbers__a", "numbers__b", "numbers__c",
                                                       "kind__kind_narrow", "kind__kind_wide"]
    assert pipeline.score(frame, y) > 0.8


def test_same_random_state_same_model_in_this_process_and_another():
    X, y = IRIS
    first = MLPClassifier(**FAST).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(first, MLPClassifier(**FAST).fit(X, y).predict_proba(X))
    assert not np.array_equal(first, MLPClassifier(max_epochs=3, random_state=1).fit(X, y).predict_proba(X))
    unseeded = [MLPClassifier(max_epochs=3).fit(X, y) for _ in range(2)]  # None draws a seed, as scikit-learn does
    assert not np.array_equal(unseeded[0].predict_proba(X), unseeded[1].predict_proba(X))
    assert unseeded[0].config_["trainer"]["seed"] == unseeded[0].config_["data"]["split_seed"]


@pytest.mark.slow
def test_same_random_state_same_model_across_processes():
    code = textwrap.dedent("""
        import hashlib
        from sklearn.datasets import load_iris
        from mlpkit.sklearn import MLPClassifier
        X, y = load_iris(return_X_y=True)
        print(hashlib.sha256(MLPClassifier(max_epochs=3, random_state=0).fit(X, y).predict_proba(X).tobytes()).hexdigest())
    """)
    digests = {python_c(code).stdout.strip()}  # another interpreter, with its own import order and state
    X, y = IRIS
    here = MLPClassifier(**FAST).fit(X, y).predict_proba(X)
    import hashlib

    assert digests == {hashlib.sha256(here.tobytes()).hexdigest()}


def test_fit_never_changes_the_callers_rows():
    X, y = IRIS
    rows = np.ascontiguousarray(X, dtype=np.float32)  # the layout the data pipeline reorders in place
    MLPClassifier(early_stopping=True, **FAST).fit(rows, y)
    np.testing.assert_array_equal(rows, X.astype(np.float32))


def test_fit_leaves_the_global_random_generators_as_they_were():
    X, y = IRIS
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    expected = random.random(), np.random.rand(), torch.rand(1).item()
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    MLPClassifier(**FAST).fit(X, y)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_pickle_and_joblib_predict_the_same(tmp_path):
    X, y = IRIS
    estimator = MLPClassifier(**FAST).fit(X, y)
    expected = estimator.predict_proba(X)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(estimator)).predict_proba(X), expected)
    joblib.dump(estimator, tmp_path / "model.joblib")
    loaded = joblib.load(tmp_path / "model.joblib")
    np.testing.assert_array_equal(loaded.predict_proba(X), expected)
    assert loaded.gradient_health_ == estimator.gradient_health_ and loaded.classes_.tolist() == [0, 1, 2]


@pytest.mark.slow
def test_grid_search_over_processes_and_cross_validation():
    from sklearn.model_selection import GridSearchCV, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = IRIS
    pipeline = make_pipeline(StandardScaler(), MLPClassifier(**SMALL))
    search = GridSearchCV(pipeline, {"mlpclassifier__hidden_sizes": [(16,), (32, 16)],
                                     "mlpclassifier__activation": ["relu", "tanh"]}, cv=3, n_jobs=2).fit(X, y)
    assert len(search.cv_results_["params"]) == 4 and search.best_score_ > 0.8
    assert search.best_estimator_[-1].gradient_health_["healthy"] is True
    scores = cross_val_score(MLPClassifier(**SMALL), X, y, cv=3)
    assert scores.shape == (3,) and (scores > 0.7).all()


def test_early_stopping_holds_out_validation_and_keeps_the_best_epoch():
    X, y = load_breast_cancer(return_X_y=True)
    estimator = MLPClassifier(max_epochs=60, early_stopping=2, random_state=0, lr=0.01).fit(X, y)
    assert estimator.n_iter_ < 60  # stopped by patience 2
    assert estimator.best_epoch_ == estimator.n_iter_ - 2
    assert all("loss/val" in entry for entry in estimator.history_)
    trained_on_all = MLPClassifier(**FAST).fit(X, y)
    assert trained_on_all.best_epoch_ is None  # no validation split without early stopping
    assert all("loss/val" not in entry for entry in trained_on_all.history_)


def test_class_weight_reaches_the_loss():
    X, y = load_breast_cancer(return_X_y=True)
    weighted = MLPClassifier(class_weight={0: 10.0}, **FAST).fit(X, y)
    assert weighted.config_["loss"]["class_weights"] == [10.0, 1.0]
    plain = MLPClassifier(**FAST).fit(X, y)
    assert (weighted.predict(X) == 0).sum() > (plain.predict(X) == 0).sum()
    assert MLPClassifier(class_weight="balanced", **FAST).fit(X, y).config_["loss"]["class_weights"] == "balanced"


@pytest.mark.parametrize("params, message", [
    ({"hidden_sizes": (0,)}, r"MLPClassifier\(hidden_sizes=...\): hidden_sizes=\[0\] is not valid: expected a list "
                             r"of positive integers.*\(config key model.hidden_sizes\)"),
    ({"activation": "relux"}, r"activation=relux is not valid: expected one of .*relu"),
    ({"lr": -1.0}, r"lr=-1.0 is not valid: expected a finite positive number"),
    ({"random_state": -3}, r"random_state=-3 is not valid: expected an integer in \[0, 4294967295\]"),
    ({"overrides": ("trainer.max_epoch=3",)}, r"did you mean trainer.max_epochs\?"),
    ({"early_stopping": True, "validation_fraction": 0.0}, r"validation_fraction=0 is not valid: expected a "
                                                            r"fraction in \(0, 1\) with trainer.early_stopping"),
    ({"class_weight": {7: 2.0}}, r"class_weight names 7, which is not a class of y; its classes are 0, 1, 2"),
    ({"device": "gpu"}, r"device=gpu is not valid: expected auto, cpu, cuda, cuda:N or mps"),
])
def test_bad_parameters_are_one_value_error_naming_the_parameter(params, message):
    X, y = IRIS
    with pytest.raises(ValueError, match=message) as raised:
        MLPClassifier(max_epochs=1, **params).fit(X, y)
    assert "\n" not in str(raised.value)


def test_bad_input_is_refused_with_scikit_learns_messages():
    import scipy.sparse

    X, y = IRIS
    with pytest.raises(ValueError, match="Input X contains NaN"):
        MLPClassifier().fit(np.where(X > 7, np.nan, X), y)
    with pytest.raises(ValueError, match="Input X contains infinity"):
        MLPClassifier().fit(np.where(X > 7, np.inf, X), y)
    with pytest.raises(TypeError, match="Sparse data was passed for X, but dense data is required"):
        MLPClassifier().fit(scipy.sparse.csr_matrix(X), y)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        MLPClassifier().fit(X, y[:-1])
    with pytest.raises(ValueError, match=r"y holds 1 class \(0\); MLPClassifier needs at least 2 classes"):
        MLPClassifier().fit(X, np.zeros(len(y), dtype=int))
    with pytest.raises(ValueError, match=r"y holds text \(e.g. 'a'\); MLPRegressor needs numeric targets"):
        MLPRegressor().fit(X, np.array(["a"] * len(y)))
    with pytest.raises(ValueError, match="Unknown label type: continuous"):
        MLPClassifier().fit(X, X[:, 0])
    huge = X.copy()
    huge[5, 0] = 1e38
    with pytest.raises(ValueError, match=r"^MLPClassifier.fit\(X, y\): row 5, column 'x0': 1e\+38 makes the column's "
                                         r"variance overflow float32"):
        MLPClassifier().fit(huge, y)
    with pytest.raises(NotFittedError):
        MLPClassifier().predict(X)
    fitted = MLPClassifier(max_epochs=1, random_state=0).fit(X, y)
    with pytest.raises(ValueError, match="X has 3 features, but MLPClassifier is expecting 4 features"):
        fitted.predict(X[:, :3])
    with pytest.raises(ValueError, match=r"row 0, feature 'x0' is 5.1e\+38, which standardised .* beyond float32"):
        fitted.predict(X * 1e38)


def test_fit_writes_nothing_and_prints_nothing_by_default(tmp_path, monkeypatch, capfd):
    from mlpkit.api import _ensure_console

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLPKIT_CACHE_DIR", str(tmp_path / "cache"))
    X, y = load_breast_cancer(return_X_y=True)
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # a notebook's: mlpkit's console handler shows lines
    _ensure_console("%(message)s")  # as after an mlpkit.train in the same notebook
    MLPClassifier(early_stopping=True, **FAST).fit(X, y)
    MLPClassifier(hidden_sizes=(32,) * 8, activation="sigmoid", **FAST).fit(X, y)  # a verdict, still quiet
    logging.basicConfig(level=logging.INFO, force=True)  # a user's own logging shows nothing of the fit either
    MLPClassifier(**FAST).fit(X, y)
    assert capfd.readouterr() == ("", "")
    assert list(tmp_path.iterdir()) == []


def test_verbose_shows_the_epochs_and_the_verdict(monkeypatch, capfd):
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # as in a terminal or a notebook
    X, y = IRIS
    MLPClassifier(verbose=1, **FAST).fit(X, y)
    err = capfd.readouterr().err
    assert "data=arrays: multiclass, train 150, val 0, test 0, 4 features, 3 classes" in err
    assert "epoch 3/3" in err and "gradients: " in err


@pytest.mark.slow
def test_log_dir_writes_the_run_a_command_line_run_writes(tmp_path):
    X, y = IRIS
    estimator = MLPClassifier(log_dir=str(tmp_path / "logs"), validation_fraction=0.2, **FAST).fit(X, y)
    second = MLPClassifier(log_dir=str(tmp_path / "logs"), **FAST).fit(X, y)
    assert estimator.run_dir_.parent == tmp_path / "logs" and second.run_dir_ != estimator.run_dir_
    run = mlpkit.load_run(estimator.run_dir_)
    assert run.metrics["status"] == "completed" and run.metrics["dataset"] == "arrays"
    assert run.gradient_health == estimator.gradient_health_
    np.testing.assert_allclose(run.predict_proba(X), estimator.predict_proba(X), rtol=1e-6)  # best.pt: kept weights
    tags = read_scalars(estimator.run_dir_)
    assert {"loss/train", "loss/val"} <= set(tags) and any(tag.startswith("grad_norm/") for tag in tags)
    assert (estimator.run_dir_ / ".hydra" / "overrides.yaml").read_text().count("data=arrays") == 1
    assert "data=arrays" in (estimator.run_dir_ / "train.log").read_text()


def test_the_command_line_cannot_load_data_arrays():
    from mlpkit.assemble import load_data
    from tests.conftest import compose_config

    with pytest.raises(ConfigError, match="data=arrays is the X and y given to mlpkit.sklearn's fit"):
        load_data(compose_config("data=arrays"), torch.device("cpu"))


@pytest.mark.slow
def test_the_readmes_examples_run(monkeypatch, tmp_path, capsys):
    """The README's scikit-learn section, executed (the pipeline's 30 epochs cut to 3)."""
    from tests.conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## scikit-learn estimators"):readme.index("## Using a trained run")]
    blocks = section.split("```python\n")[1:]
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        code = block[:block.index("```")].replace("max_epochs=30", "max_epochs=3")
        exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "gradients are vanishing" in printed and "relu-family activation" in printed
    assert "test accuracy: 0." in printed and "'clf__hidden_sizes'" in printed
    assert list(tmp_path.iterdir()) == []
