"""The remote-code set: the files every saved checkpoint carries, and the imports that keep it loadable anywhere.

`save_pretrained` copies the file that defines each saved class and, recursively, every `from .x import y` sibling,
flat, into the folder; `trust_remote_code=True` then runs those copies where hf_trilevel may not be installed. So
the set must be exactly `hf_trilevel.modeling` (less its `__init__.py`), named by one constant, and each file may
import only its siblings, torch, transformers, huggingface_hub and the standard library.
"""

import ast
import sys
from pathlib import Path

import pytest

import hf_trilevel.modeling
from hf_trilevel import (
    TriLevelCLIPForImageClassification,
    TriLevelCLIPVisionConfig,
    TriLevelDeiTConfig,
    TriLevelDeiTForImageClassificationWithTeacher,
    TriLevelSiglipForImageClassification,
    TriLevelSiglipVisionConfig,
)
from hf_trilevel.modeling import FAMILY_CODE_FILES, REMOTE_CODE_FILES

from .helpers import TINY_SHAPE, tiny_model

MODELING = Path(hf_trilevel.modeling.__file__).parent
# Families may share files (CLIP's and SigLIP's layer), so each file once.
ALL_CODE_FILES = tuple(
    dict.fromkeys([*REMOTE_CODE_FILES, *(name for files in FAMILY_CODE_FILES.values() for name in files)])
)
SIBLINGS = frozenset(Path(name).stem for name in ALL_CODE_FILES)
# huggingface_hub is a hard dependency of transformers (its configs import `strict` from it).
ALLOWED_PACKAGES = frozenset({"torch", "transformers", "huggingface_hub"}) | frozenset(sys.stdlib_module_names)
ALLOWED = "the set, torch, transformers, huggingface_hub and the standard library"
DYNAMIC_IMPORTS = frozenset({"__import__", "import_module"})


def import_errors(source: str, filename: str, siblings: frozenset[str] = SIBLINGS) -> list[str]:
    """Each import in `source` that a checkpoint folder could not satisfy, as `filename:line: what is wrong`.

    Allowed: `from .sibling import name` with `sibling` in `siblings` (save_pretrained copies it), and absolute
    imports whose top-level package is torch, transformers, huggingface_hub or the standard library. Refused, since
    transformers silently skips or cannot copy them: `from . import x`, `from ..x`, `from .sub.x`, an absolute
    `hf_trilevel` import, and dynamic imports (`__import__`, `importlib.import_module`) that no parser can follow.
    """
    errors = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.ImportFrom) and node.level:
            if node.level != 1 or node.module not in siblings:
                errors.append(f"{filename}:{node.lineno}: `{ast.unparse(node)}` is not `from .sibling import name`")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module]
            if any(module.split(".")[0] not in ALLOWED_PACKAGES for module in modules):
                errors.append(f"{filename}:{node.lineno}: `{ast.unparse(node)}` reaches beyond {ALLOWED}")
        elif isinstance(node, ast.Call) and _called_name(node.func) in DYNAMIC_IMPORTS:
            errors.append(f"{filename}:{node.lineno}: `{ast.unparse(node)}` is a dynamic import no parser can follow")
    return errors


def _called_name(function: ast.expr) -> str | None:
    if isinstance(function, ast.Name):
        return function.id
    return function.attr if isinstance(function, ast.Attribute) else None


def test_the_modeling_folder_holds_the_set_its_init_and_nothing_else():
    on_disk = {path.name for path in MODELING.iterdir()} - {"__pycache__"}
    assert on_disk == {*ALL_CODE_FILES, "__init__.py"}
    assert len(REMOTE_CODE_FILES) == len(set(REMOTE_CODE_FILES))
    for files in FAMILY_CODE_FILES.values():  # a family lists its own files, each once, none of the shared set
        assert len(files) == len(set(files)) and not set(files) & set(REMOTE_CODE_FILES)


def test_save_pretrained_copies_exactly_the_set_unchanged(tmp_path):
    tiny_model(token_keep_rate=0.5, token_selector="learned").save_pretrained(tmp_path)
    copied = {path.name for path in tmp_path.iterdir() if path.suffix == ".py"}
    assert copied == set(REMOTE_CODE_FILES)
    for name in REMOTE_CODE_FILES:  # so the closure checked below on the sources holds for the copies too
        assert (tmp_path / name).read_bytes() == (MODELING / name).read_bytes(), name


def test_a_family_checkpoint_copies_the_set_and_its_own_files(tmp_path):
    config = TriLevelDeiTConfig(**TINY_SHAPE, token_keep_rate=0.5)
    TriLevelDeiTForImageClassificationWithTeacher(config).save_pretrained(tmp_path)
    copied = {path.name for path in tmp_path.iterdir() if path.suffix == ".py"}
    assert copied == {*REMOTE_CODE_FILES, *FAMILY_CODE_FILES["deit"]}


@pytest.mark.parametrize(
    ("family", "model"),
    [
        ("clip", lambda: TriLevelCLIPForImageClassification(TriLevelCLIPVisionConfig(**TINY_SHAPE))),
        ("siglip", lambda: TriLevelSiglipForImageClassification(TriLevelSiglipVisionConfig(**TINY_SHAPE))),
    ],
)
def test_clip_and_siglip_checkpoints_copy_the_set_and_their_family_files(tmp_path, family, model):
    model().save_pretrained(tmp_path)
    copied = {path.name for path in tmp_path.iterdir() if path.suffix == ".py"}
    assert copied == {*REMOTE_CODE_FILES, *FAMILY_CODE_FILES[family]}


@pytest.mark.parametrize("name", ALL_CODE_FILES)
def test_each_file_of_the_set_imports_only_siblings_torch_transformers_hub_and_stdlib(name):
    assert import_errors((MODELING / name).read_text(), name) == []


GOOD_SOURCE = """
import math
from collections.abc import Sequence
import torch.nn.functional as F
from transformers.models.vit.modeling_vit import ViTEmbeddings
from huggingface_hub.dataclasses import strict
from .value_checks import as_pair
"""


@pytest.mark.parametrize(
    ("statement", "named"),
    [
        ("import numpy", "`import numpy`"),
        ("import os, numpy", "`import os, numpy`"),
        ("from numpy.linalg import norm", "`from numpy.linalg import norm`"),
        ("import hf_trilevel.evaluation.flops", "`import hf_trilevel.evaluation.flops`"),
        ("from hf_trilevel.modeling.value_checks import as_pair", "`from hf_trilevel.modeling.value_checks import"),
        ("from . import value_checks", "`from . import value_checks`"),
        ("from ..evaluation.flops import forward_flops", "`from ..evaluation.flops import forward_flops`"),
        ("from .layers.attention import Attention", "`from .layers.attention import Attention`"),
        ("from .model_card import write_model_card", "`from .model_card import write_model_card`"),
        ("if True:\n    import safetensors", "`import safetensors`"),
        ("importlib.import_module('numpy')", "`importlib.import_module('numpy')`"),
    ],
)
def test_the_closure_check_names_the_file_line_and_import_it_refuses(statement, named):
    source = GOOD_SOURCE + statement + "\n"
    line = source.count("\n")  # the statement's last line
    assert import_errors(GOOD_SOURCE, "good.py") == []
    errors = import_errors(source, "vit_layer.py")
    assert len(errors) == 1
    assert errors[0].startswith(f"vit_layer.py:{line}: ") and named in errors[0]
