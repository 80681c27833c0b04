"""Saved folders are self-contained: safetensors weights, config with auto_map, and the code that defines the model."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification, ViTImageProcessorPil

from hf_trilevel import TriLevelViTForImageClassification, TriLevelViTModel
from hf_trilevel.modeling import REMOTE_CODE_FILES

from .helpers import images, run_without_hf_trilevel, sharpen_attention, tiny_model

# Slimmed layers (fewer heads / MLP neurons in some) must survive saving and a clean-process load too.
PER_LAYER = {"num_attention_heads_per_layer": [2, 1, 2, 1], "intermediate_size_per_layer": [64, 32, 48, 16]}


# Each selector's own settings; "learned" gets non-zero scorer outputs so its ranking differs from class attention.
SELECTOR_SETTINGS = {
    "class_attention": {},
    "learned": {"token_selector": "learned"},
    "adaptive": {"token_selector": "adaptive", "token_keep_rate": 0.9, "token_keep_mass": 0.6},
}


def sparse_model(selector: str = "class_attention") -> TriLevelViTForImageClassification:
    settings = {"token_keep_rate": 0.6, **SELECTOR_SETTINGS[selector]}
    model = tiny_model(attention_keep_rate=0.4, token_fusion=True, **PER_LAYER, **settings)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".scorer.output." in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
    if selector == "adaptive":
        sharpen_attention(model)
    model.config.id2label = {i: f"digit-{i}" for i in range(5)}
    model.config.label2id = {v: k for k, v in model.config.id2label.items()}
    return model


def save_sparse_model(folder: Path, selector: str = "class_attention") -> Path:
    sparse_model(selector).save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture
def saved_folder(tmp_path) -> Path:
    return save_sparse_model(tmp_path / "checkpoint")


def test_folder_holds_safetensors_config_with_auto_map_and_the_code(saved_folder):
    files = {path.name for path in saved_folder.iterdir()}
    assert files >= set(REMOTE_CODE_FILES)
    assert "model.safetensors" in files and not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)
    config = json.loads((saved_folder / "config.json").read_text())
    assert config["model_type"] == "trilevel_vit"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_trilevel_vit.TriLevelViTConfig",
        "AutoModel": "modeling_trilevel_vit.TriLevelViTModel",
        "AutoModelForImageClassification": "modeling_trilevel_vit.TriLevelViTForImageClassification",
    }
    assert (config["token_keep_rate"], config["attention_keep_rate"], config["token_fusion"]) == (0.6, 0.4, True)


def test_saved_weights_use_vit_v4_names_and_a_plain_load_state_dict_restores_them(saved_folder):
    # transformers' own ViT writes its v4 names; Trainer(resume_from_checkpoint=...) loads model.safetensors with a
    # plain load_state_dict, which our pre-hook renames back to the in-memory names.
    saved = load_file(saved_folder / "model.safetensors")
    assert "vit.encoder.layer.0.attention.attention.query.weight" in saved
    assert not any(".layers." in key or "q_proj" in key for key in saved)
    torch.manual_seed(1)
    model = type(sparse_model())(sparse_model().config)
    model.load_state_dict(saved, strict=True)
    for name, tensor in sparse_model().state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, rtol=0, atol=0, msg=name)


def test_round_trip_gives_identical_logits_and_settings(saved_folder):
    original = sparse_model()
    loaded = AutoModelForImageClassification.from_pretrained(saved_folder).eval()
    assert isinstance(loaded, TriLevelViTForImageClassification)
    assert loaded.config.id2label[3] == "digit-3"
    with torch.no_grad():
        torch.testing.assert_close(loaded(images(2)).logits, original(images(2)).logits, rtol=0, atol=0)


def test_base_model_loads_from_a_head_checkpoint(saved_folder):
    base = AutoModel.from_pretrained(saved_folder)
    assert isinstance(base, TriLevelViTModel)
    torch.testing.assert_close(base.embeddings.cls_token, sparse_model().vit.embeddings.cls_token, rtol=0, atol=0)


# Run after `helpers.WITHOUT_HF_TRILEVEL`: what a user of a pushed checkpoint does with transformers alone.
LOAD_CHECKPOINT_SCRIPT = """
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForImageClassification, pipeline

folder, work = sys.argv[1], sys.argv[2]
pixel_values = load_file(f"{work}/inputs.safetensors")["pixel_values"]
head = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
base = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
with torch.no_grad():
    logits = head(pixel_values).logits
    hidden = base(pixel_values).last_hidden_state
save_file({"logits": logits, "hidden": hidden}, f"{work}/outputs.safetensors")
classifier = pipeline("image-classification", model=folder, trust_remote_code=True)
predictions = classifier(Image.open(f"{work}/digit.png"))
print(json.dumps({
    "head_module": type(head).__module__,
    "base_class": type(base).__name__,
    "heads": [layer.attention.num_attention_heads for layer in head.vit.layers],
    "mlp": [layer.mlp.fc1.out_features for layer in head.vit.layers],
    "labels": [p["label"] for p in predictions],
    "loaded_modules": sorted(m for m in sys.modules if m.startswith("hf_trilevel")),
}))
"""


@pytest.mark.parametrize("selector", list(SELECTOR_SETTINGS))
def test_checkpoint_loads_in_a_clean_process_without_the_package(selector, tmp_path):
    saved_folder = save_sparse_model(tmp_path / "checkpoint", selector)
    work = tmp_path / "elsewhere"
    work.mkdir()
    pixel_values = images(2)
    save_file({"pixel_values": pixel_values}, work / "inputs.safetensors")
    Image.fromarray((torch.rand(20, 24, 3) * 255).byte().numpy()).save(work / "digit.png")

    report = run_without_hf_trilevel(LOAD_CHECKPOINT_SCRIPT, saved_folder, work, tmp_path)
    assert report["head_module"].startswith("transformers_modules.")
    assert report["base_class"] == "TriLevelViTModel"
    assert report["heads"] == PER_LAYER["num_attention_heads_per_layer"]
    assert report["mlp"] == PER_LAYER["intermediate_size_per_layer"]
    assert report["loaded_modules"] == []
    assert report["labels"] and set(report["labels"]) <= {f"digit-{i}" for i in range(5)}

    outputs = load_file(work / "outputs.safetensors")
    original = sparse_model(selector)
    with torch.no_grad():
        torch.testing.assert_close(outputs["logits"], original(pixel_values).logits, rtol=0, atol=1e-6)
        torch.testing.assert_close(outputs["hidden"], original.vit(pixel_values).last_hidden_state, rtol=0, atol=1e-6)


def test_config_alone_resolves_through_autoconfig(saved_folder):
    assert AutoConfig.from_pretrained(saved_folder).token_prune_layers == [1, 2, 3]
