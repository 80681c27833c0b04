"""Distillation terms (logits, token importance), the model's `token_importance` output, and teacher loading."""

import pytest
import torch
import torch.nn.functional as F

from hf_trilevel.modeling.token_reduction import class_token_attention
from hf_trilevel.token_training.distillation import (
    check_teacher_labels,
    importance_distillation,
    load_teacher,
    logit_distillation,
)

from .helpers import images, tiny_model, tiny_vit


# -- logits -------------------------------------------------------------------------------------------------------
def test_logit_distillation_is_zero_when_student_equals_teacher_and_positive_otherwise():
    logits = torch.randn(4, 10)
    assert torch.allclose(logit_distillation(logits, logits.clone(), 2.0), torch.zeros(4), atol=1e-6)
    assert torch.allclose(logit_distillation(logits + 3.0, logits, 2.0), torch.zeros(4), atol=1e-5)  # shift-free
    assert (logit_distillation(torch.randn(4, 10), logits, 2.0) > 0).all()


def test_logit_distillation_is_t_squared_times_the_kl_of_the_softened_distributions():
    student, teacher, temperature = torch.randn(3, 5), torch.randn(3, 5), 3.0
    p_teacher = F.softmax(teacher / temperature, dim=-1)
    expected = (p_teacher * (p_teacher.log() - F.log_softmax(student / temperature, dim=-1))).sum(-1) * 9.0
    torch.testing.assert_close(logit_distillation(student, teacher, temperature), expected)


def test_the_gradient_of_logit_distillation_reaches_the_student_only():
    student = torch.randn(4, 10, requires_grad=True)
    teacher = torch.randn(4, 10, requires_grad=True)
    logit_distillation(student, teacher, 1.0).sum().backward()
    assert student.grad is not None and student.grad.abs().sum() > 0 and teacher.grad is None


def test_logits_of_other_classes_are_refused():
    with pytest.raises(ValueError, match="must predict the same classes"):
        logit_distillation(torch.randn(2, 10), torch.randn(2, 3), 1.0)


# -- token importance ---------------------------------------------------------------------------------------------
def test_importance_distillation_is_zero_for_the_target_restricted_to_the_seen_patches():
    target = torch.randn(2, 8)
    student = target.clone()
    student[:, ::2] = float("-inf")  # this layer sees every second patch only
    assert torch.allclose(importance_distillation([student, target.clone()], target), torch.zeros(2), atol=1e-6)
    assert (importance_distillation([torch.randn(2, 8)], target) > 0).all()


def test_importance_distillation_has_finite_gradients_when_an_image_shares_no_patch_with_the_target():
    target = torch.randn(2, 4)
    target[1, :2] = float("-inf")
    student = torch.randn(2, 4)
    student[1, 2:] = float("-inf")  # image 1: seen patches and target patches do not overlap
    student.requires_grad_(True)
    loss = importance_distillation([student], target)
    assert loss[1] == 0 and loss[0] > 0
    loss.sum().backward()
    assert torch.isfinite(student.grad).all() and student.grad[1].abs().sum() == 0


def test_the_model_returns_each_pruning_layers_importance_then_the_last_layers_class_attention():
    model = tiny_model(token_keep_rate=0.5, token_prune_layers=[1, 2])
    pixels = images(2)
    outputs = model(pixels, output_token_importance=True, output_kept_token_indices=True)
    first, second, last = outputs.token_importance
    assert first.shape == second.shape == last.shape == (2, 64) and first.requires_grad
    assert torch.isfinite(first).all()  # layer 1 sees every patch
    seen = torch.isfinite(second)  # layer 2 sees the patches layer 1 kept
    after_first, after_second = (
        torch.zeros_like(seen).scatter(1, kept, True) for kept in outputs.kept_token_indices
    )  # the last layer sees what layer 2 kept
    assert torch.equal(seen, after_first) and torch.equal(torch.isfinite(last), after_second)
    # Layer 1 ranks by class-token attention: its importance is the log of it, at the original positions.
    captured = {}

    def keep_query_key(module, args, outputs):
        captured["qk"] = outputs[2]  # returns None: the output stays

    model.vit.layers[1].attention.register_forward_hook(keep_query_key)
    model(pixels)
    attention = class_token_attention(*captured["qk"], model.vit.layers[1].attention.scaling)
    torch.testing.assert_close(first, attention[:, 1:].log())


@pytest.mark.parametrize("reentrant", [True, False])
def test_importance_keeps_its_gradients_under_gradient_checkpointing(reentrant):
    model = tiny_model(token_keep_rate=0.5, token_prune_layers=[1, 3]).train()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
    outputs = model(images(2), output_token_importance=True)
    assert len(outputs.token_importance) == 3  # layer 1, layer 3 as a pruning layer, layer 3 as the last layer
    importance_distillation(list(outputs.token_importance[:-1]), outputs.token_importance[-1]).sum().backward()
    assert model.vit.layers[1].attention.q_proj.weight.grad.abs().sum() > 0


def test_the_last_layer_as_a_pruning_layer_reports_both_entries_over_the_same_patches():
    model = tiny_model(token_keep_rate=0.5, token_prune_layers=[1, 3])
    pruning, last = model(images(2), output_token_importance=True).token_importance[1:]
    torch.testing.assert_close(pruning, last)  # class attention ranks and is read: the same scores


def test_importance_is_recorded_only_when_asked_and_changes_no_output():
    model = tiny_model(token_keep_rate=0.5, attention_keep_rate=0.5)
    pixels = images(2)
    plain = model(pixels)
    recorded = model(pixels, output_token_importance=True)
    assert plain.token_importance is None and len(recorded.token_importance) == len(model.config.token_prune_layers) + 1
    torch.testing.assert_close(plain.logits, recorded.logits, rtol=0, atol=0)


# -- the teacher --------------------------------------------------------------------------------------------------
def teacher_config(names):
    return tiny_vit(num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in
                    enumerate(names)}).config  # fmt: skip


def test_teacher_labels_are_checked_by_count_and_by_name():
    check_teacher_labels(teacher_config(["cat", "dog"]), ["cat", "dog"], 2, "t")
    with pytest.raises(ValueError, match="predicts 2 classes but the data has 3"):
        check_teacher_labels(teacher_config(["cat", "dog"]), ["cat", "dog", "eel"], 3, "t")
    with pytest.raises(ValueError, match=r"has classes \['dog', 'cat'\] but the data's are \['cat', 'dog'\]"):
        check_teacher_labels(teacher_config(["dog", "cat"]), ["cat", "dog"], 2, "t")
    check_teacher_labels(tiny_vit(num_labels=2).config, ["cat", "dog"], 2, "t")  # placeholder names: count only


def test_load_teacher_returns_a_frozen_model_and_refuses_a_missing_folder(tmp_path):
    tiny_vit(num_labels=2, id2label={0: "cat", 1: "dog"}, label2id={"cat": 0, "dog": 1}).save_pretrained(tmp_path)
    teacher = load_teacher(str(tmp_path), label_names=["cat", "dog"], num_labels=2)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    with pytest.raises(ValueError, match=r"`teacher_model_name_or_path` .*missing': no such folder"):
        load_teacher(str(tmp_path / "missing"), num_labels=2)
