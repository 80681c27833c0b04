"""Structured units (S2ViTE): attention heads and MLP neurons, their masks, scores and regrowth.

A head owns `head_dim` consecutive rows of q, k and v (weights and biases) and the same columns of o_proj; a neuron
owns a row of fc1 (and its bias) and a column of fc2. A unit is masked on its **input side** only: zero q/k/v rows
make the head's output exactly zero (its values are zero, whatever it attends to), a zero fc1 row makes the neuron's
activation `act(0) = 0`. The output side (o_proj / fc2 columns) then never affects the logits, and is left as it is
while training: through it the masked unit still receives a gradient on its value/fc1 weights, which is how an
inactive unit competes for regrowth (with both sides zero its gradient would be exactly zero). At the end of training
the output sides of pruned units are zeroed too, so a saved model shows each pruned unit as all zeros and
`hf_trilevel.slim` can remove it from any folder.

Scores:
* head importance, first-order Taylor `|sum(dL/dA_h * A_h)|` of the head output `A_h`: since o_proj is linear in
  `A_h`, this equals `|sum(W_o[:, h] * dL/dW_o[:, h])|` over the head's o_proj columns, so it is read from the
  parameter gradients at the optimizer step, under gradient accumulation, several processes and gradient
  checkpointing alike, with no activation hooks;
* neuron importance: the L1 norm of its weights (fc1 row and fc2 column);
* regrowth: the gradient norm of an inactive head's q/k/v rows, the gradient L1 norm of an inactive neuron's fc1 row.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..modeling.value_checks import check_fraction


@dataclass
class UnitLayer:
    """One transformer layer's attention and MLP, with the head size that maps heads to rows."""

    attention: nn.Module
    mlp: nn.Module
    head_dim: int

    @property
    def num_heads(self) -> int:
        return self.attention.q_proj.weight.shape[0] // self.head_dim

    @property
    def num_neurons(self) -> int:
        return self.mlp.fc1.weight.shape[0]

    def head_input_params(self) -> list[nn.Parameter]:
        """The q, k, v weights and biases: every one has a head's rows as its first dimension."""
        params = []
        for name in ("q_proj", "k_proj", "v_proj"):
            projection = getattr(self.attention, name)
            params += [projection.weight] + ([projection.bias] if projection.bias is not None else [])
        return params

    @property
    def device(self) -> torch.device:
        return self.mlp.fc1.weight.device

    def neuron_input_params(self) -> list[nn.Parameter]:
        fc1 = self.mlp.fc1
        return [fc1.weight] + ([fc1.bias] if fc1.bias is not None else [])


def unit_layers(model: nn.Module) -> list[UnitLayer]:
    """The layers of a TriLevel model (`...ForImageClassification` or the base model), as `UnitLayer`s."""
    base = getattr(model, "base_model", model)  # the encoder under a head (`vit`, DeiT's `deit`), or the model
    layers = getattr(base, "layers", None)
    config = getattr(model, "config", None)
    if layers is None or config is None:
        raise ValueError(
            "structured weight sparsity needs a TriLevel model (heads and neurons per layer), got "
            f"{type(model).__name__}."
        )
    head_dim = config.hidden_size // config.num_attention_heads
    return [UnitLayer(layer.attention, layer.mlp, head_dim) for layer in layers]


def unit_count(name: str, density: float, total: int, layer: int) -> int:
    """Units a layer keeps at `density`: `round(density * total)`, refused when that leaves none."""
    density = check_fraction(name, density)
    count = math.floor(density * total + 0.5)
    if count < 1:
        raise ValueError(
            f"`{name}` {density:g} leaves no unit of the {total} in layer {layer} (round({density:g} * {total}) = 0); "
            f"use at least {0.5 / total:.3g} so that every layer keeps one."
        )
    return count


def rows_of(unit_mask: torch.Tensor, rows_per_unit: int) -> torch.Tensor:
    """A `[units]` mask expanded to the rows the units own."""
    return unit_mask.repeat_interleave(rows_per_unit)


def _mask_rows(tensors: list[torch.Tensor], row_mask: torch.Tensor) -> None:
    for tensor in tensors:
        keep = row_mask.to(tensor.device).view(-1, *([1] * (tensor.dim() - 1)))
        tensor.mul_(keep.to(tensor.dtype))


@torch.no_grad()
def apply_unit_masks(layer: UnitLayer, head_mask: torch.Tensor, neuron_mask: torch.Tensor) -> None:
    """Zero the input side of every inactive head and neuron of `layer`."""
    _mask_rows(layer.head_input_params(), rows_of(head_mask, layer.head_dim))
    _mask_rows(layer.neuron_input_params(), neuron_mask)


@torch.no_grad()
def mask_unit_gradients(layer: UnitLayer, head_mask: torch.Tensor, neuron_mask: torch.Tensor) -> None:
    """Zero the gradients of inactive units' input sides, so the optimizer (and its moments) leaves them at zero."""
    head_rows = rows_of(head_mask, layer.head_dim)
    _mask_rows([p.grad for p in layer.head_input_params() if p.grad is not None], head_rows)
    _mask_rows([p.grad for p in layer.neuron_input_params() if p.grad is not None], neuron_mask)


@torch.no_grad()
def zero_output_sides(layer: UnitLayer, head_mask: torch.Tensor, neuron_mask: torch.Tensor) -> None:
    """Zero the o_proj columns of inactive heads and the fc2 columns of inactive neurons (at the end of training)."""
    o_weight, fc2_weight = layer.attention.output_projection.weight, layer.mlp.fc2.weight
    o_weight.mul_(rows_of(head_mask, layer.head_dim).to(o_weight.device, o_weight.dtype))
    fc2_weight.mul_(neuron_mask.to(fc2_weight.device, fc2_weight.dtype))


def _per_unit(values: torch.Tensor, units: int) -> torch.Tensor:
    return values.float().reshape(units, -1).sum(-1)


@torch.no_grad()
def head_taylor_scores(layer: UnitLayer) -> torch.Tensor:
    """`[heads]` |sum(dL/dA_h * A_h)| of this step, from o_proj's weight and gradient (zeros without a gradient)."""
    weight = layer.attention.output_projection.weight
    if weight.grad is None:
        return torch.zeros(layer.num_heads, device=weight.device)
    product = (weight * weight.grad).float().sum(0)  # [inner]: one entry per input column of o_proj
    return _per_unit(product, layer.num_heads).abs()


@torch.no_grad()
def head_gradient_norms(layer: UnitLayer) -> torch.Tensor:
    """`[heads]` gradient norm of each head's q/k/v rows (weights and biases)."""
    squares = torch.zeros(layer.num_heads, device=layer.device)
    for param in layer.head_input_params():
        if param.grad is not None:
            squares += _per_unit(param.grad.float().pow(2).reshape(param.shape[0], -1).sum(-1), layer.num_heads)
    return finite(squares.sqrt())


@torch.no_grad()
def neuron_magnitudes(layer: UnitLayer) -> torch.Tensor:
    """`[neurons]` L1 norm of each neuron's fc1 row and fc2 column."""
    fc1, fc2 = layer.mlp.fc1.weight, layer.mlp.fc2.weight
    return fc1.float().abs().sum(1) + fc2.float().abs().sum(0)


@torch.no_grad()
def neuron_gradient_norms(layer: UnitLayer) -> torch.Tensor:
    """`[neurons]` gradient L1 norm of each neuron's fc1 row (and bias)."""
    total = torch.zeros(layer.num_neurons, device=layer.device)
    for param in layer.neuron_input_params():
        if param.grad is not None:
            total += param.grad.float().abs().reshape(param.shape[0], -1).sum(-1)
    return finite(total)


def finite(scores: torch.Tensor) -> torch.Tensor:
    """Scores with NaN and infinities (an overflowed fp16 gradient) read as 0, so they never win a place."""
    return torch.nan_to_num(scores, nan=0.0, posinf=0.0, neginf=0.0)


def unit_prune_count(death_rate: float, active: int, inactive: int) -> int:
    """Units one update replaces: `round(death_rate * active)`, at most the inactive units that can take their place.

    Rounded, not ceiled as for single weights: a layer has a handful of heads, and ceil would swap one at every update
    however small the death rate became.
    """
    return min(inactive, math.floor(death_rate * active + 0.5))


def unit_prune_and_grow(
    mask: torch.Tensor, prune_scores: torch.Tensor, grow_scores: torch.Tensor, count: int
) -> torch.Tensor:
    """Drop the `count` active units of lowest `prune_scores`, grow the `count` inactive ones of highest `grow_scores`.

    The units just dropped are not candidates for regrowth: their gradient was measured while they were active, which
    no inactive unit's can match, so they would simply come back. They compete again at the next update.
    """
    if count == 0:
        return mask.clone()
    drop = torch.where(mask, prune_scores.float(), torch.inf).topk(count, largest=False).indices
    grow = torch.where(mask, -torch.inf, grow_scores.float()).topk(count).indices
    new = mask.clone()
    new[drop] = False
    new[grow] = True
    return new


@torch.no_grad()
def reinitialise_grown_heads(layer: UnitLayer, grown: torch.Tensor, std: float, generator: torch.Generator) -> None:
    """Give regrown heads fresh queries and keys and zero values (so the model's output does not jump).

    Query and key rows of zero would stay zero for ever (each one's gradient is proportional to the other), so the
    head could never learn where to attend; a zero o_proj column would likewise never receive a gradient.
    """
    if not grown.any():
        return
    rows = rows_of(grown, layer.head_dim)
    for name in ("q_proj", "k_proj"):
        weight = getattr(layer.attention, name).weight
        fresh = torch.randn(int(rows.sum()), weight.shape[1], generator=generator) * std
        weight[rows.to(weight.device)] = fresh.to(weight.device, weight.dtype)
    o_weight = layer.attention.output_projection.weight
    for head in grown.nonzero().flatten().tolist():
        columns = slice(head * layer.head_dim, (head + 1) * layer.head_dim)
        if not o_weight[:, columns].any():
            fresh = torch.randn(o_weight.shape[0], layer.head_dim, generator=generator) * std
            o_weight[:, columns] = fresh.to(o_weight.device, o_weight.dtype)


@torch.no_grad()
def reinitialise_grown_neurons(layer: UnitLayer, grown: torch.Tensor, std: float, generator: torch.Generator) -> None:
    """Give regrown neurons a start they can learn from without changing the model's output.

    With an activation whose slope at 0 is non-zero (gelu, silu, ...) a zero fc1 row learns through the fc2 column
    it kept while inactive (the column its regrowth score was measured through); a zero fc2 column is redrawn. With
    a slope of 0 at 0 (relu) a zero fc1 row would never receive a gradient, so the row is drawn at random instead and
    the fc2 column set to zero.
    """
    fc1, fc2 = layer.mlp.fc1.weight, layer.mlp.fc2.weight
    flat_at_zero = activation_slope_at_zero(layer.mlp.activation_fn) == 0.0
    for neuron in grown.nonzero().flatten().tolist():
        if flat_at_zero:
            fc1[neuron] = (torch.randn(fc1.shape[1], generator=generator) * std).to(fc1.device, fc1.dtype)
            fc2[:, neuron] = 0.0
        elif not fc2[:, neuron].any():
            fc2[:, neuron] = (torch.randn(fc2.shape[0], generator=generator) * std).to(fc2.device, fc2.dtype)


def activation_slope_at_zero(activation) -> float:
    """The derivative of an activation function at 0 (0 for relu, 0.5 for gelu)."""
    with torch.enable_grad():
        point = torch.zeros(1, requires_grad=True)
        (slope,) = torch.autograd.grad(activation(point).sum(), point)
    return float(slope)


__all__ = [
    "UnitLayer",
    "activation_slope_at_zero",
    "apply_unit_masks",
    "finite",
    "head_gradient_norms",
    "head_taylor_scores",
    "mask_unit_gradients",
    "neuron_gradient_norms",
    "neuron_magnitudes",
    "reinitialise_grown_heads",
    "reinitialise_grown_neurons",
    "rows_of",
    "unit_count",
    "unit_layers",
    "unit_prune_and_grow",
    "unit_prune_count",
    "zero_output_sides",
]
