"""Training with token merging (`token_merge_r`, ToMe): the trainer, dense/sparse training (keep 1.0 is the dense
model, without merging; the sparse passes merge the model's r), the keep-rate warm-up, resuming, and the operating
points of a merging checkpoint, and 2-process DDP (tests/jobs/distributed_token_merging.py under torchrun)."""

import math
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback, TrainingArguments

from hf_trilevel import (
    DenseSparseTraining,
    KeepRateSchedule,
    TriLevelTrainer,
    TriLevelViTConfig,
    TriLevelViTForImageClassification,
)
from hf_trilevel.modeling.token_merging import layer_token_counts
from hf_trilevel.token_training import operating_point
from hf_trilevel.token_training.card import operating_points_text
from hf_trilevel.token_training.dense_sparse import SPARSE_TASK_TERM
from hf_trilevel.token_training.operating_points import (
    measure_operating_points,
    operating_points_markdown,
    point_settings,
)
from hf_trilevel.training.errors import TrainingRefused

from .helpers import images, run_on_two_processes
from .test_pruning_trainer import collate

NUM_EXAMPLES = 48  # three steps of 16 per epoch
PATCHES = 16  # 16x16 images, 4x4 patches
DDP_JOB = Path(__file__).parent / "jobs" / "distributed_token_merging.py"


@pytest.fixture(scope="module")
def digits():
    from hf_trilevel.image_data import load_digits_dataset

    from .test_pruning_trainer import to_pixels

    return load_digits_dataset(image_size=16)["train"].select(range(NUM_EXAMPLES)).with_transform(to_pixels)


def merging_model(**overrides) -> TriLevelViTForImageClassification:
    """2 layers, one pruning layer (0), 2 tokens merged in each layer, own keep rate 0.5: 16 patches -> 8 -> 6 -> 4."""
    torch.manual_seed(0)
    config = TriLevelViTConfig(
        image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=10,
        **{"token_keep_rate": 0.5, "token_prune_layers": [0], "token_merge_r": 2, **overrides},
    )  # fmt: skip
    return TriLevelViTForImageClassification(config)


def training_args(tmp_path, **overrides) -> TrainingArguments:
    settings = {
        "output_dir": str(tmp_path), "per_device_train_batch_size": 16, "max_steps": 3, "learning_rate": 3e-3,
        "logging_steps": 1, "report_to": "none", "use_cpu": True, "remove_unused_columns": False,
        "save_strategy": "no", "disable_tqdm": True, "seed": 0, "dataloader_pin_memory": False,
    }  # fmt: skip
    return TrainingArguments(**{**settings, **overrides})


def train(digits, tmp_path, model, techniques=(), resume=None, **args) -> TriLevelTrainer:
    trainer = TriLevelTrainer(
        model=model, args=training_args(tmp_path, **args), train_dataset=digits, data_collator=collate,
        callbacks=list(techniques),
    )  # fmt: skip
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def final_patch_tokens(rate: float, merge_r: int) -> int:
    """Patch tokens after the last layer of `merging_model` at keep rate `rate` merging `merge_r` per layer."""
    return layer_token_counts(PATCHES, 2, [0], rate, [merge_r, merge_r])[-1].after_merge


class PassRecorder:
    """Each training forward's settings and the patch tokens it really ended with (hooks: public torch API)."""

    def __init__(self, model):
        self.passes: list[tuple[float, float, int, int]] = []
        self.model = model
        model.vit.layernorm.register_forward_hook(self.record)

    def record(self, module, args, output):
        if self.model.training:
            config = self.model.config
            tokens = args[0].shape[1] - 1  # the class token is first; no fusion here
            self.passes.append((config.token_keep_rate, config.attention_keep_rate, config.token_merge_r, tokens))


class GradientNorms(TrainerCallback):
    """The gradient norm of every layer's weights before each optimizer step."""

    def __init__(self):
        self.steps: list[list[float]] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.steps.append(
            [
                math.sqrt(sum(p.grad.pow(2).sum().item() for p in layer.parameters() if p.grad is not None))
                for layer in model.vit.layers
            ]
        )


# -- the trainer --------------------------------------------------------------------------------------------------
def test_the_trainer_trains_a_merging_model_with_gradients_in_every_layer(digits, tmp_path):
    model = merging_model()
    batch = collate([digits[index] for index in range(NUM_EXAMPLES)])

    def loss() -> float:
        with torch.no_grad():
            return model.eval()(**batch).loss.item()

    before, loss_before = [p.detach().clone() for p in model.parameters()], loss()
    recorder, norms = PassRecorder(model), GradientNorms()
    trainer = train(digits, tmp_path, model, [norms], max_steps=6)
    assert {entry[3] for entry in recorder.passes} == {final_patch_tokens(0.5, 2)}  # every forward merged
    assert len(norms.steps) == 6 and all(norm > 0 for step in norms.steps for norm in step)
    assert all(math.isfinite(entry["loss"]) for entry in trainer.state.log_history if "loss" in entry)
    assert loss() < loss_before  # on the training examples, at the model's own operating point
    assert all(not torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))


def test_the_tokens_merged_away_get_their_gradient_through_the_average():
    """A token merged away in layer 0 reaches the loss only through the average it joined (the matching itself is
    not differentiable): its attention output, which feeds nothing else, has a nonzero gradient."""
    model = merging_model(token_keep_rate=1.0, token_merge_r=[2, 0]).eval()
    captured = []
    model.vit.layers[0].attention.register_forward_hook(lambda module, args, output: captured.append(output[0]))
    outputs = model(images(2, size=16), output_token_sources=True)
    captured[0].retain_grad()
    outputs.logits.sum().backward()
    for image in range(2):
        sources = outputs.token_sources[image]
        merged = (sources.bincount() > 1)[sources].nonzero().flatten()  # patches that share a final token
        assert len(merged) >= 3  # two merges: two pairs, or three patches in one token
        assert (captured[0].grad[image, 1 + merged].abs().sum(dim=-1) > 0).all()


# -- dense/sparse training --------------------------------------------------------------------------------------
def test_the_dense_pass_runs_without_merging_and_the_sparse_passes_merge_the_models_r(digits, tmp_path):
    model = merging_model()
    recorder = PassRecorder(model)
    train(digits, tmp_path, model, [DenseSparseTraining([1.0, 0.75, 0.5])], max_steps=2)
    dense = (1.0, 1.0, 0, PATCHES)
    assert recorder.passes == [dense, (0.75, 1.0, 2, final_patch_tokens(0.75, 2)), dense, (0.5, 1.0, 2, 4)]
    assert model.config.token_merge_r == 2 and model.config.token_keep_rate == 0.5  # the model's own, restored


def test_every_rate_with_a_per_layer_r_merges_at_each_sparse_rate(digits, tmp_path):
    model = merging_model(token_merge_r=[3, 1])
    recorder = PassRecorder(model)
    technique = DenseSparseTraining([1.0, 0.75, 0.5], schedule="every_rate", distillation="none")
    trainer = train(digits, tmp_path, model, [technique], max_steps=1)
    tokens = [layer_token_counts(PATCHES, 2, [0], rate, [3, 1])[-1].after_merge for rate in (0.75, 0.5)]
    assert [entry[2:] for entry in recorder.passes] == [(0, PATCHES), ([3, 1], tokens[0]), ([3, 1], tokens[1])]
    assert f"loss/{SPARSE_TASK_TERM}" in trainer.state.log_history[0]


def test_a_warmed_up_sparse_pass_at_keep_one_is_the_dense_pass_without_merging():
    technique = DenseSparseTraining([1.0, 0.5], warmup_fraction=0.5, decay_fraction=0.5)
    technique._total_steps, technique._saved_rates = 10, operating_point(merging_model().config, 0.5)
    assert technique.pass_rates(0.5, 0) == (1.0, 1.0, 0)
    warmed = technique.pass_rates(0.5, 8)
    assert 0.5 < warmed.token_keep_rate < 1.0 and warmed[1:] == (1.0, 2)  # below 1.0: the model's r


def test_the_operating_points_of_a_merging_checkpoint_turn_merging_off_only_at_keep_one():
    config = merging_model(token_merge_r=[2, 1]).config
    assert operating_point(config, 1.0) == (1.0, 1.0, 0)
    assert operating_point(config, 0.5) == (0.5, 1.0, [2, 1])
    assert operating_point(config, 0.5)[:2] == (0.5, 1.0)  # the two rates, indexed as before merging existed
    config.dense_sparse_keep_rates = [1.0, 0.5]
    assert point_settings(config, 1.0).token_merge_r == 0 and point_settings(config, 0.5).token_merge_r == [2, 1]
    config.dense_sparse_keep_rates = None  # a single-rate checkpoint merges its own r at every rate
    assert point_settings(config, 1.0).token_merge_r == [2, 1]


def test_the_operating_point_table_measures_keep_one_without_merging(digits, tmp_path):
    model = merging_model()
    model.config.dense_sparse_keep_rates = [1.0, 0.5]
    batch = collate([digits[index] for index in range(8)])
    points = measure_operating_points(model, batch["pixel_values"], batch["labels"], [0.5, 1.0], repeats=1, warmup=0)
    assert [(p["token_keep_rate"], p["token_merge_r"]) for p in points] == [(0.5, 2), (1.0, 0)]
    with torch.no_grad(), model.keep_rates(1.0, 1.0, 0):
        dense = (model(batch["pixel_values"]).logits.argmax(-1) == batch["labels"]).float().mean().item()
    assert points[1]["accuracy"] == pytest.approx(dense)
    assert model.config.token_merge_r == 2  # restored
    header = operating_points_markdown(points).splitlines()[0]
    assert "tokens merged per layer" in header


def test_the_card_says_which_rates_merge():
    config = merging_model().config
    config.dense_sparse_keep_rates = [1.0, 0.5]
    text = operating_points_text(config, None)
    assert "every rate below 1.0 also merges 2 tokens per layer (`token_merge_r`), keep 1.0 none" in text


def test_a_merging_model_whose_own_keep_rate_is_the_dense_one_is_refused(digits, tmp_path):
    model = merging_model(token_keep_rate=1.0)
    with pytest.raises(ValueError, match=r"at its own `token_keep_rate` 1.0, .* sparse `keep_rates` \[0.5\]"):
        train(digits, tmp_path, model, [DenseSparseTraining([1.0, 0.5])], max_steps=1)


def test_an_r_too_large_at_the_sparsest_rate_is_refused_before_the_first_step(digits, tmp_path):
    model = merging_model(token_keep_rate=0.75)
    before = [p.detach().clone() for p in model.parameters()]
    technique = DenseSparseTraining([1.0, 0.75, 0.25])  # 16 -> 4 -> 2: layer 1 can merge 1
    with pytest.raises(ValueError, match=r"merges 2 tokens in layer 1.*the sparsest of `keep_rates`"):
        train(digits, tmp_path, model, [technique], max_steps=1)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))


# -- the keep-rate warm-up ----------------------------------------------------------------------------------------
def test_the_keep_rate_warm_up_merges_at_every_rate_on_the_way_to_the_target(digits, tmp_path):
    model = merging_model(token_keep_rate=0.25, token_merge_r=1)
    recorder = PassRecorder(model)
    train(digits, tmp_path, model, [KeepRateSchedule(warmup_fraction=0.25, decay_fraction=0.5)], max_steps=8)
    rates = [entry[0] for entry in recorder.passes]
    assert rates[0] == 1.0 and rates[-1] == 0.25 and len(set(rates)) > 3
    assert [entry[3] for entry in recorder.passes] == [final_patch_tokens(rate, 1) for rate in rates]


def test_a_warm_up_target_the_models_r_does_not_fit_is_refused_when_training_begins(digits, tmp_path):
    model = merging_model(token_keep_rate=1.0)
    with pytest.raises(ValueError, match=r"KeepRateSchedule's target keep rate 0.25: `token_merge_r` merges 2"):
        train(digits, tmp_path, model, [KeepRateSchedule(0.25, warmup_fraction=0.0, decay_fraction=0.5)])


# -- checkpoints --------------------------------------------------------------------------------------------------
def test_a_resumed_dense_sparse_merging_run_equals_the_uninterrupted_run(digits, tmp_path):
    def technique():  # resumed at an odd step, with the warm-up
        return DenseSparseTraining([1.0, 0.75, 0.5], warmup_fraction=0.2, decay_fraction=0.4)

    settings = {"max_steps": 5, "save_strategy": "steps", "save_steps": 3}
    full = train(digits, tmp_path / "full", merging_model(), [technique()], **settings)
    checkpoint = str(tmp_path / "full" / "checkpoint-3")
    resumed = train(digits, tmp_path / "resumed", merging_model(), [technique()], resume=checkpoint, **settings)
    for first, second in zip(full.model.parameters(), resumed.model.parameters(), strict=True):
        torch.testing.assert_close(first, second, rtol=0, atol=0)
    losses = [[e["loss"] for e in trainer.state.log_history if "loss" in e] for trainer in (full, resumed)]
    assert len(losses[0]) == 5 and losses[0] == losses[1]


def test_resuming_with_another_r_is_refused_naming_token_merge_r(digits, tmp_path):
    train(digits, tmp_path, merging_model(token_keep_rate=0.75), max_steps=2, save_strategy="steps", save_steps=2)
    model = merging_model(token_keep_rate=0.75, token_merge_r=3)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(
        TrainingRefused, match=r"^`token_merge_r` \(the model's config\): checkpoint-2 was trained with 2, this run "
    ):
        train(digits, tmp_path / "again", model, resume=str(tmp_path / "checkpoint-2"), max_steps=4)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))


# -- two processes ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> list[dict]:
    return run_on_two_processes(DDP_JOB, tmp_path_factory.mktemp("token_merging"))


@pytest.mark.parametrize("run", ["merging", "dense_sparse_checkpointed"])
def test_two_processes_end_with_identical_weights(reports, run):
    first, second = (report[run] for report in reports)
    assert first["world_size"] == second["world_size"] == 2
    assert first["parameters"] == second["parameters"]  # real DDP: the gradients through the averages were synced
    assert first["steps"] == second["steps"] == 6  # 96 examples / (16 x 2 processes) x 2 epochs
    assert first["changed"] and first["finite"]


def test_two_processes_merge_in_every_sparse_pass_and_never_in_the_dense_one(reports):
    for report in reports:
        assert set(map(tuple, report["merging"]["passes"])) == {(2, 4)}
        passes = report["dense_sparse_checkpointed"]["passes"]
        assert passes[0::2] == [[0, PATCHES]] * 6 and {tuple(p) for p in passes[1::2]} == {(2, 8), (2, 4)}
