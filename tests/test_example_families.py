"""`examples/run_image_classification.py` for every TriLevel family in `hf_trilevel.modeling.FAMILY_CLASSES`: one short
epoch on the digits from scratch (`--model_family`) and from a folder saved by the family's plain transformers class,
and the refusals (a model type no family has, `--model_family` against a folder of another family, a DINOv2 MLP width
its `mlp_ratio` cannot give). Parametrized over the registry, so a new family is tested as soon as it is registered;
its plain-folder run needs an entry in `PLAIN_CLASSES`, and is skipped until it has one."""

import json
import math

import pytest
import torch
from transformers import (
    BertConfig,
    CLIPConfig,
    CLIPForImageClassification,
    DeiTConfig,
    DeiTForImageClassificationWithTeacher,
    Dinov2Config,
    Dinov2ForImageClassification,
    PretrainedConfig,
    PreTrainedModel,
    SiglipConfig,
    SiglipForImageClassification,
    ViTConfig,
    ViTForImageClassification,
)

from hf_trilevel.modeling import FAMILY_CLASSES, FamilyClasses
from hf_trilevel.recipe.model import scratch_fields
from hf_trilevel.recipe.slimmed_folder import SLIMMED_MODEL_TYPES

from .helpers import assert_usage_error_before_the_data
from .test_example import load_example

FAMILIES = list(FAMILY_CLASSES.values())
FAMILY_NAMES = [family.name for family in FAMILIES]
SHAPE = {
    "image_size": 16, "patch_size": 4, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
    "intermediate_size": 64,
}  # fmt: skip
SHAPE_FLAGS = [text for name, value in SHAPE.items() for text in (f"--{name}", str(value))]
SHORT_RUN = [
    "--num_train_epochs", "1", "--max_train_samples", "32", "--max_eval_samples", "16",
    "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "16", "--disable_tqdm", "True",
]  # fmt: skip
# Each family's plain transformers image classifier, its config and the config fields giving SHAPE's MLP width.
PLAIN_CLASSES = {
    "vit": (ViTForImageClassification, ViTConfig, {"intermediate_size": 64}),
    "deit-distilled": (DeiTForImageClassificationWithTeacher, DeiTConfig, {"intermediate_size": 64}),
    "dinov2": (Dinov2ForImageClassification, Dinov2Config, {"mlp_ratio": 2}),
    # transformers' CLIP and SigLIP classifiers take the image-text config, whose vision config holds the shape.
    "clip": (CLIPForImageClassification, lambda **fields: image_text_config(CLIPConfig, **fields), {}),
    "siglip": (SiglipForImageClassification, lambda **fields: image_text_config(SiglipConfig, **fields), {}),
}
PLAIN_LABELS = 5  # the digits have 10: the run trains new classifier heads (`--ignore_mismatched_sizes`)


@pytest.fixture(scope="module")
def example():
    return load_example()


def image_text_config(config_class: type, num_labels: int, **vision) -> PretrainedConfig:
    """An image-text config (CLIP's, SigLIP's) with `vision` as its vision config and the labels at the top."""
    return config_class(
        vision_config={**vision, "intermediate_size": SHAPE["intermediate_size"]}, num_labels=num_labels
    )


def family_id(family: FamilyClasses) -> str:
    return family.name


def plain_folder(family: FamilyClasses, folder) -> PreTrainedModel:
    """Save a tiny model of `family`'s plain transformers class into `folder` (skip when the test maps none)."""
    if family.name not in PLAIN_CLASSES:
        pytest.skip(f"no plain transformers class mapped for family {family.name!r} in PLAIN_CLASSES")
    model_class, config_class, mlp_width = PLAIN_CLASSES[family.name]
    shape = {name: value for name, value in SHAPE.items() if name != "intermediate_size"}
    torch.manual_seed(0)
    model = model_class(config_class(**shape, **mlp_width, num_labels=PLAIN_LABELS))
    model.save_pretrained(folder)
    return model


def trilevel_folder(family: FamilyClasses, folder) -> None:
    """Save a tiny model of `family`'s TriLevel classifier into `folder` (any registered family)."""
    config = family.config_class(**scratch_fields(family, SHAPE), num_labels=PLAIN_LABELS)
    family.classifier_class(config).save_pretrained(folder)


def check_run(family: FamilyClasses, output_dir, metrics: dict[str, float]) -> PreTrainedModel:
    """The saved folder loads with the family's TriLevel classifier, its config is the family's TriLevel type with the
    digits' labels, and the run's losses and accuracy are finite numbers."""
    model = family.classifier_class.from_pretrained(output_dir)
    assert type(model) is family.classifier_class
    assert model.config.model_type == family.config_class.model_type
    assert model.config.num_labels == 10
    for name in ("train_loss", "eval_loss", "eval_accuracy"):
        assert name in metrics and math.isfinite(metrics[name]), (name, metrics)
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    assert (output_dir / "all_results.json").is_file()
    return model


@pytest.mark.parametrize("family", FAMILIES, ids=family_id)
def test_every_family_trains_from_scratch_with_model_family(family, example, tmp_path):
    output_dir = tmp_path / "out"
    trainer, metrics = example.main(["--model_family", family.name, *SHAPE_FLAGS, *SHORT_RUN, "--output_dir",
                                     str(output_dir)])  # fmt: skip
    assert type(trainer.model) is family.classifier_class
    model = check_run(family, output_dir, metrics)
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (SHAPE["hidden_size"], 2)
    assert model.config.intermediate_size == SHAPE["intermediate_size"]  # DINOv2's through mlp_ratio 2
    assert model.config.token_keep_rate == 0.7  # the scratch shape's sparsity


@pytest.mark.parametrize("family", FAMILIES, ids=family_id)
def test_every_family_fine_tunes_a_folder_of_its_plain_transformers_class(family, example, tmp_path):
    plain_folder(family, tmp_path / "plain")
    output_dir = tmp_path / "out"
    # Learning rate 0: the saved backbone must be the plain folder's, converted, not a new random one.
    trainer, metrics = example.main(["--model_name_or_path", str(tmp_path / "plain"), "--ignore_mismatched_sizes",
                                     "True", "--learning_rate", "0", "--warmup_steps", "0", *SHORT_RUN,
                                     "--output_dir", str(output_dir)])  # fmt: skip
    assert type(trainer.model) is family.classifier_class
    model = check_run(family, output_dir, metrics)
    converted = family.classifier_class.from_pretrained(
        tmp_path / "plain", num_labels=10, ignore_mismatched_sizes=True
    ).state_dict()
    prefix = f"{model.base_model_prefix}."
    backbone = {name: tensor for name, tensor in model.state_dict().items() if name.startswith(prefix)}
    assert backbone and set(backbone) <= set(converted)
    for name, tensor in backbone.items():
        torch.testing.assert_close(tensor, converted[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("family", FAMILIES, ids=family_id)
def test_a_config_name_of_a_family_builds_that_family(family, example, tmp_path):
    trilevel_folder(family, tmp_path / "config")
    trainer, metrics = example.main(["--config_name", str(tmp_path / "config"), *SHORT_RUN, "--output_dir",
                                     str(tmp_path / "out")])  # fmt: skip
    assert type(trainer.model) is family.classifier_class
    check_run(family, tmp_path / "out", metrics)


def test_a_model_type_of_no_family_is_refused_listing_the_accepted_types(example, tmp_path, capsys):
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(
        tmp_path / "bert"
    )
    for argument in ("model_name_or_path", "config_name"):
        argv = [f"--{argument}", str(tmp_path / "bert")]
        assert_usage_error_before_the_data(example, argv, f"`{argument}` '{tmp_path / 'bert'}' is a 'bert' model",
                                           tmp_path, capsys)  # fmt: skip
    with pytest.raises(SystemExit):
        example.main(["--model_name_or_path", str(tmp_path / "bert"), "--output_dir", str(tmp_path / "out")])
    error = capsys.readouterr().err
    for family in FAMILIES:
        assert all(repr(model_type) in error for model_type in family.model_types), family.name


def test_an_unknown_model_family_is_refused_listing_the_families(example, tmp_path, capsys):
    message = f"`model_family` must be one of {', '.join(FAMILY_NAMES)}; got 'resnet'"
    assert_usage_error_before_the_data(example, ["--model_family", "resnet"], message, tmp_path, capsys)


@pytest.mark.parametrize("family", FAMILIES, ids=family_id)
def test_model_family_with_a_folder_of_another_family_is_refused_naming_both(family, example, tmp_path, capsys):
    other = next(found for found in FAMILIES if found is not family)
    trilevel_folder(family, tmp_path / "model")
    argv = ["--model_name_or_path", str(tmp_path / "model"), "--model_family", other.name]
    message = f"is a {family.name} model but `model_family` {other.name!r} a {other.name} one"
    assert_usage_error_before_the_data(example, argv, message, tmp_path, capsys)


@pytest.mark.parametrize("family", FAMILIES, ids=family_id)
def test_model_family_naming_the_folders_family_is_accepted(family, example, tmp_path, capsys):
    trilevel_folder(family, tmp_path / "model")
    argv = ["--model_name_or_path", str(tmp_path / "model"), "--model_family", family.name]
    with pytest.raises(SystemExit) as raised:  # stopped by the missing data, after every model check passed
        example.main([*argv, "--train_dir", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "out")])
    assert raised.value.code == 2
    assert "`train_dir`" in capsys.readouterr().err


def test_a_config_of_another_family_than_the_checkpoint_is_refused(example, tmp_path, capsys):
    first, second = FAMILIES[:2]
    trilevel_folder(first, tmp_path / "weights")
    trilevel_folder(second, tmp_path / "config")
    argv = ["--model_name_or_path", str(tmp_path / "weights"), "--config_name", str(tmp_path / "config")]
    message = f"is a {second.name} model but `model_name_or_path` '{tmp_path / 'weights'}'"
    assert_usage_error_before_the_data(example, argv, message, tmp_path, capsys)


@pytest.mark.parametrize("family", FAMILIES, ids=family_id)
def test_a_slimmed_folder_whose_config_lost_its_layer_sizes_is_refused_with_the_weights_sizes(
    family, example, tmp_path, capsys
):
    sizes = {"num_attention_heads_per_layer": [1, 2], "intermediate_size_per_layer": [32, 64]}
    config = family.config_class(**scratch_fields(family, SHAPE), **sizes)
    family.classifier_class(config).save_pretrained(tmp_path / "slimmed")
    saved = json.loads((tmp_path / "slimmed" / "config.json").read_text())
    (tmp_path / "slimmed" / "config.json").write_text(json.dumps({k: v for k, v in saved.items() if k not in sizes}))
    found = ", ".join(f'"{name}": {value}' for name, value in sizes.items())
    message = "the config has no per-layer sizes (`num_attention_heads_per_layer` and `intermediate_size_per_layer`)"
    message += f". The weights' sizes, to put in config.json: {found}."
    argv = ["--model_name_or_path", str(tmp_path / "slimmed")]
    assert_usage_error_before_the_data(example, argv, message, tmp_path, capsys)


def test_dinov2_from_scratch_refuses_an_mlp_width_its_ratio_cannot_give(example, tmp_path, capsys):
    if "dinov2" not in FAMILY_NAMES:
        pytest.skip("no dinov2 family registered")
    argv = ["--model_family", "dinov2", "--hidden_size", "32", "--intermediate_size", "48"]
    message = "`intermediate_size` (48) must be a whole multiple of `hidden_size` (32)"
    assert_usage_error_before_the_data(example, argv, message, tmp_path, capsys)


@pytest.mark.parametrize(
    "family",
    [family for family in FAMILIES if family.config_class.model_type not in SLIMMED_MODEL_TYPES],
    ids=family_id,
)
def test_a_slimmed_copy_of_a_family_slimming_cannot_save_is_refused_before_training(family, example, tmp_path, capsys):
    argv = ["--model_family", family.name, "--weight_sparsity", "structured", "--slim_output_dir",
            str(tmp_path / "slim")]  # fmt: skip
    slimmed = ", ".join(map(repr, SLIMMED_MODEL_TYPES))
    message = f"`slim_output_dir` saves slimmed copies of {slimmed} models only so far; this run's model is a "
    message += repr(family.config_class.model_type)
    assert_usage_error_before_the_data(example, argv, message, tmp_path, capsys)
