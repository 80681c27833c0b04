"""Dependencies point one way: every import inside hf_trilevel goes down the levels, never up or sideways.

    L0 modeling  <-  L1 evaluation, image_data  <-  L2 training  <-  L3 example_pruning | token_training |
    weight_sparsity  <-  L4 model_card | serving  <-  L5 recipe  <-  L6 cli

A package imports its own modules and the levels below it. evaluation and image_data share L1 but import neither
each other (nothing needs it: a measurement takes tensors, the data folder makes them), and the three technique
folders share L3 and never import each other (what they share lives in the training seam); nor do the tools'
libraries at L4, cards and serving (ONNX export). The front door (`hf_trilevel/__init__.py`) imports L0-L3 only, so
importing the package never pulls in cards, serving, the recipe or the tools; importing the front door from inside
the package counts as importing L3 and everything it re-exports. Imports inside functions count too: a deferred
import is still a dependency. What the model's files may import from outside the package (torch, transformers,
huggingface_hub, the standard library) is tests/test_remote_code.py's.
"""

import ast
import re
from pathlib import Path

import pytest

import hf_trilevel

PACKAGE = Path(hf_trilevel.__file__).parent
ROOT = "hf_trilevel"
MODULE_PATH = re.compile(r"hf_trilevel(\.[a-z_]+)+")
LEVELS = {
    "modeling": 0,
    "evaluation": 1,
    "image_data": 1,
    "training": 2,
    "example_pruning": 3,
    "token_training": 3,
    "weight_sparsity": 3,
    "model_card": 4,
    "serving": 4,
    "recipe": 5,
    "cli": 6,
}
FRONT_DOOR_LEVEL = 3  # what `hf_trilevel/__init__.py` may import, and what importing it costs
ENTRY_POINT_LEVEL = 6  # `python -m hf_trilevel` runs the CLI
# Import edges that break the layering, each `(module, imported module)`, with the reason; none today. A listed edge
# that no longer occurs fails the last test, so the list only ever holds live exceptions.
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> list[Path]:
    return sorted(path for path in PACKAGE.rglob("*.py") if "__pycache__" not in path.parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """`(line, module)` for every hf_trilevel module the file `path` imports."""
    return source_imports(path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py")


def source_imports(source: str, name: str, is_package: bool) -> list[tuple[int, str]]:
    """`(line, module)` for every hf_trilevel module `source` (the module `name`) imports, relative imports resolved,
    at any depth (inside functions too)."""
    package = name if is_package else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")
                module = ".".join(base[: len(base) - node.level + 1] + ([module] if module else []))
            # `from package import x` imports the module `x` when there is one, else a name of `package`
            found += [(node.lineno, _submodule(module, alias.name)) for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_PATH.fullmatch(node.value):
            # a module named as a string is imported at run time (`import_module`, the CLI's command table, the
            # front door's moved names): the same dependency as an import statement
            found.append((node.lineno, node.value))
    return [(line, module) for line, module in found if module == ROOT or module.startswith(ROOT + ".")]


def _submodule(module: str, name: str) -> str:
    path = PACKAGE.parent.joinpath(*module.split("."), name)
    return f"{module}.{name}" if path.with_suffix(".py").is_file() or (path / "__init__.py").is_file() else module


def folder(module: str) -> str | None:
    """The level folder a module belongs to (`hf_trilevel.cli.bench.report` -> `cli`); None for the package root."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LEVELS else None


def allowed(importer: str, imported: str) -> bool:
    """Whether module `importer` may import module `imported` under the layering."""
    source, target = folder(importer), folder(imported)
    if source is not None and source == target:
        return True
    if importer == ROOT:
        source_level = FRONT_DOOR_LEVEL + 1  # the front door may import L0-L3, sideways included
    elif importer == f"{ROOT}.__main__":
        source_level = ENTRY_POINT_LEVEL + 1
    else:
        source_level = LEVELS[source]
    if target is None:  # the package root: the front door and all it imports
        return source_level > FRONT_DOOR_LEVEL
    return LEVELS[target] < source_level


def layering_errors(path: Path) -> list[str]:
    importer = module_name(path)
    return [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {importer} (level {describe(importer)}) imports {imported} "
        f"(level {describe(imported)})"
        for line, imported in imported_modules(path)
        if not allowed(importer, imported) and (importer, imported) not in KNOWN_VIOLATIONS
    ]


def describe(module: str) -> str:
    name = folder(module)
    if name is not None:
        return f"{LEVELS[name]}, {name}"
    return "front door" if module == ROOT else "entry point"


MODULES = package_modules()


def test_every_folder_of_the_package_has_a_level():
    folders = {path.relative_to(PACKAGE).parts[0] for path in MODULES if len(path.relative_to(PACKAGE).parts) > 1}
    assert folders <= set(LEVELS), f"give these folders a level in LEVELS: {sorted(folders - set(LEVELS))}"
    roots = {path.name for path in MODULES if path.parent == PACKAGE}
    assert roots == {"__init__.py", "__main__.py"}, "a module at the package root belongs in a level folder"


@pytest.mark.parametrize("path", MODULES, ids=[module_name(path) for path in MODULES])
def test_each_module_imports_only_its_own_folder_and_levels_below(path):
    errors = layering_errors(path)
    assert not errors, "imports that go up or sideways:\n" + "\n".join(errors)


def test_every_known_violation_still_occurs():
    edges = {(module_name(path), imported) for path in MODULES for _, imported in imported_modules(path)}
    fixed = sorted(KNOWN_VIOLATIONS - edges)
    assert not fixed, f"remove these fixed edges from KNOWN_VIOLATIONS: {fixed}"


@pytest.mark.parametrize(
    ("importer", "imported", "expected"),
    [
        ("hf_trilevel.training.trainer", "hf_trilevel.modeling.configuration_trilevel_vit", True),
        ("hf_trilevel.training.trainer", "hf_trilevel.model_card.builder", False),  # up
        ("hf_trilevel.evaluation.token_counts", "hf_trilevel.image_data", False),  # sideways within L1
        ("hf_trilevel.token_training.card", "hf_trilevel.weight_sparsity.masks", False),  # sideways within L3
        ("hf_trilevel.token_training.card", "hf_trilevel.token_training.operating_points", True),
        ("hf_trilevel.model_card.builder", "hf_trilevel.token_training.card", True),
        ("hf_trilevel.token_training.operating_points", "hf_trilevel.cli.bench.report", False),  # a tool
        ("hf_trilevel", "hf_trilevel.weight_sparsity", True),
        ("hf_trilevel", "hf_trilevel.model_card", False),  # the front door stops at L3
        ("hf_trilevel.training.trainer", "hf_trilevel", False),  # the front door re-exports the techniques
        ("hf_trilevel.cli.card", "hf_trilevel", True),
        ("hf_trilevel.__main__", "hf_trilevel.cli", True),
    ],
)
def test_the_rule_itself(importer, imported, expected):
    assert allowed(importer, imported) is expected


SOURCE = """
import json
import torch
from ..cli.bench.report import environment
from .card import rates_text
import hf_trilevel.training.trainer


def measure():
    from .. import TriLevelTrainer
    from ..evaluation import flops, metrics
"""


def test_relative_imports_resolve_from_the_importing_file_and_deferred_ones_count():
    assert source_imports(SOURCE, "hf_trilevel.token_training.operating_points", is_package=False) == [
        (4, "hf_trilevel.cli.bench.report"),
        (5, "hf_trilevel.token_training.card"),
        (6, "hf_trilevel.training.trainer"),
        (10, "hf_trilevel"),
        (11, "hf_trilevel.evaluation.flops"),
        (11, "hf_trilevel.evaluation.metrics"),
    ]
    assert source_imports("from . import builder, sources", "hf_trilevel.model_card", is_package=True) == [
        (1, "hf_trilevel.model_card.builder"),
        (1, "hf_trilevel.model_card.sources"),
    ]


def test_modules_named_as_strings_count_as_imports():
    source = (
        'import_module("hf_trilevel.cli.bench.report")\n'
        'MOVED = {"x": ("hf_trilevel.recipe", "y")}\n'
        '"see `hf_trilevel.cli`, a docstring, not an import"\n'
    )
    assert source_imports(source, "hf_trilevel.training.trainer", is_package=False) == [
        (1, "hf_trilevel.cli.bench.report"),
        (2, "hf_trilevel.recipe"),
    ]
    assert not allowed("hf_trilevel.training.trainer", "hf_trilevel.cli.bench.report")
