"""mlpkit.export and scripts/export.py on real tiny runs: the ONNX file run by onnxruntime and the
TorchScript file by torch.jit.load give what Run.predict_proba (Run.predict) gives on the same raw rows,
on batches of 1 and 10,000; they run in a process where mlpkit cannot be imported; bad input is one line."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

import mlpkit
from mlpkit.errors import ConfigError
from mlpkit.export import FORMATS, INSTALL_EXPORT, ONNX_OPSET, export, sidecar
from tests.conftest import TINY, python_c, script

BATCHES = (1, 10_000)
COLORS = ("blue", "green", "red")


def write_table(path: Path, rows: int = 300) -> Path:
    """A binary table with a text feature column (one-hot outside the graph) and a column of 1e8 + noise
    (whose float64 mean float32 cannot hold), its target text."""
    import pandas as pd

    rng = np.random.default_rng(0)
    color = rng.choice(COLORS, rows)
    x = rng.normal(size=rows)
    big = 1e8 + rng.uniform(0, 1000, rows)
    label = np.where(x + (color == "red") + (big - 1e8) / 500 > 1.5, "yes", "no")
    pd.DataFrame({"x": x, "color": color, "big": big, "label": label}).to_csv(path, index=False)
    return path


def overrides(name: str, base: Path) -> list[str]:
    if name == "digits":
        return [*TINY]
    if name == "diabetes":
        return ["data=diabetes", *TINY]
    table = write_table(base / "table.csv")
    return ["data=csv", f"data.path={table}", "data.target=label", "data.categorical=auto", *TINY]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """name -> its Run, each trained once, when a test first asks for it."""
    base = tmp_path_factory.mktemp("export_runs")
    cache: dict[str, mlpkit.Run] = {}

    def run(name: str) -> mlpkit.Run:
        if name not in cache:
            cache[name] = mlpkit.train(overrides(name, base), run_dir=base / name)
        return cache[name]

    return run


@pytest.fixture(scope="module")
def exported(trained):
    """(name, format) -> the exported file, each written once (to the run's export/ folder)."""
    cache: dict[tuple[str, str], Path] = {}

    def file(name: str, format: str) -> Path:
        if (name, format) not in cache:
            if name == "table":  # its 1e8 + noise column: float32 rows hold it in steps of 8
                with pytest.warns(UserWarning, match="cannot resolve the spread of 1 feature.*: big$"):
                    cache[name, format] = export(trained(name).dir, format)
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("error", UserWarning)
                    cache[name, format] = export(trained(name).dir, format)
        return cache[name, format]

    return file


# --- raw rows, as a user has them -----------------------------------------------------------------
def raw_rows(name: str, run: mlpkit.Run, count: int):
    """``count`` raw rows in float32-representable values: what Run gets (an array, or a DataFrame with
    the text column) and the float32 matrix the exported file gets (one-hot by the JSON's mapping)."""
    rng = np.random.default_rng(count)
    if name == "table":
        import pandas as pd

        frame = pd.read_csv(run.config.data.path).drop(columns="label")
        frame = frame.iloc[rng.integers(0, len(frame), count)].reset_index(drop=True)
        frame["x"] += rng.normal(scale=0.1, size=count)
        frame["big"] += rng.uniform(-50, 50, count)
        for column in ("x", "big"):  # both sides see the same numbers: what a float32 input can hold
            frame[column] = frame[column].astype(np.float32).astype(np.float64)
        return frame, None
    from sklearn import datasets

    data = datasets.load_digits().data if name == "digits" else datasets.load_diabetes(scaled=False).data
    rows = data[rng.integers(0, len(data), count)] + rng.uniform(-0.5, 0.5, (count, data.shape[1]))
    rows = rows.astype(np.float32)
    return rows.astype(np.float64), rows


def encode(frame, description: dict) -> np.ndarray:
    """A DataFrame's columns as the exported file's input, by the JSON beside it alone."""
    mapping = description["outside_the_graph"]["one_hot"]
    columns = []
    for name in description["outside_the_graph"]["input_columns"]:
        if name in mapping:
            columns += [(frame[name] == category).to_numpy(np.float32) for category in mapping[name]["categories"]]
        else:
            columns.append(frame[name].to_numpy(np.float32))
    encoded = np.stack(columns, axis=1)
    assert encoded.shape[1] == len(description["input"]["feature_names"])
    return encoded


def inputs_and_expected(name: str, run: mlpkit.Run, count: int, description: dict):
    given, features = raw_rows(name, run, count)
    if features is None:
        features = encode(given, description)
    expected = run.predict(given)[:, None] if name == "diabetes" else run.predict_proba(given)
    return features, expected


def run_onnx(path: Path, features: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: features})[0]


def run_torchscript(path: Path, features: np.ndarray) -> np.ndarray:
    import torch

    module = torch.jit.load(str(path))
    with torch.no_grad():
        return module(torch.from_numpy(features)).numpy()


RUNNERS = {"onnx": run_onnx, "torchscript": run_torchscript}


def assert_matches(name: str, got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape
    if name == "diabetes":  # values in the target's units: relative
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=0)
    else:
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


# --- the exported files against the run ----------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("format", ["onnx", "torchscript"])
@pytest.mark.parametrize("name", ["digits", "table", "diabetes"])
def test_export_gives_what_the_run_predicts(trained, exported, name, format):
    run, path = trained(name), exported(name, format)
    description = json.loads(sidecar(path).read_text())
    for count in BATCHES:
        features, expected = inputs_and_expected(name, run, count, description)
        assert_matches(name, RUNNERS[format](path, features), expected)


@pytest.mark.slow
def test_the_files_run_where_mlpkit_cannot_be_imported(trained, exported, tmp_path):
    """A fresh interpreter in isolated mode, outside the repository, with mlpkit made unimportable."""
    run = trained("table")
    files = {format: exported("table", format) for format in RUNNERS}
    description = json.loads(sidecar(files["onnx"]).read_text())
    features, expected = inputs_and_expected("table", run, 50, description)
    np.save(tmp_path / "features.npy", features)
    code = textwrap.dedent(f"""
        import sys
        sys.modules["mlpkit"] = None  # any import of mlpkit now fails
        import numpy, onnxruntime, torch
        features = numpy.load("features.npy")
        session = onnxruntime.InferenceSession({str(files["onnx"])!r})
        numpy.save("onnx.npy", session.run(None, {{"features": features}})[0])
        module = torch.jit.load({str(files["torchscript"])!r})
        numpy.save("torchscript.npy", module(torch.from_numpy(features)).detach().numpy())
        try:
            import mlpkit
        except ImportError:
            print("mlpkit not importable")
    """)
    done = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "mlpkit not importable" in done.stdout
    for format in RUNNERS:
        assert_matches("table", np.load(tmp_path / f"{format}.npy"), expected)


@pytest.mark.slow
def test_the_json_beside_the_file_names_inputs_outputs_and_labels(trained, exported):
    import onnx
    import onnxruntime

    run, path = trained("table"), exported("table", "onnx")
    description = json.loads(sidecar(path).read_text())
    preprocessing = run.preprocessing
    assert description["format"] == "onnx" and description["opset"] == ONNX_OPSET
    assert description["input"] == {"name": "features", "shape": ["batch", len(preprocessing["feature_names"])],
                                    "dtype": "float32", "feature_names": preprocessing["feature_names"]}
    assert description["output"]["name"] == "probabilities" and description["output"]["shape"] == ["batch", 2]
    assert description["class_labels"] == run.classes.tolist() == ["no", "yes"]
    assert description["outside_the_graph"]["one_hot"]["color"]["categories"] == list(COLORS)
    assert description["outside_the_graph"]["input_columns"] == ["x", "color", "big"]
    assert description["precision"]["coarse_features"] == ["big"]  # 1e8 + noise: float32 steps of 8
    assert Path(description["run"]) == run.dir and description["checkpoint"] == "checkpoints/best.pt"
    assert [(o.domain, o.version) for o in onnx.load(str(path)).opset_import] == [("", ONNX_OPSET)]
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape, i.type) for i in session.get_inputs()] == [("features", ["batch", 5], "tensor(float)")]
    assert [o.name for o in session.get_outputs()] == ["probabilities"]


@pytest.mark.slow
def test_a_regression_json_names_its_value_and_no_labels(trained, exported):
    description = json.loads(sidecar(exported("diabetes", "torchscript")).read_text())
    assert description["format"] == "torchscript" and description["opset"] is None
    assert description["class_labels"] is None and description["outside_the_graph"] is None
    assert description["output"] == {"name": "prediction", "shape": ["batch", 1], "dtype": "float64",
                                     "meaning": "the predicted target in its original units"}


@pytest.mark.slow
def test_the_mean_is_subtracted_in_two_parts(trained, exported):
    """Without the float64 mean's low part a column of 1e8 + noise is centred off by up to 4: the
    probabilities move by more than 1e-5. With it they match (test_export_gives_what_the_run_predicts)."""
    import torch

    run, path = trained("table"), exported("table", "torchscript")
    module = torch.jit.load(str(path))
    description = json.loads(sidecar(path).read_text())
    features, expected = inputs_and_expected("table", run, 1000, description)
    assert np.abs(module.mean_low.numpy()).max() > 0
    module.mean_low.zero_()
    with torch.no_grad():
        coarse = module(torch.from_numpy(features)).numpy()
    assert np.abs(coarse - expected).max() > 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("format", ["onnx", "torchscript"])
def test_missing_values_are_filled_inside_the_graph_when_the_run_fills(trained, tmp_path, monkeypatch, format):
    """The seam for filling: fill_values' per-feature values replace NaN cells inside the file."""
    import mlpkit.export

    run = trained("digits")
    fill = np.full(64, np.nan)
    fill[[10, 20]] = [3.0, 7.5]
    monkeypatch.setattr(mlpkit.export, "fill_values", lambda preprocessing: fill)
    path = export(run.dir, format, tmp_path / f"filled.{format}")
    rows, features = raw_rows("digits", run, 20)
    features[:, [10, 20]] = np.nan
    rows[:, 10], rows[:, 20] = 3.0, 7.5
    assert_matches("digits", RUNNERS[format](path, features), run.predict_proba(rows))
    assert json.loads(sidecar(path).read_text())["inside_the_graph"][0] == "missing-value filling"


# --- what is refused --------------------------------------------------------------------------------
@pytest.mark.slow
def test_an_existing_file_is_replaced_only_with_overwrite(trained, tmp_path):
    run = trained("digits")
    path = tmp_path / "model.pt"
    path.write_bytes(b"keep")
    with pytest.raises(ConfigError, match="overwrite=true"):
        export(run.dir, "torchscript", path)
    assert path.read_bytes() == b"keep" and not sidecar(path).exists()
    assert export(run.dir, "torchscript", path, overwrite=True) == path
    features, expected = inputs_and_expected("digits", run, 5, {})
    assert_matches("digits", run_torchscript(path, features), expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "model.pt.json"]  # no temporary left


@pytest.mark.slow
def test_the_runs_own_files_are_never_written(trained):
    run = trained("digits")
    best = run.dir / "checkpoints" / "best.pt"
    before = best.read_bytes()
    with pytest.raises(ConfigError, match="checkpoints/best.pt of the run"):
        export(run.dir, "torchscript", best, overwrite=True)
    assert best.read_bytes() == before


@pytest.mark.slow
def test_onnx_without_its_packages_names_the_install_command(trained, tmp_path, monkeypatch):
    run = trained("digits")
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(ImportError, match=r"onnxscript, not installed: pip install 'mlpkit\[export\]'"):
        export(run.dir, "onnx", tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []


def damaged_copy(run: mlpkit.Run, tmp_path: Path, damage: str) -> Path:
    copy = Path(shutil.copytree(run.dir, tmp_path / "run"))
    shutil.rmtree(copy / "export", ignore_errors=True)
    if damage == "unfinished":
        (copy / "metrics.json").unlink()
    elif damage == "no checkpoint":
        for checkpoint in (copy / "checkpoints").glob("*.pt"):
            checkpoint.unlink()
    return copy


REFUSALS = {  # damage -> (extra overrides, what the line says)
    "unfinished": ((), "expected a finished run directory (it holds metrics.json)"),
    "no checkpoint": ((), "checkpoints/best.pt or checkpoints/last.pt"),
    "existing path": (("path=taken.onnx",), "overwrite=true to replace it"),
    "unknown format": (("format=keras",), "format=keras is not valid: expected onnx or torchscript"),
}


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("damage", list(REFUSALS))
def test_the_command_refuses_in_one_line_and_writes_nothing(trained, tmp_path, damage, monkeypatch, capsys):
    """The command's own work (export_command under exit_on_config_error), in this process; the script
    itself refuses through the same function (test_the_script_refuses_an_unknown_format)."""
    from mlpkit.config import exit_on_config_error
    from mlpkit.export import export_command

    run_dir = damaged_copy(trained("digits"), tmp_path, damage)
    (tmp_path / "taken.onnx").write_bytes(b"keep")
    monkeypatch.chdir(tmp_path)
    before = files_under(tmp_path)
    extra, says = REFUSALS[damage]
    settings = {"format": "onnx", "path": None, **dict(item.split("=", 1) for item in extra)}
    with pytest.raises(SystemExit) as stopped:
        exit_on_config_error(export_command, str(run_dir), settings["format"], settings["path"], "auto", False)
    err = capsys.readouterr().err
    assert stopped.value.code == 2
    assert err.startswith("Config error: ") and err.count("\n") == 1, err
    assert says in err
    assert files_under(tmp_path) == before


@pytest.mark.slow
def test_the_script_refuses_an_unknown_format(trained, tmp_path):
    run_dir = damaged_copy(trained("digits"), tmp_path, "none")
    before = files_under(tmp_path)
    done = script("export", f"run={run_dir}", "format=keras", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("Config error: ") and done.stderr.count("\n") == 1, done.stderr
    assert "format=keras is not valid: expected onnx or torchscript" in done.stderr
    assert files_under(tmp_path) == before


@pytest.mark.slow
def test_the_command_without_onnx_names_the_install_command(trained, tmp_path):
    run_dir = damaged_copy(trained("digits"), tmp_path, "none")
    code = (f"import sys; sys.modules['onnx'] = None; sys.argv = ['export', 'run={run_dir}', 'format=onnx']; "
            "from mlpkit.export import export_main; export_main()")
    done = python_c(code)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert f"ONNX export needs onnx, not installed: {INSTALL_EXPORT}" in done.stderr
    assert not (run_dir / "export").exists()


@pytest.mark.slow
def test_the_command_writes_the_file_and_says_where(trained, tmp_path):
    run_dir = damaged_copy(trained("diabetes"), tmp_path, "none")
    done = script("export", f"run={run_dir}", "format=torchscript", "path=out/", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"wrote {Path('out') / 'model.pt'} (torchscript, ")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.pt", "model.pt.json"]


@pytest.mark.slow
def test_importing_the_module_imports_no_onnx_package():
    done = python_c("import sys, mlpkit.export; "
                    "print([m for m in ('onnx', 'onnxruntime', 'onnxscript') if m in sys.modules])")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# --- every model a run can train exports ------------------------------------------------------------
# the families an exporter treats differently (rrelu: swapped for its eval-mode leaky slope; prelu: a weight)
MODELS = [*({"activation": name} for name in ("relu", "prelu", "rrelu", "gelu", "mish", "selu", "hardtanh")),
          {"activation": "relu", "norm": "batch", "residual": True, "dropout": 0.2},
          {"activation": "gelu", "norm": "layer", "residual": True}]


@pytest.mark.slow  # the ONNX exporter takes seconds a model
@pytest.mark.parametrize("settings", MODELS, ids=lambda settings: "-".join(map(str, settings.values())))
def test_every_activation_and_layer_exports(settings, tmp_path):
    import torch

    from mlpkit.export import ExportedModel, write_onnx, write_torchscript
    from mlpkit.model import build_model

    torch.manual_seed(0)
    settings = dict(settings)
    model = build_model(6, 3, [8, 8], settings.pop("activation"), {}, "softmax", **settings).eval()
    for module in model.modules():  # running statistics a trained batch norm would have
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.normal_(), module.running_var.uniform_(0.5, 2.0)
    preprocessing = {"feature_mean": [1e3, -2.0, 0.0, 5.0, 1.0, 0.5], "feature_std": [10.0, 1.0, 2.0, 0.5, 3.0, 1.0]}
    rows = (np.random.default_rng(0).normal(size=(50, 6)) * 5 + [1e3, 0, 0, 0, 0, 0]).astype(np.float32)
    standardized = (rows - np.asarray(preprocessing["feature_mean"])) / preprocessing["feature_std"]
    with torch.no_grad():
        expected = model(torch.from_numpy(standardized.astype(np.float32))).numpy()
    exported = ExportedModel(model, "softmax", preprocessing)
    write_onnx(exported, torch.from_numpy(rows[:3]), tmp_path / "model.onnx", {"output": {"name": "probabilities"}})
    write_torchscript(exported, torch.from_numpy(rows[:3]), tmp_path / "model.pt", {})
    for format, runner in RUNNERS.items():
        got = runner(tmp_path / f"model{FORMATS[format]}", rows)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6, err_msg=format)


@pytest.mark.slow
def test_the_readme_onnxruntime_example_runs(tmp_path, monkeypatch, capsys):
    """README's "Export" section: its python block runs on the run its bash block trains and exports."""
    import re

    from tests.conftest import IRIS, ROOT

    text = (ROOT / "README.md").read_text()
    if "\n## Export" not in text:
        pytest.skip("README has no Export section yet")
    section = text[text.index("\n## Export"):]
    section = section[:section.find("\n## ", 1) if "\n## " in section[1:] else len(section)]
    example = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(example.strip().splitlines()) <= 5
    run = mlpkit.train(["data=csv", f"data.path={IRIS}", "data.target=species", *TINY],
                       run_dir=tmp_path / "outputs" / "iris")
    export(run.dir, "onnx")
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "README.md", "exec"), {})
    label = run.predict(np.array([[5.1, 3.5, 1.4, 0.2]]))[0]
    assert capsys.readouterr().out.startswith(str(label))
