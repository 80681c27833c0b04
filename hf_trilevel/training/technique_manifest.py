"""Which training techniques a checkpoint was trained with, and the check that a resumed run uses the same ones.

Every checkpoint `TriLevelTrainer` writes holds `trilevel_techniques.json`: the run's seed (keyed augmentation, pruning
and mask draws depend on it), the model's config as the run built it (before any technique changed it: keep rates,
selector, pruning layers), and, for each technique, its `name`, class and `resume_settings()`, and how the caller
spells each setting (a script's flags). Resuming compares it with the run before the first step and refuses, naming
the setting (flag) and both values, when

* a technique the checkpoint was trained with is missing: its state (weight masks, pruning statistics) would be
  silently dropped, e.g. a structured weight-sparsity run whose pruned heads regrow;
* a technique is added: it would start halfway with empty state, a run that is neither the old one nor a new one;
* a setting differs: an update interval, a policy, a keep rate the saved state was built for, the seed, or a field of
  the model's config (`--token_keep_rate 0.3` on a run trained at 0.7 would otherwise train on at another rate).

Checkpoints written before this file existed (0.1.0) are checked by the state files they hold instead: a
`<name>.safetensors` + `<name>.json` pair with no technique of that name in the run is a technique dropped on resume.
Techniques without state left no trace there and cannot be checked.
"""

import json
from collections.abc import Sequence
from pathlib import Path

from .errors import TrainingRefused
from .technique import TrainingTechnique

MANIFEST_NAME = "trilevel_techniques.json"
MANIFEST_FORMAT = 1
# Config fields that say where and how the model was saved, not what it computes.
UNCOMPARED_CONFIG_FIELDS = frozenset(
    {"architectures", "auto_map", "dtype", "torch_dtype", "transformers_version", "name_or_path"}
)
# Config fields added after checkpoints were first written, with the value that computes what the model computed
# before the field existed: a record without the field was trained at that value (merging arrived with issue 25).
ADDED_CONFIG_FIELDS = {"token_merge_r": 0, "token_merge_proportional_attention": True}


def config_record(config) -> dict | None:
    """The fields of a model config a resumed run must share (JSON data), or None for a model without a config."""
    to_dict = getattr(config, "to_dict", None)
    if to_dict is None:
        return None
    fields = {key: value for key, value in to_dict().items() if not key.startswith("_")}
    return _as_json({key: value for key, value in fields.items() if key not in UNCOMPARED_CONFIG_FIELDS})


def technique_manifest(
    techniques: Sequence[TrainingTechnique], seed: int | None = None, model_config: dict | None = None
) -> dict:
    """The JSON record of a run: its seed, its model's `config_record`, and each technique's class, settings, their
    spellings and the flags that built it."""
    recorded = {}
    for technique in techniques:
        settings = technique.resume_settings()
        recorded[technique.name] = {
            "class": f"{type(technique).__module__}.{type(technique).__qualname__}",
            "settings": settings,
            "spellings": {key: technique.setting_spelling(key) for key in settings},
            "flags": technique.flags(),
        }
    return {"format": MANIFEST_FORMAT, "seed": seed, "model_config": model_config, "techniques": recorded}


def write_technique_manifest(
    folder: str | Path,
    techniques: Sequence[TrainingTechnique],
    seed: int | None = None,
    model_config: dict | None = None,
) -> None:
    """Write `trilevel_techniques.json` into a checkpoint folder (the main process calls this)."""
    manifest = technique_manifest(techniques, seed, model_config)
    (Path(folder) / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def read_technique_manifest(folder: str | Path) -> dict | None:
    """The techniques recorded in a checkpoint (name -> record), or None for a checkpoint written without a record.

    A record that does not parse refuses the resume: guessing would defeat the check.
    """
    manifest = _read_manifest(folder)
    return None if manifest is None else manifest["techniques"]


def _read_manifest(folder: str | Path) -> dict | None:
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TrainingRefused(
            f"cannot resume from {str(folder)!r}: {MANIFEST_NAME} is truncated or corrupt ({error}); resume from an "
            "earlier checkpoint."
        ) from None
    techniques = manifest.get("techniques") if isinstance(manifest, dict) else None
    if not isinstance(techniques, dict):
        raise TrainingRefused(f"cannot resume from {str(folder)!r}: {MANIFEST_NAME} holds no `techniques` record.")
    return manifest


def check_resumed_techniques(
    folder: str | Path,
    techniques: Sequence[TrainingTechnique],
    seed: int | None = None,
    model_config: dict | None = None,
) -> None:
    """Refuse to resume `folder` with techniques, settings, a seed or a model config other than those it was trained
    with (see the module); `seed` or `model_config` None skips it."""
    manifest = _read_manifest(folder)
    checkpoint = Path(folder).name
    if manifest is None:
        _check_state_files(Path(folder), techniques)
        return
    if seed is not None and manifest.get("seed") is not None and manifest["seed"] != seed:
        raise TrainingRefused(
            f"`seed`: {checkpoint} was trained with {manifest['seed']}, this run asks for {seed}; the augmentation, "
            "example pruning and weight masks are drawn from it, so the resumed run would be neither run. Resume "
            "with the same seed, or start a new run."
        )
    recorded = manifest["techniques"]
    running = {technique.name: technique for technique in techniques}
    for name, record in recorded.items():
        if name not in running:
            raise TrainingRefused(
                f"{checkpoint} was trained with {name} ({_settings_text(record)}), which this run does not use: "
                f"resuming without it would drop its state. Resume with the same settings, or start a new run."
            )
    for name, technique in running.items():
        if name not in recorded:
            settings = technique_manifest([technique])["techniques"][name]
            raise TrainingRefused(
                f"this run adds {name} ({_settings_text(settings)}), which {checkpoint} was not trained with: a "
                "technique cannot join a run halfway. Resume without it, or start a new run."
            )
        saved, wanted = recorded[name].get("settings", {}), technique.resume_settings()
        for key in sorted(set(saved) | set(wanted), key=lambda key: (key not in wanted, key)):
            if saved.get(key) != _as_json(wanted.get(key)):
                spelling = recorded[name].get("spellings", {}).get(key) or technique.setting_spelling(key) or key
                raise TrainingRefused(
                    f"`{spelling}` ({name}): {checkpoint} was trained with {_value_text(saved.get(key))}, this run "
                    f"asks for {_value_text(wanted.get(key))}; resume with the same setting, or start a new run."
                )
    _check_model_config(manifest.get("model_config"), model_config, checkpoint)  # after the techniques' flags


def _check_model_config(saved: dict | None, wanted: dict | None, checkpoint: str) -> None:
    """Refuse a model config field that differs from the one the checkpoint's run built (both records present)."""
    if saved is None or wanted is None:
        return
    saved = {**{key: value for key, value in ADDED_CONFIG_FIELDS.items() if key in wanted}, **saved}
    for key in sorted(set(saved) | set(wanted)):
        if saved.get(key) != wanted.get(key):
            raise TrainingRefused(
                f"`{key}` (the model's config): {checkpoint} was trained with {_value_text(saved.get(key))}, this "
                f"run asks for {_value_text(wanted.get(key))}; resume with the same setting, or start a new run."
            )


def _check_state_files(folder: Path, techniques: Sequence[TrainingTechnique]) -> None:
    """For a checkpoint without a record: a technique's state files whose technique this run lacks."""
    running = {technique.name for technique in techniques}
    for state in sorted(folder.glob("*.safetensors")):
        name = state.stem
        if name not in running and (folder / f"{name}.json").is_file():
            raise TrainingRefused(
                f"{folder.name} holds {name} state ({state.name}, {name}.json), but this run does not use {name}: "
                "resuming without it would drop that state. Resume with the settings it was trained with, or start "
                "a new run."
            )


def _as_json(value: object) -> object:
    """A setting as it reads back from the record (tuples become lists)."""
    return json.loads(json.dumps(value))


def _value_text(value: object) -> str:
    if value is None:
        return "none (unset)"
    if isinstance(value, list):
        return " ".join(str(item) for item in value)
    return repr(value) if isinstance(value, str) else str(value)


def _settings_text(record: dict) -> str:
    """How the technique was asked for: the flags the user gave (a script's), else its settings as `key value`
    pairs (unset ones left out: a default decides)."""
    if record.get("flags"):
        return f"`{record['flags']}`"
    settings, spellings = record.get("settings", {}), record.get("spellings", {})
    given = [
        f"`{spellings.get(key) or key}` {_value_text(value)}" for key, value in settings.items() if value is not None
    ]
    return ", ".join(given) if given else "no settings recorded"


__all__ = [
    "MANIFEST_NAME",
    "check_resumed_techniques",
    "config_record",
    "read_technique_manifest",
    "technique_manifest",
    "write_technique_manifest",
]
