"""Weight files checked from their headers (issue 24, "every error is a message"): a cut-short or corrupt
`*.safetensors` is named with what is wrong before anything loads it, for single files, sharded folders and Trainer
checkpoints; the shape comparison behind `--ignore_mismatched_sizes`; and three messages that named the wrong thing.
"""

import json
import logging
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from hf_trilevel.modeling import FAMILY_CLASSES
from hf_trilevel.recipe.weight_checks import check_checkpoint_weights, mismatched_weights
from hf_trilevel.token_training.distillation import check_teacher_source
from hf_trilevel.training.checkpoints import checkpoint_problem, latest_complete_checkpoint
from hf_trilevel.training.weight_files import (
    SAFETENSORS_INDEX,
    folder_weight_shapes,
    folder_weights_problem,
    read_trilevel_config,
    safetensors_problem,
    safetensors_shapes,
)
from hf_trilevel.weight_sparsity.arguments import WeightSparsityArguments
from hf_trilevel.weight_sparsity.slimming import slim

from .helpers import tiny_config, tiny_model
from .test_slimming import pruned_model

TENSORS = {"a": torch.zeros(3), "b": torch.ones(2, 2, dtype=torch.bfloat16), "c": torch.arange(5)}


@pytest.fixture
def whole_file(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file(TENSORS, path, metadata={"format": "pt"})
    return path


def safetensors_accepts(path) -> bool:
    try:
        with safe_open(path, framework="pt") as file:
            for name in file.keys():  # noqa: SIM118 (safe_open is not a mapping)
                file.get_tensor(name)
    except Exception:  # SafetensorError, and whatever else the reader raises for a damaged file
        return False
    return True


def test_a_whole_file_has_no_problem_and_its_shapes_come_from_the_header(whole_file):
    assert safetensors_problem(whole_file) is None
    assert safetensors_shapes(whole_file) == {"a": (3,), "b": (2, 2), "c": (5,)}


def test_every_cut_is_named_and_the_check_agrees_with_the_safetensors_reader(whole_file, tmp_path):
    data = whole_file.read_bytes()
    header_end = 8 + struct.unpack("<Q", data[:8])[0]
    cuts = sorted({0, 3, 8, 20, header_end - 1, header_end, header_end + 5, len(data) - 1})
    for cut in cuts:
        path = tmp_path / f"cut-{cut}.safetensors"
        path.write_bytes(data[:cut])
        problem = safetensors_problem(path)
        assert problem is not None and not safetensors_accepts(path), cut
        assert str(path) in problem and ("cut short" in problem or "too short" in problem), problem


def test_a_cut_inside_the_data_names_the_sizes_and_the_first_tensor_that_does_not_fit(whole_file):
    data = whole_file.read_bytes()
    length = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + length])
    last = max((entry["data_offsets"][1], name) for name, entry in header.items() if name != "__metadata__")[1]
    whole_file.write_bytes(data[:-1])  # only the last tensor's data is short
    problem = safetensors_problem(whole_file)
    assert f"is {len(data) - 1:,} bytes long but its header describes a {len(data):,}-byte file" in problem
    assert f"tensor {last!r} is the first that does not fit" in problem


def rewrite_header(path, change) -> None:
    """Replace the header of the safetensors file `path` by `change(header)`, keeping the data."""
    data = path.read_bytes()
    length = struct.unpack("<Q", data[:8])[0]
    header = change(json.loads(data[8 : 8 + length]))
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data[8 + length :])


def shift_offsets(header):
    header["a"]["data_offsets"] = [header["a"]["data_offsets"][0] + 4, header["a"]["data_offsets"][1] + 4]
    return header


def wrong_shape(header):
    header["a"]["shape"] = [4]
    return header


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda path: path.write_bytes(path.read_bytes() + b"\0"), "holds 1 bytes after the last tensor"),
        (lambda path: path.write_bytes(struct.pack("<Q", 9) + b"not json!"), "its header is not JSON"),
        (lambda path: path.write_bytes(struct.pack("<Q", 2) + b"[]"), "its header is not a JSON object"),
        (lambda path: path.write_bytes(struct.pack("<Q", 10**12)), "announce a 1,000,000,000,000-byte header"),
        (lambda path: rewrite_header(path, wrong_shape), "tensor 'a' (F32, shape [4]) needs 16 bytes"),
        (lambda path: rewrite_header(path, shift_offsets), "starts at byte"),
        (lambda path: rewrite_header(path, lambda header: {**header, "d": {"dtype": "F32"}}), "entry of tensor 'd'"),
    ],
    ids=["trailing-bytes", "not-json", "not-an-object", "huge-header", "shape-vs-bytes", "gap", "bad-entry"],
)
def test_a_corrupt_file_is_named_with_what_is_wrong(whole_file, damage, message):
    damage(whole_file)
    problem = safetensors_problem(whole_file)
    assert problem is not None and str(whole_file) in problem and message in problem, problem
    assert not safetensors_accepts(whole_file)


@pytest.fixture
def sharded_folder(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path / "sharded", max_shard_size="60KB")
    assert (tmp_path / "sharded" / SAFETENSORS_INDEX).is_file()
    return tmp_path / "sharded", model


def test_a_sharded_folder_is_checked_shard_by_shard(sharded_folder):
    folder, model = sharded_folder
    shapes = folder_weight_shapes(folder)
    assert folder_weights_problem(folder) is None and len(shapes) == len(model.state_dict())
    assert mismatched_weights(shapes, model.config) == []
    shard = sorted(folder.glob("*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[:-100])
    assert f"{shard} is cut short" in folder_weights_problem(folder)
    shard.unlink()
    assert f"names the shard {shard.name!r}, which is not in {folder}" in folder_weights_problem(folder)


def test_a_sharded_index_that_does_not_parse_or_maps_a_missing_tensor_is_named(sharded_folder):
    folder, _ = sharded_folder
    index = json.loads((folder / SAFETENSORS_INDEX).read_text())
    first_shard = sorted(set(index["weight_map"].values()))[0]
    index["weight_map"]["vit.extra.weight"] = first_shard
    (folder / SAFETENSORS_INDEX).write_text(json.dumps(index))
    assert f"maps 1 tensor(s), e.g. 'vit.extra.weight', to {first_shard!r}" in folder_weights_problem(folder)
    (folder / SAFETENSORS_INDEX).write_text('{"weight_map": {')
    assert f"{folder / SAFETENSORS_INDEX} is not a readable JSON index" in folder_weights_problem(folder)


def test_a_folder_without_safetensors_weights_has_nothing_to_check(tmp_path):
    assert folder_weight_shapes(tmp_path) is None and folder_weights_problem(tmp_path) is None


# --- Trainer checkpoints: every *.safetensors and *.json must read --------------------------------------------------


def checkpoint(output_dir, step: int):
    folder = output_dir / f"checkpoint-{step}"
    tiny_model().save_pretrained(folder)
    save_file({"mask": torch.ones(4)}, folder / "weight_sparsity.safetensors")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return folder


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("model.safetensors", "model.safetensors is cut short"),
        ("weight_sparsity.safetensors", "weight_sparsity.safetensors is cut short"),
        ("config.json", "config.json' is incomplete or corrupt"),
    ],
)
def test_a_checkpoint_with_a_cut_short_file_is_not_complete(tmp_path, name, expected):
    folder = checkpoint(tmp_path, 4)
    assert checkpoint_problem(folder) is None
    path = folder / name
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    assert expected in checkpoint_problem(folder)


def test_latest_skips_a_checkpoint_whose_technique_state_is_cut_short_and_says_why(tmp_path, caplog):
    checkpoint(tmp_path, 2)
    state = checkpoint(tmp_path, 4) / "weight_sparsity.safetensors"
    state.write_bytes(state.read_bytes()[:-3])
    with caplog.at_level(logging.WARNING, logger="hf_trilevel.training.checkpoints"):
        assert latest_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    assert "not resuming from checkpoint-4" in caplog.text and f"{state} is cut short" in caplog.text


# --- shapes: what --ignore_mismatched_sizes may replace -------------------------------------------------------------


def test_only_a_classifier_of_another_size_is_what_ignore_mismatched_sizes_may_replace(tmp_path):
    tiny_model(num_labels=5).save_pretrained(tmp_path / "five")
    ten = tiny_config(num_labels=10)
    check_checkpoint_weights(str(tmp_path / "five"), ten, ignore_mismatched_sizes=True)
    check_checkpoint_weights(str(tmp_path / "five"), ten, compare_classifier=False)
    with pytest.raises(ValueError, match=r"'classifier.weight' is \[5, 32\] in the folder but \[10, 32\]"):
        check_checkpoint_weights(str(tmp_path / "five"), ten)


def test_a_base_model_folder_is_compared_under_the_models_names(tmp_path):
    from hf_trilevel import TriLevelViTModel

    TriLevelViTModel(tiny_config()).save_pretrained(tmp_path / "base")
    shapes = folder_weight_shapes(tmp_path / "base")
    assert mismatched_weights(shapes, tiny_config()) == []
    wider = mismatched_weights(shapes, tiny_config(intermediate_size=128))
    assert [name for name, *_ in wider][:2] == ["vit.layers.0.mlp.fc1.weight", "vit.layers.0.mlp.fc1.bias"]
    assert wider[0][1:] == ((64, 32), (128, 32), "encoder.layer.0.intermediate.dense.weight")


# --- item 9's messages --------------------------------------------------------------------------------------------


def test_slimming_a_slimmed_model_says_it_is_already_slimmed():
    slimmed = slim(pruned_model())
    with pytest.raises(ValueError, match="is already slimmed") as raised:
        slim(slimmed)
    message = str(raised.value)
    assert "`num_attention_heads_per_layer` [1, 1, 2, 1]" in message and "nothing to slim" in message
    assert "SparseTrainingCallback" not in message and "Train with" not in message


def test_slim_output_dir_alone_names_structured_weight_sparsity():
    with pytest.raises(ValueError, match="pass `weight_sparsity` structured too") as raised:
        WeightSparsityArguments(slim_output_dir="slim")
    assert "unstructured" not in str(raised.value)
    with pytest.raises(ValueError, match="pass `weight_sparsity` unstructured or structured too"):
        WeightSparsityArguments(weight_density=0.5)


@pytest.mark.parametrize("name", ["outputs/teacher", "./teacher", "runs/2024/teacher"])
def test_a_missing_teacher_folder_is_named_as_a_folder_not_a_repo_id(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()  # `outputs/teacher` has a Hub id's form, but its parent is here
    with pytest.raises(ValueError, match=rf"`teacher_model_name_or_path` '{name}': no such folder") as raised:
        check_teacher_source(name)
    assert "Repo id" not in str(raised.value)
    check_teacher_source("google/vit-base-patch16-224")  # a Hub id stays one


@pytest.mark.parametrize("model_type", [name for name in FAMILY_CLASSES if name != "trilevel_vit"])
def test_a_family_folder_is_read_only_by_callers_that_load_every_family(tmp_path, model_type):
    """The default stays TriLevel ViT: `serving.export_folder` and `recipe.slim_folder` load the ViT classes, which
    would load another family's folder with missing weights; the commands pass every family."""
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    with pytest.raises(ValueError, match=f"FOLDER {tmp_path} holds a '{model_type}' model, which this loader does not"):
        read_trilevel_config(tmp_path / "config.json", "FOLDER", tmp_path)
    read = read_trilevel_config(tmp_path / "config.json", "FOLDER", tmp_path, model_types=FAMILY_CLASSES)
    assert read == {"model_type": model_type}
