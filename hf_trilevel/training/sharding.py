"""Training with sharded parameters (FSDP, DeepSpeed): which techniques may, and the refusal of those that may not.

DDP keeps every parameter whole on every process; FSDP2 (`torch.distributed.fsdp.fully_shard`, what accelerate and
`TrainingArguments(fsdp=True)` use by default) turns each parameter into a `DTensor` holding one slice of dim 0 per
process and gathers it around each forward and backward; DeepSpeed ZeRO partitions optimizer state, gradients and
(stage 3) parameters. A technique that reads or writes whole weights, or keeps references to them, can silently train
something else under sharding, so the trainer asks before training:

* **FSDP2**: every technique trains as under DDP (the same losses and weights at the same global batch,
  tests/test_fsdp.py) unless its class sets `TrainingTechnique.sharding_refusal`, the reason it cannot; such a
  run is refused before the first step, naming the technique and the reason.
* **FSDP version 1 and DeepSpeed**: no technique has been tested with them, so any technique is refused; a run
  without techniques is transformers' and accelerate's own business and goes ahead.

FSDP asked for where accelerate does not set it up (accelerate 1.16 shards only multi-process runs on accelerator
devices: a CPU run trains as plain DDP) is logged once, as a warning (`warn_if_fsdp_dropped`).

docs/distributed.md has the matrix and the measurements.
"""

import logging
import os
from collections.abc import Sequence

from .errors import TrainingRefused
from .technique import TrainingTechnique

FSDP2 = "FSDP2"
FSDP1 = "FSDP version 1"
DEEPSPEED = "DeepSpeed"
DDP_ADVICE = "train with DDP (`accelerate launch --multi_gpu` or `torchrun`)"
DOCS = "docs/distributed.md"

logger = logging.getLogger(__name__)
_warned: set[str] = set()  # the warnings this process has logged


def uses_sharded_parameters(accelerator=None, args=None) -> str | None:
    """The parameter sharding a run uses or asks for: `"FSDP2"`, `"FSDP version 1"`, `"DeepSpeed"`, or None.

    Looked up, in order, in the accelerator's state (an FSDP or DeepSpeed plugin: what accelerate set up), in the
    `TrainingArguments` (`fsdp`, `fsdp_config["version"]`, `deepspeed`) and in what `accelerate launch` exports
    (`ACCELERATE_USE_FSDP` with `FSDP_VERSION`, `ACCELERATE_USE_DEEPSPEED`). A request counts even where accelerate
    drops it (on a CPU-only multi-process run accelerate 1.16 runs plain DDP instead of FSDP): the answer is the same
    on every machine the same command runs on.
    """
    state = getattr(accelerator, "state", None)
    if getattr(state, "deepspeed_plugin", None) is not None or getattr(state, "deepspeed_plugins", None):
        return DEEPSPEED
    plugin = getattr(state, "fsdp_plugin", None)
    if plugin is not None:
        return _fsdp_kind(getattr(plugin, "fsdp_version", 1))
    if args is not None:
        if getattr(args, "deepspeed", None):
            return DEEPSPEED
        if getattr(args, "fsdp", None):
            plugin_args = getattr(args, "fsdp_plugin_args", None) or {}
            config = getattr(args, "fsdp_config", None)
            version = plugin_args.get("fsdp_version", config.get("version", 2) if isinstance(config, dict) else 2)
            return _fsdp_kind(version)
    if _flag("ACCELERATE_USE_DEEPSPEED"):
        return DEEPSPEED
    if _flag("ACCELERATE_USE_FSDP"):
        return _fsdp_kind(os.environ.get("FSDP_VERSION", "1"))  # accelerate's own default version
    return None


def check_sharded_training(techniques: Sequence[TrainingTechnique], accelerator=None, args=None) -> None:
    """Raise `TrainingRefused` (a `ValueError`) naming every technique that cannot train with the run's sharding,
    and why.

    Nothing happens without sharding (one process or DDP). Under FSDP2 a technique is refused when its class sets
    `sharding_refusal`; under FSDP version 1 and DeepSpeed every technique is (none has been tested there).
    """
    sharding = uses_sharded_parameters(accelerator, args)
    if sharding is None:
        return
    refused = []
    for technique in techniques:
        reason = technique.sharding_refusal
        if reason is None and sharding != FSDP2:
            reason = f"it has not been tested with {sharding} (of the sharded setups, only FSDP2 has)."
        if reason is not None:
            refused.append(f"{type(technique).__name__} (`{technique.name}`) cannot train with {sharding}: {reason}")
    if not refused:
        return
    fsdp2 = "" if sharding == FSDP2 else ", or shard with FSDP2 (`fsdp_config={'version': 2}`)"
    raise TrainingRefused(
        f"{' '.join(refused)} Train without {'it' if len(refused) == 1 else 'them'}, or {DDP_ADVICE}{fsdp2}; "
        f"{DOCS} lists what trains with sharded parameters."
    )


def warn_if_fsdp_dropped(accelerator, args=None) -> bool:
    """Warn, once per process and on the main process only, when FSDP was asked for but accelerate did not set it up,
    so the run trains as DDP with whole parameters on every process; return whether it warned.

    Asked for: `TrainingArguments.fsdp` (`--fsdp`), or `ACCELERATE_USE_FSDP` (what `accelerate launch --use_fsdp`
    exports). Set up: the accelerator's state holds an FSDP plugin. accelerate 1.16 makes a run FSDP only when it is
    a multi-process run on accelerator devices (GPU, XPU, NPU, HPU, ...); on CPUs (`--use_cpu`, gloo) it keeps
    multi-CPU DDP and drops the plugin without a word, so the same command shards on GPUs and not on CPUs. The
    sharding refusals (`check_sharded_training`) still apply there: they read what was asked for.
    """
    if getattr(args, "fsdp", None):
        asked = "`TrainingArguments.fsdp`, `--fsdp`"
    elif _flag("ACCELERATE_USE_FSDP"):
        asked = "`ACCELERATE_USE_FSDP`, `accelerate launch --use_fsdp`"
    else:
        return False
    state = getattr(accelerator, "state", None)
    if getattr(state, "fsdp_plugin", None) is not None or not getattr(accelerator, "is_main_process", True):
        return False
    kind = getattr(state, "distributed_type", None)
    kind = getattr(kind, "value", kind)
    trains = "on one process, unsharded" if kind == "NO" else "as plain DDP"
    message = (
        f"FSDP was asked for ({asked}) but accelerate did not set it up, so this run trains {trains}: every "
        "process holds every parameter whole and no memory is saved. accelerate shards parameters only in "
        "multi-process runs on accelerator devices (GPU, XPU, NPU, HPU, ...), not on CPUs; this run's distributed "
        f"type is {kind}. Techniques refused under FSDP2 are refused here too, as on any machine; see {DOCS}."
    )
    if message in _warned:
        return False
    _warned.add(message)
    logger.warning(message)
    return True


def _fsdp_kind(version) -> str:
    return FSDP2 if str(version).strip() == "2" else FSDP1


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").strip().lower() in ("1", "true", "yes")


__all__ = ["DEEPSPEED", "FSDP1", "FSDP2", "check_sharded_training", "uses_sharded_parameters", "warn_if_fsdp_dropped"]
