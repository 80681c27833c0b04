"""CLIP and SigLIP (`TriLevelCLIPVisionModel`, `TriLevelCLIPModel`, `TriLevelSiglipVisionModel`, `TriLevelSiglipModel`
and their image-classification heads): transformers' outputs with sparsity off, the levels on each tower (CLIP ranks
by its class token, SigLIP by the mean query and weighs merged tokens in its attention-pooling head), transformers'
key names on disk both ways, Auto classes, remote code, the zero-shot pipeline, FLOPs, ONNX and training."""

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from torch.utils.flop_counter import FlopCounterMode
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForZeroShotImageClassification,
    CLIPConfig,
    CLIPForImageClassification,
    CLIPModel,
    CLIPVisionModel,
    PreTrainedTokenizerFast,
    SiglipConfig,
    SiglipForImageClassification,
    SiglipModel,
    SiglipVisionModel,
    ViTImageProcessorPil,
)

from hf_trilevel import (
    DenseSparseTraining,
    TriLevelCLIPConfig,
    TriLevelCLIPForImageClassification,
    TriLevelCLIPModel,
    TriLevelCLIPVisionConfig,
    TriLevelCLIPVisionModel,
    TriLevelSiglipConfig,
    TriLevelSiglipForImageClassification,
    TriLevelSiglipModel,
    TriLevelSiglipVisionConfig,
    TriLevelSiglipVisionModel,
    TriLevelTrainer,
)
from hf_trilevel.evaluation.flops import forward_flops
from hf_trilevel.image_data import load_digits_dataset
from hf_trilevel.serving import export_onnx

from .helpers import images, run_without_hf_trilevel

# 32 px, patch 4: 64 patches (and CLIP's class token).
VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4, "num_attention_heads": 2,
          "image_size": 32, "patch_size": 4}  # fmt: skip
TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "vocab_size": 16, "max_position_embeddings": 64, "pad_token_id": 0, "bos_token_id": 2,
        "eos_token_id": 3}  # fmt: skip
PATCHES = 64
WORDS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "a", "photo", "of", "cat", "dog", "car", "This", "is", "."]


@dataclass(frozen=True)
class Family:
    """transformers' classes of a family and their TriLevel twins."""

    prefix: int
    vision_model: type
    image_text_config: type
    image_text_model: type
    classifier: type
    trilevel_vision_config: type
    trilevel_vision_model: type
    trilevel_config: type
    trilevel_model: type
    trilevel_classifier: type


FAMILIES = {
    "clip": Family(1, CLIPVisionModel, CLIPConfig, CLIPModel, CLIPForImageClassification, TriLevelCLIPVisionConfig,
                   TriLevelCLIPVisionModel, TriLevelCLIPConfig, TriLevelCLIPModel, TriLevelCLIPForImageClassification),
    "siglip": Family(0, SiglipVisionModel, SiglipConfig, SiglipModel, SiglipForImageClassification,
                     TriLevelSiglipVisionConfig, TriLevelSiglipVisionModel, TriLevelSiglipConfig, TriLevelSiglipModel,
                     TriLevelSiglipForImageClassification),
}  # fmt: skip


def perturbed(model: torch.nn.Module, seed: int = 3) -> torch.nn.Module:
    """Random offsets on every weight, so a weight the TriLevel class ignored or read wrongly shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return model.eval()


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory) -> tuple[str, Family, Path, Path]:
    """A family, a folder saved by transformers' image-text model and one saved by its image classifier."""
    name, spec = request.param, FAMILIES[request.param]
    torch.manual_seed(0)
    config = spec.image_text_config(vision_config=VISION, text_config=TEXT)
    folder = tmp_path_factory.mktemp(f"{name}_image_text")
    perturbed(spec.image_text_model(config)).save_pretrained(folder)
    classifier_folder = tmp_path_factory.mktemp(f"{name}_classifier")
    classifier_config = spec.image_text_config(vision_config=VISION, text_config=TEXT, num_labels=5)
    perturbed(spec.classifier(classifier_config)).save_pretrained(classifier_folder)
    return name, spec, folder, classifier_folder


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_sparsity_off_computes_transformers_outputs(family, attn_implementation):
    _, spec, folder, classifier_folder = family
    backend = {"attn_implementation": attn_implementation}
    pixel_values, input_ids = images(3), torch.tensor([[2, 4, 5, 6, 7, 3], [2, 4, 5, 6, 8, 3]])
    reference = spec.image_text_model.from_pretrained(folder, **backend).eval()
    model = spec.trilevel_model.from_pretrained(folder, **backend).eval()
    with torch.no_grad():
        expected, got = reference(input_ids, pixel_values), model(input_ids, pixel_values)
    for name in ("logits_per_image", "image_embeds", "text_embeds"):
        assert (getattr(got, name) - getattr(expected, name)).abs().max() < 1e-5, name

    reference = spec.vision_model.from_pretrained(folder, **backend).eval()
    tower = spec.trilevel_vision_model.from_pretrained(folder, **backend).eval()
    with torch.no_grad():
        expected, got = (
            reference(pixel_values, output_hidden_states=True),
            tower(pixel_values, output_hidden_states=True),
        )
    assert (got.last_hidden_state - expected.last_hidden_state).abs().max() < 1e-5
    assert (got.pooler_output - expected.pooler_output).abs().max() < 1e-5
    assert len(got.hidden_states) == len(expected.hidden_states) == 5
    for ours, theirs in zip(got.hidden_states, expected.hidden_states, strict=True):
        assert (ours - theirs).abs().max() < 1e-5
    with torch.no_grad():  # another image size: interpolated position embeddings
        expected = reference(images(2, size=40), interpolate_pos_encoding=True)
        got = tower(images(2, size=40), interpolate_pos_encoding=True)
    assert (got.pooler_output - expected.pooler_output).abs().max() < 1e-5

    reference = spec.classifier.from_pretrained(classifier_folder, **backend).eval()
    classifier = spec.trilevel_classifier.from_pretrained(classifier_folder, **backend).eval()
    with torch.no_grad():
        assert (classifier(pixel_values).logits - reference(pixel_values).logits).abs().max() < 1e-5


def test_token_dropping_ranks_patches_by_the_class_token_or_the_mean_query(family):
    name, spec, folder, _ = family
    reference = spec.vision_model.from_pretrained(folder, attn_implementation="eager").eval()
    tower = spec.trilevel_vision_model.from_pretrained(folder, token_keep_rate=0.5, token_prune_layers=[1, 2]).eval()
    with torch.no_grad():
        dense = reference(images(3), output_hidden_states=True, output_attentions=True)
        out = tower(images(3), output_kept_token_indices=True)
        if name == "clip":  # the class token's attention row, averaged over the heads
            importance = dense.attentions[1][:, :, 0].mean(dim=1)[:, 1:]
        else:  # SigLIP: no class token; the mean query's attention over the keys, averaged over the heads
            layer = reference.encoder.layers[1]
            normed = layer.layer_norm1(dense.hidden_states[1])
            heads = (3, -1, 2, 16)
            query = layer.self_attn.q_proj(normed).view(heads).transpose(1, 2).mean(dim=2, keepdim=True)
            key = layer.self_attn.k_proj(normed).view(heads).transpose(1, 2)
            importance = (query @ key.transpose(-1, -2) * 16**-0.5).softmax(-1).mean(dim=(1, 2))
    expected = importance.topk(32, dim=-1).indices.sort(dim=-1).values
    assert out.kept_token_indices[0].tolist() == expected.tolist()
    assert out.last_hidden_state.shape[1] == spec.prefix + 16


@pytest.mark.parametrize(
    "settings",
    [{"token_merge_r": 3}, {"token_keep_rate": 0.5, "token_fusion": True}, {"token_keep_rate": 0.5}],
    ids=["merging", "dropping_fusion", "dropping"],
)
def test_the_classifier_averages_the_patch_tokens_over_the_original_patches(family, settings):
    _, spec, _, classifier_folder = family
    model = spec.trilevel_classifier.from_pretrained(classifier_folder, **settings).eval()
    with torch.no_grad():
        tower = model.vision_model(images(3), output_token_sources=True)
        logits = model(images(3)).logits
    final, sources, prefix = tower.last_hidden_state, tower.token_sources, spec.prefix
    per_patch = torch.where(
        (sources >= 0)[..., None],
        final.gather(1, (prefix + sources.clamp_min(0))[..., None].expand(-1, -1, final.shape[-1])),
        final[:, -1:].expand(-1, PATCHES, -1),  # a dropped patch counts as the fused token
    )
    if settings.get("token_fusion"):
        expected = per_patch.mean(1)
    else:
        kept = (sources >= 0).float()[..., None]
        expected = (per_patch * kept).sum(1) / kept.sum(1)
    torch.testing.assert_close(tower.patch_token_mean, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits, model.classifier(expected), rtol=1e-5, atol=1e-6)


def test_siglip_pooling_head_counts_a_merged_token_as_the_patches_it_holds(family):
    name, spec, folder, _ = family
    if name != "siglip":
        pytest.skip("CLIP pools its class token")
    head = spec.trilevel_vision_model.from_pretrained(folder).eval().head
    tokens = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(0))
    weights = torch.tensor([[1.0, 2.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0, 3.0]])  # 0: a padded slot
    copies = [torch.cat([tokens[0, :4], tokens[0, 1:2]]), torch.cat([tokens[1], tokens[1, 4:5], tokens[1, 4:5]])]
    with torch.no_grad():
        weighted = head(tokens, weights)
        expected = torch.cat([head(copy[None]) for copy in copies])
    torch.testing.assert_close(weighted, expected, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # one patch per token: the unweighted head
        torch.testing.assert_close(head(tokens, torch.ones(2, 5)), head(tokens), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "settings",
    [
        {"token_selector": "adaptive", "token_keep_rate": 0.9, "token_keep_mass": 0.5, "token_fusion": True},
        {"token_selector": "learned", "token_keep_rate": 0.7},
        {"token_keep_rate": 0.7, "attention_keep_rate": 0.5},
        {"token_keep_rate": 0.8, "token_merge_r": 2},
    ],
    ids=["adaptive_fusion", "learned", "attention_sparsity", "dropping_and_merging"],
)
def test_every_level_runs_on_the_image_text_model(family, settings):
    _, spec, folder, _ = family
    model = spec.trilevel_model.from_pretrained(folder, **settings).eval()
    assert model.config.vision_config.token_keep_rate == settings["token_keep_rate"]
    with torch.no_grad():
        out = model(torch.tensor([[2, 4, 5, 3]]), images(3), output_kept_token_indices=True)
    assert (out.vision_model_output.kept_token_counts[-1] < PATCHES).all()
    assert torch.isfinite(out.logits_per_image).all() and out.logits_per_image.shape == (3, 1)


def test_keep_rates_are_the_vision_towers_and_forwarded_by_the_composite_config(family, tmp_path):
    _, spec, folder, _ = family
    model = spec.trilevel_model.from_pretrained(folder).eval()
    model.set_keep_rates(0.6)
    assert model.config.token_keep_rate == model.vision_model.config.token_keep_rate == 0.6
    with model.keep_rates(token_keep_rate=1.0):
        assert model.config.vision_config.token_keep_rate == 1.0
    assert model.config.token_keep_rate == 0.6
    model.config.token_merge_r = 2
    assert model.vision_model.config.token_merge_r == 2
    with pytest.raises(ValueError, match=r"`token_keep_rate` must be in \(0, 1\]"):
        model.set_keep_rates(1.5)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert "token_keep_rate" not in saved and saved["vision_config"]["token_keep_rate"] == 0.6
    assert saved["model_type"] == spec.trilevel_config.model_type


def test_saved_folders_keep_transformers_key_names_and_load_both_ways(family, tmp_path):
    _, spec, folder, classifier_folder = family
    pixel_values, input_ids = images(2), torch.tensor([[2, 4, 5, 3]])
    model = spec.trilevel_model.from_pretrained(folder, token_keep_rate=0.7).eval()
    model.save_pretrained(tmp_path / "image_text")
    assert set(load_file(tmp_path / "image_text" / "model.safetensors")) == set(load_file(folder / "model.safetensors"))
    back = spec.image_text_model.from_pretrained(tmp_path / "image_text").eval()
    with torch.no_grad(), model.keep_rates(token_keep_rate=1.0):
        torch.testing.assert_close(
            back(input_ids, pixel_values).logits_per_image, model(input_ids, pixel_values).logits_per_image
        )
    auto = AutoModelForZeroShotImageClassification.from_pretrained(tmp_path / "image_text")
    assert type(auto) is spec.trilevel_model and type(AutoModel.from_pretrained(tmp_path / "image_text")) is type(auto)
    config = json.loads((tmp_path / "image_text" / "config.json").read_text())
    assert config["auto_map"]["AutoModelForZeroShotImageClassification"].endswith(spec.trilevel_model.__name__)

    classifier = spec.trilevel_classifier.from_pretrained(classifier_folder, token_keep_rate=0.7).eval()
    classifier.save_pretrained(tmp_path / "classifier")
    keys = load_file(tmp_path / "classifier" / "model.safetensors")
    assert set(keys) == set(load_file(classifier_folder / "model.safetensors"))
    fresh = spec.trilevel_classifier(spec.trilevel_vision_config(**VISION, num_labels=5)).eval()
    missing, unexpected = fresh.load_state_dict(keys, strict=False)  # Trainer's resume path
    assert not missing and not unexpected
    assert type(AutoModelForImageClassification.from_pretrained(tmp_path / "classifier")) is spec.trilevel_classifier
    assert type(AutoConfig.from_pretrained(tmp_path / "classifier")) is spec.trilevel_vision_config

    tower = spec.trilevel_vision_model.from_pretrained(tmp_path / "classifier", token_keep_rate=1.0).eval()
    reference = spec.vision_model.from_pretrained(classifier_folder).eval()
    with torch.no_grad():
        torch.testing.assert_close(tower(pixel_values).pooler_output, reference(pixel_values).pooler_output)
    # Vision folders written before transformers 5 hold the tower under `vision_model.`.
    legacy = tmp_path / "legacy"
    reference.save_pretrained(legacy)
    saved = load_file(legacy / "model.safetensors")  # transformers re-adds the prefix it stripped on loading
    old = {f"vision_model.{key.removeprefix('vision_model.')}": value for key, value in saved.items()}
    save_file(old, legacy / "model.safetensors", metadata={"format": "pt"})
    loaded = spec.trilevel_vision_model.from_pretrained(legacy).eval()
    fresh = spec.trilevel_vision_model(spec.trilevel_vision_config(**VISION)).eval()
    fresh.load_state_dict(old, strict=True)  # a plain load_state_dict strips the prefix too (strict: all keys)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values).pooler_output, reference(pixel_values).pooler_output)
        torch.testing.assert_close(fresh(pixel_values).pooler_output, reference(pixel_values).pooler_output)


def write_text_and_image_processors(folder: Path) -> None:
    """A word-level tokenizer (tokenizers-backed, no sentencepiece) and a PIL image processor, as the pipeline loads."""
    tokenizer = Tokenizer(models.WordLevel({word: index for index, word in enumerate(WORDS)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]").save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)


def test_zero_shot_pipeline_with_remote_code_matches_transformers_model(family, tmp_path):
    name, spec, folder, _ = family
    plain = spec.image_text_model.from_pretrained(folder)
    plain.save_pretrained(tmp_path / "plain")
    model = spec.trilevel_model.from_pretrained(folder)
    model.save_pretrained(tmp_path / "dense")
    model.set_keep_rates(0.5)
    model.save_pretrained(tmp_path / "sparse")
    for saved in ("plain", "dense", "sparse"):
        write_text_and_image_processors(tmp_path / saved)
    script = """
        import sys, numpy
        from PIL import Image
        from transformers import pipeline
        work = sys.argv[2]
        image = Image.fromarray((numpy.random.default_rng(0).random((32, 32, 3)) * 255).astype("uint8"))
        labels = ["cat", "dog", "car"]
        scores, classes = {}, {}
        for saved in ("plain", "dense", "sparse"):
            classify = pipeline("zero-shot-image-classification", model=f"{work}/{saved}", trust_remote_code=True)
            scores[saved] = {entry["label"]: entry["score"] for entry in classify(image, candidate_labels=labels)}
            classes[saved] = type(classify.model).__name__
        print(json.dumps({"scores": scores, "classes": classes}))
    """
    result = run_without_hf_trilevel(script, tmp_path, tmp_path, tmp_path / "cache")
    assert result["classes"] == {"plain": spec.image_text_model.__name__, "dense": spec.trilevel_model.__name__,
                                 "sparse": spec.trilevel_model.__name__}  # fmt: skip
    scores = result["scores"]
    for label, score in scores["plain"].items():
        assert scores["dense"][label] == pytest.approx(score, abs=1e-6)
    if name == "clip":  # softmax over the labels; SigLIP scores each label on its own (sigmoid)
        assert sum(scores["sparse"].values()) == pytest.approx(1.0, abs=1e-5)
    assert scores["sparse"] != scores["dense"]  # the sparse tower ran


def test_saved_classifier_loads_with_remote_code_where_hf_trilevel_is_missing(family, tmp_path):
    _, spec, _, classifier_folder = family
    model = spec.trilevel_classifier.from_pretrained(classifier_folder, token_merge_r=2).eval()
    model.save_pretrained(tmp_path / "model")
    torch.save(images(2), tmp_path / "images.pt")
    with torch.no_grad():
        expected = model(images(2)).logits
    script = """
        import sys, torch
        from transformers import AutoModelForImageClassification
        folder, work = sys.argv[1], sys.argv[2]
        model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
        with torch.no_grad():
            logits = model(torch.load(work + "/images.pt")).logits
        print(json.dumps({"class": type(model).__name__, "logits": logits.tolist()}))
    """
    result = run_without_hf_trilevel(script, tmp_path / "model", tmp_path, tmp_path / "cache")
    assert result["class"] == spec.trilevel_classifier.__name__
    torch.testing.assert_close(torch.tensor(result["logits"]), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "settings",
    [{}, {"token_keep_rate": 0.6, "token_fusion": True}, {"token_merge_r": 2}],
    ids=["dense", "keep_fusion", "merging"],
)
def test_analytic_flops_match_the_flop_counter(family, settings):
    _, spec, _, classifier_folder = family
    model = spec.trilevel_classifier.from_pretrained(classifier_folder, attn_implementation="eager", **settings)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(images(2))
    assert forward_flops(model.config, batch_size=2) == counter.get_total_flops()


def test_refusals_name_the_argument(family, tmp_path):
    name, spec, _, _ = family
    with pytest.raises(ValueError, match=r"`use_mask_token=True`: \w+VisionEmbeddings has no mask token"):
        spec.trilevel_vision_model(spec.trilevel_vision_config(**VISION), use_mask_token=True)
    tower = spec.trilevel_vision_model(spec.trilevel_vision_config(**VISION)).eval()
    with pytest.raises(ValueError, match="`bool_masked_pos` is not supported"):
        tower(images(1), bool_masked_pos=torch.zeros(1, PATCHES, dtype=torch.bool))
    other = "siglip" if name == "clip" else "clip"
    other_folder = tmp_path / other
    other_spec = FAMILIES[other]
    other_spec.image_text_model(other_spec.image_text_config(vision_config=VISION, text_config=TEXT)).save_pretrained(
        other_folder
    )
    with pytest.raises(ValueError, match=f"holds a '{other}' model"):
        spec.trilevel_config.from_pretrained(other_folder)
    with pytest.raises(ValueError, match=f"holds a '{other}_vision_model' model|holds a '{other}' model"):
        spec.trilevel_vision_config.from_pretrained(other_folder)


def test_exports_to_onnx_and_trains_with_dense_sparse_training(family, tmp_path):
    _, spec, _, classifier_folder = family
    classifier = spec.trilevel_classifier.from_pretrained(classifier_folder, token_keep_rate=0.7, token_fusion=True)
    report = export_onnx(classifier.eval(), tmp_path / "m.onnx")
    assert max(report.max_difference.values()) < 1e-4

    from .test_pruning_trainer import collate, to_pixels
    from .test_token_merging_training import training_args

    data = load_digits_dataset(image_size=16)["train"].select(range(48)).with_transform(to_pixels)
    torch.manual_seed(0)
    config = spec.trilevel_vision_config(**{**VISION, "image_size": 16, "num_hidden_layers": 2}, num_labels=10,
                                         token_keep_rate=0.5, token_prune_layers=[0])  # fmt: skip
    model = spec.trilevel_classifier(config)
    before = model.vision_model.layers[1].mlp.fc2.weight.detach().clone()
    trainer = TriLevelTrainer(
        model=model, args=training_args(tmp_path / "train"), train_dataset=data, data_collator=collate,
        callbacks=[DenseSparseTraining([1.0, 0.5])],
    )  # fmt: skip
    trainer.train()
    assert not torch.equal(model.vision_model.layers[1].mlp.fc2.weight.detach(), before)
    assert all(torch.isfinite(torch.tensor(entry["loss"])) for entry in trainer.state.log_history if "loss" in entry)


def test_adaptive_counts_export_with_a_data_dependent_width(family, tmp_path):
    # Per-image counts: the exported graph reads the batch's largest count at run time. Without a class token
    # (SigLIP) every image keeps two tokens at least, which the export's size bounds rely on.
    _, spec, _, classifier_folder = family
    classifier = spec.trilevel_classifier.from_pretrained(
        classifier_folder, token_selector="adaptive", token_keep_rate=0.9, token_keep_mass=0.5
    ).eval()
    report = export_onnx(classifier, tmp_path / "adaptive.onnx")
    assert max(report.max_difference.values()) < 1e-4
    with torch.no_grad():
        counts = classifier(images(4), output_kept_token_indices=True).kept_token_counts
    assert all((layer >= 2).all() for layer in counts) and (counts[0] < PATCHES).all()


def test_weight_sparsity_masks_the_towers_weights_and_slim_cuts_pruned_heads_and_neurons(family):
    from hf_trilevel import slim
    from hf_trilevel.weight_sparsity.masks import masked_weights
    from hf_trilevel.weight_sparsity.structured_units import apply_unit_masks, unit_layers, zero_output_sides

    _, spec, _, classifier_folder = family
    model = spec.trilevel_classifier.from_pretrained(classifier_folder, token_keep_rate=0.7).eval()
    names = set(masked_weights(model))
    assert "vision_model.embeddings.patch_embedding.weight" in names and "classifier.weight" in names
    assert {f"vision_model.encoder.layers.0.self_attn.{p}_proj.weight" for p in ("q", "k", "v", "out")} <= names
    assert "vision_model.encoder.layers.3.mlp.fc2.weight" in names
    assert not any(".head." in name for name in names)  # SigLIP's pooling head (unused by the classifier) stays dense
    image_text = spec.trilevel_model(spec.trilevel_config(vision_config=VISION, text_config=TEXT))
    assert not any(name.startswith("text_model.") for name in masked_weights(image_text))
    with torch.no_grad():  # head 1 of every layer and half the neurons pruned, as structured sparsity leaves them
        for layer in unit_layers(model):
            heads, neurons = torch.tensor([True, False]), torch.arange(layer.num_neurons) % 2 == 0
            apply_unit_masks(layer, heads, neurons)
            zero_output_sides(layer, heads, neurons)
        expected = model(images(2)).logits
        slimmed = slim(model)
        assert type(slimmed) is spec.trilevel_classifier
        assert slimmed.config.num_attention_heads_per_layer == [1] * 4
        assert slimmed.config.intermediate_size_per_layer == [32] * 4
        torch.testing.assert_close(slimmed(images(2)).logits, expected, rtol=1e-5, atol=1e-5)


def test_bench_times_the_classifier_against_transformers_with_the_familys_presets(family, tmp_path, capsys):
    from hf_trilevel.cli import main
    from hf_trilevel.evaluation.flops import flops_speedup_limit

    name, spec, _, _ = family
    path = tmp_path / "bench.json"
    arguments = ["bench", "inference", "--family", name, "--hidden-size", "32", "--num-hidden-layers", "4",
                 "--num-attention-heads", "2", "--intermediate-size", "64", "--image-size", "32", "--patch-size", "4",
                 "--num-labels", "5", "--batch-size", "2", "--repeats", "2", "--warmup", "1", "--no-progress",
                 "--keep-rates", "1", "0.5", "--attention-keep-rates", "1", "--token-merge-r", "0", "2",
                 "--json", str(path)]  # fmt: skip
    assert main(arguments) == 0
    assert f"{spec.classifier.__name__} against TriLevel" in capsys.readouterr().out
    results = {row["setting"]: row for row in json.loads(path.read_text())["results"]}
    assert list(results) == [f"dense {'CLIP' if name == 'clip' else 'SigLIP'} (transformers)", "keep 1",
                             "keep 1, merge r=2", "keep 0.5", "keep 0.5, merge r=2"]  # fmt: skip
    config = spec.trilevel_vision_config(**VISION, num_labels=5, token_keep_rate=0.5)
    assert results["keep 0.5"]["flops_limit"] == pytest.approx(flops_speedup_limit(config))
    assert results["keep 0.5"]["mean_kept_tokens"] == [32, 16, 8]
    with pytest.raises(SystemExit):  # a preset of another family names the family it needs
        main(["bench", "inference", "--preset", f"{name}-base" if name == "siglip" else "clip-b32", "--no-progress"])
    assert f"add --family {name}" in capsys.readouterr().err


def test_siglip_tower_pools_merged_and_padded_tokens_as_the_patches_they_hold(family):
    name, spec, folder, _ = family
    if name != "siglip":
        pytest.skip("CLIP pools its class token")
    tower = spec.trilevel_vision_model.from_pretrained(folder, token_merge_r=3).eval()
    with torch.no_grad():  # merged: the head over the final tokens, weighted, = the head over one copy per patch
        out = tower(images(2), output_token_sources=True)
        per_patch = out.last_hidden_state.gather(1, out.token_sources[..., None].expand(-1, -1, 32))
        torch.testing.assert_close(out.pooler_output, tower.head(per_patch), rtol=1e-4, atol=1e-5)
    adaptive = spec.trilevel_vision_model.from_pretrained(
        folder, token_selector="adaptive", token_keep_rate=0.9, token_keep_mass=0.8, token_min_keep_rate=0.05,
        token_fusion=True,
    ).eval()  # fmt: skip
    with torch.no_grad():  # per-image counts: padded slots weigh nothing, so each image pools as if alone
        for layer in adaptive.layers:  # peaked attention: counts differ between images
            layer.self_attn.q_proj.weight.mul_(2.0)
            layer.self_attn.k_proj.weight.mul_(2.0)
        pixel_values = images(4, seed=5)
        together = adaptive(pixel_values, output_kept_token_indices=True)
        assert len(set(together.kept_token_counts[0].tolist())) > 1
        alone = torch.cat([adaptive(pixel_values[i : i + 1]).pooler_output for i in range(4)])
    torch.testing.assert_close(together.pooler_output, alone, rtol=1e-4, atol=1e-5)


def test_siglip_classes_initialise_as_transformers_siglip(family):
    name, spec, _, _ = family
    if name != "siglip":
        pytest.skip("SigLIP's own initialisation")
    shape = {**VISION, "hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4}
    torch.manual_seed(0)
    ours = spec.trilevel_classifier(spec.trilevel_vision_config(**shape, num_labels=5)).state_dict()
    theirs = spec.classifier(spec.image_text_config(vision_config=shape, text_config=TEXT, num_labels=5)).state_dict()
    for key, tensor in theirs.items():
        if key.startswith("vision_model.") or key.startswith("classifier."):
            expected, got = tensor.float().std().item(), ours[key].float().std().item()
            assert got == pytest.approx(expected, rel=0.15, abs=1e-6), key
