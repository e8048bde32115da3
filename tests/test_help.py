"""Discovery: the project's own --help page and a comment on every key a user may touch."""
import re

import pytest

from tests.conftest import CONFIG_DIR, ROOT, python_c, run_cli

SELF_EVIDENT = {"_target_", "name", "source", "defaults"}


@pytest.mark.slow
def test_help_lists_every_group_with_its_choices_and_examples(run_dir):
    result = run_cli(run_dir, args=("--help",))
    assert result.returncode == 0
    text = result.stdout
    assert text.startswith("mlpkit: train multilayer perceptrons")
    for group in ("activation", "head", "loss", "data", "optimizer", "experiment", "hparams_search"):
        choices = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
        assert f"{group}: {', '.join(choices)}" in text
    examples = re.findall(r"^\s+python train.py .*$", text, flags=re.M)
    assert len(examples) >= 5


@pytest.mark.slow
def test_cfg_job_prints_the_composed_config(run_dir):
    result = run_cli(run_dir, "activation=tanh", args=("--cfg", "job"))
    assert result.returncode == 0
    assert "activation:\n  name: tanh" in result.stdout


HEAVY = ("torch", "numpy", "matplotlib", "sklearn", "tensorboard", "tqdm")


@pytest.mark.slow
@pytest.mark.parametrize("args", [["--help"], ["--cfg", "job", "activation=tanh"]], ids=" ".join)
def test_help_and_cfg_job_import_no_torch(tmp_path, args):
    """The help page and the composed config come from Hydra alone: train.py run as a script, in a
    fresh interpreter, then the modules it loaded are listed (torch alone takes over a second)."""
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['train.py', *{args!r}, 'hydra.run.dir={tmp_path.as_posix()}/run']\n"
        "try:\n"
        f"    runpy.run_path({str(ROOT / 'train.py')!r}, run_name='__main__')\n"
        "except SystemExit as stop:\n"
        "    assert not stop.code, stop.code\n"
        f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    result = python_c(code)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout, result.stdout[-300:]
    assert ("mlpkit: train multilayer perceptrons" if args == ["--help"] else "name: tanh") in result.stdout
    assert not (tmp_path / "run").exists()  # nothing written


@pytest.mark.parametrize("path", sorted(p for p in CONFIG_DIR.rglob("*.yaml") if p.parts[-2] != "hydra"),
                         ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_every_user_key_has_a_one_line_comment(path):
    missing = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        match = re.match(r"^\s*([\w.]+):\s*(\S.*)?$", line)
        if not match or match.group(1) in SELF_EVIDENT:
            continue
        value = match.group(2)
        if value is not None and not value.startswith("#") and "#" not in value:
            missing.append(f"{number}: {line.strip()}")
    assert not missing, f"{path.name}: keys without a comment: {missing}"
