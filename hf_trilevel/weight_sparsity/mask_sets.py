"""The masks of one model under weight sparsity, unstructured or structured, and what each step does to them.

`WeightSparsity` (hf_trilevel.weight_sparsity.technique) drives one of these two classes through a run:

    begin(generator)           first masks (random, by magnitude, or all-dense for one-shot), applied to the weights
    before_optimizer(update)   every step: this step's scores; at an update step also the grow scores from the
                               dense gradient; then mask the gradients so the optimizer and its moments leave masked
                               weights at exactly zero
    end_step(taken)            after the optimizer: keep this step's scores, or drop them if the step was skipped
                               (an fp16 overflow), whose gradients are not finite
    update(rate, ...)          at an update step, after the optimizer: prune and grow (or the one-shot prune), reset
                               the optimizer moments of every weight that changed, apply the new masks
    apply()                    masks onto the weights (after every optimizer step)
    finish()                   at the end of training: what the saved model should hold

Both keep their masks and scores on the weights' device (no host synchronisation per step) and save them as plain
tensors.
"""

import torch
import torch.distributed as dist
from torch import nn

from ..training.technique import is_distributed
from .masks import (
    active_count,
    as_matrix,
    check_pattern,
    erk_densities,
    initial_mask,
    largest_mask,
    masked_weights,
    prune_and_grow,
    prune_count,
    two_four_mask,
)
from .structured_units import (
    UnitLayer,
    apply_unit_masks,
    finite,
    head_gradient_norms,
    head_taylor_scores,
    mask_unit_gradients,
    neuron_gradient_norms,
    neuron_magnitudes,
    reinitialise_grown_heads,
    reinitialise_grown_neurons,
    rows_of,
    unit_count,
    unit_layers,
    unit_prune_and_grow,
    unit_prune_count,
    zero_output_sides,
)


def broadcast_masks(masks: list[torch.Tensor]) -> None:
    """Make every process hold rank 0's masks (they are equal already under DDP; this guarantees it).

    The carrier lives on the masks' device, which is the weights': NCCL broadcasts only CUDA tensors, gloo CPU ones.
    """
    if not is_distributed():
        return
    for mask in masks:
        carrier = mask.to(torch.uint8)
        dist.broadcast(carrier, src=0)
        mask.copy_(carrier.bool())


def reset_moments(optimizer, param: nn.Parameter, keep: torch.Tensor, dim: int = 0) -> None:
    """Zero the optimizer state (Adam's moments, SGD's momentum) of `param` wherever `keep` is False.

    `keep` covers `param`'s leading dimensions (a whole mask), or, with `dim=1`, its columns. A regrown weight then
    starts with no memory of gradients it received while masked, and a pruned one carries no momentum if it is
    regrown later. Only floating-point states shaped like the parameter are touched (a quantised state's code 0 need
    not mean 0).
    """
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps the torch one
    state = inner.state.get(param, {}) if optimizer is not None else {}
    for value in state.values():
        if not (torch.is_tensor(value) and value.is_floating_point() and value.shape == param.shape):
            continue
        factor = keep.to(value.device, value.dtype)
        if dim == 1:
            factor = factor.reshape(1, -1)
        value.mul_(factor.reshape(*factor.shape, *([1] * (value.dim() - factor.dim()))))


class UnstructuredMasks:
    """One bool mask per 2-D weight, ERK densities (or exactly 2:4), RigL prune-and-grow."""

    mode = "unstructured"

    def __init__(self, model: nn.Module, density: float, pattern: str, initial: str):
        self.model = model
        self.weights = masked_weights(model)
        shapes = {name: tuple(as_matrix(weight).shape) for name, weight in self.weights.items()}  # conv as a matrix
        check_pattern(pattern, shapes)
        self.pattern, self.initial = pattern, initial
        self.densities = dict.fromkeys(shapes, 0.5) if pattern == "2:4" else erk_densities(shapes, density)
        self.masks: dict[str, torch.Tensor] = {}
        self._factors: dict[str, torch.Tensor] = {}  # the masks in each weight's dtype, multiplied in every step
        self._grow_scores: dict[str, torch.Tensor] = {}

    def begin(self, generator: torch.Generator, dense: bool = False) -> None:
        for name, weight in self.weights.items():
            if dense:
                mask = torch.ones(weight.shape, dtype=torch.bool)
            else:
                mask = initial_mask(weight, self.densities[name], self.pattern, self.initial, generator)
            self.masks[name] = mask.to(weight.device)
        self._factors.clear()
        broadcast_masks(list(self.masks.values()))
        self.apply()

    @torch.no_grad()
    def apply(self) -> None:
        """Masks onto the weights (and the cached factors refreshed, if the masks changed)."""
        for name, weight in self.weights.items():
            factor = self._factors.get(name)
            if factor is None or factor.dtype != weight.dtype:
                factor = self._factors[name] = self.masks[name].to(weight.dtype)
            weight.mul_(factor)

    @torch.no_grad()
    def before_optimizer(self, update: bool) -> None:
        for name, weight in self.weights.items():
            if weight.grad is None:
                continue
            if update:
                self._grow_scores[name] = finite(weight.grad.detach().abs())
            weight.grad.mul_(self._factors[name].to(weight.grad.dtype))

    def end_step(self, taken: bool) -> None:
        """Nothing accumulates between updates in the unstructured mode; a skipped step's grow scores are dropped."""
        if not taken:
            self._grow_scores.clear()

    @torch.no_grad()
    def update(self, death_rate: float, generator: torch.Generator, optimizer, one_shot: bool, std: float) -> float:
        """Prune and grow every layer (one-shot: keep the largest weights once); the share of weights that moved."""
        moved = active = 0
        old_masks = dict(self.masks)
        for name, weight in self.weights.items():
            old = old_masks[name]
            if one_shot:
                scores = weight.detach().abs()
                count = active_count(self.densities[name], weight.numel())
                new = two_four_mask(scores) if self.pattern == "2:4" else largest_mask(scores, count)
            else:
                gradient = self._grow_scores.get(name, torch.zeros_like(weight))
                count = prune_count(death_rate, int(old.sum()))
                new = prune_and_grow(old, weight, gradient, count, self.pattern)
            self.masks[name] = new
            self._factors.pop(name, None)
            moved += int((new & ~old).sum())
            active += int(old.sum())
        broadcast_masks(list(self.masks.values()))
        for name, weight in self.weights.items():  # regrown and pruned weights get fresh moments
            reset_moments(optimizer, weight, self.masks[name] & old_masks[name])
        self._grow_scores.clear()
        self.apply()
        return moved / max(active, 1)

    def finish(self) -> None:
        self.apply()

    def density(self) -> float:
        """Share of the masked weights that are active."""
        kept = sum(int(mask.sum()) for mask in self.masks.values())
        return kept / sum(mask.numel() for mask in self.masks.values())

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {f"mask/{name}": mask for name, mask in self.masks.items()}

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        expected = {f"mask/{name}": tuple(weight.shape) for name, weight in self.weights.items()}
        check_saved_shapes(tensors, expected)
        self.masks = {name: tensors[f"mask/{name}"].bool().to(w.device) for name, w in self.weights.items()}
        self._factors.clear()
        self.apply()


class StructuredMasks:
    """One `[heads]` and one `[neurons]` mask per layer, fixed unit counts, Taylor / magnitude prune-and-grow."""

    mode = "structured"

    def __init__(self, model: nn.Module, head_density: float, neuron_density: float):
        self.model = model
        self.layers: list[UnitLayer] = unit_layers(model)
        self.head_counts = [unit_count("head_density", head_density, u.num_heads, i) for i, u in enumerate(self.layers)]
        self.neuron_counts = [
            unit_count("neuron_density", neuron_density, u.num_neurons, i) for i, u in enumerate(self.layers)
        ]
        self.heads: list[torch.Tensor] = []
        self.neurons: list[torch.Tensor] = []
        self.taylor = self._zero_scores()  # head importance accumulated over the steps since the last update
        self._step_taylor: list[torch.Tensor] = []  # this step's, kept only if the optimizer takes the step
        self._grow_scores: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _zero_scores(self) -> list[torch.Tensor]:
        return [torch.zeros(layer.num_heads, device=layer.device) for layer in self.layers]

    def begin(self, generator: torch.Generator, dense: bool = False) -> None:
        self.heads, self.neurons = [], []
        for layer, heads, neurons in zip(self.layers, self.head_counts, self.neuron_counts, strict=True):
            if dense:
                self.heads.append(torch.ones(layer.num_heads, dtype=torch.bool, device=layer.device))
                self.neurons.append(torch.ones(layer.num_neurons, dtype=torch.bool, device=layer.device))
                continue
            head_mask = torch.zeros(layer.num_heads, dtype=torch.bool)
            head_mask[torch.randperm(layer.num_heads, generator=generator)[:heads]] = True
            neuron_mask = torch.zeros(layer.num_neurons, dtype=torch.bool)
            neuron_mask[torch.randperm(layer.num_neurons, generator=generator)[:neurons]] = True
            self.heads.append(head_mask.to(layer.device))
            self.neurons.append(neuron_mask.to(layer.device))
        broadcast_masks(self.heads + self.neurons)
        self.apply()

    def apply(self) -> None:
        for layer, heads, neurons in zip(self.layers, self.heads, self.neurons, strict=True):
            apply_unit_masks(layer, heads, neurons)

    def before_optimizer(self, update: bool) -> None:
        self._grow_scores = []
        self._step_taylor = [head_taylor_scores(layer) for layer in self.layers]
        for index, layer in enumerate(self.layers):
            if update:
                self._grow_scores.append((head_gradient_norms(layer), neuron_gradient_norms(layer)))
            mask_unit_gradients(layer, self.heads[index], self.neurons[index])

    def end_step(self, taken: bool) -> None:
        """Add this step's head importance to the accumulated one, unless the optimizer skipped the step."""
        if taken:
            for total, step in zip(self.taylor, self._step_taylor, strict=True):
                total += finite(step)
        else:
            self._grow_scores = []
        self._step_taylor = []

    def update(self, death_rate: float, generator: torch.Generator, optimizer, one_shot: bool, std: float) -> float:
        moved = active = 0
        old = list(zip(self.heads, self.neurons, strict=True))
        for index, layer in enumerate(self.layers):
            old_heads, old_neurons = old[index]
            if one_shot:
                new_heads = largest_mask(self.taylor[index], self.head_counts[index])
                new_neurons = largest_mask(neuron_magnitudes(layer), self.neuron_counts[index])
            else:
                head_grow, neuron_grow = self._grow_scores[index]
                heads = unit_prune_count(death_rate, int(old_heads.sum()), int((~old_heads).sum()))
                neurons = unit_prune_count(death_rate, int(old_neurons.sum()), int((~old_neurons).sum()))
                new_heads = unit_prune_and_grow(old_heads, self.taylor[index], head_grow, heads)
                new_neurons = unit_prune_and_grow(old_neurons, neuron_magnitudes(layer), neuron_grow, neurons)
            self.heads[index], self.neurons[index] = new_heads, new_neurons
            moved += int((new_heads & ~old_heads).sum()) + int((new_neurons & ~old_neurons).sum())
            active += int(old_heads.sum()) + int(old_neurons.sum())
        broadcast_masks(self.heads + self.neurons)
        for index, layer in enumerate(self.layers):
            self._restart_changed_units(index, layer, *old[index], optimizer, generator, std)
        self.taylor = self._zero_scores()
        self._grow_scores = []
        return moved / max(active, 1)

    def _restart_changed_units(
        self,
        index: int,
        layer: UnitLayer,
        old_heads: torch.Tensor,
        old_neurons: torch.Tensor,
        optimizer,
        generator,
        std: float,
    ) -> None:
        """Zero pruned units, re-initialise regrown ones and reset the moments of both."""
        kept_heads, kept_neurons = self.heads[index] & old_heads, self.neurons[index] & old_neurons
        grown_heads, grown_neurons = self.heads[index] & ~old_heads, self.neurons[index] & ~old_neurons
        apply_unit_masks(layer, kept_heads, kept_neurons)  # pruned and regrown units' input sides start at zero
        reinitialise_grown_heads(layer, grown_heads, std, generator)
        reinitialise_grown_neurons(layer, grown_neurons, std, generator)
        for param in layer.head_input_params():
            reset_moments(optimizer, param, rows_of(kept_heads, layer.head_dim))
        for param in layer.neuron_input_params():
            reset_moments(optimizer, param, kept_neurons)
        # the output sides of regrown units start afresh too (pruned ones keep theirs: they stop mattering)
        reset_moments(optimizer, layer.attention.output_projection.weight, ~rows_of(grown_heads, layer.head_dim), dim=1)
        reset_moments(optimizer, layer.mlp.fc2.weight, ~grown_neurons, dim=1)

    def finish(self) -> None:
        """Masks applied, and pruned units' output sides zeroed: the saved model shows every pruned unit as zeros."""
        self.apply()
        for layer, heads, neurons in zip(self.layers, self.heads, self.neurons, strict=True):
            zero_output_sides(layer, heads, neurons)

    def density(self) -> float:
        """Share of heads and neurons active, each unit weighted by its weights (q/k/v/o rows, fc1 row + fc2 column)."""
        kept = total = 0
        for layer, heads, neurons in zip(self.layers, self.heads, self.neurons, strict=True):
            head_size = 4 * layer.head_dim * layer.attention.q_proj.weight.shape[1]
            neuron_size = 2 * layer.mlp.fc1.weight.shape[1]
            kept += int(heads.sum()) * head_size + int(neurons.sum()) * neuron_size
            total += heads.numel() * head_size + neurons.numel() * neuron_size
        return kept / total

    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {}
        for index in range(len(self.layers)):
            tensors[f"heads/{index}"] = self.heads[index]
            tensors[f"neurons/{index}"] = self.neurons[index]
            tensors[f"taylor/{index}"] = self.taylor[index]
        return tensors

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        expected = {}
        for index, layer in enumerate(self.layers):
            expected |= {f"heads/{index}": (layer.num_heads,), f"taylor/{index}": (layer.num_heads,)}
            expected[f"neurons/{index}"] = (layer.num_neurons,)
        check_saved_shapes(tensors, expected)
        self.heads = [tensors[f"heads/{i}"].bool().to(u.device) for i, u in enumerate(self.layers)]
        self.neurons = [tensors[f"neurons/{i}"].bool().to(u.device) for i, u in enumerate(self.layers)]
        self.taylor = [tensors[f"taylor/{i}"].float().to(u.device) for i, u in enumerate(self.layers)]
        self.apply()


def check_saved_shapes(tensors: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]]) -> None:
    """Refuse saved masks that do not fit this model (another model, or another sparsity mode)."""
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise ValueError(
            f"the checkpoint's weight-sparsity state has no {missing[0]!r}: it was saved for another model."
        )
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != shape:
            raise ValueError(
                f"the checkpoint's weight-sparsity state {key!r} has shape {tuple(tensors[key].shape)}, this model "
                f"needs {shape}: it was saved for another model."
            )


__all__ = ["StructuredMasks", "UnstructuredMasks", "broadcast_masks", "check_saved_shapes", "reset_moments"]
