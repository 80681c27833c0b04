"""DeiT with its distillation token (`TriLevelDeiTForImageClassificationWithTeacher`): transformers' outputs with
sparsity off, both prefix tokens kept by every level, DeiT's key names on disk, Auto classes and remote code."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.flop_counter import FlopCounterMode
from transformers import (
    AutoModelForImageClassification,
    DeiTConfig,
    DeiTForImageClassificationWithTeacher,
    DeiTModel,
)

from hf_trilevel import (
    DenseSparseTraining,
    TriLevelDeiTConfig,
    TriLevelDeiTForImageClassificationWithTeacher,
    TriLevelDeiTModel,
    TriLevelTrainer,
)
from hf_trilevel.cli import main
from hf_trilevel.evaluation.flops import flops_speedup_limit, forward_flops
from hf_trilevel.image_data import load_digits_dataset
from hf_trilevel.serving import export_onnx

from .helpers import TINY_SHAPE, images, run_on_two_processes, run_without_hf_trilevel

SHAPE = {**TINY_SHAPE, "num_labels": 5}


def perturbed(model):
    """Random non-zero prefix tokens and positions (transformers' DeiT initialises them to zeros), so a swapped or
    dropped prefix token shows in every output."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def deit_folder(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("deit")
    perturbed(DeiTForImageClassificationWithTeacher(DeiTConfig(**SHAPE))).save_pretrained(folder)
    return folder


def trilevel(folder: Path, **settings) -> TriLevelDeiTForImageClassificationWithTeacher:
    return TriLevelDeiTForImageClassificationWithTeacher.from_pretrained(folder, **settings).eval()


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_sparsity_off_computes_transformers_deit_outputs(deit_folder, attn_implementation):
    reference = DeiTForImageClassificationWithTeacher.from_pretrained(
        deit_folder, attn_implementation=attn_implementation
    ).eval()
    model = trilevel(deit_folder, attn_implementation=attn_implementation)
    pixel_values = images(3)
    with torch.no_grad():
        expected = reference(pixel_values, output_hidden_states=True)
        got = model(pixel_values, output_hidden_states=True)
    for name in ("logits", "cls_logits", "distillation_logits"):
        assert (got[name] - expected[name]).abs().max() < 1e-5, name
    assert len(got.hidden_states) == len(expected.hidden_states)
    for ours, theirs in zip(got.hidden_states, expected.hidden_states, strict=True):
        assert (ours - theirs).abs().max() < 1e-5
    base_reference = DeiTModel.from_pretrained(deit_folder, attn_implementation=attn_implementation).eval()
    base = TriLevelDeiTModel.from_pretrained(deit_folder, attn_implementation=attn_implementation).eval()
    base.pooler.load_state_dict(base_reference.pooler.state_dict())  # the classifier folder holds no pooler
    with torch.no_grad():
        expected, got = base_reference(pixel_values), base(pixel_values)
    assert (got.last_hidden_state - expected.last_hidden_state).abs().max() < 1e-5
    assert (got.pooler_output - expected.pooler_output).abs().max() < 1e-5


def test_token_dropping_keeps_both_prefix_tokens_and_ranks_by_both_rows(deit_folder):
    reference = DeiTForImageClassificationWithTeacher.from_pretrained(deit_folder, attn_implementation="eager").eval()
    model = trilevel(deit_folder, token_keep_rate=0.5, token_prune_layers=[1, 2], token_fusion=True)
    pixel_values = images(3)
    with torch.no_grad():
        attentions = reference(pixel_values, output_attentions=True).attentions
        out = model(pixel_values, output_kept_token_indices=True, output_hidden_states=True)
    # The first pruning layer saw every token, as the dense model did: rank patches by both prefix rows and heads.
    importance = attentions[1][:, :, :2].mean(dim=(1, 2))[:, 2:]
    expected = importance.topk(32, dim=-1).indices.sort(dim=-1).values
    assert out.kept_token_indices[0].tolist() == expected.tolist()
    assert [layer.shape[1] for layer in out.kept_token_indices] == [32, 16]
    assert out.hidden_states[-1].shape[1] == 2 + 16 + 1  # class, distillation, kept patches, the fused token
    assert torch.isfinite(out.logits).all()


def test_merging_never_touches_the_prefix_tokens(deit_folder):
    model = trilevel(deit_folder, token_merge_r=4)
    with torch.no_grad():
        out = model(images(2), output_token_sources=True, output_hidden_states=True)
    assert out.hidden_states[-1].shape[1] == 2 + 64 - 4 * 4
    sources = out.token_sources
    assert sources.shape == (2, 64) and sources.min() >= 0 and sources.max() == 64 - 16 - 1
    with torch.no_grad():  # merging off again: the dense outputs
        dense = trilevel(deit_folder)(images(2)).logits
        model.set_keep_rates(token_merge_r=0)
        torch.testing.assert_close(model(images(2)).logits, dense, rtol=0, atol=0)


@pytest.mark.parametrize(
    "settings",
    [
        {"token_selector": "adaptive", "token_keep_rate": 0.9, "token_keep_mass": 0.5, "token_fusion": True},
        {"token_selector": "learned", "token_keep_rate": 0.7},
        {"token_keep_rate": 0.7, "attention_keep_rate": 0.5, "attn_implementation": "sdpa"},
    ],
    ids=["adaptive_fusion", "learned", "attention_sparsity"],
)
def test_every_selector_and_attention_sparsity_keep_the_prefix(deit_folder, settings):
    model = trilevel(deit_folder, **settings)
    with torch.no_grad():
        out = model(images(3), output_kept_token_indices=True, output_hidden_states=True)
    fused = int(settings.get("token_fusion", False))
    assert out.hidden_states[-1].shape[1] == 2 + out.kept_token_indices[-1].shape[1] + fused
    assert (out.kept_token_counts[-1] < 64).all() and torch.isfinite(out.logits).all()


def test_labels_give_the_cross_entropy_of_the_averaged_logits(deit_folder):
    model = trilevel(deit_folder, token_keep_rate=0.7)
    labels = torch.tensor([0, 3, 4])
    out = model(images(3), labels=labels)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))
    torch.testing.assert_close(out.logits, (out.cls_logits + out.distillation_logits) / 2)
    out.loss.backward()
    assert model.deit.embeddings.distillation_token.grad.abs().sum() > 0


def test_saved_folder_keeps_deit_key_names_and_loads_back_into_transformers(deit_folder, tmp_path):
    model = trilevel(deit_folder, token_keep_rate=0.7)
    model.save_pretrained(tmp_path)
    keys = load_file(tmp_path / "model.safetensors")
    assert "deit.embeddings.distillation_token" in keys
    assert any(key.startswith("deit.encoder.layer.0.attention.attention.query") for key in keys)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "trilevel_deit" and config["token_keep_rate"] == 0.7
    assert config["auto_map"]["AutoModelForImageClassification"].endswith(
        "TriLevelDeiTForImageClassificationWithTeacher"
    )
    assert (tmp_path / "modeling_trilevel_deit.py").is_file() and (tmp_path / "vit_layer.py").is_file()
    back = DeiTForImageClassificationWithTeacher.from_pretrained(tmp_path).eval()
    fresh = TriLevelDeiTForImageClassificationWithTeacher(TriLevelDeiTConfig(**SHAPE)).eval()
    missing, unexpected = fresh.load_state_dict(keys, strict=False)  # Trainer's resume path: v4 names renamed
    assert not missing and not unexpected
    with torch.no_grad(), model.keep_rates(token_keep_rate=1.0):
        torch.testing.assert_close(back(images(2)).logits, model(images(2)).logits, rtol=0, atol=1e-6)
        torch.testing.assert_close(fresh(images(2)).logits, model(images(2)).logits, rtol=0, atol=0)
    auto = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert type(auto) is TriLevelDeiTForImageClassificationWithTeacher


def test_saved_folder_loads_with_remote_code_where_hf_trilevel_is_missing(deit_folder, tmp_path):
    model = trilevel(deit_folder, token_keep_rate=0.5)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
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
    result = run_without_hf_trilevel(script, folder, tmp_path, tmp_path / "cache")
    assert result["class"] == "TriLevelDeiTForImageClassificationWithTeacher"
    torch.testing.assert_close(torch.tensor(result["logits"]), expected, rtol=0, atol=1e-6)


def test_dropping_exports_to_onnx_and_matches(deit_folder, tmp_path):
    report = export_onnx(trilevel(deit_folder, token_keep_rate=0.7, token_fusion=True), tmp_path / "model.onnx")
    assert max(report.max_difference.values()) < 1e-4


@pytest.mark.parametrize(
    "settings",
    [{}, {"token_keep_rate": 0.6, "token_fusion": True}, {"token_keep_rate": 0.7, "attention_keep_rate": 0.5}],
    ids=["dense", "keep_fusion", "keep_attention"],
)
def test_analytic_flops_count_both_prefix_tokens_and_both_heads(deit_folder, settings):
    # eager: FlopCounterMode does not count the CPU flash-attention kernel that sdpa dispatches to.
    model = trilevel(deit_folder, attn_implementation="eager", **settings)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(images(2))
    assert forward_flops(model.config, batch_size=2) == counter.get_total_flops()


def test_trains_with_the_trainer_and_dense_sparse_training_and_predicts_the_averaged_logits(tmp_path):
    from .test_pruning_trainer import collate, to_pixels
    from .test_token_merging_training import training_args

    data = load_digits_dataset(image_size=16)["train"].select(range(48)).with_transform(to_pixels)
    for techniques in ([], [DenseSparseTraining([1.0, 0.5])]):
        torch.manual_seed(0)
        config = TriLevelDeiTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=64, num_labels=10, token_keep_rate=0.5,
                                    token_prune_layers=[0])  # fmt: skip
        model = TriLevelDeiTForImageClassificationWithTeacher(config)
        before = model.deit.embeddings.distillation_token.detach().clone()
        trainer = TriLevelTrainer(
            model=model, args=training_args(tmp_path), train_dataset=data, data_collator=collate,
            callbacks=techniques,
        )  # fmt: skip
        trainer.train()
        assert not torch.equal(model.deit.embeddings.distillation_token.detach(), before)
        # Only `logits` are predictions: the two heads' own logits are left out (`keys_to_ignore_at_inference`).
        predictions = trainer.predict(data.select(range(8))).predictions
        assert isinstance(predictions, np.ndarray) and predictions.shape == (8, 10)


@pytest.fixture(scope="module")
def ddp_reports(tmp_path_factory):
    return run_on_two_processes(Path(__file__).parent / "jobs" / "distributed_deit.py", tmp_path_factory.mktemp("ddp"))


@pytest.mark.parametrize("run", ["deit", "deit_dense_sparse_checkpointed"])
def test_two_processes_train_deit_to_identical_weights(ddp_reports, run):
    first, second = (report[run] for report in ddp_reports)
    assert first["world_size"] == second["world_size"] == 2
    assert first["parameters"] == second["parameters"]  # real DDP: every parameter's gradient was synced
    assert first["steps"] == second["steps"] == 6  # 96 examples / (16 x 2 processes) x 2 epochs
    assert first["changed"] and first["finite"]
    # Keep 0.5 with fusion: 2 prefix tokens, 8 of 16 patches and the fused token; the dense pass keeps all 16.
    expected = [2 + 8 + 1] if run == "deit" else [2 + 8 + 1, 2 + 16]
    assert first["final_tokens"] == expected


def test_structured_sparsity_and_slim_cut_a_deit_model_exactly(deit_folder):
    from hf_trilevel import slim
    from hf_trilevel.weight_sparsity.masks import masked_weights
    from hf_trilevel.weight_sparsity.structured_units import apply_unit_masks, unit_layers, zero_output_sides

    model = trilevel(deit_folder, token_keep_rate=0.7)
    assert {"cls_classifier.weight", "distillation_classifier.weight"} <= set(masked_weights(model))
    layers = unit_layers(model)
    assert len(layers) == SHAPE["num_hidden_layers"]
    for layer in layers:  # keep the first head and half the neurons, as structured sparsity leaves them
        heads, neurons = torch.arange(layer.num_heads) < 1, torch.arange(layer.num_neurons) < layer.num_neurons // 2
        apply_unit_masks(layer, heads, neurons)
        zero_output_sides(layer, heads, neurons)
    slimmed = slim(model)
    assert type(slimmed) is TriLevelDeiTForImageClassificationWithTeacher
    assert slimmed.config.num_attention_heads_per_layer == [1] * SHAPE["num_hidden_layers"]
    with torch.no_grad():
        torch.testing.assert_close(slimmed(images(2)).logits, model(images(2)).logits, rtol=1e-5, atol=1e-5)


def test_image_classification_pipeline_runs_a_saved_deit_folder(deit_folder, tmp_path):
    from PIL import Image
    from transformers import ViTImageProcessorPil, pipeline

    model = trilevel(deit_folder, token_keep_rate=0.5)
    model.save_pretrained(tmp_path)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    classifier = pipeline("image-classification", model=str(tmp_path))
    assert type(classifier.model) is TriLevelDeiTForImageClassificationWithTeacher
    image = Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8))
    predictions = classifier(image, top_k=5)
    pixel_values = classifier.image_processor(image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = model(pixel_values).logits.softmax(-1)[0]
    assert [p["label"] for p in predictions] == [
        model.config.id2label[int(i)] for i in expected.argsort(descending=True)
    ]
    assert predictions[0]["score"] == pytest.approx(expected.max().item(), abs=1e-5)


BENCH_TINY = ["--image-size", "32", "--patch-size", "4", "--hidden-size", "32", "--num-hidden-layers", "4",
              "--num-attention-heads", "2", "--intermediate-size", "64", "--num-labels", "5", "--batch-size", "2",
              "--repeats", "2", "--warmup", "1", "--no-progress", "--attention-keep-rates", "1"]  # fmt: skip


def test_bench_times_the_deit_family_against_transformers_deit(tmp_path, capsys):
    path = tmp_path / "deit.json"
    arguments = ["bench", "inference", "--family", "deit-distilled", *BENCH_TINY, "--keep-rates", "1", "0.5",
                 "--fusion", "on", "--json", str(path)]  # fmt: skip
    assert main(arguments) == 0
    assert "DeiTForImageClassificationWithTeacher against TriLevel" in capsys.readouterr().out
    results = {row["setting"]: row for row in json.loads(path.read_text())["results"]}
    assert list(results) == ["dense DeiT distilled (transformers)", "keep 1, fusion", "keep 0.5, fusion"]
    config = TriLevelDeiTConfig(**SHAPE, token_keep_rate=0.5, token_fusion=True)
    assert results["dense DeiT distilled (transformers)"]["flops_limit"] == 1.0
    assert results["keep 1, fusion"]["flops_limit"] == 1.0
    assert results["keep 0.5, fusion"]["flops_limit"] == pytest.approx(flops_speedup_limit(config))
    assert results["keep 0.5, fusion"]["mean_kept_tokens"] == [32, 16, 8]


def test_bench_refuses_an_unknown_family_and_a_folder_of_another_family(deit_folder, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "inference", "--family", "eva", *BENCH_TINY])
    assert exit_info.value.code == 2
    assert "--family must be one of vit, deit-distilled, dinov2, clip, siglip, got 'eva'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "inference", "--model", str(deit_folder), "--batch-size", "2", "--no-progress"])
    assert "holds a 'deit' model, not one of --family vit" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["export", "onnx"], "holds no preprocessor_config.json"),  # past the family check, at the next one
        (["slim"], "has no structured masks"),  # loaded and slimmed as DeiT: a dense model has nothing to cut
    ],
)
def test_commands_take_a_trilevel_deit_folder_and_refuse_a_plain_one_naming_the_deit_class(
    deit_folder, tmp_path, capsys, command, message
):
    folder = tmp_path / "model"
    trilevel(deit_folder).save_pretrained(folder)
    plain = (
        "holds a 'deit' config, not a TriLevel one ('trilevel_deit'); load it with "
        "hf_trilevel.TriLevelDeiTForImageClassificationWithTeacher.from_pretrained and save it first"
    )
    for source, expected in ((folder, message), (deit_folder, plain)):
        with pytest.raises(SystemExit) as exit_info:
            main([*command, str(source), str(tmp_path / "out")])
        assert exit_info.value.code == 2
        assert expected in capsys.readouterr().err


def test_card_of_a_trilevel_deit_folder_describes_both_prefix_tokens(deit_folder, tmp_path):
    folder = tmp_path / "model"
    trilevel(deit_folder, token_keep_rate=0.5).save_pretrained(folder)
    assert main(["card", str(folder)]) == 0
    card = (folder / "README.md").read_text()
    assert "A **TriLevel DeiT** for image classification" in card
    assert "scored by the attention of the class and distillation tokens (their rows averaged)" in card
    assert "(64 tokens + class and distillation tokens)" in card and "loads this repository's TriLevelDeiTFor" in card


def test_a_folder_of_another_family_is_refused_not_loaded_with_random_weights(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification

    from hf_trilevel import TriLevelDinov2ForImageClassification

    ViTForImageClassification(ViTConfig(**SHAPE)).save_pretrained(tmp_path)
    for family_class, own in ((TriLevelDeiTForImageClassificationWithTeacher, "'deit' and 'trilevel_deit'"),
                              (TriLevelDinov2ForImageClassification, "'dinov2' and 'trilevel_dinov2'")):  # fmt: skip
        with pytest.raises(ValueError, match=f"holds a 'vit' model; .* loads {own} folders only"):
            family_class.from_pretrained(tmp_path)
