"""`hf-trilevel export onnx FOLDER OUTPUT_DIR` and `hf_trilevel.serving.export_onnx`: every setting a checkpoint can
hold either exports with a dynamic batch and onnxruntime's logits equal PyTorch's, or is refused by name."""

import ast
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from transformers import ViTImageProcessorPil

import hf_trilevel
from hf_trilevel.cli import main
from hf_trilevel.modeling import FAMILY_CLASSES
from hf_trilevel.serving import OnnxExportError, check_onnx_matches, export_onnx, onnx_export
from hf_trilevel.serving import folder as serving_folder
from hf_trilevel.weight_sparsity.slimming import slim

from .helpers import images, sharpen_attention, tiny_model
from .test_slimming import KEPT_HEADS, pruned_model

# Two layers, tokens dropped after the first: every setting's code is in the graph, and each export takes seconds.
SHORT = {"num_hidden_layers": 2, "token_prune_layers": [1]}


def short_model(**settings):
    return sharpen_attention(tiny_model(**SHORT, **settings))


def save_folder(model, folder: Path) -> Path:
    model.config.id2label = {i: f"digit-{i}" for i in range(5)}
    model.config.label2id = {label: i for i, label in model.config.id2label.items()}
    model.save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def export_command(folder: Path, output_dir: Path, *flags: str) -> int:
    """The command's exit status, whether it returns or stops with a usage error."""
    try:
        return main(["export", "onnx", str(folder), str(output_dir), *flags])
    except SystemExit as stop:
        return stop.code


def onnxruntime_logits(path: Path, pixel_values: torch.Tensor) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"pixel_values": pixel_values.numpy()})[0]


def test_export_writes_a_dynamic_batch_graph_with_config_and_processor_and_reports_the_difference(tmp_path, capsys):
    folder = save_folder(short_model(token_keep_rate=0.7, token_fusion=True), tmp_path / "model")
    out = tmp_path / "onnx"
    assert export_command(folder, out) == 0

    assert sorted(path.name for path in out.iterdir()) == ["config.json", "model.onnx", "preprocessor_config.json"]
    for name in ("config.json", "preprocessor_config.json"):
        assert (out / name).read_bytes() == (folder / name).read_bytes()
    graph = onnx.load(str(out / "model.onnx")).graph
    assert [value.name for value in graph.input] == ["pixel_values"]
    assert [value.name for value in graph.output] == ["logits"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # the batch is a named, free dimension

    model = hf_trilevel.TriLevelViTForImageClassification.from_pretrained(folder).eval()
    for batch_size in (1, 4):  # neither is a size the export traced or checked
        with torch.no_grad():
            expected = model(images(batch_size)).logits.numpy()
        np.testing.assert_allclose(onnxruntime_logits(out / "model.onnx", images(batch_size)), expected, atol=1e-4)
    output = capsys.readouterr().out
    assert (
        "token_keep_rate=0.7 (token_selector='class_attention'), token_fusion=True" in output
        and "max difference batch 2:" in output
        and "batch 3:" in output
    )


def slimmed_model():
    model = slim(pruned_model(token_keep_rate=0.7))
    assert model.config.num_attention_heads_per_layer == KEPT_HEADS
    return model


@pytest.fixture(scope="module")
def dense_export(tmp_path_factory):
    path = tmp_path_factory.mktemp("dense") / "model.onnx"
    return path, export_onnx(short_model(), path)


def test_dense_exports_and_onnxruntime_matches_pytorch_on_two_batch_sizes(dense_export):
    path, report = dense_export
    assert report.settings == "dense" and set(report.max_difference) == {2, 3}
    assert max(report.max_difference.values()) <= 1e-4
    with torch.no_grad():
        expected = short_model()(images(5)).logits.numpy()
    np.testing.assert_allclose(onnxruntime_logits(path, images(5)), expected, atol=1e-4)


EXPORTABLE = {
    "learned": lambda: short_model(token_keep_rate=0.7, token_selector="learned"),
    "slimmed": slimmed_model,  # four layers, token_keep_rate=0.7 without fusion
    "token_merging": lambda: short_model(token_merge_r=4),
}


@pytest.mark.parametrize("build", EXPORTABLE.values(), ids=EXPORTABLE.keys())
def test_setting_exports_and_onnxruntime_matches_pytorch_on_two_batch_sizes(build, tmp_path):
    model = build()
    report = export_onnx(model, tmp_path / "model.onnx", example_batch_sizes=(2, 3))
    assert set(report.max_difference) == {2, 3}
    assert max(report.max_difference.values()) <= 1e-4
    with torch.no_grad():
        expected = model(images(5)).logits.numpy()
    np.testing.assert_allclose(onnxruntime_logits(tmp_path / "model.onnx", images(5)), expected, atol=1e-4)


# Settings that needed the model's export fixes: per-image counts without host reads, attention sparsity with a
# defined tie order and a batch dimension read from shapes. Through the command, as a user runs it.
COMMAND_EXPORTABLE = {
    "adaptive": ({"token_selector": "adaptive", "token_keep_rate": 0.7, "token_keep_mass": 0.8}, "'adaptive'"),
    "attention_sparsity": ({"attention_keep_rate": 0.5}, "attention_keep_rate=0.5"),
}


@pytest.mark.parametrize(("settings", "name"), COMMAND_EXPORTABLE.values(), ids=COMMAND_EXPORTABLE.keys())
def test_adaptive_and_attention_sparsity_export_through_the_command_and_match(settings, name, tmp_path, capsys):
    folder = save_folder(short_model(**settings), tmp_path / "model")
    out = tmp_path / "onnx"
    status = export_command(folder, out)
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert (out / "model.onnx").is_file() and name in captured.out and "matches PyTorch" in captured.out


def test_stable_sort_keeps_tied_values_in_token_order(tmp_path):
    class Sort(torch.nn.Module):  # the op token merging's matching uses, on ties
        def forward(self, scores):
            return torch.sort(scores, dim=-1, descending=True, stable=True).indices

    scores = torch.tensor([[1.0, 2.0, 2.0, 0.0, 2.0, 1.0], [3.0, 3.0, 3.0, 1.0, 1.0, 0.0]])
    program = torch.onnx.export(
        Sort().eval(), (scores,), dynamo=True, custom_translation_table=onnx_export._translations()
    )
    program.save(str(tmp_path / "sort.onnx"))
    session = onnxruntime.InferenceSession(str(tmp_path / "sort.onnx"), providers=["CPUExecutionProvider"])
    (indices,) = session.run(None, {session.get_inputs()[0].name: scores.numpy()})
    assert indices.tolist() == [[1, 2, 4, 0, 5, 3], [0, 1, 2, 3, 4, 5]] == Sort()(scores).tolist()


def test_a_mismatch_is_refused_with_the_setting_and_the_max_difference(dense_export):
    path, _ = dense_export
    other_weights = tiny_model(seed=1, **SHORT)
    with pytest.raises(OnnxExportError, match=r"^dense: .* max difference \d\.\d\de[+-]\d\d at batch size \d"):
        check_onnx_matches(other_weights, path)


@pytest.fixture
def no_export(monkeypatch):
    """Argument errors must come before the model loads or the exporter runs."""

    def fail(*args, **kwargs):
        raise AssertionError("export work started before the arguments were checked")

    monkeypatch.setattr(serving_folder, "export_onnx", fail)
    for family in FAMILY_CLASSES.values():
        monkeypatch.setattr(family.classifier_class, "from_pretrained", fail)


def test_folder_that_is_not_a_folder_is_a_usage_error(tmp_path, capsys, no_export):
    (tmp_path / "file").write_text("x")
    for folder in (tmp_path / "missing", tmp_path / "file"):
        assert export_command(folder, tmp_path / "out") == 2
        assert f"FOLDER {folder} is not a folder" in capsys.readouterr().err


def test_folder_without_weights_is_a_usage_error(tmp_path, capsys, no_export):
    folder = save_folder(tiny_model(), tmp_path / "model")
    (folder / "model.safetensors").unlink()
    assert export_command(folder, tmp_path / "out") == 2
    assert f"FOLDER {folder} holds no model.safetensors" in capsys.readouterr().err


def test_output_dir_with_files_is_refused_without_overwrite(tmp_path, capsys, no_export):
    folder = save_folder(tiny_model(), tmp_path / "model")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("keep me")
    assert export_command(folder, tmp_path / "out") == 2
    assert f"OUTPUT_DIR {tmp_path / 'out'} already holds files; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "out" / "old.txt").read_text() == "keep me"
    serving_folder.check_output_dir(folder, tmp_path / "out", overwrite=True)  # the flag lets it through


def test_missing_onnx_packages_name_the_extra_to_install(tmp_path, capsys, monkeypatch, no_export):
    folder = save_folder(tiny_model(), tmp_path / "model")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    assert export_command(folder, tmp_path / "out") == 2
    error = capsys.readouterr().err
    assert "pip install hf-trilevel[onnx]" in error and "onnxruntime is missing" in error


@pytest.mark.parametrize(
    "path", ["serving/__init__.py", "serving/onnx_export.py", "serving/folder.py", "cli/export.py"]
)
def test_onnx_packages_are_imported_only_when_an_export_runs(path):
    tree = ast.parse((Path(hf_trilevel.__file__).parent / path).read_text(encoding="utf-8"))
    top_level = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    names = [alias.name for node in top_level if isinstance(node, ast.Import) for alias in node.names]
    names += [node.module for node in top_level if isinstance(node, ast.ImportFrom) and node.module]
    assert not [name for name in names if name.split(".")[0] in {"onnx", "onnxruntime", "onnxscript"}]
