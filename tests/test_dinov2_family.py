"""DINOv2 (`TriLevelDinov2Model`, `TriLevelDinov2ForImageClassification`): transformers' outputs with sparsity off at
any image size, LayerScale layers around the shared reduction, the head's patch mean over the original patches
whatever was dropped, fused or merged, DINOv2's key names on disk, Auto classes, remote code and training."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForImageClassification, Dinov2Config, Dinov2ForImageClassification, Dinov2Model

from hf_trilevel import (
    DenseSparseTraining,
    TriLevelDinov2Config,
    TriLevelDinov2ForImageClassification,
    TriLevelDinov2Model,
    TriLevelTrainer,
)
from hf_trilevel.evaluation.flops import forward_flops
from hf_trilevel.image_data import load_digits_dataset
from hf_trilevel.serving import export_onnx

from .helpers import images, run_without_hf_trilevel

# 28 px, patch 4: 49 patches. Layer scale below 1 and an MLP ratio of 2, so both DINOv2 specifics show.
SHAPE = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "mlp_ratio": 2, "image_size": 28,
         "patch_size": 4, "num_labels": 5, "layerscale_value": 0.5}  # fmt: skip
PATCHES = 49


@pytest.fixture(scope="module")
def dinov2_folder(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = Dinov2ForImageClassification(Dinov2Config(**SHAPE)).eval()
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():  # random layer scales, class token and positions, so a missed one shows
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    folder = tmp_path_factory.mktemp("dinov2")
    model.save_pretrained(folder)
    return folder


def trilevel(folder: Path, **settings) -> TriLevelDinov2ForImageClassification:
    return TriLevelDinov2ForImageClassification.from_pretrained(folder, **settings).eval()


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_sparsity_off_computes_transformers_dinov2_outputs_at_any_image_size(dinov2_folder, attn_implementation):
    backend = {"attn_implementation": attn_implementation}
    reference = Dinov2ForImageClassification.from_pretrained(dinov2_folder, **backend).eval()
    model = trilevel(dinov2_folder, **backend)
    for pixel_values in (images(3, size=28), images(2, seed=4, size=36)):  # 36 px: interpolated positions
        with torch.no_grad():
            expected = reference(pixel_values, output_hidden_states=True)
            got = model(pixel_values, output_hidden_states=True)
        assert (got.logits - expected.logits).abs().max() < 1e-5
        assert len(got.hidden_states) == len(expected.hidden_states)
        for ours, theirs in zip(got.hidden_states, expected.hidden_states, strict=True):
            assert (ours - theirs).abs().max() < 1e-5
    base_reference = Dinov2Model.from_pretrained(dinov2_folder, **backend).eval()
    base = TriLevelDinov2Model.from_pretrained(dinov2_folder, **backend).eval()
    with torch.no_grad():
        expected, got = base_reference(images(2, size=28)), base(images(2, size=28))
    assert (got.last_hidden_state - expected.last_hidden_state).abs().max() < 1e-5
    assert (got.pooler_output - expected.pooler_output).abs().max() < 1e-5


@pytest.mark.parametrize(
    "settings",
    [{"token_merge_r": 3}, {"token_keep_rate": 0.5, "token_fusion": True}, {"token_keep_rate": 0.5}],
    ids=["merging", "dropping_fusion", "dropping"],
)
def test_the_head_averages_the_patch_tokens_over_the_original_patches(dinov2_folder, settings):
    model = trilevel(dinov2_folder, **settings)
    with torch.no_grad():
        base = model.dinov2(images(3, size=28), output_token_sources=True)
    final = base.last_hidden_state  # normalised, as the head reads it
    sources = base.token_sources  # [batch, patches]: the final patch token holding each original patch, -1 dropped
    per_patch = torch.where(
        (sources >= 0)[..., None],
        final.gather(1, (1 + sources.clamp_min(0))[..., None].expand(-1, -1, final.shape[-1])),
        final[:, -1:].expand(-1, PATCHES, -1),  # a dropped patch counts as the fused token
    )
    if not settings.get("token_fusion"):  # without fusion, dropped patches are not in the mean at all
        kept = (sources >= 0).float()[..., None]
        expected = (per_patch * kept).sum(1) / kept.sum(1)
    else:
        expected = per_patch.mean(1)
    torch.testing.assert_close(base.patch_token_mean, expected, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        logits = model(images(3, size=28)).logits
    torch.testing.assert_close(logits, model.classifier(torch.cat([final[:, 0], expected], 1)), rtol=1e-5, atol=1e-6)


def test_token_dropping_ranks_patches_by_the_class_token_attention(dinov2_folder):
    reference = Dinov2ForImageClassification.from_pretrained(dinov2_folder, attn_implementation="eager").eval()
    model = trilevel(dinov2_folder, token_keep_rate=0.5, token_prune_layers=[1, 2])
    with torch.no_grad():
        attentions = reference(images(3, size=28), output_attentions=True).attentions
        out = model(images(3, size=28), output_kept_token_indices=True, output_hidden_states=True)
    importance = attentions[1][:, :, 0].mean(dim=1)[:, 1:]
    expected = importance.topk(25, dim=-1).indices.sort(dim=-1).values
    assert out.kept_token_indices[0].tolist() == expected.tolist()
    assert out.hidden_states[-1].shape[1] == 1 + 13


@pytest.mark.parametrize(
    "settings",
    [
        {"token_selector": "adaptive", "token_keep_rate": 0.9, "token_keep_mass": 0.5, "token_fusion": True},
        {"token_selector": "learned", "token_keep_rate": 0.7},
        {"token_keep_rate": 0.7, "attention_keep_rate": 0.5},
    ],
    ids=["adaptive_fusion", "learned", "attention_sparsity"],
)
def test_every_selector_and_attention_sparsity_run_with_layer_scale(dinov2_folder, settings):
    model = trilevel(dinov2_folder, **settings)
    with torch.no_grad():
        out = model(images(3, size=28), output_kept_token_indices=True)
    assert (out.kept_token_counts[-1] < PATCHES).all() and torch.isfinite(out.logits).all()


def test_saved_folder_keeps_dinov2_key_names_and_loads_back_into_transformers(dinov2_folder, tmp_path):
    model = trilevel(dinov2_folder, token_keep_rate=0.7)
    model.save_pretrained(tmp_path)
    keys = load_file(tmp_path / "model.safetensors")
    assert "dinov2.encoder.layer.0.attention.attention.query.weight" in keys
    assert "dinov2.encoder.layer.0.layer_scale1.lambda1" in keys and "dinov2.encoder.layer.0.mlp.fc1.weight" in keys
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "trilevel_dinov2" and config["token_keep_rate"] == 0.7
    assert config["auto_map"]["AutoModelForImageClassification"] == (
        "modeling_trilevel_dinov2.TriLevelDinov2ForImageClassification"
    )
    back = Dinov2ForImageClassification.from_pretrained(tmp_path).eval()
    fresh = TriLevelDinov2ForImageClassification(TriLevelDinov2Config(**SHAPE)).eval()
    missing, unexpected = fresh.load_state_dict(keys, strict=False)  # Trainer's resume path: file names renamed
    assert not missing and not unexpected
    with torch.no_grad(), model.keep_rates(token_keep_rate=1.0):
        torch.testing.assert_close(back(images(2, size=28)).logits, model(images(2, size=28)).logits, rtol=0, atol=1e-6)
        torch.testing.assert_close(fresh(images(2, size=28)).logits, model(images(2, size=28)).logits, rtol=0, atol=0)
    assert type(AutoModelForImageClassification.from_pretrained(tmp_path)) is TriLevelDinov2ForImageClassification


def test_saved_folder_loads_with_remote_code_where_hf_trilevel_is_missing(dinov2_folder, tmp_path):
    model = trilevel(dinov2_folder, token_merge_r=2)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    torch.save(images(2, size=28), tmp_path / "images.pt")
    with torch.no_grad():
        expected = model(images(2, size=28)).logits
    script = """
        import sys, torch
        from transformers import AutoModelForImageClassification
        folder, work = sys.argv[1], sys.argv[2]
        model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
        with torch.no_grad():
            logits = model(torch.load(work + "/images.pt")).logits
        print(json.dumps({"class": type(model).__name__, "logits": logits.tolist()}))
    """
    result = run_without_hf_trilevel(script, folder, tmp_path, tmp_path / "cache")
    assert result["class"] == "TriLevelDinov2ForImageClassification"
    torch.testing.assert_close(torch.tensor(result["logits"]), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "settings",
    [{}, {"token_keep_rate": 0.6, "token_fusion": True}, {"token_merge_r": 2}],
    ids=["dense", "keep_fusion", "merging"],
)
def test_analytic_flops_match_the_flop_counter(dinov2_folder, settings):
    model = trilevel(dinov2_folder, attn_implementation="eager", **settings)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(images(2, size=28))
    assert forward_flops(model.config, batch_size=2) == counter.get_total_flops()


def test_swiglu_checkpoints_are_refused_by_name():
    with pytest.raises(ValueError, match=r"`use_swiglu_ffn=True` .* not supported"):
        TriLevelDinov2Config(**SHAPE, use_swiglu_ffn=True)


def test_exports_to_onnx_and_trains_with_dense_sparse_training(dinov2_folder, tmp_path):
    report = export_onnx(trilevel(dinov2_folder, token_keep_rate=0.7, token_fusion=True), tmp_path / "m.onnx")
    assert max(report.max_difference.values()) < 1e-4

    from .test_pruning_trainer import collate, to_pixels
    from .test_token_merging_training import training_args

    data = load_digits_dataset(image_size=16)["train"].select(range(48)).with_transform(to_pixels)
    torch.manual_seed(0)
    config = TriLevelDinov2Config(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, mlp_ratio=2, num_labels=10, token_keep_rate=0.5,
                                  token_prune_layers=[0])  # fmt: skip
    model = TriLevelDinov2ForImageClassification(config)
    before = model.dinov2.layers[1].layer_scale2.lambda1.detach().clone()
    trainer = TriLevelTrainer(
        model=model, args=training_args(tmp_path / "train"), train_dataset=data, data_collator=collate,
        callbacks=[DenseSparseTraining([1.0, 0.5])],
    )  # fmt: skip
    trainer.train()
    assert not torch.equal(model.dinov2.layers[1].layer_scale2.lambda1.detach(), before)
    assert all(torch.isfinite(torch.tensor(entry["loss"])) for entry in trainer.state.log_history if "loss" in entry)


def test_bench_times_dinov2_against_transformers_dinov2_with_its_own_shapes(tmp_path, capsys):
    from hf_trilevel.cli import main
    from hf_trilevel.evaluation.flops import flops_speedup_limit

    path = tmp_path / "dinov2.json"
    arguments = ["bench", "inference", "--family", "dinov2", "--hidden-size", "32", "--num-hidden-layers", "4",
                 "--num-attention-heads", "2", "--intermediate-size", "64", "--image-size", "28", "--patch-size", "4",
                 "--num-labels", "5", "--batch-size", "2", "--repeats", "2", "--warmup", "1", "--no-progress",
                 "--keep-rates", "1", "0.5", "--attention-keep-rates", "1", "--json", str(path)]  # fmt: skip
    assert main(arguments) == 0
    assert "Dinov2ForImageClassification against TriLevel" in capsys.readouterr().out
    results = {row["setting"]: row for row in json.loads(path.read_text())["results"]}
    assert list(results) == ["dense DINOv2 (transformers)", "keep 1", "keep 0.5"]
    config = TriLevelDinov2Config(**{**SHAPE, "layerscale_value": 1.0}, token_keep_rate=0.5)
    assert results["keep 0.5"]["flops_limit"] == pytest.approx(flops_speedup_limit(config))
    assert results["keep 0.5"]["mean_kept_tokens"] == [25, 13, 7]
    report = json.loads(path.read_text())
    assert report["shape"]["patch_size"] == 4 and report["shape"]["family"] == "dinov2"


def test_bench_refuses_a_dinov2_preset_without_its_family(capsys):
    from hf_trilevel.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "inference", "--preset", "dinov2-small", "--no-progress"])
    assert exit_info.value.code == 2
    assert "--preset dinov2-small is a dinov2 shape: add --family dinov2" in capsys.readouterr().err


def test_an_intermediate_size_other_than_the_mlp_ratio_gives_is_refused():
    with pytest.raises(ValueError, match=r"`intermediate_size` is derived for DINOv2 .* = 64, got 100"):
        TriLevelDinov2Config(**SHAPE, intermediate_size=100)
    assert TriLevelDinov2Config(**SHAPE, intermediate_size=64).intermediate_size == 64


def test_adaptive_counts_split_into_groups_give_each_image_its_own_result(dinov2_folder):
    # Per-image counts, the batch split into count groups (padding and a zero fused token where a group has none):
    # every image's logits and patch mean equal those of the image alone.
    model = trilevel(dinov2_folder, token_selector="adaptive", token_keep_rate=0.9, token_keep_mass=0.7,
                     token_min_keep_rate=0.1, token_fusion=True, token_count_buckets=4)  # fmt: skip
    with torch.no_grad():
        for layer in model.dinov2.layers:  # peaked class attention: counts differ between images
            layer.attention.q_proj.weight.mul_(4.0)
            layer.attention.k_proj.weight.mul_(4.0)
        pixel_values = images(6, seed=9, size=28)
        counts = model(pixel_values, output_kept_token_indices=True).kept_token_counts
        assert len(set(counts[0].tolist())) > 1
        together = model(pixel_values).logits
        alone = torch.cat([model(pixel_values[i : i + 1]).logits for i in range(6)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
