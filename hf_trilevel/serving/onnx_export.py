"""A TriLevel classifier as an ONNX graph (`pixel_values` [batch, channels, height, width] -> `logits`
[batch, num_labels], batch dynamic), checked against PyTorch before anyone is told it worked.

The graph comes from `torch.onnx.export(..., dynamo=True)`: `torch.export` traces the model once at the first example
batch size, onnxscript translates the traced ops. A setting exports when its forward is static in shape (fixed keep
counts, gathers, masks), and fails where it reads tensor values on the host to choose a shape (per-image counts) or
uses an op onnxscript cannot translate. Nothing here knows which settings those are: every export is tried, and the
exporter's failure, a batch dimension the trace fixed, or logits that differ from PyTorch's by more than `tolerance`
on any example batch size is an `OnnxExportError` that names the checkpoint's settings (see `settings_text`). When
the model learns to export a setting, its refusal simply stops.

onnx, onnxruntime and onnxscript are the optional extra `hf-trilevel[onnx]`; they are imported only when a function
here runs.
"""

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

INSTALL_HINT = "pip install hf-trilevel[onnx]"
INPUT_NAME, OUTPUT_NAME = "pixel_values", "logits"
TOLERANCE = 1e-4
# Files of the model that an exporter error may point at, and the setting each one implements.
SETTING_FILES = {
    "token_selectors.py": "token_selector",
    "token_reduction.py": "token_keep_rate",
    "sparse_attention.py": "attention_keep_rate",
    "token_merging.py": "token_merge_r",
}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class OnnxExportError(ValueError):
    """A checkpoint setting that does not export, or whose exported graph does not compute PyTorch's logits."""


@dataclass(frozen=True)
class ExportReport:
    """What was exported and how closely ONNX Runtime reproduces PyTorch's logits on each checked batch size."""

    path: Path
    settings: str
    max_difference: dict[int, float]  # batch size -> max |onnxruntime - pytorch| over the logits
    tolerance: float

    def __str__(self) -> str:
        checked = ", ".join(f"batch {size}: {difference:.2e}" for size, difference in self.max_difference.items())
        return (
            f"exported {self.settings} to {self.path}; onnxruntime (CPU) matches PyTorch's logits within "
            f"{self.tolerance:g} (max difference {checked})"
        )


def require_onnx() -> None:
    """Import onnx, onnxruntime and onnxscript, or raise `ImportError` naming the extra that installs them."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ImportError(
            f"ONNX export needs onnx, onnxruntime and onnxscript ({error.name} is missing): {INSTALL_HINT}"
        ) from None


def settings_text(config) -> str:
    """The sparsity settings a TriLevel config holds, as `field=value` (`"dense"` when none is active, or for a
    transformers ViT config, which has no sparsity fields)."""
    parts = []
    if not hasattr(config, "token_selector"):
        return "dense"
    if config.token_selector == "adaptive":
        parts.append(
            f"token_selector='adaptive' (token_keep_rate={config.token_keep_rate}, "
            f"token_keep_mass={config.token_keep_mass})"
        )
    elif config.token_keep_rate < 1.0:
        parts.append(f"token_keep_rate={config.token_keep_rate} (token_selector={config.token_selector!r})")
        if config.token_fusion:
            parts.append("token_fusion=True")
    if config.attention_keep_rate < 1.0:
        parts.append(f"attention_keep_rate={config.attention_keep_rate}")
    merge_r = getattr(config, "token_merge_r", 0)
    if any(merge_r) if isinstance(merge_r, (list, tuple)) else merge_r:
        parts.append(f"token_merge_r={merge_r}")
    slimmed = [
        name for name in ("num_attention_heads_per_layer", "intermediate_size_per_layer") if getattr(config, name)
    ]
    if slimmed:
        parts.append("slimmed (" + ", ".join(f"{name}={getattr(config, name)}" for name in slimmed) + ")")
    return ", ".join(parts) or "dense"


def export_onnx(
    model: nn.Module,
    output_path: str | Path,
    example_batch_sizes: tuple[int, ...] = (2, 3),
    tolerance: float = TOLERANCE,
) -> ExportReport:
    """Export `model` (a TriLevel `...ForImageClassification`, float32) to `output_path` and check the file with
    `check_onnx_matches`; the file is written only when it passes. The graph is traced at the first of
    `example_batch_sizes` with the batch dimension dynamic, and checked on every one of them.

    Raises `OnnxExportError` naming the model's settings when the exporter fails or the check does, and
    `ImportError` (naming `hf-trilevel[onnx]`) without the ONNX packages.
    """
    require_onnx()
    if len(example_batch_sizes) < 2:
        raise ValueError(
            f"`example_batch_sizes` needs two sizes to prove the batch is dynamic, got {example_batch_sizes}."
        )
    model = model.eval()
    settings = settings_text(model.config)
    output_path = Path(output_path)
    with tempfile.TemporaryDirectory() as work:
        exported = Path(work) / output_path.name
        _export(model, example_images(model.config, example_batch_sizes[0]), exported, settings)
        differences = check_onnx_matches(model, exported, example_batch_sizes, tolerance)
        output_path.parent.mkdir(parents=True, exist_ok=True)
        for path in Path(work).iterdir():  # the graph, and its external data when the weights pass 2 GB
            path.replace(output_path.parent / path.name)
    return ExportReport(output_path, settings, differences, tolerance)


def check_onnx_matches(
    model: nn.Module, onnx_path: str | Path, batch_sizes: tuple[int, ...] = (2, 3), tolerance: float = TOLERANCE
) -> dict[int, float]:
    """Batch size -> max |onnxruntime (CPU) - PyTorch| over the logits of seeded random images of that size.

    Raises `OnnxExportError` naming the model's settings if the graph's batch dimension is fixed, a batch size does
    not run, or a difference exceeds `tolerance`.
    """
    require_onnx()
    import onnx
    import onnxruntime

    settings = settings_text(model.config)
    batch = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim[0]
    if not batch.dim_param:
        raise OnnxExportError(
            f"{settings}: the exported graph fixes the batch dimension at {batch.dim_value} (torch.export specialised "
            "it while tracing), so the ONNX model would take no other batch size."
        )
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    differences = {}
    for batch_size in batch_sizes:
        pixel_values = example_images(model.config, batch_size, seed=batch_size)
        with torch.no_grad():
            expected = model(pixel_values=pixel_values).logits.float().numpy()
        try:
            (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: pixel_values.numpy()})
        except Exception as error:  # onnxruntime raises its own exception types, one per status code
            raise OnnxExportError(f"{settings}: the exported graph fails at batch size {batch_size}: {error}") from None
        differences[batch_size] = float(abs(logits - expected).max())
    worst = max(differences, key=differences.get)
    if differences[worst] > tolerance:
        raise OnnxExportError(
            f"{settings}: the exported graph does not compute PyTorch's logits: max difference "
            f"{differences[worst]:.2e} at batch size {worst} (allowed {tolerance:g}; all sizes: "
            + ", ".join(f"{size}: {value:.2e}" for size, value in differences.items())
            + ")."
        )
    return differences


def example_images(config, batch_size: int, seed: int = 0) -> torch.Tensor:
    """Seeded standard-normal `pixel_values` [batch_size, num_channels, image_size, image_size] (what a ViT image
    processor's normalised output looks like in scale)."""
    generator = torch.Generator().manual_seed(seed)
    shape = (batch_size, config.num_channels, config.image_size, config.image_size)
    return torch.randn(shape, generator=generator)


def _export(model: nn.Module, pixel_values: torch.Tensor, path: Path, settings: str) -> None:
    """Trace and translate `model` at `pixel_values`' shape with a dynamic batch, saving the graph at `path`."""
    try:
        program = torch.onnx.export(
            model,
            (pixel_values,),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch")}},
            dynamo=True,
            verbose=False,
            custom_translation_table=_translations(),
        )
        program.save(str(path))
    except Exception as error:  # the exporter wraps whatever torch.export or a translation raised
        raise OnnxExportError(f"{settings} cannot be exported to ONNX: {exporter_failure(error)}") from None


def _translations() -> dict:
    """ATen ops torch.onnx (onnxscript's torchlib) has no translation for, mapped to ONNX ones that compute them.

    `torch.sort(..., stable=True)` (token merging's bipartite matching, which must break ties by token order): ONNX
    `TopK` over the whole axis, sorted, is a stable sort, since the ONNX spec breaks its ties by the lower index.
    """
    from onnxscript import opset18 as op

    def sort_stable(self, stable=None, dim: int = -1, descending: bool = False):
        count = op.Gather(op.Shape(self), op.Constant(value_ints=[dim]))
        return op.TopK(self, count, axis=dim, largest=int(descending), sorted=1)

    return {torch.ops.aten.sort.stable: sort_stable}


def exporter_failure(error: Exception) -> str:
    """The exporter's own summary of `error` (which step failed, the exception and the model line it points at), in
    a few lines instead of its page of advice."""
    text = _ANSI.sub("", str(error))
    step = "torch.export" if "step 1/3" in text else "ONNX translation" if "step 3/3" in text else "the exporter"
    summary = text.partition("## Exception summary")[2] or text
    lines = []
    for line in summary.strip().splitlines():
        line = line.strip()
        if not line or line == "⬆️" or line.startswith(("consider using", "For more information", "(Refer to")):
            continue
        if line.startswith(("For extended logs", "If you suspect", "For C++", "The error above")):
            break
        lines.append(line)
    failure = " ".join(lines[:4]) or type(error).__name__
    settings = sorted({setting for name, setting in SETTING_FILES.items() if name in text})
    where = f" [in the model's {', '.join(settings)} code]" if settings else ""
    return f"{step} failed{where}: {failure}"


__all__ = [
    "INSTALL_HINT",
    "ExportReport",
    "OnnxExportError",
    "check_onnx_matches",
    "example_images",
    "export_onnx",
    "require_onnx",
    "settings_text",
]
