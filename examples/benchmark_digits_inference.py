"""Inference speed and accuracy of trained folders on the real digits validation images, against dense ViT.

    python examples/benchmark_digits_inference.py outputs/fixed outputs/adaptive \
        'outputs/adaptive:{"token_keep_mass": 0.88}' --repeats 15 --json selectors.json

`hf-trilevel bench` times seeded noise images, on which a trained adaptive selector keeps counts unlike those it
keeps on real images. This script times each `FOLDER[:JSON overrides]` (any `from_pretrained` keyword, e.g. the
adaptive `token_keep_mass` or `attention_keep_rate`) on the 360 digits validation images, interleaved with a dense
transformers `ViTForImageClassification` of the same shape: every model runs once per round, in batches of
`--batch-size`, and the median round gives images/s and the speedup over dense (`--training`: forward and
backward in train mode, as a training step computes them without the optimizer). Beside each it prints the accuracy,
the mean patch tokens kept after each pruning layer and the FLOPs limit from those measured counts
(`hf_trilevel.evaluation.flops.measured_flops`), against the full-width dense model even for a slimmed folder
(`hf-trilevel slim`).
"""

import argparse
import json
import statistics
import time

import torch
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

from hf_trilevel import TriLevelViTForImageClassification
from hf_trilevel.evaluation.flops import dense_config, forward_flops, full_width_config, measured_flops
from hf_trilevel.image_data import load_digits_dataset
from hf_trilevel.image_data.preprocessing import preprocess
from hf_trilevel.image_data.transforms import eval_transforms
from hf_trilevel.modeling.value_checks import as_pair

SHAPE_FIELDS = ("image_size", "patch_size", "hidden_size", "num_hidden_layers", "num_attention_heads")
DENSE = "dense ViT"


def parse_spec(spec: str) -> tuple[str, dict]:
    """`FOLDER` or `FOLDER:{"field": value}` -> (folder, overrides)."""
    folder, _, overrides = spec.partition(":")
    return folder, json.loads(overrides) if overrides else {}


def validation_images(folder: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The digits validation split as the folder's image processor prepares it: `(pixel_values, labels)`."""
    processor = ViTImageProcessorPil.from_pretrained(folder)
    size = as_pair(TriLevelViTForImageClassification.config_class.from_pretrained(folder).image_size)
    split = load_digits_dataset(image_size=size[0])["validation"]
    batch = preprocess(split[:], eval_transforms(size), processor)
    return batch["pixel_values"], torch.tensor(batch["labels"])


def describe(model, pixel_values: torch.Tensor, labels: torch.Tensor) -> dict:
    """Accuracy, mean kept tokens per pruning layer and the FLOPs limit of one untimed pass."""
    with torch.no_grad():
        outputs = model(pixel_values, output_kept_token_indices=True)
    flops = measured_flops(model.config, outputs.kept_token_counts)
    # Against the full-width dense ViT it is timed beside: a slimmed folder's removed heads and neurons count as saved.
    dense_flops = forward_flops(dense_config(full_width_config(model.config)))
    return {
        "accuracy": round(100 * (outputs.logits.argmax(-1) == labels).float().mean().item(), 2),
        "mean_kept_tokens": [round(counts.float().mean().item(), 2) for counts in outputs.kept_token_counts],
        "flops_speedup_limit": round(dense_flops / flops.flops_per_image, 3),
    }


def run_pass(model, batches: list[torch.Tensor], labels: list[torch.Tensor] | None) -> None:
    """One pass over `batches`: inference without gradients, or (with labels) forward and backward in train mode."""
    if labels is None:
        with torch.no_grad():
            for batch in batches:
                model(batch)
        return
    for batch, batch_labels in zip(batches, labels, strict=True):
        model(batch, labels=batch_labels).loss.backward()
    model.zero_grad(set_to_none=True)


def time_rounds(
    models: dict, batches: list[torch.Tensor], repeats: int, labels: list[torch.Tensor] | None = None
) -> dict[str, list[float]]:
    """Seconds per pass over `batches` for every model, interleaved: each round runs each model once."""
    times = {name: [] for name in models}
    for model in models.values():  # warm-up
        model.train(labels is not None)
        run_pass(model, batches, labels)
    for _ in range(repeats):
        for name, model in models.items():
            start = time.perf_counter()
            run_pass(model, batches, labels)
            times[name].append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "folders", nargs="+", help='FOLDER or FOLDER:{"token_keep_mass": 0.9} (from_pretrained keywords)'
    )
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds (median reported)")
    parser.add_argument("--batch-size", type=int, default=120)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", default=None, help="write the rows to this file")
    parser.add_argument(
        "--training", action="store_true", help="time forward + backward in train mode instead of inference"
    )
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.batch_size < 1:
        parser.error("--repeats and --batch-size must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)

    specs = [parse_spec(spec) for spec in args.folders]
    pixel_values, labels = validation_images(specs[0][0])
    models, rows = {}, {}
    for spec, (folder, overrides) in zip(args.folders, specs, strict=True):
        model = TriLevelViTForImageClassification.from_pretrained(folder, **overrides).eval()
        models[spec], rows[spec] = model, describe(model, pixel_values, labels)
    config = next(iter(models.values())).config
    dense_shape = {name: getattr(config, name) for name in SHAPE_FIELDS}
    dense_shape.update(intermediate_size=config.intermediate_size, num_labels=config.num_labels)
    models[DENSE] = ViTForImageClassification(ViTConfig(**dense_shape)).eval()

    labels_per_batch = list(labels.split(args.batch_size)) if args.training else None
    times = time_rounds(models, list(pixel_values.split(args.batch_size)), args.repeats, labels_per_batch)
    dense = statistics.median(times[DENSE])
    results = []
    for name, seconds in times.items():
        median = statistics.median(seconds)
        results.append(
            {
                "model": name,
                **rows.get(name, {}),
                "images_per_second": round(len(pixel_values) / median, 1),
                "speedup": round(dense / median, 3),
            }
        )
        print(json.dumps(results[-1]))
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"arguments": vars(args), "threads": torch.get_num_threads(), "rows": results}, file, indent=2)
    return results


if __name__ == "__main__":
    main()
