"""The learned token selector: a scorer per pruning layer, Gumbel top-k with straight-through gates, real removal."""

import pytest
import torch
from torch import nn

from hf_trilevel import TriLevelViTConfig, TriLevelViTForImageClassification
from hf_trilevel.modeling.token_reduction import gumbel_top_tokens, num_kept_tokens
from hf_trilevel.modeling.token_selectors import LearnedSelector, TokenScorer

from .helpers import images, sharpen_attention, tiny_model

LEARNED = {"token_selector": "learned", "token_keep_rate": 0.5, "token_prune_layers": [1, 2, 3]}


def scorer_parameters(model) -> dict[str, nn.Parameter]:
    return {name: parameter for name, parameter in model.named_parameters() if ".scorer." in name}


def test_every_pruning_layer_owns_a_scorer_whose_weights_are_in_the_state_dict():
    model = tiny_model(**LEARNED)
    layers = model.vit.layers
    assert [isinstance(layer.token_selector, LearnedSelector) for layer in layers] == [False, True, True, True]
    assert all(isinstance(layer.token_selector.scorer, TokenScorer) for layer in layers[1:])
    assert {name.split(".scorer.")[0] for name in scorer_parameters(model)} == {
        f"vit.layers.{index}.token_selector" for index in (1, 2, 3)
    }


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("token_fusion", [False, True])
def test_exactly_k_tokens_are_kept_per_image_in_training_and_evaluation(training, token_fusion):
    model = tiny_model(**LEARNED, token_fusion=token_fusion).train(training)
    outputs = model(images(4), output_kept_token_indices=True)
    expected, patches = [], 64
    for _ in range(3):
        patches = num_kept_tokens(patches, 0.5)
        expected.append(patches)
    assert [kept.shape[1] for kept in outputs.kept_token_indices] == expected
    assert [counts.tolist() for counts in outputs.kept_token_counts] == [[count] * 4 for count in expected]
    for kept in outputs.kept_token_indices:  # distinct real patches, ascending: physically gathered, not masked
        assert (kept >= 0).all() and (kept.diff(dim=1) > 0).all()


def test_a_fresh_scorer_ranks_like_class_attention_so_evaluation_matches_it_exactly():
    learned = tiny_model(**LEARNED, token_fusion=True, attention_keep_rate=0.5)
    plain = TriLevelViTForImageClassification(
        TriLevelViTConfig(**{**learned.config.to_dict(), "token_selector": "class_attention"})
    )
    missing, unexpected = plain.load_state_dict(learned.state_dict(), strict=False)
    assert not missing and unexpected and all(".scorer." in name for name in unexpected)
    with torch.no_grad():
        assert torch.equal(learned(images(3)).logits, plain.eval()(images(3)).logits)


def test_a_class_attention_checkpoint_loads_into_the_learned_selector_with_zeroed_scorer_outputs(tmp_path):
    plain = tiny_model(token_keep_rate=0.5, token_prune_layers=[1, 2, 3])
    plain.save_pretrained(tmp_path)
    learned = TriLevelViTForImageClassification.from_pretrained(tmp_path, token_selector="learned").eval()
    for layer in learned.vit.layers[1:]:
        output = layer.token_selector.scorer.output
        assert torch.count_nonzero(output.weight) == 0 and torch.count_nonzero(output.bias) == 0
        assert torch.count_nonzero(layer.token_selector.scorer.hidden.weight) > 0  # the rest is initialised
    with torch.no_grad():
        assert torch.equal(learned(images(3)).logits, plain(images(3)).logits)


def test_a_backward_pass_gives_every_scorer_gradients_through_the_straight_through_gates():
    # Not at the last layer: the patches it keeps never reach the class token, so its scorer gets no gradient.
    model = tiny_model(**{**LEARNED, "token_prune_layers": [0, 1, 2]}).train()
    model.config.token_selector_temperature = 1.0
    labels = torch.tensor([0, 1, 2, 3])
    torch.manual_seed(0)
    model(images(4), labels=labels).loss.backward()
    outputs_grad = {name: p.grad for name, p in scorer_parameters(model).items() if name.endswith("output.weight")}
    assert len(outputs_grad) == 3 and all(grad is not None and grad.abs().sum() > 0 for grad in outputs_grad.values())
    # After one step away from the zero init, the inner layers of the scorer train too.
    with torch.no_grad():
        for name, parameter in scorer_parameters(model).items():
            if name.endswith("output.weight"):
                parameter.normal_(std=0.1)
    model.zero_grad()
    torch.manual_seed(0)
    model(images(4), labels=labels).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in scorer_parameters(model).values())


def test_gumbel_gates_are_exactly_one_and_pass_the_soft_decision_gradient():
    torch.manual_seed(0)
    log_scores = torch.randn(3, 10, requires_grad=True)
    patch_index, valid_mask, gates = gumbel_top_tokens(log_scores, 4, temperature=0.5)
    assert valid_mask is None and patch_index.shape == (3, 4) and (patch_index.diff(dim=1) > 0).all()
    assert torch.equal(gates, torch.ones(3, 4))
    gates.sum().backward()
    kept = torch.zeros(3, 10, dtype=torch.bool).scatter_(1, patch_index, True)
    assert (log_scores.grad[kept] > 0).all() and (log_scores.grad[~kept] == 0).all()


def test_gumbel_sampling_follows_the_scores():
    # A patch with a much higher score is (almost) always kept; sampling still explores the others.
    log_scores = torch.zeros(2000, 6)
    log_scores[:, 0] = 6.0
    torch.manual_seed(0)
    patch_index, _, _ = gumbel_top_tokens(log_scores, 2, temperature=1.0)
    kept = torch.zeros(2000, 6).scatter_(1, patch_index, 1.0).mean(dim=0)
    assert kept[0] > 0.99 and (kept[1:] > 0.1).all()


def test_per_image_gumbel_counts_pad_after_the_kept_patches():
    log_scores = torch.randn(2, 6)
    log_scores[1, 4:] = float("-inf")  # two padded slots
    patch_index, valid_mask, gates = gumbel_top_tokens(log_scores, torch.tensor([3, 2]), temperature=1.0)
    assert valid_mask.tolist() == [[True, True, True], [True, True, False]]
    assert set(patch_index[1, :2].tolist()) <= {0, 1, 2, 3} and torch.equal(gates, torch.ones(2, 3))


def test_evaluation_is_deterministic_and_training_samples():
    model = sharpen_attention(tiny_model(**LEARNED))
    with torch.no_grad():
        first = model(images(2), output_kept_token_indices=True).kept_token_indices[0]
        second = model(images(2), output_kept_token_indices=True).kept_token_indices[0]
        assert torch.equal(first, second)
        model.train()
        model.config.token_selector_temperature = 1.0
        sampled = {
            tuple(model(images(2), output_kept_token_indices=True).kept_token_indices[0][0].tolist()) for _ in range(5)
        }
    assert len(sampled) > 1


def test_a_learned_checkpoint_loaded_as_class_attention_is_refused_naming_the_field(tmp_path):
    tiny_model(**LEARNED).save_pretrained(tmp_path)
    refused = r"token-scorer weights for layers \[1, 2, 3\].*`token_selector='class_attention'`.*saved `token_selector`"
    with pytest.raises(ValueError, match=refused):
        TriLevelViTForImageClassification.from_pretrained(tmp_path, token_selector="class_attention")
    with pytest.raises(ValueError, match=r"layers \[3\].*`token_prune_layers=\[1, 2\]`"):
        TriLevelViTForImageClassification.from_pretrained(tmp_path, token_prune_layers=[1, 2])
    loaded = TriLevelViTForImageClassification.from_pretrained(tmp_path)
    assert loaded.config.token_selector == "learned"
    _, info = TriLevelViTForImageClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_learned_scores_need_a_pruning_layer():
    with pytest.raises(ValueError, match=r"`token_selector='learned'`.*`token_prune_layers` is empty"):
        TriLevelViTConfig(token_selector="learned", token_prune_layers=[])
    with pytest.raises(ValueError, match=r"`token_prune_layers` is empty"):
        TriLevelViTConfig(token_selector="adaptive", token_importance="learned", token_prune_layers=[])
    TriLevelViTConfig(token_selector="adaptive", token_prune_layers=[])  # class attention: nothing to train, fine


@pytest.mark.parametrize("temperature", [0, -1.0, float("nan"), "1"])
def test_the_temperature_must_be_positive(temperature):
    with pytest.raises(ValueError, match="`token_selector_temperature` must be"):
        TriLevelViTConfig(token_selector="learned", token_selector_temperature=temperature)


def test_the_temperature_callback_refuses_bad_values_and_models_without_learned_scores():
    from types import SimpleNamespace

    from hf_trilevel import SelectorTemperatureSchedule

    for start, end in ((0, 0.1), (10.0, -1.0), (float("inf"), 0.1)):
        with pytest.raises(ValueError, match=r"`start`|`end`"):
            SelectorTemperatureSchedule(start, end)
    callback = SelectorTemperatureSchedule(4.0, 1.0)
    state = SimpleNamespace(max_steps=4, global_step=0)
    with pytest.raises(ValueError, match=r"`token_selector='class_attention'`.*has none"):
        callback.on_train_begin(None, state, None, model=tiny_model())
    schedule = scheduled_values(callback, tiny_model(**LEARNED), 4)
    assert [temperature for temperature, _ in schedule] == [4.0, 3.0, 2.0, 1.0]


def scheduled_values(callback, model, steps: int) -> list[tuple[float, float]]:
    """(temperature, noise) the callback sets on `model` before each of `steps` optimizer steps."""
    from types import SimpleNamespace

    state = SimpleNamespace(max_steps=steps, global_step=0)
    callback.on_train_begin(None, state, None, model=model)
    values = []
    for step in range(steps):
        state.global_step = step
        callback.on_step_begin(None, state, None, model=model)
        values.append((model.config.token_selector_temperature, model.config.token_selector_noise))
    return values


def train_on_digits(selector: str) -> float:
    """Validation accuracy of a small digits model after a short training with `selector` at keep 0.5."""
    from transformers import TrainingArguments

    from hf_trilevel import SelectorTemperatureSchedule, TriLevelTrainer
    from hf_trilevel.image_data import load_digits_dataset

    from .jobs.distributed_pruning import collate, to_pixels

    data = load_digits_dataset(image_size=16)
    torch.manual_seed(0)
    config = TriLevelViTConfig(
        image_size=16, patch_size=4, hidden_size=48, num_hidden_layers=3, num_attention_heads=3,
        intermediate_size=96, num_labels=10, token_keep_rate=0.5, token_prune_layers=[1], token_selector=selector,
    )  # fmt: skip
    callbacks = [SelectorTemperatureSchedule(10.0, 0.1)] if selector == "learned" else []
    trainer = TriLevelTrainer(
        model=TriLevelViTForImageClassification(config),
        args=TrainingArguments(
            output_dir="unused", num_train_epochs=8, per_device_train_batch_size=64, learning_rate=4e-3,
            report_to="none", remove_unused_columns=False, save_strategy="no", disable_tqdm=True,
            dataloader_pin_memory=False, seed=0, use_cpu=True,
        ),
        train_dataset=data["train"].with_transform(to_pixels), data_collator=collate, callbacks=callbacks,
    )  # fmt: skip
    trainer.train()
    validation = collate(data["validation"].with_transform(to_pixels))
    with torch.no_grad():
        logits = trainer.model.eval()(validation["pixel_values"]).logits
    return (logits.argmax(dim=-1) == validation["labels"]).float().mean().item()


def test_after_a_short_digits_training_learned_is_about_as_accurate_as_class_attention():
    # docs/token_selection.md gives the measured accuracies (full runs too); the tolerance covers differences of a
    # 360-image validation set (one image is 0.28 points).
    learned, class_attention = train_on_digits("learned"), train_on_digits("class_attention")
    print(f"learned {learned:.4f}, class_attention {class_attention:.4f}")
    assert learned >= class_attention - 0.02


@pytest.mark.parametrize("overrides", [LEARNED, {"token_selector": "adaptive", "token_importance": "learned"}])
def test_a_scorer_that_drops_nothing_still_joins_the_backward_pass(overrides):
    # DDP without find_unused_parameters (the Trainer's choice under gradient checkpointing) stops a run whose
    # parameter misses a backward pass; a keep-rate warm-up at 1.0 drops nothing for a while.
    model = tiny_model(**{**overrides, "token_prune_layers": [0, 1, 2]}).train()
    model.set_keep_rates(token_keep_rate=1.0)
    outputs = model(images(2), labels=torch.tensor([0, 1]), output_kept_token_indices=True)
    assert all(kept.shape[1] == 64 for kept in outputs.kept_token_indices)
    assert outputs.auxiliary_loss is not None and outputs.auxiliary_loss.item() == 0.0
    outputs.loss.backward()
    assert all(parameter.grad is not None for parameter in scorer_parameters(model).values())
    with torch.no_grad():  # evaluation adds nothing
        assert model.eval()(images(2)).auxiliary_loss is None


def test_without_noise_training_keeps_the_top_scores_and_still_passes_gradients():
    torch.manual_seed(0)
    log_scores = torch.randn(3, 10, requires_grad=True)
    patch_index, _, gates = gumbel_top_tokens(log_scores, 4, temperature=0.5, noise_scale=0.0)
    assert torch.equal(patch_index, log_scores.detach().topk(4).indices.sort(dim=1).values)
    gates.sum().backward()
    assert (log_scores.grad.gather(1, patch_index) > 0).all()


def test_the_callback_anneals_the_noise_scale_and_the_config_refuses_a_bad_one():

    from hf_trilevel import SelectorTemperatureSchedule

    with pytest.raises(ValueError, match=r"`noise_end` must be in \[0, 1\]"):
        SelectorTemperatureSchedule(noise_end=1.5)
    with pytest.raises(ValueError, match=r"`token_selector_noise` must be in \[0, 1\]"):
        TriLevelViTConfig(token_selector="learned", token_selector_noise=-0.1)
    callback = SelectorTemperatureSchedule(noise_start=1.0, noise_end=0.0)
    noises = [noise for _, noise in scheduled_values(callback, tiny_model(**LEARNED), 3)]
    assert noises == [1.0, 0.5, 0.0]
    assert callback.card_settings()["noise_end"] == 0.0
