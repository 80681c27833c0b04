"""Dense/sparse training (SaiT): one set of weights for several keep rates, its schedule, losses and checkpoints."""

import json

import pytest
import torch
from transformers import TrainingArguments, ViTForImageClassification

from hf_trilevel import DenseSparseTraining, KeepRateSchedule, TriLevelTrainer, TriLevelViTForImageClassification
from hf_trilevel.token_training import operating_point
from hf_trilevel.token_training.dense_sparse import DISTILLATION_TERM, IMPORTANCE_TERM, SPARSE_TASK_TERM

from .helpers import images, tiny_vit
from .test_pruning_trainer import NUM_EXAMPLES, collate, tiny_classifier


@pytest.fixture(scope="module")
def digits():
    from hf_trilevel.image_data import load_digits_dataset

    from .test_pruning_trainer import to_pixels

    return load_digits_dataset(image_size=16)["train"].select(range(NUM_EXAMPLES)).with_transform(to_pixels)


def training_args(tmp_path, **overrides) -> TrainingArguments:
    settings = {
        "output_dir": str(tmp_path), "per_device_train_batch_size": 16, "num_train_epochs": 2, "learning_rate": 3e-3,
        "logging_steps": 1, "report_to": "none", "use_cpu": True, "remove_unused_columns": False,
        "save_strategy": "no", "disable_tqdm": True, "seed": 0, "dataloader_pin_memory": False,
    }  # fmt: skip
    return TrainingArguments(**{**settings, **overrides})


def train(digits, tmp_path, technique, model=None, resume=None, **args) -> TriLevelTrainer:
    model = model if model is not None else tiny_classifier(attention_keep_rate=0.5)
    trainer = TriLevelTrainer(
        model=model, args=training_args(tmp_path, **args), train_dataset=digits, data_collator=collate,
        callbacks=[technique],
    )  # fmt: skip
    trainer.train(resume_from_checkpoint=resume)
    return trainer


class PassRecorder:
    """Records the keep rates each training forward of a model ran at (a forward pre-hook: public torch API)."""

    def __init__(self, model):
        self.rates: list[tuple[float, float]] = []
        model.register_forward_pre_hook(self.record)
        self.model = model

    def record(self, module, args):
        if module.training:
            self.rates.append((module.config.token_keep_rate, module.config.attention_keep_rate))


# -- the schedule -------------------------------------------------------------------------------------------------
def test_each_step_runs_the_dense_pass_then_one_sparse_rate_in_turn(digits, tmp_path):
    model = tiny_classifier(attention_keep_rate=0.5)
    recorder = PassRecorder(model)
    train(digits, tmp_path, DenseSparseTraining([1.0, 0.5, 0.25]), model=model, num_train_epochs=1)
    steps = NUM_EXAMPLES // 16
    assert recorder.rates == [(1.0, 1.0), (0.5, 0.5), (1.0, 1.0), (0.25, 0.5)] * (steps // 2)


def test_every_rate_schedule_runs_all_sparse_rates_each_step(digits, tmp_path):
    model = tiny_classifier(attention_keep_rate=0.5)
    recorder = PassRecorder(model)
    train(digits, tmp_path, DenseSparseTraining([1.0, 0.5, 0.25], schedule="every_rate"), model=model, max_steps=2)
    assert recorder.rates == [(1.0, 1.0), (0.5, 0.5), (0.25, 0.5)] * 2


def test_without_the_dense_rate_the_densest_rate_is_the_main_pass(digits, tmp_path):
    model = tiny_classifier(attention_keep_rate=0.5)
    recorder = PassRecorder(model)
    train(digits, tmp_path, DenseSparseTraining([0.5, 0.8]), model=model, max_steps=2)
    assert recorder.rates == [(0.8, 0.5), (0.5, 0.5)] * 2


def test_the_warm_up_lowers_every_sparse_rate_from_dense_to_its_target():
    technique = DenseSparseTraining([1.0, 0.6, 0.2], warmup_fraction=0.25, decay_fraction=0.5)
    technique._total_steps = 100
    assert technique.warmed_rate(0.6, 0) == 1.0 and technique.warmed_rate(0.2, 25) == 1.0
    assert technique.warmed_rate(0.6, 50) == pytest.approx(0.8) and technique.warmed_rate(0.2, 50) == pytest.approx(0.6)
    assert technique.warmed_rate(0.6, 75) == pytest.approx(0.6) and technique.warmed_rate(0.2, 99) == pytest.approx(0.2)
    assert technique.pass_rates(0.6, 0) == (1.0, 1.0, 0)  # warmed to 1.0: a dense pass (merging off too)


def test_operating_point_one_is_fully_dense_and_others_keep_the_attention_rate():
    config = tiny_classifier(attention_keep_rate=0.4).config
    assert operating_point(config, 1.0) == (1.0, 1.0, 0)
    assert operating_point(config, 0.7) == (0.7, 0.4, 0)


def test_evaluation_and_the_saved_config_see_the_models_own_rates_and_the_trained_rates(digits, tmp_path):
    trainer = train(digits, tmp_path, DenseSparseTraining([1.0, 0.5, 0.25]), max_steps=3)
    config = trainer.model.config
    assert (config.token_keep_rate, config.attention_keep_rate) == (0.5, 0.5)
    trainer.save_model(str(tmp_path / "saved"))
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert saved["dense_sparse_keep_rates"] == [1.0, 0.5, 0.25]


# -- one set of weights -------------------------------------------------------------------------------------------
def test_one_state_dict_serves_every_rate_and_keep_one_is_transformers_vit(digits, tmp_path):
    fresh = tiny_classifier(attention_keep_rate=0.5)
    trainer = train(digits, tmp_path, DenseSparseTraining([1.0, 0.5, 0.25]), max_steps=4)
    model = trainer.model.eval()
    state = model.state_dict()
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in fresh.state_dict().items()}
    assert any(not torch.equal(state[k], v) for k, v in fresh.state_dict().items())  # it trained
    pixels = images(4, size=16)
    with torch.no_grad():
        outputs = {}
        for rate in (1.0, 0.5, 0.25):
            with model.keep_rates(*operating_point(model.config, rate)):
                outputs[rate] = model(pixels, output_kept_token_indices=True)
    assert [outputs[r].kept_token_indices[0].shape[1] for r in (1.0, 0.5, 0.25)] == [16, 8, 4]
    model.save_pretrained(tmp_path / "shared")
    vit = ViTForImageClassification.from_pretrained(tmp_path / "shared", attn_implementation="sdpa").eval()
    with torch.no_grad():
        torch.testing.assert_close(outputs[1.0].logits, vit(pixels).logits, rtol=1e-5, atol=1e-5)
    reloaded = TriLevelViTForImageClassification.from_pretrained(tmp_path / "shared").eval()
    with torch.no_grad(), reloaded.keep_rates(*operating_point(reloaded.config, 0.25)):
        torch.testing.assert_close(reloaded(pixels).logits, outputs[0.25].logits)


# -- losses -------------------------------------------------------------------------------------------------------
def test_every_term_is_logged_and_zero_weights_turn_terms_off(digits, tmp_path):
    trainer = train(digits, tmp_path / "on", DenseSparseTraining([1.0, 0.5], importance_weight=0.5), max_steps=2)
    logged = trainer.state.log_history[0]
    for term in ("task", SPARSE_TASK_TERM, DISTILLATION_TERM, IMPORTANCE_TERM):
        assert f"loss/{term}" in logged
    assert logged["loss"] == pytest.approx(sum(v for k, v in logged.items() if k.startswith("loss/")), rel=1e-4)
    off = DenseSparseTraining([1.0, 0.5], distillation_weight=0.0, importance_weight=0.0)
    logged = train(digits, tmp_path / "off", off, max_steps=2).state.log_history[0]
    assert not any(f"loss/{term}" in logged for term in (DISTILLATION_TERM, IMPORTANCE_TERM))
    none = train(digits, tmp_path / "none", DenseSparseTraining([1.0, 0.5], distillation="none"), max_steps=2)
    assert f"loss/{DISTILLATION_TERM}" not in none.state.log_history[0]


def test_self_distillation_changes_training_and_none_does_not_distil(digits, tmp_path):
    def weights(**settings):
        trainer = train(digits, tmp_path / str(len(settings)), DenseSparseTraining([1.0, 0.5], **settings), max_steps=3)
        return torch.cat([p.detach().flatten() for p in trainer.model.parameters()])

    assert not torch.allclose(weights(distillation="none"), weights(distillation="self", distillation_weight=5.0))


def test_example_weights_of_example_pruning_reach_the_sparse_terms(digits, tmp_path):
    from hf_trilevel import ExamplePruning

    model = tiny_classifier(attention_keep_rate=0.5)
    trainer = TriLevelTrainer(
        model=model, args=training_args(tmp_path, num_train_epochs=4), train_dataset=digits, data_collator=collate,
        callbacks=[ExamplePruning("loss", prune_ratio=0.5), DenseSparseTraining([1.0, 0.5])],
    )  # fmt: skip
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert all(f"loss/{SPARSE_TASK_TERM}" in entry for entry in logged)
    assert trainer.technique_metrics()["example_fraction_seen"] < 1.0


# -- the teacher --------------------------------------------------------------------------------------------------
def test_a_teacher_gets_no_gradient_no_optimizer_state_and_is_not_saved(digits, tmp_path):
    teacher = tiny_vit(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, num_labels=10)  # fmt: skip
    before = {name: p.detach().clone() for name, p in teacher.named_parameters()}
    technique = DenseSparseTraining([1.0, 0.5], distillation="teacher", teacher=teacher)
    trainer = train(digits, tmp_path, technique, max_steps=3)
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(p, before[name]) for name, p in teacher.named_parameters())
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimized.isdisjoint(id(p) for p in teacher.parameters())
    assert not any(id(p) in trainer.optimizer.state for p in teacher.parameters())
    assert len(list(trainer.model.parameters())) == len(list(tiny_classifier().parameters()))
    assert f"loss/{DISTILLATION_TERM}" in trainer.state.log_history[0]


def test_a_teacher_with_other_classes_or_image_size_is_refused_before_training(digits, tmp_path):
    shape = {"patch_size": 4, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    for teacher, message in (
        (tiny_vit(image_size=16, num_labels=3, **shape), "predicts 3 classes but the model 10"),
        (tiny_vit(image_size=32, num_labels=10, **shape), "teacher's `image_size` is 32"),
    ):
        technique = DenseSparseTraining([1.0, 0.5], distillation="teacher", teacher=teacher)
        with pytest.raises(ValueError, match=message):
            train(digits, tmp_path, technique, max_steps=1)


# -- checkpoints and resume ---------------------------------------------------------------------------------------
def test_a_resumed_run_equals_the_uninterrupted_run(digits, tmp_path):
    def technique():  # resumed at an odd step, with the warm-up: a per-run counter would pick other rates
        return DenseSparseTraining([1.0, 0.5, 0.25], importance_weight=0.3, warmup_fraction=0.2, decay_fraction=0.5)

    full = train(digits, tmp_path / "full", technique(), save_strategy="steps", save_steps=3)
    resumed = train(
        digits, tmp_path / "resumed", technique(), save_strategy="steps", save_steps=3,
        resume=str(tmp_path / "full" / "checkpoint-3"),
    )  # fmt: skip
    for first, second in zip(full.model.parameters(), resumed.model.parameters(), strict=True):
        torch.testing.assert_close(first, second, rtol=0, atol=0)
    losses = [[e["loss"] for e in trainer.state.log_history if "loss" in e] for trainer in (full, resumed)]
    assert len(losses[0]) == 12 and losses[0] == losses[1]  # the resumed log carries the checkpoint's first 3


# -- bad input ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"keep_rates": []}, r"`keep_rates` must be a list of at least two keep rates in \(0, 1\], got \[\]"),
        ({"keep_rates": None}, "`keep_rates` must be a list of at least two"),
        ({"keep_rates": [0.7]}, "at least two keep rates"),
        ({"keep_rates": [1.0, 1.2]}, r"`keep_rates\[1\]` must be in \(0, 1\]"),
        ({"keep_rates": [1.0, 0.0]}, r"`keep_rates\[1\]` must be in \(0, 1\]"),
        ({"keep_rates": [0.5, 0.5]}, "distinct"),
        ({"schedule": "random"}, "`schedule` must be one of"),
        ({"distillation": "both"}, "`distillation` must be one of"),
        ({"distillation": "teacher"}, "needs a `teacher` model"),
        ({"distillation_temperature": 0.0}, "`distillation_temperature` must be in"),
        ({"distillation_weight": -1.0}, "`distillation_weight` must be in"),
        ({"importance_weight": -0.1}, "`importance_weight` must be in"),
        ({"warmup_fraction": 0.1}, "needs `decay_fraction` > 0"),
        ({"warmup_fraction": 0.5, "decay_fraction": 0.6}, r"`warmup_fraction \+ decay_fraction` must be <= 1"),
    ],
)
def test_bad_settings_are_refused_at_construction(settings, message):
    with pytest.raises(ValueError, match=message):
        DenseSparseTraining(**settings)


def test_the_stock_trainer_is_told_to_use_trilevel_trainer(digits, tmp_path):
    from transformers import Trainer

    trainer = Trainer(
        model=tiny_classifier(), args=training_args(tmp_path), train_dataset=digits, data_collator=collate,
        callbacks=[DenseSparseTraining([1.0, 0.5])],
    )  # fmt: skip
    with pytest.raises(RuntimeError, match=r"use `hf_trilevel\.TriLevelTrainer`"):
        trainer.train()


def test_a_second_keep_rate_setter_is_refused_before_training(digits, tmp_path):
    trainer = TriLevelTrainer(
        model=tiny_classifier(), args=training_args(tmp_path), train_dataset=digits, data_collator=collate,
        callbacks=[KeepRateSchedule(), DenseSparseTraining([1.0, 0.5])],
    )  # fmt: skip
    with pytest.raises(ValueError, match="KeepRateSchedule and DenseSparseTraining all set the model's keep"):
        trainer.train()


def test_a_model_without_pruning_layers_is_refused(digits, tmp_path):
    technique = DenseSparseTraining([1.0, 0.5])
    with pytest.raises(ValueError, match="dense/sparse training needs pruning layers"):
        train(digits, tmp_path, technique, model=tiny_classifier(token_prune_layers=[]), max_steps=1)


def test_a_model_whose_own_keep_rate_was_not_trained_is_refused(digits, tmp_path):
    with pytest.raises(ValueError, match=r"`token_keep_rate` \(0.5, its default operating point"):
        train(digits, tmp_path, DenseSparseTraining([1.0, 0.7, 0.3]), max_steps=1)


def test_the_sparse_terms_are_weighted_per_example_like_the_task_loss():
    from hf_trilevel import TrainingBatch
    from hf_trilevel.token_training.distillation import logit_distillation
    from hf_trilevel.training.losses import per_example_loss

    model = tiny_classifier()
    pixels, labels = images(4, size=16), torch.tensor([0, 1, 2, 3])
    weights = torch.tensor([0.0, 1.0, 2.0, 0.5])
    teacher = torch.randn(4, 10)
    outputs = model(pixels)
    batch = TrainingBatch(
        {"pixel_values": pixels}, labels, outputs, per_example_loss(outputs.logits, labels, model.config),
        example_weights=weights, task_loss=lambda out: per_example_loss(out.logits, labels, model.config),
    )  # fmt: skip
    technique = DenseSparseTraining([1.0, 0.5], distillation_weight=3.0, distillation_temperature=2.0)
    terms = technique._pass_terms(batch, outputs, teacher, None)
    expected_task = (per_example_loss(outputs.logits, labels, model.config) * weights).mean()
    expected_kd = 3.0 * (logit_distillation(outputs.logits, teacher, 2.0) * weights).mean()
    torch.testing.assert_close(terms[SPARSE_TASK_TERM], expected_task)
    torch.testing.assert_close(terms[DISTILLATION_TERM], expected_kd)


@pytest.mark.parametrize(
    "selector",
    [
        {"token_selector": "class_attention", "token_fusion": True},
        {"token_selector": "learned"},
        {"token_selector": "adaptive", "token_keep_mass": 0.6},
        {"token_selector": "adaptive", "token_importance": "learned", "token_keep_mass": 0.6},
    ],
    ids=["class_attention_fusion", "learned", "adaptive", "adaptive_learned"],
)
def test_every_token_selector_trains_with_every_term(digits, tmp_path, selector):
    model = tiny_classifier(attention_keep_rate=0.5, **selector)
    technique = DenseSparseTraining([1.0, 0.5, 0.25], schedule="every_rate", importance_weight=0.5)
    trainer = train(digits, tmp_path, technique, model=model, max_steps=2)
    for entry in [e for e in trainer.state.log_history if "loss" in e]:
        assert all(f"loss/{term}" in entry for term in (SPARSE_TASK_TERM, DISTILLATION_TERM, IMPORTANCE_TERM))
        assert all(torch.isfinite(torch.tensor(v)) for k, v in entry.items() if k.startswith("loss"))
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
