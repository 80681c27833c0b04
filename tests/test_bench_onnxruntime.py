"""`hf-trilevel bench inference --runtime onnxruntime`: each row its own exported graph, timed in onnxruntime."""

import json
import sys

import numpy as np
import pytest
import torch
from torch import nn

from hf_trilevel.cli import build_parser, main
from hf_trilevel.cli.bench import onnx_runs
from hf_trilevel.cli.bench.models import build_models_by_selector, switch_setting
from hf_trilevel.cli.bench.onnx_runs import onnxruntime_runs
from hf_trilevel.cli.bench.onnx_runs import onnxruntime_session as onnx_runs_session
from hf_trilevel.cli.bench.options import RunTarget, model_shape
from hf_trilevel.cli.bench.settings import Setting
from hf_trilevel.cli.bench.settings import settings as bench_settings
from hf_trilevel.cli.errors import CommandError

from .helpers import images, sharpen_attention, tiny_config, tiny_vit

TINY = ["--image-size", "32", "--patch-size", "4", "--hidden-size", "32", "--num-hidden-layers", "4",
        "--num-attention-heads", "2", "--intermediate-size", "64", "--num-labels", "10"]  # fmt: skip
QUICK = ["--batch-size", "2", "--repeats", "2", "--warmup", "1", "--no-progress"]


class CountingSession:
    """An onnxruntime session that counts its runs, so a test can tell onnxruntime was what the clock timed."""

    calls = 0

    def __init__(self, session):
        self.session = session

    def run(self, *args):
        CountingSession.calls += 1
        return self.session.run(*args)


def test_every_row_is_timed_in_onnxruntime_against_the_exported_dense_vit(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(onnx_runs, "onnxruntime_session", lambda *a: CountingSession(onnx_runs_session(*a)))
    CountingSession.calls = 0
    path = tmp_path / "onnxruntime.json"
    arguments = ["bench", "inference", *TINY, *QUICK, "--runtime", "onnxruntime", "--keep-rates", "0.7",
                 "--attention-keep-rates", "1", "--token-merge-r", "0", "4", "--json", str(path)]  # fmt: skip
    assert main(arguments) == 0

    output = capsys.readouterr().out
    assert "onnxruntime" in output.splitlines()[0]
    report = json.loads(path.read_text())
    assert report["arguments"]["runtime"] == "onnxruntime"
    results = {row["setting"]: row for row in report["results"]}
    assert list(results) == ["dense ViT (transformers)", "keep 0.7", "keep 0.7, merge r=4"]
    for row in results.values():
        assert row["median_seconds"] > 0 and len(row["seconds"]) == 2
        assert row["fraction_of_limit"] == pytest.approx(row["speedup"] / row["flops_limit"])
        assert row["peak_memory_bytes"] is None  # onnxruntime's allocator is not tracked: no figure, not a wrong one
    assert results["keep 0.7"]["flops_limit"] > 1.2
    assert CountingSession.calls == 3 * (1 + 1 + 2)  # each row: its check on the batch, a warm-up and 2 timed rounds
    assert set(report["environment"]) >= {"onnx", "onnxruntime", "onnxscript"}
    assert results["keep 0.7, merge r=4"]["mean_kept_tokens"] == [38, 23, 13]


def onnx_rows(*arguments: str) -> tuple[list[Setting], dict, nn.Module]:
    args = build_parser(["bench", "inference"]).parse_args(["bench", "inference", *TINY, *arguments])
    rows = bench_settings(args)
    shape = model_shape(args)
    selectors = list(dict.fromkeys(row.token_selector for row in rows))
    dense, models = build_models_by_selector(shape, RunTarget(torch.device("cpu"), torch.float32, "sdpa"), selectors)
    return rows, {(s, 1.0, 1.0): m.eval() for s, m in models.items()}, dense.eval()


def test_each_rows_graph_computes_that_rows_logits(tmp_path):
    rows, models, dense = onnx_rows("--keep-rates", "0.9", "--attention-keep-rates", "1", "--token-selector",
                                    "class_attention", "adaptive", "--token-keep-mass", "0.5")  # fmt: skip
    for model in models.values():
        sharpen_attention(model)  # per-image adaptive counts, so a graph that fixed one image's count would show
    prepare = {row.name: switch_setting(models[row.model_key], row) for row in rows}
    pixel_values = images(3, size=32)
    runs = onnxruntime_runs(dense, models, rows, prepare, pixel_values, str(tmp_path))
    assert list(runs) == ["dense ViT (transformers)", *(row.name for row in rows)]

    logits = {name: run() for name, run in runs.items()}  # the very calls the clock times
    with torch.no_grad():
        np.testing.assert_allclose(logits["dense ViT (transformers)"], dense(pixel_values).logits, atol=1e-5)
        for row in rows:
            prepare[row.name]()
            expected = models[row.model_key](pixel_values).logits
            np.testing.assert_allclose(logits[row.name], expected, atol=1e-4, err_msg=row.name)
    # The rows really are different graphs: each keeps its own count.
    assert np.abs(logits["keep 0.9"] - logits["dense ViT (transformers)"]).max() > 1e-3
    assert np.abs(logits["keep 0.9, adaptive mass 0.5"] - logits["keep 0.9"]).max() > 1e-4


class HostReadModel(nn.Module):
    """A classifier whose forward branches on a tensor value on the host, which torch.export cannot trace."""

    def __init__(self) -> None:
        super().__init__()
        self.config = tiny_config()
        self.linear = nn.Linear(3, 2)

    def forward(self, pixel_values):
        pooled = pixel_values.mean(dim=(2, 3))
        if pooled.sum().item() > 0:
            pooled = -pooled
        return type("Output", (), {"logits": self.linear(pooled)})()


def test_a_row_that_does_not_export_is_refused_by_name(tmp_path):
    bad = Setting(0.5)
    models = {bad.model_key: HostReadModel()}
    with pytest.raises(CommandError, match=r"--runtime onnxruntime: row 'keep 0.5' does not export"):
        onnxruntime_runs(tiny_vit(), models, [bad], {bad.name: lambda: None}, images(2), str(tmp_path))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--dtype", "bfloat16"], "--runtime onnxruntime exports float32 graphs: use --dtype float32"),
        (["--compile"], "--runtime onnxruntime and --compile exclude each other"),
    ],
)
def test_settings_onnxruntime_cannot_run_are_refused_by_flag(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "inference", *TINY, *QUICK, "--runtime", "onnxruntime", *flags])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_onnx_packages_name_the_extra(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # `import onnxscript` now raises ImportError
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "inference", *TINY, *QUICK, "--runtime", "onnxruntime"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "--runtime onnxruntime" in error and "pip install hf-trilevel[onnx]" in error
