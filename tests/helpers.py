"""Shared builders: tiny models that run in milliseconds on CPU, built locally (the Hub is unreachable here)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import ViTConfig, ViTForImageClassification

from hf_trilevel import TriLevelViTConfig, TriLevelViTForImageClassification

TINY_SHAPE = {
    "hidden_size": 32,
    "num_hidden_layers": 4,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "image_size": 32,
    "patch_size": 4,
    "num_labels": 5,
}


def tiny_config(**overrides) -> TriLevelViTConfig:
    return TriLevelViTConfig(**{**TINY_SHAPE, **overrides})


def tiny_model(seed: int = 0, **overrides) -> TriLevelViTForImageClassification:
    torch.manual_seed(seed)
    return TriLevelViTForImageClassification(tiny_config(**overrides)).eval()


def tiny_vit(seed: int = 0, **overrides) -> ViTForImageClassification:
    torch.manual_seed(seed)
    return ViTForImageClassification(ViTConfig(**{**TINY_SHAPE, **overrides})).eval()


def images(batch_size: int = 3, seed: int = 1, size: int = 32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, 3, size, size, generator=generator)


def sharpen_attention(model, factor: float = 6.0):
    """Scale every layer's query and key weights so class-token attention is peaked and differs between images.

    A freshly initialised ViT attends almost uniformly, so every image would get the same adaptive count.
    """
    with torch.no_grad():
        for layer in model.vit.layers:
            layer.attention.q_proj.weight.mul_(factor)
            layer.attention.k_proj.weight.mul_(factor)
    return model


# The first lines of a script that must run where hf_trilevel cannot be imported: a user of a saved or pushed folder
# has transformers and the folder's own remote code, not this package (installed here, so it is blocked).
WITHOUT_HF_TRILEVEL = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class BlockPackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "hf_trilevel" or name.startswith("hf_trilevel."):
                raise ImportError("hf_trilevel is deliberately unavailable in this process")

    sys.meta_path.insert(0, BlockPackage())
    try:
        import hf_trilevel  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("hf_trilevel is importable; the check would prove nothing")
    """
)


def run_without_hf_trilevel(script: str, folder: Path, work: Path, cache: Path) -> dict:
    """Run `WITHOUT_HF_TRILEVEL + script FOLDER WORK` in an isolated, offline interpreter (fresh Hub and remote-code
    caches under `cache`) from the folder `work`; return the JSON object its last line prints."""
    (work / "load.py").write_text(WITHOUT_HF_TRILEVEL + textwrap.dedent(script))
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "HF_", "TRANSFORMERS_"))
    }
    environment.update(
        HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(cache / "modules"), HF_HOME=str(cache / "hf"), OMP_NUM_THREADS="1"
    )
    completed = subprocess.run(
        [sys.executable, "-I", "load.py", str(folder), str(work)],
        cwd=work,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def run_on_two_processes(job: Path, output: Path) -> list[dict]:
    """Run `job OUTPUT` under `torchrun --nproc_per_node 2` (gloo on CPU); return each rank's `rank{r}.json`."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    completed = subprocess.run(
        [*command, str(job), str(output)], capture_output=True, text=True, timeout=300, env=environment
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-4000:]
    return [json.loads((output / f"rank{rank}.json").read_text()) for rank in (0, 1)]


def assert_usage_error_before_the_data(example, argv: list[str], message: str, tmp_path: Path, capsys) -> None:
    """The example stops with exit 2 and `message`, before it loads data: a missing `--train_dir` would be the
    error if the data were loaded first."""
    argv = [*argv, "--train_dir", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as raised:
        example.main(argv)
    assert raised.value.code == 2
    error = capsys.readouterr().err
    assert message in error and "train_dir" not in error
