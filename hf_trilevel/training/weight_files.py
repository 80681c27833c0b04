"""Cheap checks of saved weight files: is a `*.safetensors` file whole, and which tensor shapes does it hold.

A copy cut short (a full disk, an interrupted download or `scp`, a kill during a save) leaves a `model.safetensors`
that transformers only refuses deep inside `from_pretrained`, as a `SafetensorError: ... incomplete metadata`
traceback that does not name the file. Everything needed to tell is in the file's header, so these checks read
only the header, never a tensor:

* the first 8 bytes are the header's length `N` (little-endian unsigned 64-bit); the next `N` bytes are a JSON
  object mapping each tensor's name to its `dtype`, `shape` and `data_offsets` `[begin, end)` into the data that
  follows (plus an optional `__metadata__` entry of strings);
* the data must be exactly covered: the tensors' ranges, in order, follow one another from 0 to the end of the
  file, and each range holds `prod(shape)` elements of its dtype. A file shorter than that was cut short; a file
  longer, or with gaps, is not what a safetensors writer produces (the `safetensors` reader refuses both).

A sharded save (`model.safetensors.index.json` with a `weight_map` from tensor name to shard file) is checked
shard by shard, and every tensor the index maps must be in the shard it names.
"""

import json
import math
import struct
from collections.abc import Collection
from pathlib import Path

from ..modeling import FAMILY_CLASSES, family_of_model_type
from ..modeling.configuration_trilevel_vit import TriLevelViTConfig

SAFETENSORS_WEIGHTS = "model.safetensors"  # transformers' SAFE_WEIGHTS_NAME
SAFETENSORS_INDEX = "model.safetensors.index.json"  # transformers' SAFE_WEIGHTS_INDEX_NAME
MAX_HEADER_BYTES = 100_000_000  # the `safetensors` reader refuses larger headers
LENGTH_BYTES = 8
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8, "C64": 8,
}  # fmt: skip
# Sub-byte dtypes (F4, F6_*) pack several elements per byte; their byte count is not checked.


class WeightFileError(ValueError):
    """A weight file that cannot be read; the message names the file and what is wrong with it."""


def safetensors_header(path: str | Path) -> dict[str, dict]:
    """The tensor entries of the safetensors file `path` (name -> `{"dtype", "shape", "data_offsets"}`), read from
    its header alone, after checking that the header is well formed and that the file holds exactly the data it
    describes. Raises `WeightFileError` naming the file and the problem."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as file:
            length_bytes = file.read(LENGTH_BYTES)
            if len(length_bytes) < LENGTH_BYTES:
                raise WeightFileError(
                    f"{path} is {size} bytes long, too short for a safetensors file (whose first {LENGTH_BYTES} bytes "
                    "give its header's length): it is empty or was cut short"
                )
            (length,) = struct.unpack("<Q", length_bytes)
            if length > MAX_HEADER_BYTES:
                raise WeightFileError(
                    f"{path} is not a safetensors file: its first {LENGTH_BYTES} bytes announce a {length:,}-byte "
                    "header"
                )
            available = size - LENGTH_BYTES
            if length > available:
                raise WeightFileError(
                    f"{path} is cut short: its header alone should be {length:,} bytes but the file holds only "
                    f"{available:,} after the length (it is {size:,} bytes long)"
                )
            header_bytes = file.read(length)
    except OSError as error:
        raise WeightFileError(f"{path} cannot be read: {error}") from None
    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WeightFileError(f"{path} is not a safetensors file: its header is not JSON ({error})") from None
    if not isinstance(header, dict):
        raise WeightFileError(f"{path} is not a safetensors file: its header is not a JSON object")
    header.pop("__metadata__", None)
    _check_data(path, header, data_start=LENGTH_BYTES + length, size=size)
    return header


def _check_data(path: Path, header: dict, data_start: int, size: int) -> None:
    """The header's tensors must tile the file's bytes after `data_start` exactly, each with its dtype's byte count."""
    data_bytes = size - data_start
    spans = []
    for name, entry in header.items():
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("dtype"), str)
            and _is_int_list(entry.get("shape"))
            and _is_int_list(entry.get("data_offsets"))
            and len(entry["data_offsets"]) == 2
        ):
            raise WeightFileError(f"{path} has a corrupt header: the entry of tensor {name!r} is {entry!r}")
        begin, end = entry["data_offsets"]
        if end < begin:
            raise WeightFileError(f"{path} has a corrupt header: tensor {name!r} ends before it begins {[begin, end]}")
        item_bytes = DTYPE_BYTES.get(entry["dtype"])
        expected = None if item_bytes is None else math.prod(entry["shape"]) * item_bytes
        if expected is not None and end - begin != expected:
            raise WeightFileError(
                f"{path} has a corrupt header: tensor {name!r} ({entry['dtype']}, shape {entry['shape']}) needs "
                f"{expected:,} bytes but its data_offsets span {end - begin:,}"
            )
        spans.append((begin, end, name))
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            raise WeightFileError(
                f"{path} has a corrupt header: tensor {name!r} starts at byte {begin:,} of the data, not at "
                f"{position:,} where the previous one ends"
            )
        if end > data_bytes:
            described = data_start + max(span[1] for span in spans)
            raise WeightFileError(
                f"{path} is cut short: it is {size:,} bytes long but its header describes a {described:,}-byte file "
                f"(tensor {name!r} is the first that does not fit)"
            )
        position = end
    if position != data_bytes:
        raise WeightFileError(
            f"{path} is corrupt: it holds {data_bytes - position:,} bytes after the last tensor its header describes"
        )


def _is_int_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, int) and not isinstance(item, bool) for item in value)


def safetensors_problem(path: str | Path) -> str | None:
    """What is wrong with the safetensors file `path` (the message names it), or None when it reads whole."""
    try:
        safetensors_header(path)
    except WeightFileError as error:
        return str(error)
    return None


def safetensors_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of the safetensors file `path`, from its header. Raises `WeightFileError`."""
    return {name: tuple(entry["shape"]) for name, entry in safetensors_header(path).items()}


def folder_weight_shapes(folder: str | Path) -> dict[str, tuple[int, ...]] | None:
    """Tensor name -> shape of the model weights saved in `folder` (`model.safetensors`, or the shards named by
    `model.safetensors.index.json`), from the headers; None when the folder holds neither (other formats, no
    weights). Raises `WeightFileError` naming the broken file."""
    folder = Path(folder)
    single, index = folder / SAFETENSORS_WEIGHTS, folder / SAFETENSORS_INDEX
    if single.is_file():
        return safetensors_shapes(single)
    if not index.is_file():
        return None
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as error:
        raise WeightFileError(f"{index} is not a readable JSON index ({error})") from None
    if not isinstance(weight_map, dict) or not all(isinstance(shard, str) for shard in weight_map.values()):
        raise WeightFileError(f"{index} has no `weight_map` from tensor names to shard files")
    shapes = {}
    for shard_name in sorted(set(weight_map.values())):
        shard = folder / shard_name
        if not shard.is_file():
            raise WeightFileError(f"{index} names the shard {shard_name!r}, which is not in {folder}")
        shapes.update(safetensors_shapes(shard))
    missing = [name for name in weight_map if name not in shapes]
    if missing:
        raise WeightFileError(
            f"{index} maps {len(missing)} tensor(s), e.g. {missing[0]!r}, to {weight_map[missing[0]]!r}, which does "
            "not hold them"
        )
    return shapes


def folder_weights_problem(folder: str | Path) -> str | None:
    """What is wrong with the model weights saved in `folder` (naming the file), or None when they read whole or
    the folder holds no safetensors weights (see `folder_weight_shapes`)."""
    try:
        folder_weight_shapes(folder)
    except WeightFileError as error:
        return str(error)
    return None


#: What `read_trilevel_config` takes by default: TriLevel ViT folders, the ones `hf_trilevel.serving.export_folder`
#: and `hf_trilevel.recipe.slimmed_folder.slim_folder` load (with the ViT classes, which would load another family's
#: folder with missing weights). The commands that load each family's own class pass every family (`FAMILY_CLASSES`).
VIT_MODEL_TYPES = (TriLevelViTConfig.model_type,)


def read_trilevel_config(
    config_file: Path, argument: str, folder: Path, *, model_types: Collection[str] = VIT_MODEL_TYPES
) -> dict:
    """The JSON of a saved folder's `config.json`, refused (`ValueError` naming `argument`, e.g. the command's
    FOLDER) when it cannot be read or its `model_type` is not one of `model_types`, the TriLevel model types the
    caller loads. A plain transformers folder of a family ("vit", "dinov2", ...) is told to be loaded into the
    family's TriLevel class and saved first: the tools read settings and per-layer sizes only TriLevel configs hold.
    """
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (ValueError, OSError) as error:
        raise ValueError(f"{argument} {folder}: config.json cannot be read as JSON ({error}).") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type in model_types:
        return config
    if model_type in FAMILY_CLASSES:
        raise ValueError(
            f"{argument} {folder} holds a {model_type!r} model, which this loader does not take (it takes "
            f"{', '.join(map(repr, model_types))}); the commands `hf-trilevel card`, `hf-trilevel export onnx` and "
            "`hf-trilevel slim` take a folder of every TriLevel family, and from Python "
            "`hf_trilevel.serving.export_onnx(model, path)` and `hf_trilevel.slim(model)` a loaded model of any."
        )
    family = family_of_model_type(model_type)
    if family is not None:
        raise ValueError(
            f"{argument} {folder} holds a {model_type!r} config, not a TriLevel one "
            f"('{family.config_class.model_type}'); load it with "
            f"hf_trilevel.{family.classifier_class.__name__}.from_pretrained and save it first."
        )
    raise ValueError(
        f"{argument} {folder} holds a {model_type!r} config, not a TriLevel one (one of "
        f"{', '.join(map(repr, model_types))}); save the model with a TriLevel class first."
    )


__all__ = [
    "SAFETENSORS_INDEX",
    "SAFETENSORS_WEIGHTS",
    "VIT_MODEL_TYPES",
    "WeightFileError",
    "folder_weight_shapes",
    "folder_weights_problem",
    "read_trilevel_config",
    "safetensors_header",
    "safetensors_problem",
    "safetensors_shapes",
]
