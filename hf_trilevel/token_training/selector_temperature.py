"""`SelectorTemperatureSchedule`: the Gumbel temperature (and noise) of learned token scores, annealed per step."""

import math

from ..modeling.value_checks import check_number
from ..training.schedules import linear_temperature
from ..training.technique import TrainingTechnique


class SelectorTemperatureSchedule(TrainingTechnique):
    """Anneal the Gumbel temperature of learned token scores (SViTE+: linear from 10 to 0.1 over training).

    A high temperature makes the straight-through gates soft, so many tokens near the keep boundary get gradient
    while the scorer is still poor; a low one concentrates the gradient on the tokens at the boundary. As in
    Gumbel-softmax, the temperature shapes only the gradient: which tokens a training step keeps is a sample from
    the softmax of the scores at every temperature (evaluation keeps the top scores); only the noise scale below
    moves training toward evaluation's choice. Both are functions of the optimizer step alone, set before every
    step, so a resumed run trains as an uninterrupted one and there is no state to save. Works with any `Trainer`.

    `noise_start` / `noise_end` anneal the Gumbel noise scale (`token_selector_noise`) the same way; the default
    keeps it at 1.0 (a softmax sample every step). Ending at 0.0 makes the last steps keep the top scores, as
    evaluation does.

    Args:
        start: temperature at the first step, > 0.
        end: temperature at the last step, > 0.
        noise_start: Gumbel noise scale at the first step, in [0, 1].
        noise_end: Gumbel noise scale at the last step, in [0, 1].
    """

    name = "token_selector_temperature"

    def __init__(self, start: float = 10.0, end: float = 0.1, noise_start: float = 1.0, noise_end: float = 1.0):
        self.start = check_number("start", start, 0.0, math.inf, high_open=True)
        self.end = check_number("end", end, 0.0, math.inf, high_open=True)
        self.noise_start = check_number("noise_start", noise_start, 0.0, 1.0, low_open=False)
        self.noise_end = check_number("noise_end", noise_end, 0.0, 1.0, low_open=False)
        self._total_steps = 0

    def resume_settings(self) -> dict:
        return {"start": self.start, "end": self.end, "noise_start": self.noise_start, "noise_end": self.noise_end}

    def card_settings(self) -> dict:
        settings = {"start": self.start, "end": self.end, "schedule": "linear per step"}
        if (self.noise_start, self.noise_end) != (1.0, 1.0):
            settings.update(noise_start=self.noise_start, noise_end=self.noise_end)
        return settings

    def temperature_at(self, step: int) -> float:
        return linear_temperature(step, self._total_steps, self.start, self.end)

    def noise_at(self, step: int) -> float:
        return linear_temperature(step, self._total_steps, self.noise_start, self.noise_end)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        config = getattr(model, "config", None)
        if config is None or not hasattr(config, "uses_learned_scores"):
            raise ValueError(f"SelectorTemperatureSchedule needs a TriLevel model, got {type(model).__name__}.")
        if not config.uses_learned_scores():
            raise ValueError(
                f"SelectorTemperatureSchedule anneals learned token scores, but the model's "
                f"`token_selector={config.token_selector!r}` (token_importance={config.token_importance!r}) has "
                "none: use `token_selector='learned'` (or 'adaptive' with token_importance='learned'), or drop the "
                "callback."
            )
        self._total_steps = state.max_steps

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        model.config.token_selector_temperature = self.temperature_at(state.global_step)
        model.config.token_selector_noise = self.noise_at(state.global_step)

    def log_values(self, step: int) -> dict[str, float]:
        """The temperature (and an annealed noise scale) the logged step trained at (`global_step` one lower)."""
        if not self._total_steps:
            return {}
        values = {"token_selector_temperature": round(self.temperature_at(step - 1), 4)}
        if (self.noise_start, self.noise_end) != (1.0, 1.0):
            values["token_selector_noise"] = round(self.noise_at(step - 1), 4)
        return values

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and "loss" in logs and "token_selector_temperature" not in logs:
            logs.update(self.log_values(state.global_step))


__all__ = ["SelectorTemperatureSchedule"]
