"""Per-example losses equal the model's own loss function and the Trainer's label smoothing, for every problem type."""

import pytest
import torch
from transformers.trainer_pt_utils import LabelSmoother

from hf_trilevel.training.losses import counted_examples, per_example_loss, reduce_per_example_loss

from .helpers import images, tiny_model


def logits_and_labels(problem_type: str, num_labels: int = 5, batch: int = 6):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(batch, num_labels, generator=generator)
    if problem_type == "single_label_classification":
        labels = torch.randint(0, num_labels, (batch,), generator=generator)
    elif problem_type == "multi_label_classification":
        labels = (torch.rand(batch, num_labels, generator=generator) > 0.5).float()
    else:
        labels = torch.randn(batch, num_labels, generator=generator)
    return logits, labels


@pytest.mark.parametrize("problem_type", ["single_label_classification", "multi_label_classification", "regression"])
def test_the_mean_of_per_example_losses_is_the_models_own_loss(problem_type):
    model = tiny_model(problem_type=problem_type)
    logits, labels = logits_and_labels(problem_type)
    expected = model.loss_function(labels, logits, model.config)
    losses = per_example_loss(logits, labels, model.config)
    assert losses.shape == (6,)
    torch.testing.assert_close(losses.mean(), expected)


def test_an_unset_problem_type_is_chosen_as_transformers_chooses_it():
    model = tiny_model()
    assert model.config.problem_type is None
    logits, labels = logits_and_labels("single_label_classification")
    per_example_loss(logits, labels, model.config)
    assert model.config.problem_type == "single_label_classification"


def test_single_output_regression_matches_the_models_loss():
    model = tiny_model(num_labels=1)
    logits, labels = torch.randn(4, 1), torch.randn(4)
    torch.testing.assert_close(
        per_example_loss(logits, labels, model.config).mean(), model.loss_function(labels, logits, model.config)
    )


def test_label_smoothing_matches_the_trainers_label_smoother_and_ignored_labels_count_zero():
    model = tiny_model()
    logits, labels = logits_and_labels("single_label_classification")
    labels[2] = -100
    losses = per_example_loss(logits, labels, model.config, label_smoothing=0.1)
    assert losses[2] == 0
    expected = LabelSmoother(epsilon=0.1)({"logits": logits}, labels, num_items_in_batch=5)
    torch.testing.assert_close(losses.sum() / 5, expected)


def test_a_model_forward_loss_equals_the_sum_over_examples_divided_by_the_items():
    model = tiny_model().train()
    pixels, labels = images(4), torch.tensor([0, 1, 2, 3])
    torch.manual_seed(0)
    outputs = model(pixels, labels=labels, num_items_in_batch=torch.tensor(8))
    losses = per_example_loss(outputs.logits, labels, model.config)
    loss, share = reduce_per_example_loss(losses, labels, torch.tensor(8), num_processes=1)
    torch.testing.assert_close(loss, outputs.loss)
    assert float(share) == 0.5


def test_multi_label_items_are_counted_per_example():
    labels = torch.ones(3, 4)
    assert counted_examples(labels, 12) == 3
    loss, share = reduce_per_example_loss(torch.tensor([1.0, 2.0, 3.0]), labels, 12, num_processes=2)
    assert float(loss) == pytest.approx(6.0 * 2 / 3) and float(share) == pytest.approx(2.0)
