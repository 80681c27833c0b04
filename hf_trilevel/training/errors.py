"""The one exception a run raises when it refuses to start: the settings, the checkpoint or the launch cannot be
honoured, and nothing has been trained yet.

It is a `ValueError` (so code that catches those keeps working) raised by `TriLevelTrainer.train` before the first
optimizer step: a resumed run whose techniques differ from its checkpoint's, a checkpoint whose files do not parse,
a technique's `setup` check (run length, data size, a policy's plan) or a launch that shards what a technique needs
whole. Scripts turn it into a usage error: the example prints the message and exits with status 2, as it does for a
bad flag, instead of a traceback.
"""


class TrainingRefused(ValueError):
    """The run cannot start as asked; the message names the setting, file or flag and what to do instead."""


__all__ = ["TrainingRefused"]
