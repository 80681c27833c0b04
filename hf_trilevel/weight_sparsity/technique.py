"""`WeightSparsity`: SViTE's weight sparsity as a training technique, for any TriLevel model.

Two modes, one schedule:

* `sparsity="unstructured"`: every 2-D weight keeps an Erdos-Renyi-Kernel share of its entries (`density` overall,
  or exactly two of every four with `pattern="2:4"`), RigL prune-and-grow (hf_trilevel.weight_sparsity.masks).
* `sparsity="structured"` (S2ViTE): whole attention heads and MLP neurons, `head_density` / `neuron_density` of each
  layer's, heads scored by first-order Taylor importance and neurons by magnitude
  (hf_trilevel.weight_sparsity.structured_units).
  The trained model can be physically slimmed (`hf_trilevel.slim`), which is where the time savings are.

Every `update_interval` optimizer steps until `end_fraction` of training, each layer replaces a share of its active
weights or units (the death rate, cosine-decayed from `death_rate` to `final_death_rate`); the count of active weights
per layer never changes. `one_shot=True` instead trains dense for `update_interval` steps, prunes once by the same
scores (post-training compression of a loaded checkpoint) and fine-tunes with the masks fixed.

Where the masks act, on the Trainer's public events: before each optimizer step the gradients of masked weights are
zeroed (after the Trainer's gradient clipping, so the clipping norm counts them), so AdamW's moments and weight decay
leave those weights at exactly zero; after each step the masks are applied again. Regrown weights start at zero with
fresh optimizer moments. Decisions depend only on the (all-reduced) gradients, the weights and a keyed generator, and
rank 0's masks are broadcast after every change, so every process holds the same masks. Masks (and accumulated head
scores) are saved in every checkpoint as safetensors and restored on resume, so a resumed run makes the same updates.
A step the optimizer skips (an fp16 overflow) adds no scores and makes no update.
The model saved at the end holds ordinary dense-shaped weights with zeros: any ViT reader loads it.

On a CPU, unstructured zeros save nothing but disk (after compression): dense kernels multiply zeros as fast as
anything else. Structured sparsity saves time once slimmed; `2:4` needs GPUs with sparse tensor cores.
"""

import math
from pathlib import Path

from safetensors.torch import load_file
from transformers import TrainerControl, TrainerState, TrainingArguments

from ..modeling.value_checks import check_fraction, check_int, check_number
from ..training.generators import keyed_generator
from ..training.technique import TrainingTechnique
from .mask_sets import StructuredMasks, UnstructuredMasks
from .masks import PATTERNS, cosine_death_rate

SPARSITY_MODES = ("unstructured", "structured")
INITIAL_MASKS = ("random", "magnitude")
INITIAL_SALT, UPDATE_SALT = 17, 29  # keyed-generator salts of the first masks and of each update's draws


class WeightSparsity(TrainingTechnique):
    """Train with sparse weights within a fixed budget (SViTE), unstructured or by whole heads and neurons.

    Args:
        sparsity: `"unstructured"` (single weights) or `"structured"` (attention heads and MLP neurons).
        density: unstructured: the share of the 2-D weights kept, in (0, 1] (default 0.5; `pattern="2:4"` is 0.5).
        head_density, neuron_density: structured: the share of each layer's heads / neurons kept, in (0, 1]; a
            density that leaves a layer without a head or neuron is refused.
        pattern: unstructured: `"unstructured"` or `"2:4"` (two of every four consecutive inputs of each weight).
        update_interval: optimizer steps between prune-and-grow updates (one-shot: dense steps before the prune).
        end_fraction: share of training after which the masks stay fixed, in (0, 1].
        death_rate, final_death_rate: share of each layer's active weights (units) an update replaces, cosine-decayed
            from the first to the second over the updates.
        one_shot: prune once after `update_interval` dense steps, by magnitude (unstructured) or Taylor importance and
            magnitude (structured), then keep the masks fixed: compression of a trained checkpoint.
        initial_mask: unstructured: `"random"` (training from scratch, SViTE) or `"magnitude"` (sparsify trained
            weights at once); structured training from scratch starts from random units.
        seed: seed of the random masks and of regrown heads' queries and keys; default: the run's seed.

    Runs under `hf_trilevel.TriLevelTrainer`, which saves the masks in every checkpoint (the stock Trainer would
    resume with fresh masks, so it is refused). Works on one process and with DDP (`accelerate launch`,
    `torchrun`); FSDP and DeepSpeed shard the weights it masks and are refused.
    """

    name = "weight_sparsity"
    sharding_refusal = (
        "its masks pick among whole weights (each layer's top scores, 2:4 groups, whole heads and neurons) and are "
        "applied to every weight and gradient on every process, but sharding leaves each process a slice of each."
    )

    def __init__(
        self,
        sparsity: str = "unstructured",
        *,
        density: float | None = None,
        head_density: float = 0.5,
        neuron_density: float = 0.5,
        pattern: str = "unstructured",
        update_interval: int = 100,
        end_fraction: float = 0.8,
        death_rate: float = 0.5,
        final_death_rate: float = 0.005,
        one_shot: bool = False,
        initial_mask: str = "random",
        seed: int | None = None,
    ):
        if sparsity not in SPARSITY_MODES:
            raise ValueError(f"`sparsity` must be one of {list(SPARSITY_MODES)}, got {sparsity!r}.")
        if pattern not in PATTERNS:
            raise ValueError(f"`pattern` must be one of {list(PATTERNS)}, got {pattern!r}.")
        if pattern == "2:4" and sparsity != "unstructured":
            raise ValueError("`pattern` '2:4' is a layout of single weights: use it with sparsity 'unstructured'.")
        if pattern == "2:4" and density not in (None, 0.5):
            raise ValueError(f"`density` must be 0.5 (or unset) with pattern '2:4', which keeps 2 of 4; got {density}.")
        self.sparsity, self.pattern = sparsity, pattern
        self.density = check_fraction("density", 0.5 if density is None else density)
        self.head_density = check_fraction("head_density", head_density)
        self.neuron_density = check_fraction("neuron_density", neuron_density)
        self.update_interval = check_int("update_interval", update_interval, low=1)
        self.end_fraction = check_fraction("end_fraction", end_fraction)
        self.death_rate = check_fraction("death_rate", death_rate)
        self.final_death_rate = check_number(
            "final_death_rate", final_death_rate, 0.0, self.death_rate, low_open=False, hint="at most `death_rate`"
        )
        if not isinstance(one_shot, bool):
            raise ValueError(f"`one_shot` must be True or False, got {one_shot!r}.")
        if initial_mask not in INITIAL_MASKS:
            raise ValueError(f"`initial_mask` must be one of {list(INITIAL_MASKS)}, got {initial_mask!r}.")
        if seed is not None:
            check_int("seed", seed, low=0)
        self.one_shot, self.initial_mask, self.seed = one_shot, initial_mask, seed
        self.masks: UnstructuredMasks | StructuredMasks | None = None
        self.updates = 0
        self.last_moved = 0.0
        self._set_up = False
        self._restored: dict | None = None
        self._end_step = 0
        self._init_std = 0.02
        self._update_now = False

    # -- the schedule -------------------------------------------------------------------------------------------
    def is_update_step(self, step: int) -> bool:
        """Whether optimizer step `step` (1-based) changes the masks."""
        if self.one_shot:
            return step == self.update_interval
        return step % self.update_interval == 0 and step <= self._end_step

    def death_rate_at(self, step: int) -> float:
        return cosine_death_rate(step, self._end_step, self.death_rate, self.final_death_rate)

    def check_run_length(
        self, max_steps: int, interval_name: str = "update_interval", end_fraction_name: str = "end_fraction"
    ) -> None:
        """Refuse an `update_interval` that would never update the masks in a run of `max_steps` steps; messages name
        the two settings as `interval_name` / `end_fraction_name` (a script's flags)."""
        if self.one_shot:
            if self.update_interval >= max_steps:
                raise ValueError(
                    f"`{interval_name}` {self.update_interval} must be shorter than the run ({max_steps} optimizer "
                    "steps): one-shot pruning happens after that many dense steps, and the rest fine-tunes."
                )
            return
        end_step = math.floor(self.end_fraction * max_steps)
        if self.update_interval > end_step:
            raise ValueError(
                f"`{interval_name}` {self.update_interval} is longer than the part of the run that updates masks "
                f"(`{end_fraction_name}` {self.end_fraction:g} of {max_steps} optimizer steps = {end_step}): the masks "
                f"would never change; use at most {max(end_step, 1)}."
            )

    # -- Trainer events -----------------------------------------------------------------------------------------
    def setup(self, args: TrainingArguments, num_examples, device) -> None:
        self._set_up = True  # only TriLevelTrainer calls this, and only it saves the masks in checkpoints
        if args.max_steps is not None and args.max_steps > 0:
            self.check_run_length(args.max_steps)

    def on_train_begin(self, args, state: TrainerState, control: TrainerControl, model=None, **kwargs):
        if not self._set_up:
            raise RuntimeError(
                "WeightSparsity keeps its masks in each checkpoint through TriLevelTrainer; under the stock "
                "Trainer a resumed run would start from new masks. Use `hf_trilevel.TriLevelTrainer`, a drop-in "
                "replacement for `transformers.Trainer`."
            )
        self._set_up = False
        self.check_run_length(state.max_steps)
        self._end_step = math.floor(self.end_fraction * state.max_steps)
        self._init_std = getattr(model.config, "initializer_range", 0.02)
        if self._restored is not None:
            self.masks = self._build_masks(model)
            self.masks.load(self._restored)
            self._restored = None
        elif self.masks is not None and self.masks.model is model:  # a second `train()` continues from these masks
            self.updates, self.last_moved = 0, 0.0
            self.masks.apply()
        else:
            self.masks = self._build_masks(model)
            self.updates, self.last_moved = 0, 0.0
            seed = args.seed if self.seed is None else self.seed
            self.masks.begin(keyed_generator(seed, 0, INITIAL_SALT), dense=self.one_shot)

    def _build_masks(self, model) -> UnstructuredMasks | StructuredMasks:
        if self.sparsity == "structured":
            return StructuredMasks(model, self.head_density, self.neuron_density)
        return UnstructuredMasks(model, self.density, self.pattern, self.initial_mask)

    def on_pre_optimizer_step(self, args, state: TrainerState, control: TrainerControl, **kwargs):
        self._update_now = self.is_update_step(state.global_step + 1)
        self.masks.before_optimizer(self._update_now)

    def on_optimizer_step(self, args, state: TrainerState, control: TrainerControl, optimizer=None, **kwargs):
        taken = not getattr(optimizer, "step_was_skipped", False)  # accelerate: an fp16 overflow skips the step
        self.masks.end_step(taken)
        if self._update_now and taken:
            step = state.global_step + 1
            seed = args.seed if self.seed is None else self.seed
            self.last_moved = self.masks.update(
                self.death_rate_at(step), keyed_generator(seed, step, UPDATE_SALT), optimizer, self.one_shot,
                self._init_std,
            )  # fmt: skip
            self.updates += 1
            self._update_now = False
        else:
            self.masks.apply()

    def on_train_end(self, args, state: TrainerState, control: TrainerControl, **kwargs):
        if self.masks is None:
            return
        best = state.best_model_checkpoint if args.load_best_model_at_end else None
        saved = Path(best, f"{self.name}.safetensors") if best else None
        if saved is not None and saved.is_file():  # the Trainer loaded that checkpoint's weights: take its masks
            self.masks.load(load_file(str(saved)))
        self.masks.finish()

    # -- state, logs and card -----------------------------------------------------------------------------------
    def settings(self) -> dict:
        settings = {"sparsity": self.sparsity}
        if self.sparsity == "unstructured":
            settings |= {"pattern": self.pattern, "density": self.density, "initial_mask": self.initial_mask}
        else:
            settings |= {"head_density": self.head_density, "neuron_density": self.neuron_density}
        settings |= {"update_interval": self.update_interval, "one_shot": self.one_shot}
        if not self.one_shot:
            settings |= {
                "end_fraction": self.end_fraction, "death_rate": self.death_rate,
                "final_death_rate": self.final_death_rate,
            }  # fmt: skip
        return settings

    def resume_settings(self) -> dict:
        """Every setting the mode reads (`settings`: the schedule's interval, end and death rates shape the masks a
        resumed run inherits) and the seed of the masks (None: the run's, which the trainer records itself)."""
        return {**self.settings(), "seed": self.seed}

    def card_settings(self) -> dict:
        return self.settings()

    def state_tensors(self) -> dict:
        return self.masks.state_tensors() if self.masks is not None else {}

    def state_metadata(self) -> dict:
        return {"settings": self.settings(), "updates": self.updates, "last_moved": self.last_moved}

    def load_state(self, tensors: dict, metadata: dict) -> None:
        saved, wanted = metadata.get("settings", {}), self.resume_settings()
        for key, value in saved.items():  # what a checkpoint of any version recorded (before the trainer's record)
            if key in wanted and value != wanted[key]:
                raise ValueError(
                    f"the checkpoint was trained with weight sparsity `{self.setting_spelling(key)}` {value!r}, this "
                    f"run asks for {wanted[key]!r}; resume with the same setting, or start a new run."
                )
        self.updates, self.last_moved = int(metadata.get("updates", 0)), float(metadata.get("last_moved", 0.0))
        self._restored = tensors

    def log_values(self, step: int) -> dict[str, float]:
        if self.masks is None:
            return {}
        return {f"{self.name}/density": self.masks.density(), f"{self.name}/moved": self.last_moved}


__all__ = ["INITIAL_MASKS", "SPARSITY_MODES", "WeightSparsity"]
