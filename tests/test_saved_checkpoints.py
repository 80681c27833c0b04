"""Folders saved by hf-trilevel 0.1.0, before the layout moved, still load and give the logits they gave then.

`tests/fixtures/checkpoints_0_1_0/` (see its README) holds four folders written by `save_pretrained` at 0.1.0 (fixed,
learned and adaptive selectors, and a slimmed model), each with the logits it gave for `pixel_values.safetensors`.
Users hold such folders: today's classes must read them, their own remote code must still run where hf_trilevel
is not installed, and a folder saved today must load there too. The fixtures are only read; anything written goes
to a copy under `tmp_path`.
"""

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification

from hf_trilevel import TriLevelViTForImageClassification
from hf_trilevel.modeling import REMOTE_CODE_FILES

from .helpers import run_without_hf_trilevel

FIXTURES = Path(__file__).parent / "fixtures" / "checkpoints_0_1_0"
REMOTE_CODE_FOLDER = "remote_code"  # the code every 0.1.0 folder carried, kept once
FOLDERS = ("fixed", "learned", "adaptive", "slimmed")
LOADERS = {
    "AutoModelForImageClassification": AutoModelForImageClassification.from_pretrained,
    "TriLevelViTForImageClassification": TriLevelViTForImageClassification.from_pretrained,
}


def pixel_values() -> torch.Tensor:
    return load_file(FIXTURES / "pixel_values.safetensors")["pixel_values"]


def expected_logits(name: str) -> torch.Tensor:
    return load_file(FIXTURES / name / "expected_logits.safetensors")["logits"]


def assert_same_logits(actual: torch.Tensor, name: str) -> None:
    """The saved logits, to float32 rounding: the same weights and the same decisions (which tokens survive)."""
    torch.testing.assert_close(actual, expected_logits(name), rtol=0, atol=1e-6)


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("name", FOLDERS)
def test_a_0_1_0_folder_loads_with_todays_classes_and_gives_its_saved_logits(name, loader):
    model, loading = LOADERS[loader](FIXTURES / name, output_loading_info=True)
    model.eval()
    assert type(model) is TriLevelViTForImageClassification  # today's class, not the folder's remote copy
    assert not any(loading.values()), loading  # every weight found under its 0.1.0 name, none left over
    with torch.no_grad():
        assert_same_logits(model(pixel_values()).logits, name)


# Run after `helpers.WITHOUT_HF_TRILEVEL`: every checkpoint folder under argv[1], loaded with its own remote code.
LOAD_EVERY_FOLDER_SCRIPT = """
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageClassification

checkpoints, work = Path(sys.argv[1]), Path(sys.argv[2])
pixel_values = load_file(checkpoints / "pixel_values.safetensors")["pixel_values"]
modules = {}
for folder in sorted(path for path in checkpoints.iterdir() if path.is_dir()):
    model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
    with torch.no_grad():
        save_file({"logits": model(pixel_values).logits}, work / f"{folder.name}.safetensors")
    modules[folder.name] = type(model).__module__
print(json.dumps({
    "modules": modules,
    "loaded_modules": sorted(m for m in sys.modules if m.startswith("hf_trilevel")),
}))
"""


def copy_saved_folders(target: Path) -> None:
    """The folders as 0.1.0's `save_pretrained` wrote them: the fixtures keep the eight code files, identical in all
    four folders, once (`remote_code/`), and each folder gets its copy back here."""
    shutil.copytree(FIXTURES, target, ignore=shutil.ignore_patterns(REMOTE_CODE_FOLDER))
    for name in FOLDERS:
        for path in (FIXTURES / REMOTE_CODE_FOLDER).glob("*.py"):
            shutil.copy(path, target / name / path.name)


def resave_with_todays_code(source: Path, target: Path) -> None:
    """Each folder of `source`, loaded with today's classes and saved again (weights, config and today's code)."""
    target.mkdir()
    shutil.copy(source / "pixel_values.safetensors", target)
    for name in FOLDERS:
        TriLevelViTForImageClassification.from_pretrained(source / name).save_pretrained(target / name)
        assert {path.name for path in (target / name).glob("*.py")} == set(REMOTE_CODE_FILES)


@pytest.mark.parametrize("saved_by", ["0.1.0", "today"])
def test_the_folders_load_with_remote_code_where_hf_trilevel_cannot_be_imported(saved_by, tmp_path):
    checkpoints, work = tmp_path / "checkpoints", tmp_path / "elsewhere"
    work.mkdir()
    if saved_by == "0.1.0":
        copy_saved_folders(checkpoints)
    else:
        resave_with_todays_code(FIXTURES, checkpoints)

    report = run_without_hf_trilevel(LOAD_EVERY_FOLDER_SCRIPT, checkpoints, work, tmp_path)
    assert report["loaded_modules"] == []
    assert sorted(report["modules"]) == sorted(FOLDERS)
    for name in FOLDERS:
        assert report["modules"][name].startswith("transformers_modules."), report["modules"][name]
        assert_same_logits(load_file(work / f"{name}.safetensors")["logits"], name)
