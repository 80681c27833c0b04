"""Trainer(push_to_hub=True) uploads exactly the self-contained saved folder, with our card, to a loopback Hub.

The Hub is `tests/hub_standin.py`, a local HTTP server; `huggingface_hub` is pointed at it through its constants
(`HF_ENDPOINT` is read once at import, so setting the variable now would be too late in this process). Uploads take
the Git LFS path (`HF_HUB_DISABLE_XET`): the Xet protocol that `huggingface_hub` uses when `hf_xet` is installed is
not reproduced by the stand-in, so that transport is the one part of a real push not exercised here.
"""

import pytest
import torch
import transformers.utils.hub
from huggingface_hub import ModelCard, constants
from huggingface_hub.utils import close_session
from transformers import AutoModelForImageClassification, TrainingArguments, ViTImageProcessorPil

from hf_trilevel import TriLevelTrainer
from hf_trilevel.evaluation.metrics import compute_metrics
from hf_trilevel.model_card import trainer_model_card

from .helpers import images, tiny_model
from .hub_standin import HubStandIn
from .random_images import RandomImages, collate

TOKEN = "hf_dummy_token_for_the_loopback_hub"
REPO_ID = "tester/tiny-trilevel"
REMOTE_CODE_FILES = {
    "configuration_trilevel_vit.py",
    "modeling_trilevel_vit.py",
    "token_groups.py",
    "token_reduction.py",
    "sparse_attention.py",
    "token_selectors.py",
    "value_checks.py",
    "vit_layer.py",
}


@pytest.fixture(scope="module")
def hub():
    """The stand-in Hub, with huggingface_hub and transformers' shared HfApi pointed at it for this module only."""
    with HubStandIn(TOKEN) as standin, pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(constants, "ENDPOINT", standin.endpoint)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(transformers.utils.hub, "_hf_api", None)  # rebuilt on first use, with our endpoint
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        close_session()  # a fresh HTTP client, built under this environment
        try:
            yield standin
        finally:
            close_session()


@pytest.fixture(scope="module")
def pushed(hub, tmp_path_factory):
    """Train a tiny model for one epoch with push_to_hub=True, evaluate, push; return (hub, folder, eval metrics)."""
    folder = tmp_path_factory.mktemp("run") / "tiny-trilevel"
    trainer = TriLevelTrainer(
        model=tiny_model(token_keep_rate=0.5),
        args=TrainingArguments(
            output_dir=str(folder),
            push_to_hub=True,
            hub_model_id=REPO_ID,
            num_train_epochs=1,
            per_device_train_batch_size=4,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
            dataloader_pin_memory=False,
            seed=0,
        ),
        train_dataset=RandomImages(8, seed=0),
        eval_dataset=RandomImages(8, seed=1),
        data_collator=collate,
        processing_class=ViTImageProcessorPil(size={"height": 32, "width": 32}),
        compute_metrics=compute_metrics,
        card_writer=trainer_model_card,
    )
    assert REPO_ID in hub.state.repos, "Trainer(push_to_hub=True) creates the repository when it is built"
    trainer.train()
    metrics = trainer.evaluate()
    trainer.push_to_hub(dataset_tags="tester/random-images", dataset="Random images")
    return hub, folder, metrics


def test_the_pushed_files_are_the_saved_folder_byte_for_byte(pushed):
    hub, folder, _ = pushed
    local = {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    received = hub.repo_files(REPO_ID)

    assert received == local
    assert set(received) >= {"model.safetensors", "config.json", "preprocessor_config.json", "README.md"}
    assert set(received) >= REMOTE_CODE_FILES
    assert hub.state.unexpected == []
    assert len(hub.state.commits) == 1 and hub.state.commits[0].summary == "End of training"
    assert "model.safetensors" in hub.state.commits[0].lfs_paths  # went through LFS batch + PUT, checked by sha256
    assert hub.state.calls.count("lfs_upload") >= 1


def test_the_pushed_card_is_ours_and_carries_the_measured_accuracy(pushed):
    hub, _, metrics = pushed
    readme = hub.repo_files(REPO_ID)["README.md"].decode()
    # The metadata the Hub validated (huggingface_hub asks twice: before hashing and before committing) is the card
    # that was pushed.
    assert hub.state.validated_readmes and set(hub.state.validated_readmes) == {readme}

    card = ModelCard(readme)
    data = card.data.to_dict()
    assert data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "image-classification"
    assert {"trilevel-vit", "vision", "image-classification"} <= set(data["tags"])
    assert data["datasets"] == ["tester/random-images"]
    result = card.data.eval_results[0]
    assert (result.metric_type, result.dataset_type, result.dataset_name) == (
        "accuracy",
        "tester/random-images",
        "Random images",
    )
    assert result.metric_value == pytest.approx(metrics["eval_accuracy"])
    assert f'from_pretrained("{REPO_ID}", trust_remote_code=True)' in readme
    assert "| `token_keep_rate` | 0.5 |" in readme


def test_the_pushed_files_alone_load_into_the_same_model(pushed, tmp_path):
    hub, folder, _ = pushed
    download = tmp_path / "download"
    download.mkdir()
    for name, content in hub.repo_files(REPO_ID).items():
        (download / name).write_bytes(content)

    pushed_model = AutoModelForImageClassification.from_pretrained(download).eval()
    saved_model = AutoModelForImageClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        torch.testing.assert_close(pushed_model(images(2)).logits, saved_model(images(2)).logits, rtol=0, atol=0)


def test_no_pickle_is_pushed(pushed):
    hub, _, _ = pushed
    files = hub.repo_files(REPO_ID)
    assert not [name for name in files if name.endswith((".bin", ".pt", ".pkl", ".pickle"))]
    assert "training_args.json" in files


def test_pushes_from_checkpoints_are_refused_before_training(tmp_path):
    from transformers import TrainingArguments

    from hf_trilevel.training.trainer import check_hub_strategy

    arguments = TrainingArguments(tmp_path, push_to_hub=True, hub_model_id="me/m", save_strategy="epoch")
    with pytest.raises(ValueError, match="--hub_strategy every_save with --save_strategy epoch would push"):
        check_hub_strategy(arguments)
    check_hub_strategy(TrainingArguments(tmp_path, push_to_hub=True, hub_model_id="me/m", hub_strategy="end"))
