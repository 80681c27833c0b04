"""Model cards: Hub metadata that huggingface_hub parses, settings and numbers, citations, and the Trainer hook."""

import json
import re
from importlib.resources import files
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import TrainingArguments, ViTImageProcessorPil

import hf_trilevel
from hf_trilevel import (
    ExamplePruning,
    KeepRateSchedule,
    SelectorTemperatureSchedule,
    TriLevelTrainer,
    TriLevelViTForImageClassification,
)
from hf_trilevel.evaluation.flops import flops_speedup_limit, forward_flops
from hf_trilevel.evaluation.metrics import compute_metrics
from hf_trilevel.model_card import write_model_card
from hf_trilevel.model_card.builder import (
    TEMPLATE_NAME,
    build_model_card,
    model_nonzero_weights,
    saved_nonzero_weights,
    trainer_model_card,
)
from hf_trilevel.model_card.sections import TRAINING_FIELDS
from hf_trilevel.model_card.techniques import TECHNIQUE_CARDS
from hf_trilevel.modeling.configuration_trilevel_vit import TriLevelViTConfig
from hf_trilevel.training.technique import TrainingTechnique
from hf_trilevel.weight_sparsity.card import describe_weight_sparsity

from .helpers import TINY_SHAPE, tiny_config, tiny_model
from .random_images import RandomImages, collate

METRICS = {"eval_accuracy": 0.875, "eval_top5_accuracy": 0.99, "train_runtime": 42.0, "epoch": 3.0}


def saved_card(tmp_path, config=None, metrics=METRICS, **kwargs) -> ModelCard:
    """Build, write and read back a card, as the Hub and users see it."""
    card = build_model_card(config or tiny_config(token_keep_rate=0.5), metrics, model_name="tiny", **kwargs)
    card.save(tmp_path / "README.md")
    return ModelCard.load(tmp_path / "README.md")


def test_metadata_parses_with_the_required_hub_fields(tmp_path):
    card = saved_card(tmp_path, dataset="tester/digits", dataset_name="Digits")
    data = card.data.to_dict()
    assert data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "image-classification"
    assert data["license"] == "apache-2.0"
    assert {"trilevel-vit", "vision", "image-classification"} <= set(data["tags"])
    assert data["datasets"] == ["tester/digits"]
    assert data["metrics"] == ["accuracy"]
    assert data["model-index"][0]["name"] == "tiny"


def test_model_index_records_the_measured_top1_and_top5(tmp_path):
    results = saved_card(tmp_path, dataset="tester/digits", dataset_name="Digits").data.eval_results
    by_metric = {result.metric_type: result for result in results}
    assert by_metric["accuracy"].metric_value == 0.875
    assert by_metric["top_5_accuracy"].metric_value == 0.99
    for result in results:
        assert (result.task_type, result.dataset_type, result.dataset_name) == (
            "image-classification",
            "tester/digits",
            "Digits",
        )
        assert result.dataset_split == "validation"


def test_without_a_dataset_the_accuracy_is_recorded_against_custom_data_and_no_dataset_is_linked(tmp_path):
    card = saved_card(tmp_path)
    assert "datasets" not in card.data.to_dict()
    assert card.data.eval_results[0].dataset_type == "custom"


def test_an_unevaluated_run_gets_no_model_index_and_says_so(tmp_path):
    card = saved_card(tmp_path, metrics={"train_runtime": 10.0})
    assert card.data.eval_results is None
    assert "model-index" not in card.data.to_dict()
    assert "No accuracy was measured" in card.text


def test_body_shows_the_settings_of_this_checkpoint(tmp_path):
    config = tiny_config(token_keep_rate=0.5, token_fusion=True, attention_keep_rate=0.4, token_prune_layers=[1, 3])
    text = saved_card(tmp_path, config=config).text
    assert "| `token_keep_rate` | 0.5 |" in text
    assert "| `token_prune_layers` | [1, 3] |" in text
    assert "| `token_fusion` | True |" in text
    assert "| `attention_keep_rate` | 0.4 |" in text
    assert "| patch tokens kept after each pruning layer | 32 → 16 of 64 |" in text  # ceil(64 * .5), ceil(32 * .5)
    assert "fused into one extra token" in text


def test_body_shows_flops_against_dense_and_the_flops_speedup_limit(tmp_path):
    config = tiny_config(token_keep_rate=0.5)
    text = saved_card(tmp_path, config=config).text
    dense = tiny_config(token_keep_rate=1.0)
    assert f"| forward FLOPs per image (this setting) | {forward_flops(config) / 1e6:.2f} MFLOPs |" in text
    assert f"| forward FLOPs per image, dense (keep rates 1.0) | {forward_flops(dense) / 1e6:.2f} MFLOPs |" in text
    assert f"| FLOPs speedup limit | {flops_speedup_limit(config):.2f}x |" in text
    assert "| top-1 accuracy | 87.50% |" in text and "| top-5 accuracy | 99.00% |" in text
    assert "| training time | 42.0 s |" in text


ADAPTIVE = {"token_selector": "adaptive", "token_keep_rate": 0.7, "token_keep_mass": 0.8, "token_min_keep_rate": 0.3}
# What the example writes after its evaluation (`token_counts.kept_token_metrics`), prune layers 1, 2, 3.
MEASURED_COUNTS = {
    "eval_kept_tokens_layer_1": 38.25,
    "eval_kept_tokens_layer_2": 24.5,
    "eval_kept_tokens_layer_3": 15.0,
    "eval_measured_gflops_per_image": 0.00123,
    "eval_measured_flops_speedup_limit": 2.34,
}


def test_the_default_selector_is_named_and_described_as_before(tmp_path):
    text = saved_card(tmp_path, metrics={**METRICS, **MEASURED_COUNTS}).text
    assert "| `token_selector` | `class_attention` |" in text
    assert "scored by the class token's attention, averaged over heads, and the top `ceil(n * token_keep_rate)`" in text
    assert "token_keep_mass" not in text and "measured mean" not in text  # fixed counts: the schedule says it all


def test_an_adaptive_card_states_mass_floor_importance_and_the_measured_counts(tmp_path):
    card = saved_card(tmp_path, config=tiny_config(**ADAPTIVE), metrics={**METRICS, **MEASURED_COUNTS})
    text = card.text
    assert "adaptive-token-pruning" in card.data.tags
    for row in (
        "| `token_selector` | `adaptive` |",
        "| `token_keep_mass` | 0.8 |",
        "| `token_min_keep_rate` | 0.3 |",
        "| `token_importance` | `class_attention` |",
        "| `token_count_buckets` | 1 |",
    ):
        assert row in text
    # per image between the floor chain ceil(64 * .3) = 20 -> 6 -> 2 and the cap chain 45 -> 32 -> 23
    assert "| patch tokens kept after each pruning layer | per image, between 20 → 6 → 2 and 45 → 32 → 23 of 64" in text
    assert "reaches `token_keep_mass` = 0.8" in text and "the class token's attention, averaged over heads" in text
    assert "| patch tokens kept per image after each pruning layer (measured mean) | 38.2 → 24.5 → 15.0 of 64 |" in text
    config = tiny_config(**ADAPTIVE)
    cap = f"{forward_flops(config) / 1e6:.2f} MFLOPs"
    assert f"| forward FLOPs per image (this setting, at its cap: every image at `token_keep_rate`) | {cap} |" in text
    assert f"| FLOPs speedup limit (at the cap) | {flops_speedup_limit(config):.2f}x |" in text
    assert (
        "| forward FLOPs per image (measured: each evaluation image at its own counts, averaged) | 1.23 MFLOPs |"
        in text
    )
    assert "| FLOPs speedup limit (measured counts) | 2.34x |" in text
    assert "model.config.token_keep_mass = 0.8" in text  # the usage snippet shows the run-time knob


def test_an_adaptive_card_without_measured_counts_shows_only_the_bounds(tmp_path):
    text = saved_card(tmp_path, config=tiny_config(**ADAPTIVE, token_importance="learned")).text
    assert "| `token_importance` | `learned` |" in text and "(learned scores: a small scorer" in text
    assert "measured mean" not in text and "measured counts" not in text


def test_a_learned_card_describes_the_scorer_and_its_temperature_schedule(tmp_path):
    config = tiny_config(token_selector="learned", token_keep_rate=0.7)
    schedule = SelectorTemperatureSchedule(start=10.0, end=0.1).card_settings()  # what the trainer passes
    training = {"num_train_epochs": 3, "token_selector_temperature": schedule}
    card = saved_card(tmp_path, config=config, training=training)
    assert "learned-token-selection" in card.data.tags
    assert "| `token_selector` | `learned` |" in card.text and "token_keep_mass" not in card.text
    assert "Gumbel top-k with a straight-through hard decision" in card.text
    assert "its temperature annealed linearly from 10 to 0.1 over the run" in card.text
    assert "| learned scores' Gumbel temperature | start=10.0, end=0.1, schedule=linear per step |" in card.text
    assert f"| FLOPs speedup limit | {flops_speedup_limit(config):.2f}x |" in card.text


def test_measured_speedup_appears_only_when_it_was_measured(tmp_path):
    measured = {**METRICS, "measured_speedup": 1.63, "measured_speedup_setup": "CPU, batch 32"}
    assert (
        "| measured inference speedup over dense | 1.63x (CPU, batch 32) |"
        in saved_card(tmp_path, metrics=measured).text
    )
    assert "| measured inference speedup over dense | not measured" in saved_card(tmp_path).text


def test_example_pruning_settings_and_the_fraction_seen_are_described(tmp_path):
    training = {
        "num_train_epochs": 3,
        "example_pruning": {"policy": "forgetting", "keep_fraction": 0.8, "swap_fraction": 0.05, "swap_epochs": None},
    }
    card = saved_card(tmp_path, metrics={**METRICS, "example_fraction_seen": 0.8}, training=training)
    assert "data-pruning" in card.data.tags
    assert "the `forgetting` policy (keep_fraction=0.8, swap_fraction=0.05, swap_epochs=None)" in card.text
    assert "| training examples seen (share of epochs x data) | 80.0% |" in card.text
    assert "trained on all its examples" not in card.text
    assert "trained on all its examples" in saved_card(tmp_path).text


def test_a_fine_tuned_checkpoint_names_its_base_model(tmp_path):
    card = saved_card(tmp_path, finetuned_from="facebook/deit-tiny-patch16-224")
    assert card.data.to_dict()["base_model"] == "facebook/deit-tiny-patch16-224"
    assert "Fine-tuned from [facebook/deit-tiny-patch16-224]" in card.text
    assert "Fine-tuned from" not in saved_card(tmp_path).text


def test_usage_loads_with_remote_code_and_a_pipeline(tmp_path):
    text = saved_card(tmp_path, model_id="tester/tiny").text
    assert 'AutoModelForImageClassification.from_pretrained("tester/tiny", trust_remote_code=True)' in text
    assert 'pipeline("image-classification", model="tester/tiny", trust_remote_code=True)' in text


def test_citations_name_the_three_papers_in_well_formed_bibtex(tmp_path):
    text = saved_card(tmp_path).text
    bibtex = text.split("```bibtex\n", 1)[1].split("```", 1)[0]
    entries = re.split(r"\n(?=@)", bibtex.strip())
    assert len(entries) == 3
    for entry in entries:
        assert entry.count("{") == entry.count("}")
        assert all(f"{field}" in entry for field in ("title", "author", "year", "eprint"))
    assert "Peeling the Onion" in entries[0] and "2211.10801" in entries[0] and "AAAI" in entries[0]
    assert "Chasing Sparsity in Vision Transformers" in entries[1] and "Neural Information Processing" in entries[1]
    assert (
        "SaiT: Sparse Vision Transformers through Adaptive Token Pruning" in entries[2] and "2210.05832" in entries[2]
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"metrics": {"eval_accuracy": 98.6}}, "`accuracy` must be in \\[0, 1\\] \\(a fraction, not a percentage\\)"),
        ({"metrics": {"measured_speedup": 0.0}}, "`measured_speedup` must be in \\(0, inf\\)"),
        ({"metrics": {"train_runtime": -1.0}}, "`train_runtime` must be in \\(0, inf\\)"),
        ({"metrics": {"example_fraction_seen": 1.5}}, "`example_fraction_seen` must be in \\(0, 1\\]"),
        ({"model_name": " "}, "`model_name` must be a non-empty string"),
        ({"training": {"epochs": 3}}, "`training` has unknown keys \\['epochs'\\]"),
        ({"training": {"example_pruning": "forgetting"}}, "must be a policy's config\\(\\) dict"),
        ({"config": {"token_keep_rate": 0.5}}, "`config` must be a TriLevelViTConfig"),
    ],
)
def test_bad_inputs_raise_errors_naming_the_argument(kwargs, message):
    arguments = {"config": tiny_config(), "metrics": METRICS, "model_name": "tiny", **kwargs}
    config, metrics = arguments.pop("config"), arguments.pop("metrics")
    with pytest.raises(ValueError, match=message):
        build_model_card(config, metrics, **arguments)


def test_the_template_ships_inside_the_package():
    template = files("hf_trilevel.model_card").joinpath(TEMPLATE_NAME)
    assert template.is_file()
    assert "${card_data}" in template.read_text(encoding="utf-8")
    # setuptools puts only .py files into a wheel unless told otherwise; an installed package must render cards too.
    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    package_data = pyproject.get("tool", {}).get("setuptools", {}).get("package-data", {})
    assert TEMPLATE_NAME in package_data.get("hf_trilevel.model_card", []), (
        'add `[tool.setuptools.package-data] "hf_trilevel.model_card" = ["template.md"]` to pyproject.toml'
    )


class SlimmedConfig(TriLevelViTConfig):
    """Per-layer sizes as the SViTE issue's slimmed checkpoints report them through the config's methods."""

    def layer_num_attention_heads(self, layer: int) -> int:
        return [2, 1, 2, 2][layer]

    def layer_intermediate_size(self, layer: int) -> int:
        return [64, 64, 32, 16][layer]


def test_architecture_row_reads_per_layer_sizes_from_the_config(tmp_path):
    uniform = saved_card(tmp_path).text
    config = tiny_config()
    heads, mlp = config.num_attention_heads, config.intermediate_size
    assert f"| architecture | 4 layers, hidden size 32, {heads} heads, MLP {mlp} |" in uniform
    text = saved_card(tmp_path, config=SlimmedConfig(**TINY_SHAPE)).text
    expected = "4 layers, hidden size 32, heads per layer [2, 1, 2, 2], MLP per layer [64, 64, 32, 16]"
    assert f"| architecture | {expected} |" in text


def test_a_slimmed_config_shows_its_per_layer_fields(tmp_path):
    config = tiny_config(num_attention_heads_per_layer=[2, 2, 1, 2], intermediate_size_per_layer=[64, 48, 64, 64])
    text = saved_card(tmp_path, config=config).text
    assert "heads per layer [2, 2, 1, 2], MLP per layer [64, 48, 64, 64] |" in text


def test_write_model_card_reads_a_saved_folder_and_its_result_files(tmp_path):
    tiny_model(token_keep_rate=0.5).save_pretrained(tmp_path)
    (tmp_path / "eval_results.json").write_text(json.dumps({"eval_accuracy": 0.5, "epoch": 2.0}))
    (tmp_path / "train_results.json").write_text(json.dumps({"train_runtime": 300.0, "epoch": 2.0}))
    (tmp_path / "training_args.json").write_text(json.dumps({"num_train_epochs": 2, "learning_rate": 0.001}))
    card = ModelCard.load(write_model_card(tmp_path, model_name="saved", dataset="tester/digits"))
    assert card.data.eval_results[0].metric_value == 0.5
    assert "| training time | 5.0 min |" in card.text
    assert "| epochs | 2 |" in card.text and "| peak learning rate | 0.001 |" in card.text
    assert "| `token_keep_rate` | 0.5 |" in card.text


def test_write_model_card_quotes_the_measured_counts_of_an_adaptive_folder(tmp_path):
    tiny_model(**ADAPTIVE).save_pretrained(tmp_path)
    (tmp_path / "eval_results.json").write_text(json.dumps({"eval_accuracy": 0.5, **MEASURED_COUNTS}))
    card = ModelCard.load(write_model_card(tmp_path, model_name="saved"))
    assert "| `token_selector` | `adaptive` |" in card.text
    assert "(measured mean) | 38.2 → 24.5 → 15.0 of 64 |" in card.text


# --- token merging (ToMe) --------------------------------------------------------------------------------------------


def test_a_merging_card_describes_merging_and_shows_r_and_the_tokens_each_layer_leaves(tmp_path):
    config = tiny_config(token_keep_rate=0.7, token_merge_r=4)
    card = saved_card(tmp_path, config=config)
    text = card.text
    assert "4. **Merging.** In every layer" in text and "ToMe's bipartite soft matching" in text
    assert "| `token_merge_r` | 4 in every layer |" in text
    assert "| `token_merge_proportional_attention` | True |" in text and "proportional attention)" in text
    # 64 patches, pruning layers 1-3 at 0.7: 64 - 4 = 60; ceil(60 * .7) - 4 = 38; ceil(38 * .7) - 4 = 23; 13
    assert "| patch tokens left after each layer (drop, then merge) | 60 → 38 → 23 → 13 of 64 |" in text
    assert "| patch tokens kept after each pruning layer | 38 → 23 → 13 of 64 (after the drop and the merge) |" in text
    assert "token-merging" in card.data.tags


def test_a_merging_card_quotes_the_flops_of_its_merges_against_dense(tmp_path):
    config = tiny_config(token_merge_r=[8, 4, 4, 2], token_merge_proportional_attention=False)
    text = saved_card(tmp_path, config=config).text
    assert "| `token_merge_r` | per layer [8, 4, 4, 2] |" in text and "proportional attention is off" in text
    assert f"| forward FLOPs per image (this setting) | {forward_flops(config) / 1e6:.2f} MFLOPs |" in text
    assert f"| FLOPs speedup limit | {flops_speedup_limit(config):.2f}x |" in text
    assert flops_speedup_limit(config) > 1.0  # merging alone (keep rates 1.0) saves FLOPs


def test_a_merging_cards_usage_changes_r_at_load_and_on_the_loaded_model_with_an_r_that_fits(tmp_path):
    tiny_model(token_merge_r=[8, 4, 4, 2]).save_pretrained(tmp_path)
    text = ModelCard.load(write_model_card(tmp_path, model_name="saved")).text
    at_load = re.search(r'from_pretrained\("saved", trust_remote_code=True, token_merge_r=(\[[\d, ]+\])\)', text)
    assert at_load is not None and at_load[1] == "[4, 2, 2, 1]"  # half the checkpoint's r
    assert f"model.set_keep_rates(token_merge_r={at_load[1]})" in text
    assert "output_token_sources=True).token_sources" in text
    model = TriLevelViTForImageClassification.from_pretrained(tmp_path, token_merge_r=json.loads(at_load[1]))
    assert model.config.token_merge_r == [4, 2, 2, 1]
    model.set_keep_rates(token_merge_r=json.loads(at_load[1]))


def test_a_card_without_merging_says_nothing_of_it(tmp_path):
    card = saved_card(tmp_path, config=tiny_config(token_keep_rate=0.5, token_merge_r=0))
    assert "token_merge_r" not in card.text and "**Merging.**" not in card.text
    assert "token-merging" not in card.data.tags


def test_every_technique_of_the_package_has_its_card_section_registered_under_its_name():
    techniques = [getattr(hf_trilevel, name) for name in hf_trilevel.__all__]
    names = {cls.name for cls in techniques if isinstance(cls, type) and issubclass(cls, TrainingTechnique)}
    names.discard(TrainingTechnique.name)
    assert names == set(TECHNIQUE_CARDS)
    assert all(TRAINING_FIELDS[name] == card.label for name, card in TECHNIQUE_CARDS.items())


# -- TriLevelTrainer.create_model_card ---------------------------------------------------------------------------------


def pruning_trainer(output_dir, card_writer=trainer_model_card) -> TriLevelTrainer:
    return TriLevelTrainer(
        model=tiny_model(token_keep_rate=0.5),
        args=TrainingArguments(
            output_dir=str(output_dir),
            num_train_epochs=2,
            per_device_train_batch_size=4,
            learning_rate=1e-3,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
            dataloader_pin_memory=False,
            remove_unused_columns=False,
            seed=0,
        ),
        train_dataset=RandomImages(16, seed=0),
        eval_dataset=RandomImages(8, seed=1),
        data_collator=collate,
        processing_class=ViTImageProcessorPil(size={"height": 32, "width": 32}),
        compute_metrics=compute_metrics,
        callbacks=[
            ExamplePruning("forgetting", keep_fraction=0.75, swap_fraction=0.125),
            KeepRateSchedule(warmup_fraction=0.25, decay_fraction=0.5),
        ],
        card_writer=card_writer,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A two-epoch run with example pruning; a stale eval_results.json from an 'earlier run' sits in its folder."""
    output_dir = tmp_path_factory.mktemp("card-run")
    (output_dir / "eval_results.json").write_text(json.dumps({"eval_accuracy": 0.123}))
    trainer = pruning_trainer(output_dir)
    trainer.train()
    metrics = trainer.evaluate()
    trainer.create_model_card(dataset_tags="tester/random-images", dataset="Random images")
    return trainer, metrics, ModelCard.load(output_dir / "README.md")


def test_trainer_card_records_this_runs_accuracy_not_a_stale_result_file(trained):
    _, metrics, card = trained
    assert card.data.eval_results[0].metric_value == pytest.approx(metrics["eval_accuracy"])
    assert metrics["eval_accuracy"] != 0.123
    assert card.data.to_dict()["datasets"] == ["tester/random-images"]


def test_trainer_card_describes_example_pruning_the_keep_rate_schedule_and_the_fraction_seen(trained):
    trainer, _, card = trained
    fraction = trainer.technique_metrics()["example_fraction_seen"]
    assert fraction < 1.0
    assert f"| training examples seen (share of epochs x data) | {100 * fraction:.1f}% |" in card.text
    assert "the `forgetting` policy (keep_fraction=0.75, swap_fraction=0.125" in card.text
    assert (
        "| token keep-rate warm-up | target_token_keep_rate=0.5, warmup_fraction=0.25, decay_fraction=0.5 |"
        in card.text
    )
    assert "| training examples | 16 |" in card.text
    assert "| epochs | 2 |" in card.text
    assert f"| parameters | {trainer.model.num_parameters():,} |" in card.text


def test_trainer_card_reports_the_total_batch_size_and_the_trainers_model_card_is_this_one(trained):
    trainer, _, card = trained
    assert "| batch size (all processes, with gradient accumulation) | 4 |" in card.text
    assert str(trainer_model_card(trainer, dataset_tags="tester/random-images", dataset="Random images")) == str(card)


def test_trainer_card_with_only_a_readable_dataset_name_links_no_hub_dataset(tmp_path):
    trainer = pruning_trainer(tmp_path)
    trainer.create_model_card(dataset="My photos")
    card = ModelCard.load(tmp_path / "README.md")
    assert "datasets" not in card.data.to_dict()
    assert "the `validation` split of My photos" in card.text


def test_trainer_card_is_written_by_the_main_process_only(tmp_path, monkeypatch):
    trainer = pruning_trainer(tmp_path)
    monkeypatch.setattr(trainer, "is_world_process_zero", lambda: False)
    trainer.create_model_card()
    assert not (tmp_path / "README.md").exists()
    monkeypatch.undo()
    trainer.create_model_card()
    assert (tmp_path / "README.md").exists()


def test_the_trainer_saves_the_card_its_card_writer_writes_given_the_card_arguments(tmp_path):
    received = {}

    def card_writer(trainer, **card_arguments) -> ModelCard:
        received.update(card_arguments, trainer=trainer)
        return ModelCard("---\nlicense: mit\n---\n# my card\n")

    trainer = pruning_trainer(tmp_path, card_writer=card_writer)
    trainer.create_model_card(dataset_tags="tester/random-images", tasks="image-classification")
    assert (tmp_path / "README.md").read_text().endswith("# my card\n")
    assert received["trainer"] is trainer and received["dataset_tags"] == "tester/random-images"
    assert "tasks" not in received  # a card writer knows its model's task


def test_without_a_card_writer_the_trainer_writes_transformers_own_card(tmp_path):
    pruning_trainer(tmp_path, card_writer=None).create_model_card(model_name="plain")
    card = ModelCard.load(tmp_path / "README.md")
    assert "trilevel-vit" not in (card.data.tags or [])
    assert "# plain" in card.text and "## Operating points" not in card.text


def test_a_card_writer_that_is_not_callable_is_refused_naming_the_argument(tmp_path):
    with pytest.raises(ValueError, match="`card_writer` must be a callable"):
        pruning_trainer(tmp_path, card_writer="trainer_model_card")


# -- dense/sparse checkpoints: the operating-point section -------------------------------------------------------------

OPERATING_POINTS = {
    "num_examples": 360,
    "batch_size": 64,
    "repeats": 5,
    "environment": {"device": "NVIDIA H200", "processor": "x86_64", "threads": 16},
    "points": [
        {"token_keep_rate": 1.0, "attention_keep_rate": 1.0, "accuracy": 0.9, "images_per_second": 800.0,
         "flops_speedup_limit": 1.0},
        {"token_keep_rate": 0.5, "attention_keep_rate": 0.6, "accuracy": 0.85, "images_per_second": 1200.0,
         "flops_speedup_limit": 1.6},
    ],
}  # fmt: skip
DENSE_SPARSE_SETTINGS = {  # what `DenseSparseTraining.card_settings()` returns
    "keep_rates": [1.0, 0.5],
    "schedule": "dense_and_one",
    "distillation": "self",
    "distillation_temperature": 2.0,
    "distillation_weight": 0.5,
    "importance_weight": 0.0,
}


def dense_sparse_config(**overrides) -> TriLevelViTConfig:
    return tiny_config(token_keep_rate=0.5, attention_keep_rate=0.6, dense_sparse_keep_rates=[1.0, 0.5], **overrides)


def test_a_measured_table_becomes_the_operating_points_section_with_its_setup(tmp_path):
    card = saved_card(tmp_path, config=dense_sparse_config(), operating_points=OPERATING_POINTS)
    section = card.text.split("## Operating points\n", 1)[1].split("\n## ", 1)[0]
    assert "trained with dense/sparse training (SaiT) for token keep rates 1.0 and 0.5" in section
    assert "One set of weights serves every row: `model.set_keep_rates(token_keep_rate=r, attention_keep_rate=a)`" in (
        section
    )
    assert "(`r` and `a` from the row); the keep rate 1.0 row is the dense model." in section
    assert "| 1.0 | 1.0 | 90.00% | 800.0 | 1.00x | 1.00x |" in section
    assert "| 0.5 | 0.6 | 85.00% | 1,200.0 | 1.50x | 1.60x |" in section
    assert "Accuracy over 360 images." in section
    assert "measured on NVIDIA H200, batches of 64 images, the median of 5 timed rounds" in section
    assert "dense-sparse-weight-sharing" in card.data.tags


def test_a_dense_sparse_checkpoint_without_a_table_names_the_rates_it_was_trained_for(tmp_path):
    config = tiny_config(token_keep_rate=0.5, attention_keep_rate=0.6, dense_sparse_keep_rates=[0.5, 1.0, 0.7])
    card = saved_card(tmp_path, config=config)
    section = card.text.split("## Operating points\n", 1)[1].split("\n## ", 1)[0]
    assert "for token keep rates 1.0, 0.7 and 0.5: one set of weights serves every one of them" in section
    assert "training paired `r` = 1.0 with `a` = 1.0 (the dense model), 0.7 with 0.6, 0.5 with 0.6" in section
    assert "No operating-point table was measured" in section and "| keep rate |" not in section
    assert "dense-sparse-weight-sharing" in card.data.tags


def test_a_single_rate_checkpoint_without_a_table_has_no_operating_points_section(tmp_path):
    card = saved_card(tmp_path)
    assert "Operating points" not in card.text and "dense-sparse-weight-sharing" not in card.data.tags
    assert "can fall short of it (or pass it).\n\n## How to use" in card.text  # the template's layout, unchanged


def test_a_single_rate_checkpoint_with_a_table_shows_it_as_untrained_rates(tmp_path):
    text = saved_card(tmp_path, operating_points=OPERATING_POINTS["points"]).text
    assert "## Operating points" in text and "| 0.5 | 0.6 | 85.00% |" in text
    assert "the other rows run the same weights at rates they were not trained for" in text
    assert "the keep rate 1.0 row is the dense model" in text
    without_dense = [dict(point, attention_keep_rate=0.6) for point in OPERATING_POINTS["points"]]
    text = saved_card(tmp_path / "held", operating_points=without_dense).text  # attention held at 0.6: no dense row
    assert "(`r` and `a` from the row)." in text and "is the dense model" not in text.split("## Operating points")[1]


def test_dense_sparse_settings_are_shown_in_the_training_section(tmp_path):
    training = {"num_train_epochs": 3, "dense_sparse": DENSE_SPARSE_SETTINGS}
    text = saved_card(tmp_path, config=dense_sparse_config(), training=training).text
    assert (
        "Dense/sparse training (SaiT) updated one set of weights at token keep rates 1.0 and 0.5 (schedule "
        "`dense_and_one`), the sparse passes distilled from the dense pass of the same weights (temperature 2, "
        "weight 0.5)." in text
    )
    assert (
        "| dense/sparse training (one set of weights for every keep rate) | keep_rates=[1.0, 0.5], "
        "schedule=dense_and_one, distillation=self, distillation_temperature=2.0, distillation_weight=0.5, "
        "importance_weight=0.0 |" in text
    )
    teacher = {**DENSE_SPARSE_SETTINGS, "distillation": "teacher", "teacher": "tester/big", "importance_weight": 0.1}
    text = saved_card(tmp_path, config=dense_sparse_config(), training={"dense_sparse": teacher}).text
    assert "distilled from the teacher `tester/big`" in text and "token-importance distillation weight 0.1" in text
    assert "Dense/sparse training" not in saved_card(tmp_path, training={"num_train_epochs": 3}).text


def test_a_malformed_operating_point_report_is_refused_naming_the_argument():
    with pytest.raises(ValueError, match="`operating_points` must hold a `points` list"):
        build_model_card(tiny_config(), METRICS, model_name="tiny", operating_points={"points": [{"accuracy": 1}]})


def test_write_model_card_shows_the_folders_operating_points_json(tmp_path):
    tiny_model(token_keep_rate=0.5, attention_keep_rate=0.6, dense_sparse_keep_rates=[1.0, 0.5]).save_pretrained(
        tmp_path
    )
    (tmp_path / "operating_points.json").write_text(json.dumps(OPERATING_POINTS))
    card = ModelCard.load(write_model_card(tmp_path, model_name="saved"))
    assert "| 0.5 | 0.6 | 85.00% | 1,200.0 | 1.50x | 1.60x |" in card.text
    assert "dense-sparse-weight-sharing" in card.data.tags


def test_trainer_card_shows_the_operating_points_its_run_wrote(trained):
    trainer, _, _ = trained
    path = Path(trainer.args.output_dir) / "operating_points.json"
    path.write_text(json.dumps(OPERATING_POINTS))
    try:
        text = trainer_model_card(trainer).text
    finally:
        path.unlink()  # the other tests of this fixture compare cards without it
    assert "## Operating points" in text and "| 1.0 | 1.0 | 90.00% | 800.0 | 1.00x | 1.00x |" in text


# -- weight sparsity (SViTE) and slimmed shapes ------------------------------------------------------------------------

STRUCTURED = {"sparsity": "structured", "head_density": 0.5, "neuron_density": 0.5, "update_interval": 100,
              "end_fraction": 0.8, "death_rate": 0.5, "final_death_rate": 0.005, "one_shot": False}  # fmt: skip
UNSTRUCTURED = {"sparsity": "unstructured", "pattern": "2:4", "density": 0.5, "update_interval": 100,
                "end_fraction": 0.8, "death_rate": 0.5, "final_death_rate": 0.005, "one_shot": False}  # fmt: skip


def test_structured_weight_sparsity_is_described_in_the_training_table_and_paragraph(tmp_path):
    card = saved_card(tmp_path, training={"weight_sparsity": STRUCTURED})
    assert (
        "| weight sparsity (SViTE: sparse training of the weights) | structured, 50% of heads and 50% of MLP neurons "
        "kept per layer, prune-and-grow every 100 steps until 80% of training, death rate 0.5 → 0.005 (cosine) |"
    ) in card.text
    assert "`hf-trilevel slim IN_DIR OUT_DIR`" in card.text
    assert {"weight-sparsity", "structured-pruning"} <= set(card.data.tags)


def test_unstructured_weight_sparsity_names_its_density_and_pattern_and_what_it_saves(tmp_path):
    card = saved_card(tmp_path, training={"weight_sparsity": UNSTRUCTURED})
    assert "| unstructured, 50% of the weights kept, pattern 2:4, prune-and-grow every 100 steps" in card.text
    assert "trained sparse (SViTE) in a 2:4 pattern and are saved dense-shaped with zeros" in card.text
    assert "weight-sparsity" in card.data.tags and "structured-pruning" not in card.data.tags


def test_one_shot_pruning_is_named_instead_of_the_prune_and_grow_schedule():
    text = describe_weight_sparsity({"sparsity": "structured", "head_density": 0.5, "one_shot": True, "extra": 3})
    assert text == (
        "structured, 50% of heads kept per layer, one-shot: pruned once from a trained checkpoint by the same "
        "scores, extra=3"
    )


def test_a_model_with_zero_weights_shows_the_share_that_is_not_zero(tmp_path):
    model = tiny_model()
    with torch.no_grad():
        model.vit.layers[0].mlp.fc1.weight.zero_()  # 64 x 32 of the masked weights
        model.vit.layers[0].mlp.fc1.bias.zero_()  # a bias: not counted
    nonzero, total = model_nonzero_weights(model)
    expected_total = 32 * 3 * 4 * 4 + 4 * (4 * 32 * 32 + 2 * 64 * 32) + 5 * 32
    assert (total, nonzero) == (expected_total, expected_total - 64 * 32)
    text = saved_card(tmp_path, nonzero_weights=(nonzero, total)).text
    share = f"{100 * nonzero / total:.1f}%"
    assert f"| non-zero weights | {share} ({nonzero:,} of {total:,} weights of the patch projection" in text
    assert model_nonzero_weights(tiny_model())[0] == total  # dense weights: no row
    assert "non-zero weights" not in saved_card(tmp_path, nonzero_weights=(total, total)).text


@pytest.mark.parametrize("value", [(5, 4), (1, 0), (0.5, 1), "half", (1, 2, 3)])
def test_a_malformed_nonzero_weights_count_is_refused(value):
    with pytest.raises(ValueError, match="`nonzero_weights` must be"):
        build_model_card(tiny_config(), METRICS, model_name="tiny", nonzero_weights=value)


def test_a_slimmed_config_shows_its_flops_against_the_full_width_shape(tmp_path):
    sizes = {"num_attention_heads_per_layer": [1] * 4, "intermediate_size_per_layer": [32] * 4}
    config = tiny_config(**sizes)
    text = saved_card(tmp_path, config=config).text
    full = forward_flops(tiny_config())
    assert "| forward FLOPs per image, full-width dense (2 heads and MLP 64 in every layer) |" in text
    assert f"| FLOPs speedup limit against the full-width dense shape | {full / forward_flops(config):.2f}x |" in text
    assert "full-width" not in saved_card(tmp_path).text


def test_trainer_card_counts_the_models_nonzero_weights(tmp_path):
    trainer = pruning_trainer(tmp_path)
    with torch.no_grad():
        trainer.model.classifier.weight.zero_()
    text = trainer_model_card(trainer).text
    nonzero, total = model_nonzero_weights(trainer.model)
    assert nonzero == total - 5 * 32
    assert f"| non-zero weights | {100 * nonzero / total:.1f}% ({nonzero:,} of {total:,}" in text


def test_a_saved_folders_nonzero_weights_are_counted_from_its_safetensors(tmp_path):
    model = tiny_model()
    with torch.no_grad():
        model.vit.layers[1].attention.q_proj.weight[:16] = 0  # one head's query rows
    model.save_pretrained(tmp_path / "saved")
    assert saved_nonzero_weights(tmp_path / "saved") == model_nonzero_weights(model)
    assert saved_nonzero_weights(tmp_path) is None  # no weights there


class WeightSparsityStandIn(TrainingTechnique):
    """What `WeightSparsity` shows the card: its name and `card_settings()` (no training here)."""

    name = "weight_sparsity"

    def card_settings(self) -> dict:
        return STRUCTURED


def test_trainer_card_shows_the_weight_sparsity_techniques_settings(tmp_path):
    trainer = pruning_trainer(tmp_path)
    trainer.add_callback(WeightSparsityStandIn())
    card = trainer_model_card(trainer)
    assert "| weight sparsity (SViTE: sparse training of the weights) | structured, 50% of heads" in card.text
    assert "structured-pruning" in card.data.tags
