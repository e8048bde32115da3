"""examples/sklearn_pipeline.ipynb: mlpkit.MLPClassifier in a Pipeline and GridSearchCV on the penguins."""
import os
import re
from pathlib import Path

import pytest

from mlpkit.verdicts import KINDS

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "sklearn_pipeline.ipynb"
EPOCHS_LINE = re.compile(r"^EPOCHS = \d+$", re.M)
TEST_EPOCHS = 3  # the notebook's own default trains 30 epochs per fit
CANDIDATES = 9  # three hidden_sizes times three activations


def code_cells(notebook):
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def output_texts(notebook) -> list[str]:
    """What each code cell printed or displayed, as plain text."""
    texts = []
    for cell in code_cells(notebook):
        for output in cell.outputs:
            texts.append(output.get("text") or output.get("data", {}).get("text/plain", ""))
    return texts


def test_the_notebook_is_stored_without_outputs():
    nbformat = pytest.importorskip("nbformat", reason="the notebook extra: pip install -e .[notebook]")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    stored = [(cell.execution_count, len(cell.outputs)) for cell in code_cells(notebook)]
    assert stored == [(None, 0)] * len(stored)
    assert EPOCHS_LINE.search(code_cells(notebook)[0].source), "the first code cell sets EPOCHS = <n>"


@pytest.mark.slow
def test_the_sklearn_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    reason = "the notebook extra: pip install -e .[notebook]"
    nbformat = pytest.importorskip("nbformat", reason=reason)
    nbclient = pytest.importorskip("nbclient", reason=reason)
    pytest.importorskip("ipykernel", reason=reason)
    pytest.importorskip("palmerpenguins", reason=reason)

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    first = code_cells(notebook)[0]
    first.source, replaced = EPOCHS_LINE.subn(f"EPOCHS = {TEST_EPOCHS}", first.source)
    assert replaced == 1, "the first code cell sets EPOCHS = <n>"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()

    outputs = [output for cell in code_cells(notebook) for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    text = "\n".join(output_texts(notebook))
    assert re.search(r"best parameters: \{'clf__activation': '\w+', 'clf__hidden_sizes': \([\d, ]+\)\}", text)
    assert re.search(rf"^gradients: (healthy|not judged|{'|'.join(KINDS)})", text, re.M)
    test_accuracy = float(re.search(r"test accuracy: (\S+)", text).group(1))
    assert 0 <= test_accuracy <= 1
    assert f"MLPClassifier(max_epochs={TEST_EPOCHS}, random_state=0)" in text  # the patched EPOCHS trained
    table = output_texts(notebook)[-1]
    header, *rows = table.splitlines()
    assert header.split() == ["hidden_sizes", "activation", "mean", "CV", "accuracy", "gradients"]
    assert len(rows) == CANDIDATES
    assert list(tmp_path.iterdir()) == []  # without log_dir, no fit writes a file
