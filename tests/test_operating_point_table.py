"""`hf_trilevel.token_training.operating_points`: the table a dense/sparse run writes at its end, read back, shown as
markdown."""

import json

import pytest
import torch

from hf_trilevel.token_training.operating_points import (
    OPERATING_POINTS_FILE,
    measurement_setup,
    operating_points_markdown,
    read_operating_points,
    read_operating_points_report,
    write_operating_points,
)

from .helpers import images, tiny_model

NUM_EXAMPLES = 12


def validation_split(num_examples: int = NUM_EXAMPLES) -> list[dict]:
    """What the example's validation split yields per item: a tensor `pixel_values` and an int `labels`."""
    pixel_values = images(num_examples, seed=3)
    return [{"pixel_values": pixel_values[index], "labels": index % 5} for index in range(num_examples)]


def dense_sparse_model():
    """A tiny model recorded as trained for keep rates 1.0 and 0.5, with sparse attention at its sparse points."""
    model = tiny_model(token_keep_rate=0.5, attention_keep_rate=0.6, initializer_range=1.0)
    model.config.dense_sparse_keep_rates = [1.0, 0.5]
    return model


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    model = dense_sparse_model().train()  # as the trainer leaves it
    points = write_operating_points(model, validation_split(), folder, batch_size=5, repeats=1, warmup=0)
    return model, points, folder


def test_the_table_is_written_into_the_folder_and_read_back_unchanged(written):
    _, points, folder = written
    assert (folder / OPERATING_POINTS_FILE).is_file()
    assert read_operating_points(folder) == json.loads(json.dumps(points))
    report = read_operating_points_report(folder)
    assert report["num_examples"] == NUM_EXAMPLES and report["batch_size"] == 5 and report["repeats"] == 1
    assert report["environment"]["device"] == "cpu" and report["environment"]["torch"] == torch.__version__


def test_default_rates_are_the_trained_ones_each_at_its_operating_point(written):
    _, points, _ = written
    assert [point["token_keep_rate"] for point in points] == [1.0, 0.5]
    assert [point["attention_keep_rate"] for point in points] == [1.0, 0.6]  # keep 1.0 is dense, as trained
    assert points[0]["flops_speedup_limit"] == 1.0 < points[1]["flops_speedup_limit"]
    assert all(point["images_per_second"] > 0 for point in points)


def test_accuracy_at_each_point_is_the_models_accuracy_on_the_whole_split(written):
    model, points, _ = written
    split = validation_split()
    pixel_values = torch.stack([item["pixel_values"] for item in split])
    labels = torch.tensor([item["labels"] for item in split])
    for point in points:
        with torch.no_grad(), model.keep_rates(point["token_keep_rate"], point["attention_keep_rate"]):
            model.eval()
            accuracy = float((model(pixel_values=pixel_values).logits.argmax(-1) == labels).float().mean())
        assert point["accuracy"] == pytest.approx(accuracy)
    model.train()


def test_the_model_is_handed_back_in_the_mode_it_came_in(written):
    model, _, _ = written
    assert model.training


def test_explicit_rates_and_a_collator_replace_the_defaults(tmp_path):
    seen = []

    def gather(items):
        seen.append(len(items))
        return {"pixel_values": torch.stack([item["pixel_values"] for item in items]), "labels": [0] * len(items)}

    points = write_operating_points(
        dense_sparse_model(), validation_split(6), tmp_path, keep_rates=[0.7], repeats=1, warmup=0, gather=gather
    )
    assert seen == [6]
    assert [(point["token_keep_rate"], point["attention_keep_rate"]) for point in points] == [(0.7, 0.6)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"keep_rates": None}, "`keep_rates` is None and the model's config has no `dense_sparse_keep_rates`"),
        ({"keep_rates": [0.5, 0.5]}, "`keep_rates` must be distinct"),
        ({"keep_rates": [1.5]}, "`keep_rates\\[0\\]` must be in \\(0, 1\\]"),
        ({"keep_rates": [1.0], "batch_size": 0}, "`batch_size`"),
        ({"keep_rates": [1.0], "dataset": []}, "`dataset` must be a non-empty"),
    ],
)
def test_bad_arguments_raise_errors_naming_them(tmp_path, kwargs, message):
    arguments = {"dataset": validation_split(2), **kwargs}
    with pytest.raises(ValueError, match=message):
        write_operating_points(tiny_model(), arguments.pop("dataset"), tmp_path, repeats=1, warmup=0, **arguments)
    assert not (tmp_path / OPERATING_POINTS_FILE).exists()


def test_a_folder_without_the_file_has_no_table_and_a_malformed_file_is_refused(tmp_path):
    assert read_operating_points(tmp_path) is None
    (tmp_path / OPERATING_POINTS_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="is not JSON"):
        read_operating_points(tmp_path)
    (tmp_path / OPERATING_POINTS_FILE).write_text(json.dumps({"points": []}))
    with pytest.raises(ValueError, match="must hold a `points` list"):
        read_operating_points(tmp_path)


POINTS = [
    {"token_keep_rate": 1.0, "attention_keep_rate": 1.0, "accuracy": 0.8125, "images_per_second": 1000.0,
     "flops_speedup_limit": 1.0},
    {"token_keep_rate": 0.7, "attention_keep_rate": 0.5, "accuracy": 0.8, "images_per_second": 1500.0,
     "flops_speedup_limit": 1.62},
    {"token_keep_rate": 0.25, "attention_keep_rate": 0.5, "accuracy": 0.5, "images_per_second": 2250.5,
     "flops_speedup_limit": 3.0},
]  # fmt: skip


def test_markdown_table_has_one_row_per_rate_in_order_with_the_speed_against_keep_one():
    lines = operating_points_markdown(POINTS).splitlines()
    assert (
        lines[0] == "| keep rate | attention keep rate | top-1 accuracy | images/s | speed vs keep 1.0 | FLOPs limit |"
    )
    assert lines[1] == "|---|---:|---:|---:|---:|---:|"
    assert lines[2:] == [
        "| 1.0 | 1.0 | 81.25% | 1,000.0 | 1.00x | 1.00x |",
        "| 0.7 | 0.5 | 80.00% | 1,500.0 | 1.50x | 1.62x |",
        "| 0.25 | 0.5 | 50.00% | 2,250.5 | 2.25x | 3.00x |",
    ]


def test_without_a_point_at_keep_one_there_is_no_speed_column_and_missing_numbers_read_na():
    lines = operating_points_markdown([{"token_keep_rate": 0.5, "images_per_second": 10.0}]).splitlines()
    assert lines[0] == "| keep rate | attention keep rate | top-1 accuracy | images/s | FLOPs limit |"
    assert lines[2] == "| 0.5 | n/a | n/a | 10.0 | n/a |"
    with pytest.raises(ValueError, match="`points` must be a non-empty list"):
        operating_points_markdown([])


def test_the_setup_names_the_device_the_batch_and_the_rounds():
    cpu = {"environment": {"device": "cpu", "processor": "x86_64", "threads": 1}, "batch_size": 64, "repeats": 5}
    assert measurement_setup(cpu) == "CPU (x86_64, 1 thread), batches of 64 images, the median of 5 timed rounds"
    gpu = {"environment": {"device": "NVIDIA H200", "processor": "x86_64", "threads": 16}, "batch_size": 1}
    assert measurement_setup(gpu) == "NVIDIA H200, batches of 1 image"
