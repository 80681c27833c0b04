"""`hf-trilevel visualize`: the kept-patch grid, the operating-point curve and JSON, and usage errors (exit 2)."""

import json
import sys

import datasets.config
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import ViTForImageClassification, ViTImageProcessorPil

from hf_trilevel import TriLevelViTForImageClassification
from hf_trilevel.cli import main
from hf_trilevel.cli.visualize import (
    DROPPED_ALPHA,
    DROPPED_VEIL,
    GROUP_ALPHA,
    GROUP_OUTLINE,
    group_colors,
    groups_title,
    kept_patch_counts,
    kept_patch_masks,
    kept_tokens,
    layer_titles,
    merged_patch_groups,
    render_kept_tokens,
)
from hf_trilevel.cli.visualize.operating_points import DEFAULT_KEEP_RATES
from hf_trilevel.image_data import load_digits_dataset
from hf_trilevel.token_training.operating_points import measure_operating_points

from .helpers import images, tiny_model

NUM_EXAMPLES = 48


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random-init tiny TriLevel model for the 10 digits, saved with its image processor (keep rate 0.5).

    A wide initialisation makes its predictions vary from image to image and with the keep rate (a default-initialised
    tiny model predicts one class for every digit), so accuracies at different keep rates tell them apart.
    """
    folder = tmp_path_factory.mktemp("visualize") / "model"
    tiny_model(token_keep_rate=0.5, num_labels=10, initializer_range=1.0).save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def adaptive_checkpoint(tmp_path_factory):
    """A tiny model with the adaptive selector whose counts differ between digits (mass 0.7, floor 0.25)."""
    folder = tmp_path_factory.mktemp("visualize") / "adaptive"
    model = tiny_model(
        token_selector="adaptive", token_keep_rate=0.7, token_keep_mass=0.7, num_labels=10, initializer_range=0.3
    )
    model.save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def run_cli(*argv: str) -> int:
    return main(["visualize", *argv])


@pytest.fixture(scope="module")
def merging_checkpoint(tmp_path_factory):
    """A tiny model that drops (keep 0.7 at layers 1-3) and merges 6 patch tokens in every layer."""
    folder = tmp_path_factory.mktemp("visualize") / "merging"
    tiny_model(token_keep_rate=0.7, token_merge_r=6, num_labels=10).save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


# -- pure functions ----------------------------------------------------------------------------------------------------


def test_kept_patch_masks_mark_exactly_the_kept_positions():
    kept = (torch.tensor([[0, 1, 5], [2, 3, 4]]), torch.tensor([[5], [2]]))
    masks = kept_patch_masks(kept, grid=(2, 3))
    assert masks.shape == (2, 2, 2, 3)
    np.testing.assert_array_equal(masks[0, 0], [[True, True, False], [False, False, True]])
    np.testing.assert_array_equal(masks[1, 0], [[False, False, True], [True, True, False]])
    np.testing.assert_array_equal(masks[0, 1], [[False, False, False], [False, False, True]])
    np.testing.assert_array_equal(masks[1, 1], [[False, False, True], [False, False, False]])


def test_kept_patch_masks_reject_positions_outside_the_grid():
    with pytest.raises(ValueError, match="outside the 2x2 patch grid"):
        kept_patch_masks((torch.tensor([[4]]),), grid=(2, 2))


def test_padded_slots_are_no_patch_and_each_image_shows_its_own_kept_set():
    # The adaptive selector's convention: a batch padded to its largest count, -1 after each image's valid slots.
    kept = (torch.tensor([[0, 1, 5], [2, -1, -1]]), torch.tensor([[5, -1], [-1, -1]]))
    masks = kept_patch_masks(kept, grid=(2, 3))
    np.testing.assert_array_equal(masks[0, 0], [[True, True, False], [False, False, True]])
    np.testing.assert_array_equal(masks[1, 0], [[False, False, True], [False, False, False]])
    np.testing.assert_array_equal(masks[0, 1], [[False, False, False], [False, False, True]])
    assert not masks[1, 1].any()  # position -1 would be the last patch if it were read as an index
    np.testing.assert_array_equal(kept_patch_counts(kept), [[3, 1], [1, 0]])


def test_indices_below_the_padding_marker_are_refused():
    with pytest.raises(ValueError, match="-1 marks padding"):
        kept_patch_masks((torch.tensor([[0, -2]]),), grid=(2, 2))
    with pytest.raises(ValueError, match="-1 marks padding"):
        kept_patch_counts((torch.tensor([[0, -2]]),))


def test_titles_give_the_count_or_the_range_of_per_image_counts():
    counts = np.array([[45, 32], [45, 20], [45, 27]])
    assert layer_titles([1, 2], counts, 64) == ["input", "layer 1: 45/64", "layer 2: 20-32/64"]


def test_cell_labels_are_tags_on_the_layer_cells_and_keep_the_grid_size():
    black = Image.new("RGB", (16, 16), (0, 0, 0))
    masks = np.ones((2, 1, 4, 4), dtype=bool)
    plain = render_kept_tokens([black, black], masks, patch_size=4, scale=2, gap=4, label_height=10)
    tagged = render_kept_tokens(
        [black, black], masks, patch_size=4, scale=2, gap=4, label_height=10, cell_labels=[["16"], ["9"]]
    )
    assert tagged.size == plain.size
    difference = np.any(np.asarray(tagged) != np.asarray(plain), axis=2)
    rows, columns = np.nonzero(difference)
    layer_left = 4 + 32 + 4  # after the input cell (16 px x scale 2) and two gaps
    assert columns.min() >= layer_left and rows.min() >= 10 + 4  # only the layer cells, never the input column
    second_top = 10 + 4 + 32 + 4
    assert difference[second_top : second_top + 16, layer_left : layer_left + 16].any()  # the second image's tag
    with pytest.raises(ValueError, match="`cell_labels` must hold 1 labels for each of the 2 images"):
        render_kept_tokens([black, black], masks, patch_size=4, cell_labels=[["16"]])


def test_rendered_grid_has_the_documented_size():
    images = [Image.new("RGB", (32, 32), (255, 255, 255))] * 2
    masks = np.ones((2, 3, 8, 8), dtype=bool)
    grid = render_kept_tokens(images, masks, patch_size=4, scale=2, gap=4, label_height=16)
    # 4 columns (input + 3 layers) of 64 px and 5 gaps; a 16 px title band, 2 rows of 64 px and 3 gaps.
    assert grid.size == (4 * 64 + 5 * 4, 16 + 2 * 64 + 3 * 4)


def test_dropped_patches_are_veiled_and_kept_patches_untouched():
    white = Image.new("RGB", (8, 8), (255, 255, 255))
    masks = np.array([[[[True, False], [False, True]]]])  # one image, one layer, 2x2 grid of 4-pixel patches
    grid = np.asarray(render_kept_tokens([white], masks, patch_size=4, scale=2, gap=3, label_height=10))
    top, left = 10 + 3, 3 + 16 + 3  # the layer column starts after the input cell (8 px x scale 2) and two gaps
    veiled = np.rint((1 - DROPPED_ALPHA) * 255 + DROPPED_ALPHA * np.array(DROPPED_VEIL))
    np.testing.assert_array_equal(grid[top + 1, left + 1], [255, 255, 255])  # patch (0, 0): kept
    np.testing.assert_array_equal(grid[top + 1, left + 9], veiled)  # patch (0, 1): dropped
    np.testing.assert_array_equal(grid[top + 9, left + 1], veiled)  # patch (1, 0): dropped
    np.testing.assert_array_equal(grid[top + 15, left + 15], [255, 255, 255])  # patch (1, 1): kept
    np.testing.assert_array_equal(grid[top + 9, 3 + 9], [255, 255, 255])  # the input column is never veiled


def test_merged_patch_groups_lay_the_source_map_on_the_grid():
    sources = torch.tensor([[0, 0, 1, -1, 2, 1], [1, 0, 0, 0, -1, -1]])  # patch -> final token, -1 dropped
    groups = merged_patch_groups(sources, grid=(2, 3))
    np.testing.assert_array_equal(groups[0], [[0, 0, 1], [-1, 2, 1]])
    np.testing.assert_array_equal(groups[1], [[1, 0, 0], [0, -1, -1]])
    assert groups_title(groups) == "merged: 2-3 tokens"


def test_merged_patch_groups_refuse_a_map_of_another_grid_or_below_the_dropped_marker():
    with pytest.raises(ValueError, match=r"\[batch, patches=4\] for the 2x2 patch grid"):
        merged_patch_groups(torch.zeros(1, 6, dtype=torch.int64), grid=(2, 2))
    with pytest.raises(ValueError, match="-1 marks a dropped patch"):
        merged_patch_groups(torch.tensor([[0, -2, 1, 1]]), grid=(2, 2))


def test_group_colors_are_distinct_for_every_token_of_a_model():
    colors = group_colors(197)  # ViT-B/16's patch tokens
    assert colors.shape == (197, 3) and colors.dtype == np.uint8
    assert len({tuple(color) for color in colors}) == 197


def test_each_merged_group_is_tinted_one_colour_outlined_and_dropped_patches_veiled():
    white = Image.new("RGB", (12, 12), (255, 255, 255))
    groups = np.array([[[0, 0, 1], [2, 1, 1], [-1, -1, 2]]])  # one image, a 3x3 grid of 4-pixel patches
    masks = np.ones((1, 0, 3, 3), dtype=bool)  # no pruning layers: input and the groups
    grid = np.asarray(render_kept_tokens([white], masks, patch_size=4, scale=1, gap=2, label_height=0, groups=groups))
    assert grid.shape == (12 + 2 * 2, 2 * 12 + 3 * 2, 3)
    top, left, colors = 2, 2 + 12 + 2, group_colors(3)

    def center(row: int, column: int) -> np.ndarray:
        return grid[top + 4 * row + 2, left + 4 * column + 2]

    for (row, column), group in np.ndenumerate(groups[0]):
        if group >= 0:
            np.testing.assert_array_equal(
                center(row, column), np.rint((1 - GROUP_ALPHA) * 255 + GROUP_ALPHA * colors[group])
            )
        else:
            np.testing.assert_array_equal(
                center(row, column), np.rint((1 - DROPPED_ALPHA) * 255 + DROPPED_ALPHA * np.array(DROPPED_VEIL))
            )
    np.testing.assert_array_equal(grid[top + 1, left + 8], GROUP_OUTLINE)  # group 0 | group 1 edge
    assert tuple(grid[top + 1, left + 4]) != GROUP_OUTLINE  # inside group 0: patches (0, 0) and (0, 1) join
    np.testing.assert_array_equal(grid[top + 2, 2 + 2], [255, 255, 255])  # the input column is untouched


# -- kept-tokens command -----------------------------------------------------------------------------------------------


def test_kept_tokens_writes_a_grid_of_images_by_pruning_layers(checkpoint, tmp_path):
    output = tmp_path / "grid.png"
    assert (
        run_cli("kept-tokens", "--model", str(checkpoint), "--images", "3", "--scale", "2", "--output", str(output))
        == 0
    )
    # tiny model: 32x32 inputs, 3 pruning layers -> 4 columns of 64 px; 3 rows of 64 px; gaps of 4, titles of 14.
    assert Image.open(output).size == (4 * 64 + 5 * 4, 14 + 3 * 64 + 4 * 4)


def test_kept_tokens_reads_an_image_folder(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))  # not the user's cache
    for label in ("a", "b"):
        (tmp_path / "images" / label).mkdir(parents=True)
        Image.new("RGB", (20, 24), (200, 10, 10)).save(tmp_path / "images" / label / "0.png")
    output = tmp_path / "grid.png"
    argv = ["--model", str(checkpoint), "--data", "imagefolder", "--data-dir", str(tmp_path / "images")]
    assert run_cli("kept-tokens", *argv, "--images", "2", "--scale", "1", "--output", str(output)) == 0
    assert Image.open(output).size == (4 * 32 + 5 * 4, 14 + 2 * 32 + 3 * 4)


def test_kept_tokens_of_an_adaptive_model_show_each_images_own_count(adaptive_checkpoint, tmp_path, monkeypatch):
    drawn = {}

    def capture(images, masks, patch_size, **kwargs):
        drawn.update(masks=masks, **kwargs)
        return render_kept_tokens(images, masks, patch_size, **kwargs)

    monkeypatch.setattr(kept_tokens, "render_kept_tokens", capture)
    output = tmp_path / "grid.png"
    argv = ["--model", str(adaptive_checkpoint), "--images", "6", "--scale", "1", "--output", str(output)]
    assert run_cli("kept-tokens", *argv) == 0
    assert Image.open(output).size == (4 * 32 + 5 * 4, 14 + 6 * 32 + 7 * 4)

    model = TriLevelViTForImageClassification.from_pretrained(adaptive_checkpoint).eval()
    validation = load_digits_dataset(image_size=32)["validation"].select(range(6))
    processor = ViTImageProcessorPil.from_pretrained(adaptive_checkpoint)
    pixel_values = processor([image.convert("RGB") for image in validation["image"]], return_tensors="pt")
    with torch.no_grad():
        counts = torch.stack(model(**pixel_values, output_kept_token_indices=True).kept_token_counts, dim=1)
    assert len(set(counts[:, -1].tolist())) > 1  # the images' counts differ: padded slots exist
    np.testing.assert_array_equal(drawn["masks"].sum(axis=(2, 3)), counts.numpy())  # padding is no patch
    assert drawn["cell_labels"] == [[str(count) for count in row] for row in counts.tolist()]
    last = counts[:, -1]
    assert drawn["titles"][-1] == f"layer {model.config.token_prune_layers[-1]}: {last.min()}-{last.max()}/64"


def test_kept_tokens_of_a_fixed_rate_model_have_no_cell_labels(checkpoint, tmp_path, monkeypatch):
    drawn = {}

    def capture(images, masks, patch_size, **kwargs):
        drawn.update(kwargs)
        return render_kept_tokens(images, masks, patch_size, **kwargs)

    monkeypatch.setattr(kept_tokens, "render_kept_tokens", capture)
    argv = ["--model", str(checkpoint), "--images", "2", "--scale", "1", "--output", str(tmp_path / "grid.png")]
    assert run_cli("kept-tokens", *argv) == 0
    assert drawn["cell_labels"] is None
    assert drawn["titles"] == ["input", "layer 1: 32/64", "layer 2: 16/64", "layer 3: 8/64"]


def test_token_keep_mass_one_gives_an_adaptive_model_the_fixed_schedule(adaptive_checkpoint, tmp_path, monkeypatch):
    drawn = {}

    def capture(images, masks, patch_size, **kwargs):
        drawn.update(kwargs)
        return render_kept_tokens(images, masks, patch_size, **kwargs)

    monkeypatch.setattr(kept_tokens, "render_kept_tokens", capture)
    argv = ["--model", str(adaptive_checkpoint), "--token-keep-mass", "1.0", "--images", "3", "--scale", "1"]
    assert run_cli("kept-tokens", *argv, "--output", str(tmp_path / "grid.png")) == 0
    assert drawn["cell_labels"] is None
    assert drawn["titles"] == ["input", "layer 1: 45/64", "layer 2: 32/64", "layer 3: 23/64"]


def test_kept_tokens_of_a_merging_model_draw_the_groups_of_its_token_sources(merging_checkpoint, tmp_path, monkeypatch):
    drawn = {}

    def capture(images, masks, patch_size, **kwargs):
        drawn.update(kwargs)
        return render_kept_tokens(images, masks, patch_size, **kwargs)

    monkeypatch.setattr(kept_tokens, "render_kept_tokens", capture)
    output = tmp_path / "grid.png"
    argv = ["--model", str(merging_checkpoint), "--images", "3", "--scale", "1", "--output", str(output)]
    assert run_cli("kept-tokens", *argv) == 0
    assert Image.open(output).size == (5 * 32 + 6 * 4, 14 + 3 * 32 + 4 * 4)  # input, 3 pruning layers, the groups

    model = TriLevelViTForImageClassification.from_pretrained(merging_checkpoint).eval()
    validation = load_digits_dataset(image_size=32)["validation"].select(range(3))
    processor = ViTImageProcessorPil.from_pretrained(merging_checkpoint)
    pixel_values = processor([image.convert("RGB") for image in validation["image"]], return_tensors="pt")
    with torch.no_grad():
        sources = model(**pixel_values, output_token_sources=True).token_sources
    np.testing.assert_array_equal(drawn["groups"], sources.reshape(3, 8, 8).numpy())
    # 64 patches: -6 -> 58, keep ceil(58 * .7) = 41 -> 35, 25 -> 19, 14 -> 8 tokens left after the last layer
    assert drawn["titles"] == ["input", "layer 1: 35/64", "layer 2: 19/64", "layer 3: 8/64", "merged: 8 tokens"]
    assert (drawn["groups"] >= 0).sum(axis=(1, 2)).min() > 8  # several patches share a token


def test_kept_tokens_merge_r_override_draws_the_groups_of_a_checkpoint_that_does_not_merge(checkpoint, tmp_path):
    output = tmp_path / "grid.png"
    argv = ["--model", str(checkpoint), "--token-merge-r", "2", "--images", "2", "--scale", "1"]
    assert run_cli("kept-tokens", *argv, "--output", str(output)) == 0
    assert Image.open(output).size == (5 * 32 + 6 * 4, 14 + 2 * 32 + 3 * 4)


def test_kept_tokens_of_a_merging_model_without_pruning_layers_show_the_groups_alone(tmp_path):
    folder = tmp_path / "model"
    tiny_model(token_prune_layers=[], token_merge_r=8, num_labels=10).save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    output = tmp_path / "grid.png"
    assert run_cli("kept-tokens", "--model", str(folder), "--images", "2", "--scale", "1", "--output", str(output)) == 0
    assert Image.open(output).size == (2 * 32 + 3 * 4, 14 + 2 * 32 + 3 * 4)


# -- operating-points command ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def operating_points(checkpoint, tmp_path_factory):
    folder = tmp_path_factory.mktemp("points")
    argv = ["operating-points", "--model", str(checkpoint), "--keep-rates", "1.0", "0.7", "0.5"]
    argv += ["--max-examples", str(NUM_EXAMPLES), "--batch-size", "8", "--repeats", "1", "--warmup", "0"]
    assert run_cli(*argv, "--device", "cpu", "--output", str(folder / "curve.png")) == 0
    return folder


def test_operating_points_writes_a_png_and_one_json_entry_per_keep_rate(operating_points):
    with Image.open(operating_points / "curve.png") as image:
        assert image.format == "PNG" and image.size[0] > 100
    report = json.loads((operating_points / "curve.json").read_text())
    assert [point["token_keep_rate"] for point in report["points"]] == [1.0, 0.7, 0.5]
    assert report["num_examples"] == NUM_EXAMPLES and report["batch_size"] == 8
    for point in report["points"]:
        assert point["images_per_second"] > 0 and 0 <= point["accuracy"] <= point["top5_accuracy"] <= 1
    assert report["environment"]["torch"] == torch.__version__ and report["environment"]["device"] == "cpu"
    limits = [point["flops_speedup_limit"] for point in report["points"]]
    assert limits[0] == 1.0 and limits[0] < limits[1] < limits[2]


def test_keep_rate_one_has_the_accuracy_of_dense_vit_on_the_same_weights(operating_points, checkpoint):
    report = json.loads((operating_points / "curve.json").read_text())
    validation = load_digits_dataset(image_size=32)["validation"].select(range(NUM_EXAMPLES))
    processor = ViTImageProcessorPil(size={"height": 32, "width": 32})
    pixel_values = processor([image.convert("RGB") for image in validation["image"]], return_tensors="pt")
    vit = ViTForImageClassification.from_pretrained(checkpoint).eval()  # transformers' own ViT, no sparsity code
    with torch.no_grad():
        predictions = vit(**pixel_values).logits.argmax(-1)
    dense_accuracy = float((predictions == torch.tensor(list(validation["label"]))).float().mean())
    assert report["points"][0]["accuracy"] == pytest.approx(dense_accuracy)
    # Meaningful only if the keep rate changes predictions: otherwise any rate would pass the check above.
    assert len({point["accuracy"] for point in report["points"]}) > 1


def attention_rates(model, keep_rates, **kwargs) -> list[float]:
    """The attention keep rate each measured point used."""
    labels = torch.zeros(4, dtype=torch.long)
    points = measure_operating_points(model, images(4), labels, keep_rates, repeats=1, warmup=0, **kwargs)
    return [point["attention_keep_rate"] for point in points]


def test_a_dense_sparse_checkpoint_is_dense_at_keep_one_and_sparse_elsewhere():
    model = tiny_model(token_keep_rate=0.5, attention_keep_rate=0.6)
    model.config.dense_sparse_keep_rates = [1.0, 0.5]
    assert attention_rates(model, [1.0, 0.7, 0.5]) == [1.0, 0.6, 0.6]
    assert model.config.attention_keep_rate == 0.6  # the checkpoint's own setting is restored


def test_other_checkpoints_keep_their_attention_rate_at_every_point():
    assert attention_rates(tiny_model(token_keep_rate=0.5, attention_keep_rate=0.6), [1.0, 0.5]) == [0.6, 0.6]


def test_an_explicit_attention_rate_wins_at_every_point_of_a_dense_sparse_checkpoint():
    model = tiny_model(token_keep_rate=0.5, attention_keep_rate=0.6)
    model.config.dense_sparse_keep_rates = [1.0, 0.5]
    assert attention_rates(model, [1.0, 0.5], attention_keep_rate=0.8) == [0.8, 0.8]


def saved_checkpoint(folder, dense_sparse_keep_rates=None):
    model = tiny_model(token_keep_rate=0.5, attention_keep_rate=0.6, num_labels=10)
    model.config.dense_sparse_keep_rates = dense_sparse_keep_rates
    model.save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    ("trained_rates", "expected"),
    [([0.5, 1.0], [(1.0, 1.0), (0.5, 0.6)]), (None, [(rate, 0.6) for rate in DEFAULT_KEEP_RATES])],
)
def test_default_keep_rates_are_those_a_dense_sparse_checkpoint_was_trained_for(tmp_path, trained_rates, expected):
    folder = saved_checkpoint(tmp_path / "model", trained_rates)
    argv = ["operating-points", "--model", str(folder), "--max-examples", "4", "--batch-size", "4", "--repeats", "1"]
    assert run_cli(*argv, "--warmup", "0", "--device", "cpu", "--output", str(tmp_path / "curve.png")) == 0
    points = json.loads((tmp_path / "curve.json").read_text())["points"]
    assert [(point["token_keep_rate"], point["attention_keep_rate"]) for point in points] == expected


# -- usage errors ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["kept-tokens", "--images", "0"], "--images must be in [1, 64]"),
        (["kept-tokens", "--scale", "x"], "--scale must be an integer"),
        (["kept-tokens", "--output", "grid.jpg"], "--output must be a .png file"),
        (["kept-tokens", "--data", "imagefolder"], "--data imagefolder needs --data-dir"),
        (["kept-tokens", "--split", "test"], "--split 'test' is not in the data"),
        (["kept-tokens", "--token-keep-mass", "0"], "--token-keep-mass must be a number in (0, 1]"),
        (["kept-tokens", "--token-keep-mass", "0.5"], "--token-keep-mass applies to the adaptive selector"),
        (["kept-tokens", "--token-merge-r", "-1"], "--token-merge-r must be in [0, 1024]"),
        (["kept-tokens", "--token-merge-r", "40"], "--token-merge-r 40 with --model"),
        (["operating-points", "--keep-rates", "1.0", "1.5"], "--keep-rates must be a number in (0, 1]"),
        (["operating-points", "--keep-rates", "0.5", "0.5"], "--keep-rates must be distinct"),
    ],
)
def test_bad_arguments_exit_2_with_a_message_naming_the_argument(checkpoint, tmp_path, capsys, argv, message):
    command, options = argv[0], argv[1:]
    defaults = {"--model": str(checkpoint), "--output": str(tmp_path / "out.png")}
    for flag, value in defaults.items():
        if flag not in options:
            options += [flag, value]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(command, *options)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_folder_without_an_image_processor_is_a_usage_error(tmp_path, capsys):
    tiny_model().save_pretrained(tmp_path / "bare")
    with pytest.raises(SystemExit) as exit_info:
        run_cli("kept-tokens", "--model", str(tmp_path / "bare"), "--output", str(tmp_path / "grid.png"))
    assert exit_info.value.code == 2
    assert "has no preprocessor_config.json" in capsys.readouterr().err


def test_missing_model_folder_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli("kept-tokens", "--model", str(tmp_path / "nowhere"), "--output", str(tmp_path / "grid.png"))
    assert exit_info.value.code == 2
    assert "--model must be a saved checkpoint folder" in capsys.readouterr().err


def test_operating_points_without_matplotlib_asks_for_the_viz_extra(checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib...` raise ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(SystemExit) as exit_info:
        run_cli("operating-points", "--model", str(checkpoint), "--output", str(tmp_path / "curve.png"))
    assert exit_info.value.code == 2
    assert "pip install 'hf-trilevel[viz]'" in capsys.readouterr().err
    assert not (tmp_path / "curve.png").exists()
