"""`bench inference --runtime onnxruntime`: every row as its own exported ONNX graph, timed in onnxruntime.

An ONNX graph holds one operating point: the keep counts, the merge count and the selector's arithmetic are traced
into it, so each row is exported on its own (its model switched to the row's setting first), and the dense row is
transformers' `ViTForImageClassification` exported the same way, which is the baseline a user deploying a dense
checkpoint would have. Each export goes through `hf_trilevel.serving.export_onnx`, which checks the graph against
PyTorch at two batch sizes, and each session is checked once more on the benchmark batch itself before it is timed,
so a row that times a wrong graph cannot appear.

Sessions run on the CPU provider with onnxruntime's default graph optimisations and as many intra-op threads as
PyTorch uses (`torch.get_num_threads()`), so the two runtimes' figures are taken on the same cores. Their threads do
not spin between runs: every row has its own session and the rows are interleaved, so a spinning pool would steal
the cores from the next row's (measured on 2 cores at batch 1: 24-44 ms per forward instead of 11; a lone session
loses 3-5% without spinning).
"""

import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from ...serving.onnx_export import INPUT_NAME, OUTPUT_NAME, TOLERANCE, OnnxExportError, export_onnx, require_onnx
from ..errors import CommandError
from .settings import DENSE_NAME, Setting


def onnxruntime_session(path: Path, threads: int):
    """A CPU onnxruntime session of the graph at `path` using `threads` intra-op threads."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    # A session's threads spin after each run, waiting for the next; with one session per row, interleaved, the
    # spinning threads of the row just timed steal the cores from the next (batch 1 on 2 cores: 3x slower).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnxruntime_runs(
    dense: torch.nn.Module,
    models: dict,
    settings: list[Setting],
    prepare: dict[str, Callable[[], None]],
    pixel_values: torch.Tensor,
    work_dir: str,
) -> dict[str, Callable[[], None]]:
    """Name -> one timed onnxruntime call of the dense row and of every setting, each on its own exported graph.

    `models[setting.model_key]` is the PyTorch model a setting runs on and `prepare[setting.name]` switches it to the
    setting; the graphs are written under `work_dir` (a session holds its graph in memory once built). Each call
    returns the logits. Raises `CommandError` naming the row when a setting does not export, does not run, or its
    graph does not match PyTorch on `pixel_values`.
    """
    threads = torch.get_num_threads()
    inputs = {INPUT_NAME: pixel_values.detach().cpu().float().numpy()}
    runs = {}
    for index, (name, model, switch) in enumerate(
        [(DENSE_NAME, dense, None)] + [(s.name, models[s.model_key], prepare[s.name]) for s in settings]
    ):
        if switch is not None:
            switch()
        path = Path(work_dir) / f"row{index}" / "model.onnx"
        try:
            export_onnx(model, path)
        except OnnxExportError as error:
            raise CommandError(f"--runtime onnxruntime: row {name!r} does not export: {error}") from None
        try:
            session = onnxruntime_session(path, threads)
            (logits,) = session.run([OUTPUT_NAME], inputs)
        except Exception as error:  # onnxruntime raises its own exception types, one per status code
            raise CommandError(f"--runtime onnxruntime: row {name!r} does not run in onnxruntime: {error}") from None
        with torch.no_grad():  # the timed batch itself, beside `export_onnx`'s check at batch sizes 2 and 3
            expected = model(pixel_values=pixel_values).logits.float().cpu().numpy()
        difference = float(abs(logits - expected).max())
        if difference > TOLERANCE:
            raise CommandError(
                f"--runtime onnxruntime: row {name!r}'s graph differs from PyTorch on the benchmark batch by "
                f"{difference:.2e} (allowed {TOLERANCE:g})."
            )

        def run(session=session):
            return session.run([OUTPUT_NAME], inputs)[0]

        runs[name] = run
    return runs


def onnx_versions() -> dict[str, str]:
    """The ONNX packages' versions, for a report's environment (a figure depends on them as on torch's)."""
    import onnx
    import onnxruntime
    import onnxscript

    return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "onnxscript": onnxscript.__version__}


def onnx_work_dir() -> tempfile.TemporaryDirectory:
    """Where the exported graphs of one benchmark live (removed when the benchmark ends)."""
    return tempfile.TemporaryDirectory(prefix="hf-trilevel-bench-onnx-")


def check_onnxruntime_target(device: torch.device, dtype_name: str, compile_: bool) -> None:
    """`--runtime onnxruntime` runs float32 graphs on the CPU provider, uncompiled: anything else is refused by flag."""
    if device.type != "cpu":
        raise CommandError(f"--runtime onnxruntime runs on the CPU provider: use --device cpu, got {device}.")
    if dtype_name != "float32":
        raise CommandError(f"--runtime onnxruntime exports float32 graphs: use --dtype float32, got {dtype_name}.")
    if compile_:
        raise CommandError("--runtime onnxruntime and --compile exclude each other (--compile is for PyTorch).")
    try:
        require_onnx()
    except ImportError as error:
        raise CommandError(f"--runtime onnxruntime: {error}") from None


__all__ = ["check_onnxruntime_target", "onnx_versions", "onnx_work_dir", "onnxruntime_runs", "onnxruntime_session"]
