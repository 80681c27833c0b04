"""`examples/run_image_classification.py --token_merge_r`: a merging run trains, evaluates and saves a folder whose
config carries the r, whose results hold the evaluation and whose card describes merging; the folder reloads with
`AutoModelForImageClassification` to the same logits; a resume with another r is refused before training.

One tiny run (2 layers of width 32, 64 digits, 2 epochs of one step, a checkpoint per step) serves every test; the
refusals at argument time are in tests/test_bad_input.py, the flags' own parsing in tests/test_arguments.py.
"""

import io
import json
from contextlib import redirect_stdout

import pytest
import torch
from transformers import AutoModelForImageClassification

from hf_trilevel.evaluation.metrics import sparsity_metrics

from .test_example import load_example

TINY_MODEL = [
    "--hidden_size", "32", "--num_hidden_layers", "2", "--num_attention_heads", "2", "--intermediate_size", "64",
]  # fmt: skip
RUN = [
    "--token_merge_r", "2",
    "--num_train_epochs", "2",
    "--max_train_samples", "64",
    "--max_eval_samples", "32",
    "--per_device_train_batch_size", "64",
    "--save_steps", "1",
    "--disable_tqdm", "True",
    *TINY_MODEL,
]  # fmt: skip


@pytest.fixture(scope="module")
def merging_run(tmp_path_factory):
    """The example run in this process, so its trained model is at hand: `(output folder, trainer, stdout)`."""
    output_dir = tmp_path_factory.mktemp("merging") / "digits-merging"
    with redirect_stdout(io.StringIO()) as printed:
        trainer, _ = load_example().main([*RUN, "--output_dir", str(output_dir)])
    return output_dir, trainer, printed.getvalue()


def test_the_saved_config_merges_r_tokens_in_every_layer_without_the_default_dropping(merging_run):
    output_dir, _, _ = merging_run
    config = json.loads((output_dir / "config.json").read_text())
    assert config["token_merge_r"] == 2 and config["token_merge_proportional_attention"] is True
    assert config["token_keep_rate"] == 1.0 and config["attention_keep_rate"] == 1.0  # from scratch: merging instead


def test_all_results_hold_the_evaluation_and_the_flops_merging_saves(merging_run):
    output_dir, trainer, _ = merging_run
    results = json.loads((output_dir / "all_results.json").read_text())
    assert 0.0 <= results["eval_accuracy"] <= 1.0 and results["eval_samples"] == 32
    expected = sparsity_metrics(trainer.model.config)
    assert {key: results[key] for key in expected} == pytest.approx(expected)
    assert results["flops_speedup_limit"] > 1.0  # keep rates 1.0: the saving is the merges'


def test_the_summary_and_the_last_lines_name_the_merging(merging_run):
    _, _, printed = merging_run
    assert "token merging r=2 in every layer (proportional attention on)" in printed
    assert "Token and attention sparsity are off" not in printed
    assert "patch tokens left after the last layer's merge: 60 of 64" in printed  # 64 - 2 - 2


def test_the_card_describes_the_merging(merging_run):
    card = (merging_run[0] / "README.md").read_text()
    assert "| `token_merge_r` | 2 in every layer |" in card and "4. **Merging.**" in card


def test_the_folder_reloads_with_auto_classes_to_the_trained_models_logits(merging_run):
    output_dir, trainer, _ = merging_run
    trained = trainer.model.eval()
    reloaded = AutoModelForImageClassification.from_pretrained(output_dir, trust_remote_code=True).eval()
    assert reloaded.config.token_merge_r == 2
    pixel_values = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, logits = trained(pixel_values).logits, reloaded(pixel_values).logits
        merged = reloaded(pixel_values, output_token_sources=True).token_sources
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-6)
    assert ((merged >= 0).sum(dim=1) == 64).all() and (merged.amax(dim=1) == 59).all()  # 64 patches in 60 tokens


def test_resuming_with_another_r_is_refused_before_training_naming_the_field(merging_run, capsys):
    output_dir, _, _ = merging_run
    saved = (output_dir / "model.safetensors").read_bytes()
    argv = [*RUN, "--output_dir", str(output_dir), "--resume_from_checkpoint", "latest", "--num_train_epochs", "3"]
    argv[argv.index("--token_merge_r") + 1] = "4"
    with pytest.raises(SystemExit) as raised:
        load_example().main(argv)
    assert raised.value.code == 2
    message = capsys.readouterr().err
    assert "`token_merge_r` (the model's config)" in message and "trained with 2, this run asks for 4" in message
    assert (output_dir / "model.safetensors").read_bytes() == saved
