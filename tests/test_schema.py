"""The groups' structured configs (mlpkit/schema.py): the YAML files show what the schema holds, a
composed config is the schema's, and a run saved before a key existed reads with that key's default."""
import pytest
import yaml
from omegaconf import OmegaConf

from mlpkit import schema
from mlpkit.config import CONSTRAINTS, validate
from mlpkit.errors import ConfigError
from mlpkit.model import model_from_config
from tests.conftest import CONFIG_DIR, compose_config

FILES = [(group, path.stem, schema_class) for group, schema_class in schema.GROUPS.items()
         for path in sorted((CONFIG_DIR / group).glob("*.yaml"))]
FILES += [(group, choice, schema_class) for group, choices in schema.CHOICES.items()
          for choice, schema_class in choices.items()]


def yaml_of(group: str, choice: str) -> dict:
    return yaml.safe_load((CONFIG_DIR / group / f"{choice}.yaml").read_text())


@pytest.mark.parametrize("group, choice, schema_class", FILES, ids=[f"{g}/{c}" for g, c, _ in FILES])
def test_each_yaml_file_extends_its_schema_and_repeats_its_keys_and_defaults_in_order(group, choice, schema_class):
    content = yaml_of(group, choice)
    assert content.pop("defaults") == [f"/{schema.schema_name(group, choice if group in schema.CHOICES else None)}"
                                       "@_here_", "_self_"]
    assert list(content.items()) == list(schema.defaults(schema_class).items())


@pytest.mark.parametrize("group, choice, schema_class", FILES, ids=[f"{g}/{c}" for g, c, _ in FILES])
def test_a_composed_group_is_its_schema_with_the_yaml_values(group, choice, schema_class):
    cfg = compose_config(f"{group}={choice}")
    assert OmegaConf.get_type(cfg[group]) is schema_class
    assert OmegaConf.to_container(cfg[group]) == schema.defaults(schema_class)


@pytest.mark.parametrize("key, registry", [("loss.name", schema.LOSSES), ("scheduler.name", schema.SCHEDULERS),
                                           ("head.name", schema.HEADS)])
def test_the_choices_checked_are_the_config_files(key, registry):
    group = key.split(".")[0]
    names = {yaml.safe_load(path.read_text())["name"] for path in (CONFIG_DIR / group).glob("*.yaml")}
    assert names == set(registry)
    assert all(CONSTRAINTS[key].test(name) for name in names) and not CONSTRAINTS[key].test("nope")


def old_run_config() -> dict:
    """A run saved before the remedies, the scheduler and the statistics cadence existed."""
    config = OmegaConf.to_container(compose_config("loss=ce", "trainer.max_epochs=3", "model.hidden_sizes=[8]"))
    for group, keys in {"trainer": ("gradient_clip_val", "gradient_clip_algorithm", "overfit_batches",
                                    "early_stopping", "fast_dev_run", "callbacks"),
                        "model": ("norm", "residual", "bias"), "loss": ("label_smoothing", "class_weights"),
                        "diagnostics": ("statistics_every",)}.items():
        for key in keys:
            del config[group][key]
    del config["scheduler"]
    return config


def test_with_defaults_gives_an_old_run_the_keys_it_lacks_and_keeps_what_it_has():
    saved = old_run_config()
    filled = schema.with_defaults(saved)
    assert filled.trainer.gradient_clip_val == 0 and filled.trainer.gradient_clip_algorithm == "norm"
    assert filled.trainer.overfit_batches == 0 and filled.trainer.fast_dev_run is False
    assert OmegaConf.to_container(filled.trainer.early_stopping) == {"patience": 0, "min_delta": 0.0}
    assert filled.trainer.callbacks == []
    assert (filled.model.norm, filled.model.residual, filled.model.bias) == ("none", False, True)
    assert filled.loss.label_smoothing == 0.0 and filled.loss.class_weights == "none"
    assert filled.diagnostics.statistics_every == "auto"
    assert OmegaConf.to_container(filled.scheduler) == {"name": "none", "warmup_steps": 0}
    # what it saved stays as it was, and nothing else changed
    assert filled.trainer.max_epochs == 3 and list(filled.model.hidden_sizes) == [8]
    assert OmegaConf.to_container(schema.with_defaults(filled)) == OmegaConf.to_container(filled)
    validate(filled)


def test_with_defaults_fills_an_old_run_exactly_as_a_new_run_composes():
    new = OmegaConf.to_container(compose_config("loss=ce", "trainer.max_epochs=3", "model.hidden_sizes=[8]"))
    assert OmegaConf.to_container(schema.with_defaults(old_run_config())) == new


def test_a_model_saved_before_norm_residual_and_bias_builds_as_it_trained():
    saved = OmegaConf.create(old_run_config())
    model = model_from_config(saved, 64, 10, "softmax")
    assert [name for name, _ in model.named_children()] == ["linear1", "act1", "linear2", "head"]
    assert model.linear1.bias is not None and model.residual_note == ""


def test_a_model_whose_keys_are_interpolations_builds():
    # experiment=remedies takes model.norm from ${variants.${variant}.norm}, outside the model group
    model = model_from_config(compose_config("experiment=remedies", "variant=batchnorm"), 64, 10, "softmax")
    assert "norm8" in dict(model.named_children())


def test_with_defaults_leaves_what_it_cannot_place_for_validate_to_name():
    saved = old_run_config()
    saved["loss"] = {"name": "hinge"}
    del saved["model"]
    filled = schema.with_defaults(saved)
    assert OmegaConf.to_container(filled.loss) == {"name": "hinge"}  # no schema to fill it from
    assert "model" not in filled  # a run always had a model group: not made up
    with pytest.raises(ConfigError, match=r"^model.hidden_sizes is missing"):
        validate(filled)


def test_a_single_value_for_a_group_of_keys_says_which_keys():
    from tests.conftest import hydra_error

    assert hydra_error("trainer.early_stopping=5") == (
        "trainer.early_stopping=5 is not valid: expected a value for each of its keys: "
        "trainer.early_stopping.patience, trainer.early_stopping.min_delta, e.g. trainer.early_stopping.patience=1")
