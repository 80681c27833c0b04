"""Physical slimming: remove the pruned attention heads and MLP neurons of a TriLevel ViT, keeping its outputs.

Structured sparse training (S2ViTE) prunes whole units but stores them as zeros in dense-shaped weights, so the
model still computes them. `slim(model)` rebuilds the model with only the kept units, recording the sizes in the
config (`num_attention_heads_per_layer`, `intermediate_size_per_layer`), so it runs as fast as its shape allows and
loads anywhere the TriLevel remote code does.

Zeros are the record of what was pruned, not a mask file or a config field: any saved folder (trained here, pruned
by hand or by another tool) can be slimmed, and a slimmed folder carries nothing a ViT reader does not understand.

- Head `h` of a layer is pruned when its rows `h * head_dim : (h + 1) * head_dim` of the q, k and v projections
  (weights, and biases when present) are all exactly zero. Zero values make the head's output exactly zero
  whatever `o_proj` holds, so its `o_proj` columns (the output side) need not be zero. Zero queries and keys make
  its attention uniform over the keys it may see, and the head-averaged class-token attention that token selection
  reads includes it; the slimmed layer counts each removed head as exactly that uniform attention (the average
  runs over `config.num_attention_heads`, see `token_reduction.class_token_attention`), so every score, fusion
  weight and selection is the same with the head removed.
- Neuron `j` is pruned when row `j` of `fc1` (weight and bias) is exactly zero and the activation maps 0 to 0
  (gelu, relu, silu, ...): its activation is then 0 and its `fc2` column (the output side) is multiplied by 0.
  With an activation where `act(0) != 0` the `fc2` column must be zero too.
"""

import copy

import torch
from torch import nn

from ..modeling.configuration_trilevel_vit import PER_LAYER_FIELDS
from ..modeling.modeling_trilevel_vit import TriLevelViTModel

# A share of exactly-zero layer weights above this, with no whole unit zero, reads as unstructured sparsity.
UNSTRUCTURED_ZERO_SHARE = 0.01


def structured_unit_masks(model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Which heads and MLP neurons of each layer are kept, read from the zeros of the weights.

    Returns:
        `(heads, neurons)`: per layer, a bool tensor `[heads]` (True = kept) and one `[intermediate]` (True = kept),
        on the model's device.

    Raises:
        ValueError: `model` is not a `TriLevelViTForImageClassification` or `TriLevelViTModel`.
    """
    encoder = _encoder(model)
    head_masks, neuron_masks = [], []
    with torch.no_grad():
        for layer in encoder.layers:
            head_masks.append(_kept_heads(layer.attention))
            neuron_masks.append(_kept_neurons(layer.mlp))
    return head_masks, neuron_masks


def slim(model: nn.Module) -> nn.Module:
    """A new model of the same class without the pruned heads and neurons; `model` is left untouched.

    The new config has `num_attention_heads_per_layer` and `intermediate_size_per_layer` set (lists, even where
    every layer keeps the same size) and every other field as in `model.config`. Kept units keep their weights;
    every other tensor (embeddings, norms, token selectors, classifier) is copied as is, in its dtype and on its
    device, and the model is in the same train/eval mode. See the module docstring for when a unit counts as pruned.

    Raises:
        ValueError: `model` is not a TriLevel model; no head or neuron is pruned anywhere (with a note when the
            zeros look unstructured, which slimming cannot remove); or a layer has every head or every neuron pruned
            (a layer needs at least one of each).
    """
    encoder = _encoder(model)
    head_masks, neuron_masks = structured_unit_masks(model)
    _check_masks(model, encoder, head_masks, neuron_masks)

    config = copy.deepcopy(model.config)
    config.num_attention_heads_per_layer = [int(mask.sum()) for mask in head_masks]
    config.intermediate_size_per_layer = [int(mask.sum()) for mask in neuron_masks]
    state = _slimmed_state(model, encoder, head_masks, neuron_masks)

    with torch.device(_device(model)):
        slimmed = _build_like(model, config)
    slimmed.load_state_dict(state, strict=True, assign=True)  # the sliced tensors, in their own dtypes
    requires_grad = dict(model.named_parameters())
    for name, parameter in slimmed.named_parameters():
        parameter.requires_grad_(requires_grad[name].requires_grad)
    return slimmed.train(model.training)


def _encoder(model: nn.Module) -> TriLevelViTModel:
    """The TriLevel encoder of a head model (`model.vit`, DeiT's `model.deit`) or the encoder itself."""
    encoder = getattr(model, "base_model", None)
    if isinstance(encoder, TriLevelViTModel):
        return encoder
    raise ValueError(
        f"`model` must be a TriLevelViTForImageClassification or TriLevelViTModel, got {type(model).__name__}; "
        "load a saved folder with `hf_trilevel.TriLevelViTForImageClassification.from_pretrained(folder)`."
    )


def _head_rows(attention: nn.Module) -> tuple[torch.Tensor, ...]:
    """The q, k, v weights and biases as `[heads, head_dim, ...]`: index 0 picks a head's rows."""
    tensors = []
    for projection in (attention.q_proj, attention.k_proj, attention.v_proj):
        tensors.append(projection.weight.reshape(attention.num_attention_heads, attention.head_dim, -1))
        if projection.bias is not None:
            tensors.append(projection.bias.reshape(attention.num_attention_heads, attention.head_dim, 1))
    return tuple(tensors)


def _kept_heads(attention: nn.Module) -> torch.Tensor:
    pruned = torch.ones(attention.num_attention_heads, dtype=torch.bool, device=attention.q_proj.weight.device)
    for rows in _head_rows(attention):
        pruned &= (rows == 0).flatten(1).all(dim=1)
    return ~pruned


def _kept_neurons(mlp: nn.Module) -> torch.Tensor:
    pruned = (mlp.fc1.weight == 0).all(dim=1)
    if mlp.fc1.bias is not None:
        pruned &= mlp.fc1.bias == 0
    zero = torch.zeros(1, dtype=mlp.fc1.weight.dtype, device=mlp.fc1.weight.device)
    if not bool((mlp.activation_fn(zero) == 0).all()):  # act(0) != 0 reaches fc2 unless its column is zero
        pruned &= (mlp.fc2.weight == 0).all(dim=0)
    return ~pruned


def _check_masks(
    model: nn.Module, encoder: TriLevelViTModel, head_masks: list[torch.Tensor], neuron_masks: list[torch.Tensor]
) -> None:
    name = type(model).__name__
    for index, (heads, neurons) in enumerate(zip(head_masks, neuron_masks, strict=True)):
        for unit, mask, where in (("head", heads, "q, k and v rows"), ("neuron", neurons, "fc1 row and bias")):
            if not bool(mask.any()):
                raise ValueError(
                    f"Layer {index} of the {name} has every one of its {len(mask)} {unit}s pruned (all {where} "
                    f"zero); a layer needs at least one head and one MLP neuron. Keep at least one {unit} per layer."
                )
    if all(bool(mask.all()) for mask in (*head_masks, *neuron_masks)):
        per_layer = {field: getattr(model.config, field, None) for field in PER_LAYER_FIELDS}
        if any(sizes is not None for sizes in per_layer.values()):
            sizes = ", ".join(f"`{field}` {sizes}" for field, sizes in per_layer.items() if sizes is not None)
            raise ValueError(
                f"The {name} is already slimmed (its config has per-layer sizes: {sizes}) and none of its remaining "
                "heads or MLP neurons is pruned: there is nothing to slim."
            )
        raise ValueError(
            f"The {name} has no structured masks: no attention head and no MLP neuron is pruned.{_zeros_note(encoder)}"
        )


def _zeros_note(encoder: TriLevelViTModel) -> str:
    """A hint for a model whose zeros are scattered (unstructured sparsity) rather than whole units."""
    zeros = total = 0
    for layer in encoder.layers:
        attention, mlp = layer.attention, layer.mlp
        for linear in (
            attention.q_proj,
            attention.k_proj,
            attention.v_proj,
            attention.output_projection,
            mlp.fc1,
            mlp.fc2,
        ):
            zeros += int((linear.weight == 0).sum())
            total += linear.weight.numel()
    share = zeros / total
    if share < UNSTRUCTURED_ZERO_SHARE:
        return " Train with `WeightSparsity(sparsity='structured')` (or zero whole heads / neurons) first."
    return (
        f" {share:.1%} of its layer weights are exactly zero, but no whole unit: it looks unstructured-only, and "
        "unstructured zeros cannot be removed from dense layers. Train with `WeightSparsity(sparsity="
        "'structured')` to prune whole heads and neurons."
    )


def _slimmed_state(
    model: nn.Module, encoder: TriLevelViTModel, head_masks: list[torch.Tensor], neuron_masks: list[torch.Tensor]
) -> dict[str, torch.Tensor]:
    """`model.state_dict()` with the kept rows/columns of each layer's projections; every tensor a fresh copy."""
    names = {module: name for name, module in model.named_modules()}
    state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    with torch.no_grad():
        for layer, heads, neurons in zip(encoder.layers, head_masks, neuron_masks, strict=True):
            attention, mlp = layer.attention, layer.mlp
            channels = heads.repeat_interleave(attention.head_dim).nonzero().squeeze(1)  # head_dim block per head
            for projection in (attention.q_proj, attention.k_proj, attention.v_proj):
                _select(state, names[projection], projection, channels, dim=0)
            _select(state, names[attention.output_projection], attention.output_projection, channels, dim=1)
            kept = neurons.nonzero().squeeze(1)
            _select(state, names[mlp.fc1], mlp.fc1, kept, dim=0)
            _select(state, names[mlp.fc2], mlp.fc2, kept, dim=1)
    return state


def _select(state: dict[str, torch.Tensor], name: str, linear: nn.Linear, index: torch.Tensor, dim: int) -> None:
    """Keep `index` along `dim` of the weight: output rows (`dim=0`, with the bias) or input columns (`dim=1`)."""
    state[f"{name}.weight"] = linear.weight.detach().index_select(dim, index)
    if dim == 0 and linear.bias is not None:
        state[f"{name}.bias"] = linear.bias.detach().index_select(0, index)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _build_like(model: nn.Module, config) -> nn.Module:
    """A fresh model of `model`'s class and options (pooler, mask token) for `config`."""
    if not isinstance(model, TriLevelViTModel):  # a head model: its own encoder is built without a pooler
        return type(model)(config)
    return type(model)(
        config, add_pooling_layer=model.pooler is not None, use_mask_token=model.embeddings.mask_token is not None
    )


__all__ = ["slim", "structured_unit_masks"]
