"""Validation accuracy of saved digits checkpoints at several token keep rates, one set of weights per folder.

How docs/benchmarks.md compares a dense/sparse checkpoint with single-rate ones away from their own rate. Every
folder is evaluated at each rate with `hf_trilevel.operating_point`: keep 1.0 is the dense model (full attention
too), lower rates keep the folder's own `attention_keep_rate`. Accuracy only, on the 360 digits validation images
the example trains against (the same split); `hf-trilevel visualize operating-points` adds measured throughput.

    python examples/evaluate_keep_rates.py outputs/run-a outputs/run-b --keep-rates 1.0 0.7 0.5 0.3 --json out.json
"""

import argparse
import json
from pathlib import Path

import torch
from transformers import AutoImageProcessor

from hf_trilevel import TriLevelViTForImageClassification, operating_point
from hf_trilevel.cli.visualize.inputs import preprocess
from hf_trilevel.image_data import load_digits_dataset
from hf_trilevel.modeling.value_checks import as_pair, check_keep_rate


def accuracy_by_rate(folder: str, keep_rates: list[float], batch_size: int = 256) -> dict[str, float]:
    """`{rate: top-1 accuracy}` of one saved folder on the digits validation split."""
    model = TriLevelViTForImageClassification.from_pretrained(folder).eval()
    validation = load_digits_dataset(max(as_pair(model.config.image_size)))["validation"]
    pixel_values = preprocess(AutoImageProcessor.from_pretrained(folder), list(validation["image"]), model.config)
    labels = torch.tensor(list(validation["label"]))
    accuracies = {}
    for rate in keep_rates:
        with torch.inference_mode(), model.keep_rates(*operating_point(model.config, rate)):
            logits = torch.cat([model(pixel_values=batch).logits for batch in pixel_values.split(batch_size)])
        accuracies[f"{rate:g}"] = (logits.argmax(-1) == labels).float().mean().item()
    return accuracies


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", help="saved TriLevel folders (e.g. the example's --output_dir)")
    parser.add_argument("--keep-rates", type=float, nargs="+", default=[1.0, 0.7, 0.5, 0.3], metavar="RATE")
    parser.add_argument("--json", help="also write the accuracies here")
    args = parser.parse_args(argv)
    for rate in args.keep_rates:
        try:
            check_keep_rate("--keep-rates", rate)
        except ValueError as error:
            parser.error(str(error))
    results = {}
    for folder in args.folders:
        if not (Path(folder) / "config.json").is_file():
            parser.error(f"{folder} holds no saved model (config.json).")
        results[folder] = accuracy_by_rate(folder, args.keep_rates)
        print(folder, "  ".join(f"keep {rate}: {100 * value:.2f}%" for rate, value in results[folder].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
