"""WeightSparsity under TriLevelTrainer: masks hold through AdamW, counts stay fixed, checkpoints resume."""

import pytest
import torch
from safetensors.torch import load_file
from transformers import Trainer, TrainerCallback

from hf_trilevel import TriLevelTrainer, TriLevelViTForImageClassification, WeightSparsity
from hf_trilevel.training.technique_manifest import MANIFEST_NAME
from hf_trilevel.weight_sparsity import structured_unit_masks
from hf_trilevel.weight_sparsity.masks import is_two_four, masked_weights
from hf_trilevel.weight_sparsity.structured_units import unit_layers

from .test_dense_sparse import digits, train, training_args  # noqa: F401 (the digits fixture)
from .test_pruning_trainer import collate, tiny_classifier


class MaskAudit(TrainerCallback):
    """After every optimizer step: each masked weight's active count, and whether anything masked is non-zero
    (in the weights or in AdamW's moments)."""

    def __init__(self, technique: WeightSparsity):
        self.technique = technique
        self.counts: list[list[int]] = []
        self.leaks: list[str] = []
        self.masks: list[dict[str, torch.Tensor]] = []

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        masks = self.technique.masks
        if masks.mode == "unstructured":
            current = {name: mask.clone() for name, mask in masks.masks.items()}
            self.counts.append([int(mask.sum()) for mask in current.values()])
            for name, weight in masks.weights.items():
                moments = optimizer.optimizer.state[weight] if hasattr(optimizer, "optimizer") else {}
                tensors = [weight.detach()] + [moments[key] for key in ("exp_avg", "exp_avg_sq") if key in moments]
                if any(tensor[~current[name]].any() for tensor in tensors):
                    self.leaks.append(f"{name} at step {state.global_step}")
        else:
            current = {f"heads/{i}": m.clone() for i, m in enumerate(masks.heads)}
            current |= {f"neurons/{i}": m.clone() for i, m in enumerate(masks.neurons)}
            self.counts.append([int(mask.sum()) for mask in current.values()])
            for index, layer in enumerate(masks.layers):
                rows = masks.heads[index].repeat_interleave(layer.head_dim)
                inputs = [(p, rows) for p in layer.head_input_params()]
                inputs += [(p, masks.neurons[index]) for p in layer.neuron_input_params()]
                for param, kept in inputs:
                    moments = optimizer.optimizer.state[param]
                    tensors = [param.detach()] + [moments[key] for key in ("exp_avg", "exp_avg_sq") if key in moments]
                    if any(tensor[~kept].any() for tensor in tensors):
                        self.leaks.append(f"inactive units of layer {index} at step {state.global_step}")
        self.masks.append(current)


def run_with_audit(digits, tmp_path, **settings):  # noqa: F811
    technique = WeightSparsity(**{"update_interval": 2, **settings})
    audit = MaskAudit(technique)
    trainer = TriLevelTrainer(
        model=tiny_classifier(attention_keep_rate=0.5), args=training_args(tmp_path, weight_decay=0.1),
        train_dataset=digits, data_collator=collate, callbacks=[technique, audit],
    )  # fmt: skip
    trainer.train()
    return trainer, technique, audit


def moved_steps(audit: MaskAudit) -> list[int]:
    """The steps (1-based) after which some mask differs from the step before."""
    return [
        step + 1
        for step in range(1, len(audit.masks))
        if any(not torch.equal(audit.masks[step][k], audit.masks[step - 1][k]) for k in audit.masks[step])
    ]


def test_unstructured_masks_hold_through_adamw_and_keep_each_layers_count(digits, tmp_path):  # noqa: F811
    trainer, technique, audit = run_with_audit(digits, tmp_path, sparsity="unstructured", density=0.3)
    assert trainer.state.max_steps == 12 and len(audit.counts) == 12
    assert audit.leaks == []  # masked weights and their Adam moments stay exactly zero, weight decay included
    assert all(counts == audit.counts[0] for counts in audit.counts)
    assert moved_steps(audit) == [2, 4, 6, 8]  # every 2 steps until 0.8 x 12 = 9.6
    assert technique.updates == 4
    assert technique.masks.density() == pytest.approx(0.3, abs=0.01)
    saved = sum(int(w.count_nonzero()) for w in masked_weights(trainer.model).values())
    assert saved <= sum(audit.counts[-1])


def test_structured_masks_keep_unit_counts_and_zero_the_whole_unit_at_the_end(digits, tmp_path):  # noqa: F811
    trainer, technique, audit = run_with_audit(
        digits, tmp_path, sparsity="structured", head_density=0.5, neuron_density=0.25
    )
    assert audit.leaks == []
    assert all(counts == [1, 1, 16, 16] for counts in audit.counts)  # heads/0, heads/1, neurons/0, neurons/1
    assert moved_steps(audit)  # heads and neurons were swapped
    masks = technique.masks
    for layer, heads, neurons in zip(unit_layers(trainer.model), masks.heads, masks.neurons, strict=True):
        columns = heads.repeat_interleave(layer.head_dim)
        assert not layer.attention.o_proj.weight[:, ~columns].any()  # output sides zeroed at the end
        assert not layer.mlp.fc2.weight[:, ~neurons].any()
        assert layer.mlp.fc1.weight[neurons].abs().sum(1).gt(0).all()  # every kept neuron trained


def test_2_4_pattern_holds_at_every_step(digits, tmp_path):  # noqa: F811
    audit = run_with_audit(digits, tmp_path, sparsity="unstructured", pattern="2:4")[2]
    assert audit.leaks == [] and moved_steps(audit)
    assert all(is_two_four(mask) for masks in audit.masks for mask in masks.values())


def test_one_shot_trains_dense_then_prunes_once_and_keeps_the_masks(digits, tmp_path):  # noqa: F811
    _, technique, audit = run_with_audit(
        digits, tmp_path, sparsity="structured", head_density=0.5, neuron_density=0.5, one_shot=True, update_interval=3
    )
    assert audit.counts[1] == [2, 2, 64, 64] and audit.counts[2] == [1, 1, 32, 32]  # pruned at step 3
    assert moved_steps(audit) == [3] and technique.updates == 1


def test_the_same_seed_draws_the_same_masks_and_another_seed_others(digits, tmp_path):  # noqa: F811
    runs = [run_with_audit(digits, tmp_path / str(i), sparsity="unstructured", seed=seed)[1] for i, seed in
            enumerate((3, 3, 4))]  # fmt: skip
    first, second, third = (technique.masks.masks for technique in runs)
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert not all(torch.equal(first[name], third[name]) for name in first)


@pytest.mark.parametrize("sparsity", ["unstructured", "structured"])
def test_a_resumed_run_equals_the_uninterrupted_run(digits, tmp_path, sparsity):  # noqa: F811
    def technique():
        return WeightSparsity(sparsity, update_interval=2)

    full = train(digits, tmp_path / "full", technique(), save_strategy="steps", save_steps=3)
    saved = load_file(str(tmp_path / "full" / "checkpoint-3" / "weight_sparsity.safetensors"))
    assert saved and all(tensor.dtype in (torch.bool, torch.float32) for tensor in saved.values())
    resumed = train(
        digits, tmp_path / "resumed", technique(), save_strategy="steps", save_steps=3,
        resume=str(tmp_path / "full" / "checkpoint-3"),
    )  # fmt: skip
    for first, second in zip(full.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(first, second)
    states = [next(t for t in trainer.techniques() if t.name == "weight_sparsity").state_tensors() for trainer in
              (full, resumed)]  # fmt: skip
    assert states[0].keys() == states[1].keys()
    for name, tensor in states[0].items():
        assert torch.equal(tensor, states[1][name]), name


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"sparsity": "blocks"}, r"`sparsity` must be one of \['unstructured', 'structured'\]"),
        ({"density": 0.0}, r"`density` must be in \(0, 1\]"),
        ({"density": 1.5}, r"`density` must be in \(0, 1\]"),
        ({"sparsity": "structured", "head_density": -0.5}, r"`head_density` must be in \(0, 1\]"),
        ({"pattern": "4:8"}, r"`pattern` must be one of"),
        ({"pattern": "2:4", "density": 0.3}, r"`density` must be 0.5 \(or unset\) with pattern '2:4'"),
        ({"sparsity": "structured", "pattern": "2:4"}, r"use it with sparsity 'unstructured'"),
        ({"update_interval": 0}, r"`update_interval` must be an integer"),
        ({"final_death_rate": 0.9}, r"`final_death_rate` must be in \[0, 0.5\]"),
        ({"initial_mask": "zeros"}, r"`initial_mask` must be one of"),
    ],
)
def test_bad_settings_are_refused_at_construction(settings, message):
    with pytest.raises(ValueError, match=message):
        WeightSparsity(**settings)


def test_an_update_interval_longer_than_the_run_is_refused_before_training(digits, tmp_path):  # noqa: F811
    with pytest.raises(
        ValueError, match=r"`update_interval` 10 is longer .*`end_fraction` 0.8 of 12 optimizer steps = 9"
    ):
        train(digits, tmp_path, WeightSparsity(update_interval=10))
    with pytest.raises(ValueError, match=r"`update_interval` 5 is longer .* of 5 optimizer steps = 4"):
        train(digits, tmp_path, WeightSparsity(update_interval=5), max_steps=5)


def test_a_density_that_leaves_a_layer_without_heads_is_refused(digits, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match=r"`head_density` 0.2 leaves no unit of the 2 in layer 0"):
        train(digits, tmp_path, WeightSparsity("structured", head_density=0.2, update_interval=2))


def test_the_stock_trainer_is_told_to_use_trilevel_trainer(digits, tmp_path):  # noqa: F811
    trainer = Trainer(
        model=tiny_classifier(), args=training_args(tmp_path), train_dataset=digits, data_collator=collate,
        callbacks=[WeightSparsity(update_interval=2)],
    )  # fmt: skip
    with pytest.raises(RuntimeError, match=r"Use `hf_trilevel\.TriLevelTrainer`"):
        trainer.train()


def test_resuming_with_another_sparsity_setting_is_refused(digits, tmp_path):  # noqa: F811
    train(digits, tmp_path / "run", WeightSparsity(update_interval=2), save_strategy="steps", save_steps=3)
    checkpoint = tmp_path / "run" / "checkpoint-3"
    with pytest.raises(ValueError, match=r"`density` \(weight_sparsity\): checkpoint-3 was trained with 0.5, this run"):
        train(digits, tmp_path / "again", WeightSparsity(density=0.3, update_interval=2), resume=str(checkpoint))
    # A checkpoint written before the trainer's record of techniques: the technique's own state is compared, on every
    # setting it saved (the update interval too, which shapes the masks the resumed run inherits).
    (checkpoint / MANIFEST_NAME).unlink()
    with pytest.raises(ValueError, match=r"trained with weight sparsity `update_interval` 2, this run asks for 3"):
        train(digits, tmp_path / "again", WeightSparsity(update_interval=3), resume=str(checkpoint))


def test_load_best_model_at_end_keeps_the_best_checkpoints_masks(digits, tmp_path):  # noqa: F811
    for sparsity in ("unstructured", "structured"):
        technique = WeightSparsity(sparsity, update_interval=1)
        trainer = TriLevelTrainer(
            model=tiny_classifier(), data_collator=collate, train_dataset=digits, eval_dataset=digits,
            args=training_args(tmp_path / sparsity, eval_strategy="steps", eval_steps=3, save_strategy="steps",
                               save_steps=3, load_best_model_at_end=True, metric_for_best_model="loss",
                               greater_is_better=True),  # the highest loss: an early checkpoint "wins"
            callbacks=[technique],
        )  # fmt: skip
        trainer.train()
        best = trainer.state.best_model_checkpoint
        assert best is not None and not best.endswith("checkpoint-12")  # otherwise the test shows nothing
        saved = load_file(f"{best}/weight_sparsity.safetensors")
        current = technique.state_tensors()
        masks = [key for key in saved if not key.startswith("taylor/")]
        assert all(torch.equal(saved[key].cpu(), current[key].cpu()) for key in masks), sparsity
        weights = TriLevelViTForImageClassification.from_pretrained(best).state_dict()
        for name, weight in trainer.model.state_dict().items():
            if sparsity == "unstructured" or not name.endswith(("o_proj.weight", "fc2.weight")):
                assert torch.equal(weight, weights[name]), name  # the best weights, untouched by the final masks
        if sparsity == "structured":  # and the pruned units' output sides zeroed by the best masks
            assert [m.tolist() for m in structured_unit_masks(trainer.model)[0]] == [
                saved[f"heads/{i}"].tolist() for i in range(2)
            ]


class SkipSteps(TrainerCallback):
    """Marks the optimizer steps `steps` as skipped, the way accelerate reports an fp16 overflow."""

    def __init__(self, steps):
        self.steps = set(steps)

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        optimizer._is_overflow = state.global_step + 1 in self.steps

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        optimizer._is_overflow = False


def test_a_skipped_optimizer_step_makes_no_update(digits, tmp_path):  # noqa: F811
    technique = WeightSparsity("structured", update_interval=2)
    audit = MaskAudit(technique)
    trainer = TriLevelTrainer(
        model=tiny_classifier(), args=training_args(tmp_path), train_dataset=digits, data_collator=collate,
        callbacks=[technique, audit, SkipSteps({4, 5, 6})],
    )  # fmt: skip
    trainer.train()
    assert technique.updates == 2  # at steps 2 and 8; the updates of steps 4 and 6 were skipped with their steps
    assert all(torch.equal(audit.masks[2][key], audit.masks[6][key]) for key in audit.masks[2])  # steps 3 to 7


def test_regrown_neurons_learn_under_an_activation_flat_at_zero(digits, tmp_path):  # noqa: F811
    technique = WeightSparsity("structured", neuron_density=0.5, update_interval=1)
    train(digits, tmp_path, technique, model=tiny_classifier(hidden_act="relu"))
    for layer, neurons in zip(technique.masks.layers, technique.masks.neurons, strict=True):
        assert layer.mlp.fc1.weight[neurons].abs().sum(1).gt(0).all()  # relu'(0) = 0: a zero row would stay zero


class MasksAtBegin(TrainerCallback):
    def __init__(self, technique):
        self.technique, self.seen = technique, []

    def on_train_begin(self, args, state, control, **kwargs):
        self.seen.append([mask.clone() for mask in self.technique.masks.neurons])


def test_a_second_train_call_continues_from_the_trained_masks(digits, tmp_path):  # noqa: F811
    technique = WeightSparsity("structured", update_interval=2)
    recorder = MasksAtBegin(technique)
    trainer = TriLevelTrainer(
        model=tiny_classifier(), args=training_args(tmp_path), train_dataset=digits, data_collator=collate,
        callbacks=[technique, recorder],
    )  # fmt: skip
    trainer.train()
    trained = [mask.clone() for mask in technique.masks.neurons]
    assert not all(torch.equal(a, b) for a, b in zip(recorder.seen[0], trained, strict=True))
    trainer.train()
    assert all(torch.equal(a, b) for a, b in zip(recorder.seen[1], trained, strict=True))
    assert technique.updates == 4  # counted afresh for the second run
