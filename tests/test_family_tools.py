"""The tools that start from a saved folder handle every registered TriLevel family (`FAMILY_CLASSES`, so a family
added later is covered too): `hf-trilevel card` tells the family's FLOPs and class, `hf-trilevel export onnx` writes a
graph that computes the family classifier's logits, `hf-trilevel slim` cuts pruned units and keeps the family and its
logits; a plain transformers folder of a family is refused by name where a TriLevel one is needed."""

import json
import re
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from PIL import Image
from transformers import ViTImageProcessorPil, pipeline

from hf_trilevel.cli import main
from hf_trilevel.evaluation.flops import dense_config, forward_flops
from hf_trilevel.evaluation.formatting import format_flops
from hf_trilevel.model_card.folder import folder_config
from hf_trilevel.modeling import FAMILY_CLASSES, FamilyClasses
from hf_trilevel.weight_sparsity.structured_units import apply_unit_masks, unit_layers, zero_output_sides

from .helpers import images

FAMILIES = list(FAMILY_CLASSES.values())
# Both MLP fields: ViT-like configs read `intermediate_size`, DINOv2 derives it from `mlp_ratio` (and refuses another).
SHAPE = {
    "hidden_size": 32,
    "num_hidden_layers": 4,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "mlp_ratio": 2,
    "image_size": 32,
    "patch_size": 4,
    "num_labels": 5,
}
SETTINGS = {"token_keep_rate": 0.7, "token_prune_layers": [1, 2]}


def family_model(family: FamilyClasses, **settings) -> torch.nn.Module:
    torch.manual_seed(0)
    return family.classifier_class(family.config_class(**SHAPE, **SETTINGS, **settings)).eval()


def save_folder(model: torch.nn.Module, folder: Path) -> Path:
    model.save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def table_value(card: str, label: str) -> str:
    """The value cell of the card's table row whose label starts with `label`."""
    rows = [line for line in card.splitlines() if line.startswith(f"| {label}")]
    assert len(rows) == 1, f"{label!r}: {rows}"
    return rows[0].rsplit("|", 2)[1].strip()


@pytest.fixture(scope="module", params=FAMILIES, ids=lambda family: family.name)
def saved(request, tmp_path_factory) -> tuple[FamilyClasses, Path]:
    family = request.param
    return family, save_folder(family_model(family), tmp_path_factory.mktemp(family.name) / "model")


def test_card_counts_the_familys_flops_and_its_usage_loads_the_familys_class(saved, tmp_path):
    family, folder = saved
    assert main(["card", str(folder), "--output", str(tmp_path / "README.md")]) == 0
    card = (tmp_path / "README.md").read_text()
    config = folder_config(folder)
    assert type(config) is family.config_class
    assert forward_flops(config) == forward_flops(family_model(family).config)

    assert table_value(card, "forward FLOPs per image (this setting") == format_flops(forward_flops(config))
    assert table_value(card, "forward FLOPs per image, dense") == format_flops(forward_flops(dense_config(config)))
    # The snippet's Auto class loads, through the saved auto_map, the class the card names: the family's classifier.
    classifier = family.classifier_class.__name__
    assert f"AutoModelForImageClassification loads this repository's {classifier})" in card
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForImageClassification"].endswith(f".{classifier}")
    for code_file in re.search(r"the model's own code \((.*?) and the", card).group(1).split(", "):
        assert (folder / code_file.strip("`")).is_file()  # the files the card says the repository carries

    assert ("no class token" in table_value(card, "input")) == (config.num_prefix_tokens == 0)
    if config.num_prefix_tokens == 0:  # nothing ranks or keeps by a token the family does not have
        assert "class token's" not in card and "class-token" not in card


def test_image_classification_pipeline_runs_the_familys_sparse_classifier(saved):
    family, folder = saved
    image = Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype("uint8"))
    classify = pipeline("image-classification", model=str(folder), trust_remote_code=True, top_k=None)
    assert type(classify.model) is family.classifier_class
    model = family.classifier_class.from_pretrained(folder).eval()
    assert model.config.token_keep_rate < 1.0  # the pipeline runs the sparse model the folder holds
    pixel_values = classify.image_processor(images=image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = model(pixel_values).logits.softmax(-1)[0]
    scores = {entry["label"]: entry["score"] for entry in classify(image)}
    for index, label in model.config.id2label.items():
        assert scores[label] == pytest.approx(expected[int(index)].item(), abs=1e-6)


def test_export_onnx_writes_a_graph_that_computes_the_family_classifiers_logits(saved, tmp_path, capsys):
    family, folder = saved
    out = tmp_path / "onnx"
    assert main(["export", "onnx", str(folder), str(out)]) == 0
    assert "onnxruntime (CPU) matches PyTorch's logits within" in capsys.readouterr().out
    assert {path.name for path in out.iterdir()} >= {"model.onnx", "config.json", "preprocessor_config.json"}
    # The command checked the graph against the model it loaded; this checks it loaded the family's classifier.
    pixel_values = images(3)
    with torch.no_grad():
        expected = family.classifier_class.from_pretrained(folder).eval()(pixel_values).logits.numpy()
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"pixel_values": pixel_values.numpy()})
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda family: family.name)
def test_slim_cuts_the_zeroed_heads_and_neurons_and_keeps_the_family_and_its_logits(family, tmp_path, capsys):
    model = family_model(family)
    with torch.no_grad():  # head 1 of every layer and every other neuron pruned, as structured sparsity leaves them
        for layer in unit_layers(model):
            heads, neurons = torch.tensor([True, False]), torch.arange(layer.num_neurons) % 2 == 0
            apply_unit_masks(layer, heads, neurons)
            zero_output_sides(layer, heads, neurons)
    in_dir, out_dir = save_folder(model, tmp_path / "pruned"), tmp_path / "slim"
    assert main(["slim", str(in_dir), str(out_dir)]) == 0
    assert f"wrote {out_dir}" in capsys.readouterr().out

    config = json.loads((out_dir / "config.json").read_text())
    assert config["model_type"] == family.config_class.model_type
    assert config["num_attention_heads_per_layer"] == [1] * 4 and config["intermediate_size_per_layer"] == [32] * 4
    slimmed = family.classifier_class.from_pretrained(out_dir).eval()
    assert slimmed.num_parameters() < model.num_parameters()
    with torch.no_grad():
        torch.testing.assert_close(slimmed(images(3)).logits, model(images(3)).logits, rtol=1e-5, atol=1e-5)
    card = (out_dir / "README.md").read_text()
    assert table_value(card, "forward FLOPs per image (this setting") == format_flops(forward_flops(slimmed.config))
    assert (out_dir / "preprocessor_config.json").is_file()


PLAIN_TYPES = [(family, plain) for family in FAMILIES for plain in family.plain_model_types]


@pytest.mark.parametrize(("family", "plain"), PLAIN_TYPES, ids=[plain for _, plain in PLAIN_TYPES])
@pytest.mark.parametrize("command", [["export", "onnx"], ["slim"]], ids=["export", "slim"])
def test_a_plain_folder_of_a_family_is_refused_naming_the_familys_trilevel_class(
    family, plain, command, tmp_path, capsys
):
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": plain}))
    with pytest.raises(SystemExit) as exit_info:
        main([*command, str(folder), str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert (
        f"holds a {plain!r} config, not a TriLevel one ('{family.config_class.model_type}'); load it with "
        f"hf_trilevel.{family.classifier_class.__name__}.from_pretrained and save it first"
    ) in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_folder_of_no_family_is_refused_by_every_tool_naming_the_families(tmp_path, capsys):
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    for command in (
        ["export", "onnx", str(folder), str(tmp_path / "out")],
        ["slim", str(folder), str(tmp_path / "out")],
    ):
        with pytest.raises(SystemExit):
            main(command)
        assert f"holds a 'bert' config, not a TriLevel one (one of {', '.join(map(repr, FAMILY_CLASSES))})" in (
            capsys.readouterr().err
        )
    with pytest.raises(SystemExit):
        main(["card", str(folder)])
    assert "holds a 'bert' model, not an image classifier's config; cards are written for the TriLevel families" in (
        capsys.readouterr().err
    )
