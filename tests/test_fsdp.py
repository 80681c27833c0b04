"""FSDP2 proven or refused (docs/distributed.md).

One 2-process gloo launch (tests/jobs/fsdp_runs.py) trains a tiny TriLevel ViT with each training technique under DDP
and under FSDP2 (the Trainer -> accelerate -> `fully_shard` path, gradient accumulation 2, the same global batch) and
reports losses, gathered weights and how the prepared model held its parameters. A supported technique must train as
under DDP; a technique that cannot is refused before its first step, by name and with its reason
(`TrainingTechnique.sharding_refusal`, `hf_trilevel.training.sharding`). The refusals for each technique and each
sharded setup are checked in-process, without a launch.

The same launch stops FSDP2 runs at a checkpoint (both of transformers' FSDP checkpoint layouts) and resumes them: the
resumed run must be the uninterrupted one, bit for bit. And it asks for FSDP on CPUs without the job's patch, where
accelerate trains DDP instead, to see the trainer's warning.
"""

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from safetensors.torch import load_file
from transformers import TrainingArguments

from hf_trilevel import (
    DenseSparseTraining,
    ExamplePruning,
    KeepRateSchedule,
    SelectorTemperatureSchedule,
    TrainingTechnique,
    TriLevelTrainer,
    WeightSparsity,
)
from hf_trilevel.training import sharding
from hf_trilevel.training.errors import TrainingRefused
from hf_trilevel.training.sharding import (
    DEEPSPEED,
    FSDP1,
    FSDP2,
    check_sharded_training,
    uses_sharded_parameters,
    warn_if_fsdp_dropped,
)

from .helpers import run_on_two_processes, run_without_hf_trilevel, tiny_model

JOB = Path(__file__).parent / "jobs" / "fsdp_runs.py"
SUPPORTED = [
    "plain",
    "example_pruning_forgetting",
    "example_pruning_loss",
    "example_pruning_random",
    "keep_rate_schedule",
    "learned_selector",
    "adaptive_selector",
    "dense_sparse_self",
    "dense_sparse_teacher",
]
# Measured here: losses agree to 5e-7 and weights to 1.2e-5 after 8 steps at learning rate 3e-3 (the weights move
# by about 1e-2); the differences are the order of float32 sums in an all-reduce against a reduce-scatter.
LOSS_TOLERANCE = 1e-5
WEIGHT_TOLERANCE = 1e-4
# FSDP2 runs stopped right after writing checkpoint-<step> and resumed (tests/jobs/fsdp_runs.py `RESUMED`): the plain
# model and forgetting one step into epoch 1 (FULL_STATE_DICT, transformers' default), the loss policy half-way through
# epoch 0, whose losses choose epoch 1's kept set (SHARDED_STATE_DICT: torch.distributed.checkpoint folders).
# The keep-rate schedule, which keeps no checkpoint state, one step into epoch 1 with SHARDED_STATE_DICT.
RESUMED = {"plain": 6, "example_pruning_forgetting": 4, "example_pruning_loss_3_epochs": 2, "keep_rate_schedule": 6}
SHARDED_STATE = {"example_pruning_loss_3_epochs", "keep_rate_schedule"}
DCP_FILES = (".metadata", "__0_0.distcp", "__1_0.distcp")  # torch.distributed.checkpoint: an index and a file a rank
WITH_STATE = {"example_pruning_forgetting", "example_pruning_loss_3_epochs"}


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> tuple[list[dict], Path]:
    output = tmp_path_factory.mktemp("fsdp")
    return run_on_two_processes(JOB, output), output


def weights(output: Path, mode: str, name: str) -> dict[str, torch.Tensor]:
    return load_file(output / f"{mode}-{name}.safetensors")


# -- sharding is real ------------------------------------------------------------------------------------------------
def test_fsdp2_holds_each_parameter_as_a_dim0_shard_per_process(launched):
    reports, _ = launched
    for name in SUPPORTED:
        first, second = (report["fsdp2"][name] for report in reports)
        assert first["distributed_type"] == "DistributedType.FSDP" and first["world_size"] == 2
        assert first["model_class"] == "FSDPTriLevelViTForImageClassification"
        for key, mine in first["layout"].items():
            theirs = second["layout"][key]
            assert mine["dtensor"] and mine["shard_dim0"], (name, key, mine)
            assert mine["local_numel"] + theirs["local_numel"] == mine["numel"], (name, key)
            if mine["rows"] >= 2:  # a one-row tensor (the class token) lives on one process
                assert mine["local_numel"] < mine["numel"] and theirs["local_numel"] < mine["numel"], (name, key)


def test_ddp_runs_hold_whole_parameters(launched):
    reports, _ = launched
    layout = reports[0]["ddp"]["plain"]["layout"]
    assert not any(entry["dtensor"] for entry in layout.values())
    assert all(entry["local_numel"] == entry["numel"] for entry in layout.values())


# -- supported techniques train as under DDP -------------------------------------------------------------------------
@pytest.mark.parametrize("name", SUPPORTED)
def test_fsdp2_trains_like_ddp(launched, name):
    reports, output = launched
    ddp, fsdp2 = reports[0]["ddp"][name], reports[0]["fsdp2"][name]
    assert fsdp2["steps"] == ddp["steps"] > 0 and fsdp2["terms"] == ddp["terms"]
    assert max(abs(a - b) for a, b in zip(ddp["losses"], fsdp2["losses"], strict=True)) < LOSS_TOLERANCE
    expected, found = weights(output, "ddp", name), weights(output, "fsdp2", name)
    assert expected.keys() == found.keys()
    assert max(float((expected[key] - found[key]).abs().max()) for key in expected) < WEIGHT_TOLERANCE
    assert ddp["moved"] > 10 * WEIGHT_TOLERANCE  # the weights trained (about 1e-2), so agreeing says something


def test_fsdp2_save_model_writes_the_gathered_weights(launched):
    _, output = launched
    expected = load_file(output / "ddp-saved" / "model.safetensors")
    found = load_file(output / "fsdp2-saved" / "model.safetensors")
    assert expected.keys() == found.keys()
    assert all(found[key].shape == expected[key].shape for key in expected)
    assert max(float((expected[key] - found[key]).abs().max()) for key in expected) < WEIGHT_TOLERANCE


LOAD_SCRIPT = """
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification

folder = sys.argv[1]
model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True)
saved = load_file(f"{folder}/model.safetensors")
print(json.dumps({
    "module": type(model).__module__,
    "class": type(model).__name__,
    "classifier_matches": torch.equal(model.classifier.weight, saved["classifier.weight"]),
}))
"""


def test_fsdp2_saved_folder_carries_the_model_code(launched, tmp_path):
    # Under FSDP2 the model's class is torch's FSDPTriLevelViTForImageClassification; its save must still write the
    # folder an unsharded save writes: the model code, not torch's `_fsdp_*.py` files, and `auto_map` naming it.
    _, output = launched
    expected, folder = output / "ddp-saved", output / "fsdp2-saved"
    assert sorted(path.name for path in folder.iterdir()) == sorted(path.name for path in expected.iterdir())
    assert (folder / "modeling_trilevel_vit.py").is_file()
    for code in expected.glob("*.py"):
        assert (folder / code.name).read_bytes() == code.read_bytes(), code.name
    written, unsharded = (json.loads((path / "config.json").read_text()) for path in (folder, expected))
    assert written["auto_map"] == unsharded["auto_map"] and written["architectures"] == unsharded["architectures"]
    assert written["auto_map"]["AutoModelForImageClassification"] == (
        "modeling_trilevel_vit.TriLevelViTForImageClassification"
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    report = run_without_hf_trilevel(LOAD_SCRIPT, folder, work, tmp_path)
    assert report["module"].startswith("transformers_modules.")
    assert report["class"] == "TriLevelViTForImageClassification" and report["classifier_matches"]


# -- checkpoints and resuming ---------------------------------------------------------------------------------------
RNG_STATES = {"rng_state_0.pth", "rng_state_1.pth"}  # one a process
EVERY_CHECKPOINT = {"trainer_state.json", "trilevel_techniques.json", "scheduler.pt", *RNG_STATES}
FULL_STATE = {"model.safetensors", "config.json", "modeling_trilevel_vit.py", "pytorch_model_fsdp.bin", "optimizer.bin"}
SHARDED = {f"{folder}/{file}" for folder in ("pytorch_model_fsdp_0", "optimizer_0") for file in DCP_FILES}


@pytest.mark.parametrize("name", sorted(RESUMED))
def test_fsdp2_checkpoints_are_complete_with_technique_state(launched, name):
    reports, output = launched
    checkpoint = reports[0]["fsdp2-resumed"][name]
    files = set(checkpoint["files"])
    expected = EVERY_CHECKPOINT | (SHARDED if name in SHARDED_STATE else FULL_STATE)
    if name in WITH_STATE:
        expected |= {"example_pruning.safetensors", "example_pruning.json"}
    assert expected <= files, sorted(expected - files)
    assert "training_args.bin" not in files  # TriLevelTrainer.save_model writes no pickled arguments
    if name in SHARDED_STATE:  # the weights are only in the .distcp shards: transformers gathers none
        assert not any(file.endswith(".safetensors") and file.startswith("model") for file in files)
    assert checkpoint["problem"] is None  # hf_trilevel.training.checkpoints.checkpoint_problem accepts it
    folder = output / "fsdp2" / name / f"checkpoint-{RESUMED[name]}"
    manifest = json.loads((folder / "trilevel_techniques.json").read_text())
    recorded = ["example_pruning"] if name in WITH_STATE else ["keep_rate_schedule"] if name in SHARDED_STATE else []
    assert sorted(manifest["techniques"]) == recorded


@pytest.mark.parametrize("name", sorted(RESUMED))
def test_fsdp2_run_resumed_from_a_checkpoint_is_the_uninterrupted_run(launched, name):
    reports, output = launched
    for rank, report in enumerate(reports):
        uninterrupted, resumed = report["fsdp2"][name], report["fsdp2-resumed"][name]
        assert "error" not in resumed, resumed["error"]
        assert resumed["trained"] == uninterrupted["steps"] - RESUMED[name] > 0  # it started at the checkpoint
        assert resumed["steps"] == uninterrupted["steps"]
        # Every step's loss, loss terms, gradient norm, learning rate and epoch, and every epoch's pruning summary
        # (kept set digest), bit for bit. The log up to the checkpoint is restored from process 0's
        # trainer_state.json, and loss terms are each process's own, so process 1 is compared after it only.
        expected, found = uninterrupted["log"], resumed["log"]
        if rank:
            expected, found = ([entry for entry in log if entry["step"] > RESUMED[name]] for log in (expected, found))
        assert found == expected
    expected, found = weights(output, "fsdp2", name), weights(output, "fsdp2-resumed", name)
    assert expected.keys() == found.keys()
    assert all(torch.equal(expected[key], found[key]) for key in expected)


def test_the_resumed_loss_policy_run_prunes_by_the_losses_in_its_checkpoint(launched):
    # Epoch 1 keeps 48 of 64 examples, chosen by epoch 0's losses, half of them (2 of its 4 steps) computed before
    # checkpoint-2: a resumed run without them chooses another set (measured: another digest, weights off by 7e-3).
    log = launched[0][0]["fsdp2"]["example_pruning_loss_3_epochs"]["log"]
    kept = [entry["example_pruning/kept"] for entry in log if "example_pruning/kept" in entry]
    assert kept == [64, 48, 64]


# -- FSDP asked for where accelerate does not set it up --------------------------------------------------------------
def test_fsdp_on_cpus_trains_ddp_and_the_main_process_warns_once(launched):
    main, other = (report["fsdp2-dropped"] for report in launched[0])
    assert main["distributed_type"] == other["distributed_type"] == "DistributedType.MULTI_CPU"
    assert not main["fsdp_plugin"] and not other["fsdp_plugin"]
    assert len(main["warnings"]) == 1 and other["warnings"] == []
    assert main["warnings"][0].startswith("FSDP was asked for (`TrainingArguments.fsdp`, `--fsdp`) but accelerate")
    assert "trains as plain DDP" in main["warnings"][0] and "type is MULTI_CPU" in main["warnings"][0]


@pytest.fixture
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(sharding, "_warned", set())
    for name in ("ACCELERATE_USE_FSDP", "FSDP_VERSION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "false")  # TrainingArguments(fsdp=...) exports it


def cpu_accelerator(plugin=None, main: bool = True) -> SimpleNamespace:
    state = SimpleNamespace(distributed_type=DistributedType.MULTI_CPU)
    if plugin is not None:  # accelerate's state has no `fsdp_plugin` attribute at all when it did not set FSDP up
        state.fsdp_plugin = plugin
    return SimpleNamespace(state=state, is_main_process=main)


def sharding_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == sharding.__name__ and r.levelno == logging.WARNING]


def test_fsdp_arguments_without_a_plugin_warn_once(fresh_warnings, caplog, tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), fsdp=True, use_cpu=True, report_to="none")
    with caplog.at_level(logging.WARNING, logger=sharding.__name__):
        assert warn_if_fsdp_dropped(cpu_accelerator(), args)
        assert not warn_if_fsdp_dropped(cpu_accelerator(), args)
    (message,) = sharding_warnings(caplog)
    assert "(`TrainingArguments.fsdp`, `--fsdp`)" in message and "trains as plain DDP" in message
    assert "not on CPUs" in message and "type is MULTI_CPU" in message


def test_no_warning_with_a_plugin_on_other_processes_or_without_fsdp(fresh_warnings, caplog, tmp_path):
    asked = TrainingArguments(output_dir=str(tmp_path), fsdp=True, use_cpu=True, report_to="none")
    plain = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    with caplog.at_level(logging.WARNING, logger=sharding.__name__):
        assert not warn_if_fsdp_dropped(cpu_accelerator(plugin=SimpleNamespace(fsdp_version=2)), asked)
        assert not warn_if_fsdp_dropped(cpu_accelerator(main=False), asked)
        assert not warn_if_fsdp_dropped(cpu_accelerator(), plain)
    assert sharding_warnings(caplog) == []


def test_the_trainer_warns_when_accelerate_launch_asks_for_fsdp(fresh_warnings, monkeypatch, caplog, tmp_path):
    """In one process: `accelerate launch --use_fsdp` exports ACCELERATE_USE_FSDP; a single process gets no FSDP."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    trainer = TriLevelTrainer(
        model=tiny_model().train(),
        args=TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, save_strategy="no"),
        train_dataset=[{"pixel_values": torch.zeros(3, 32, 32), "labels": 0}] * 4,
    )
    with caplog.at_level(logging.WARNING, logger=sharding.__name__):
        trainer.get_train_dataloader()
    (message,) = sharding_warnings(caplog)
    assert message.startswith("FSDP was asked for (`ACCELERATE_USE_FSDP`, `accelerate launch --use_fsdp`)")
    assert "trains on one process, unsharded" in message and "type is NO" in message


# -- refused techniques ----------------------------------------------------------------------------------------------
def test_weight_sparsity_is_refused_under_fsdp2_before_anything_is_sharded(launched):
    for report in launched[0]:
        refused = report["fsdp2"]["weight_sparsity"]
        assert refused["error_type"] == "TrainingRefused" and refused["steps"] == 0
        assert refused["model_class"] == "TriLevelViTForImageClassification"  # never prepared
        assert refused["refused"].startswith("WeightSparsity (`weight_sparsity`) cannot train with FSDP2: its masks")
        assert "train with DDP" in refused["refused"] and "docs/distributed.md" in refused["refused"]


def fake_accelerator(fsdp_version: int | None = None, deepspeed: bool = False) -> SimpleNamespace:
    plugin = SimpleNamespace(fsdp_version=fsdp_version) if fsdp_version else None
    return SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin, deepspeed_plugin=object() if deepspeed else None))


TECHNIQUES = {
    "ExamplePruning": lambda: ExamplePruning("forgetting"),
    "KeepRateSchedule": KeepRateSchedule,
    "SelectorTemperatureSchedule": SelectorTemperatureSchedule,
    "DenseSparseTraining": lambda: DenseSparseTraining([1.0, 0.5]),
    "DenseSparseTraining-teacher": lambda: DenseSparseTraining(
        [1.0, 0.5], distillation="teacher", teacher=tiny_model()
    ),
    "WeightSparsity": WeightSparsity,
}
REFUSED_UNDER_FSDP2 = {"WeightSparsity"}


@pytest.mark.parametrize("technique", sorted(TECHNIQUES))
@pytest.mark.parametrize(
    "sharding, accelerator",
    [(FSDP2, fake_accelerator(2)), (FSDP1, fake_accelerator(1)), (DEEPSPEED, fake_accelerator(deepspeed=True))],
    ids=["fsdp2", "fsdp1", "deepspeed"],
)
def test_each_technique_is_refused_by_name_where_it_is_not_proven(technique, sharding, accelerator):
    built = TECHNIQUES[technique]()
    check_sharded_training([built], None, None)  # DDP / one process: never refused
    if sharding == FSDP2 and technique not in REFUSED_UNDER_FSDP2:
        check_sharded_training([built], accelerator, None)
        return
    with pytest.raises(TrainingRefused) as refused:
        check_sharded_training([built], accelerator, None)
    message = str(refused.value)
    assert message.startswith(f"{type(built).__name__} (`{built.name}`) cannot train with {sharding}: ")
    assert (built.sharding_refusal or "has not been tested") in message and "train with DDP" in message


def test_a_run_without_techniques_is_never_refused():
    for accelerator in (fake_accelerator(2), fake_accelerator(1), fake_accelerator(deepspeed=True)):
        check_sharded_training([], accelerator, None)


def test_every_refused_technique_is_named_in_one_message():
    with pytest.raises(TrainingRefused, match=r"^ExamplePruning .* KeepRateSchedule .* them, or train with DDP"):
        check_sharded_training([ExamplePruning("loss"), KeepRateSchedule()], fake_accelerator(deepspeed=True), None)


@pytest.mark.parametrize(
    "environment, args, expected",
    [
        ({}, {}, None),
        ({}, {"fsdp": True, "fsdp_plugin_args": {"fsdp_version": 2}}, FSDP2),
        ({}, {"fsdp": True, "fsdp_config": {"version": 1}}, FSDP1),
        ({}, {"fsdp": True, "fsdp_config": {}}, FSDP2),  # transformers' default version
        ({}, {"deepspeed": "ds_config.json"}, DEEPSPEED),
        ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}, {}, FSDP2),  # accelerate launch --use_fsdp
        ({"ACCELERATE_USE_FSDP": "true"}, {}, FSDP1),  # accelerate's default version
        ({"ACCELERATE_USE_DEEPSPEED": "true"}, {}, DEEPSPEED),
        ({"ACCELERATE_USE_FSDP": "false"}, {"fsdp": False, "deepspeed": None}, None),
    ],
)
def test_sharding_is_found_in_the_arguments_and_the_launchers_environment(monkeypatch, environment, args, expected):
    for name in ("ACCELERATE_USE_FSDP", "FSDP_VERSION", "ACCELERATE_USE_DEEPSPEED"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert uses_sharded_parameters(SimpleNamespace(state=SimpleNamespace()), SimpleNamespace(**args)) == expected


def test_the_accelerators_plugin_decides_before_the_arguments(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # accelerate exports it whenever it gets a plugin
    monkeypatch.delenv("FSDP_VERSION", raising=False)
    assert uses_sharded_parameters(fake_accelerator(2), SimpleNamespace(fsdp=False)) == FSDP2


class Recorder(TrainingTechnique):
    name = "recorder"
    sharding_refusal = "it records whole weights."

    def __init__(self):
        self.set_up = False

    def setup(self, args, num_examples, device) -> None:
        self.set_up = True


def test_the_trainer_refuses_before_setup_and_the_first_step(monkeypatch, tmp_path):
    """In one process: `accelerate launch --use_fsdp --fsdp_version 2` exports these, and the trainer reads them."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    model = tiny_model().train()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    technique = Recorder()
    trainer = TriLevelTrainer(
        model=model,
        args=TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, save_strategy="no"),
        train_dataset=[{"pixel_values": torch.zeros(3, 32, 32), "labels": 0}] * 4,
        callbacks=[technique],
    )
    with pytest.raises(TrainingRefused, match=r"^Recorder \(`recorder`\) cannot train with FSDP2: it records whole"):
        trainer.train()
    assert not technique.set_up and trainer.state.global_step == 0
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())
