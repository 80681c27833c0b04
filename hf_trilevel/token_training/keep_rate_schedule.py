"""`KeepRateSchedule`: the token keep-rate warm-up of Tri-Level E-ViT and EViT, as a training technique."""

from ..modeling.value_checks import check_fraction, check_keep_rate, check_number
from ..training.schedules import cosine_keep_rate
from ..training.technique import TrainingTechnique


class KeepRateSchedule(TrainingTechnique):
    """Token keep-rate warm-up (Tri-Level E-ViT / EViT): train dense first, then drop tokens gradually.

    The rate is 1.0 for the first `warmup_fraction` of the optimizer steps, then follows a per-step cosine down to
    the target over the next `decay_fraction` of the steps, and stays there (paper: 10 and 100 of 300 epochs, the
    defaults). Evaluation and saved checkpoints always see the target: the scheduled rate is applied only between
    `on_step_begin` and `on_step_end`.

    Args:
        target_token_keep_rate: final rate in (0, 1]; default: the model's `config.token_keep_rate`.
        warmup_fraction: share of training at rate 1.0, in [0, 1).
        decay_fraction: share of training spent decaying, in (0, 1]; `warmup_fraction + decay_fraction <= 1`.

    Each distinct rate is a distinct token count, so a `torch.compile`d model recompiles as the rate moves; compile
    after the warm-up or accept the recompiles.

    With token merging (`token_merge_r`) every warm-up rate merges the model's r: the rate only moves from 1.0 down
    to the target, and a layer's token count only shrinks with the rate, so an r that fits at the target (checked
    when training begins) fits at every rate on the way. The warm-up is of the keep rate alone; r is not warmed up.
    """

    def __init__(
        self,
        target_token_keep_rate: float | None = None,
        warmup_fraction: float = 10 / 300,
        decay_fraction: float = 100 / 300,
    ):
        if target_token_keep_rate is not None:
            target_token_keep_rate = check_keep_rate("target_token_keep_rate", target_token_keep_rate)
        warmup_fraction = check_number("warmup_fraction", warmup_fraction, 0.0, 1.0, low_open=False, high_open=True)
        decay_fraction = check_fraction("decay_fraction", decay_fraction)
        if warmup_fraction + decay_fraction > 1 + 1e-9:
            raise ValueError(
                f"`warmup_fraction + decay_fraction` must be <= 1, got {warmup_fraction} + {decay_fraction}."
            )
        self.target_token_keep_rate = target_token_keep_rate
        self.warmup_fraction = float(warmup_fraction)
        self.decay_fraction = float(decay_fraction)
        self._target: float | None = None
        self._total_steps = 0

    name = "keep_rate_schedule"
    sets_keep_rates = True

    def resume_settings(self) -> dict:
        return {
            "target_token_keep_rate": self.target_token_keep_rate,
            "warmup_fraction": self.warmup_fraction,
            "decay_fraction": self.decay_fraction,
        }

    def card_settings(self) -> dict:
        return {
            "target_token_keep_rate": self._target or self.target_token_keep_rate,
            "warmup_fraction": round(self.warmup_fraction, 4),
            "decay_fraction": round(self.decay_fraction, 4),
        }

    def rate_at(self, step: int) -> float:
        return cosine_keep_rate(step, self._total_steps, self._target, self.warmup_fraction, self.decay_fraction)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is None or not hasattr(model, "set_keep_rates"):
            raise ValueError(
                f"KeepRateSchedule needs a TriLevel model (one with `set_keep_rates`), got {type(model).__name__}."
            )
        self._target = self.target_token_keep_rate or model.config.token_keep_rate
        self._total_steps = state.max_steps
        try:  # refuses a target at which the model's token merging (`token_merge_r`) does not fit
            model.set_keep_rates(token_keep_rate=self._target)
        except ValueError as error:
            raise ValueError(f"KeepRateSchedule's target keep rate {self._target:g}: {error}") from None

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        model.set_keep_rates(token_keep_rate=self.rate_at(state.global_step))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        model.set_keep_rates(token_keep_rate=self._target)

    def log_values(self, step: int) -> dict[str, float]:
        """The keep rate the logged step trained at (it ran with `global_step` one lower)."""
        return {} if self._target is None else {"token_keep_rate": round(self.rate_at(max(step - 1, 0)), 4)}

    def on_log(self, args, state, control, logs=None, **kwargs):
        # Under a plain `Trainer` (no `log_values` hook) the rate still reaches the reporters this way.
        if logs is not None and "loss" in logs and "token_keep_rate" not in logs:
            logs.update(self.log_values(state.global_step))


__all__ = ["KeepRateSchedule"]
