"""Which training techniques a checkpoint was trained with, and the check that a resumed run uses the same ones.

Every checkpoint `TriLevelTrainer` writes holds `trilevel_techniques.json`: for each technique its `name`, class and
`resume_settings()`, and how the caller spells each setting (a script's flags). Resuming compares it with the run's
techniques before the first step and refuses, naming the setting (flag) and both values, when

* a technique the checkpoint was trained with is missing: its state (weight masks, pruning statistics) would be
  silently dropped, e.g. a structured weight-sparsity run whose pruned heads regrow;
* a technique is added: it would start halfway with empty state, a run that is neither the old one nor a new one;
* a setting differs: an update interval, a policy, a keep rate the saved state was built for.

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


def technique_manifest(techniques: Sequence[TrainingTechnique]) -> dict:
    """The JSON record of `techniques`: class, settings and their spellings, keyed by technique name."""
    recorded = {}
    for technique in techniques:
        settings = technique.resume_settings()
        recorded[technique.name] = {
            "class": f"{type(technique).__module__}.{type(technique).__qualname__}",
            "settings": settings,
            "spellings": {key: technique.setting_spelling(key) for key in settings},
        }
    return {"format": MANIFEST_FORMAT, "techniques": recorded}


def write_technique_manifest(folder: str | Path, techniques: Sequence[TrainingTechnique]) -> None:
    """Write `trilevel_techniques.json` into a checkpoint folder (the main process calls this)."""
    path = Path(folder) / MANIFEST_NAME
    path.write_text(json.dumps(technique_manifest(techniques), indent=2) + "\n", encoding="utf-8")


def read_technique_manifest(folder: str | Path) -> dict | None:
    """The techniques recorded in a checkpoint (name -> record), or None for a checkpoint written without a record.

    A record that does not parse refuses the resume: guessing would defeat the check.
    """
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
    return techniques


def check_resumed_techniques(folder: str | Path, techniques: Sequence[TrainingTechnique]) -> None:
    """Refuse to resume `folder` with techniques or settings other than those it was trained with (see the module)."""
    recorded = read_technique_manifest(folder)
    checkpoint = Path(folder).name
    if recorded is None:
        _check_state_files(Path(folder), techniques)
        return
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
                spelling = recorded[name].get("spellings", {}).get(key) or technique.setting_spelling(key)
                raise TrainingRefused(
                    f"`{spelling}` ({name}): {checkpoint} was trained with {_value_text(saved.get(key))}, this run "
                    f"asks for {_value_text(wanted.get(key))}; resume with the same setting, or start a new run."
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
    """`--flag value` pairs of a record, as the user would pass them again."""
    settings, spellings = record.get("settings", {}), record.get("spellings", {})
    if not settings:
        return "no settings recorded"
    given = {key: value for key, value in settings.items() if value is not None}  # unset: a default decides
    return ", ".join(f"`{spellings.get(key, key)}` {_value_text(value)}" for key, value in given.items())


__all__ = [
    "MANIFEST_NAME",
    "check_resumed_techniques",
    "read_technique_manifest",
    "technique_manifest",
    "write_technique_manifest",
]
