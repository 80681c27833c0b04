"""Token dropping by the model's own ranking against dropping at random, off the shelf: is the ranking better than
chance?

Every saved digits folder (of any family) is evaluated at each `--keep-rates` rate twice, at the model's pruning
layers: with its ranking (`token_selector="class_attention"`: the class token's attention, DeiT's two prefix rows,
SigLIP's mean query) and with a random one (a `TokenSelector` registered here as "random": the same number of tokens,
chosen uniformly with a fixed seed, so the two differ only in which tokens stay). Prints top-1 accuracy on the 360
digits validation images, mean ± sd over the folders and per folder.

    python examples/compare_random_dropping.py runs/dense_s0 runs/dense_s1 runs/dense_s2 --keep-rates 0.7 0.5 0.3
"""

import argparse
import statistics

import torch
from transformers import AutoImageProcessor, AutoModelForImageClassification  # hf_trilevel registers every family

from hf_trilevel import TokenSelection, TokenSelector, register_token_selector
from hf_trilevel.cli.visualize.inputs import preprocess
from hf_trilevel.image_data import load_digits_dataset
from hf_trilevel.modeling.token_reduction import num_kept_tokens
from hf_trilevel.modeling.value_checks import as_pair


class RandomSelector(TokenSelector):
    """Keeps `ceil(n * keep_rate)` patch tokens chosen at random (seeded by the layer's token count, so every run and
    every image batch draws the same way); the chance baseline of a ranking."""

    def forward(
        self, hidden_states, query, key, patch_positions, attention_mask, *, keep_rate, fusion, scaling, **settings
    ):
        num_patches = patch_positions.shape[1]
        num_keep = num_kept_tokens(num_patches, keep_rate)
        if num_keep >= num_patches:
            return None
        generator = torch.Generator().manual_seed(1234 + num_patches)
        noise = torch.rand(patch_positions.shape, generator=generator).to(patch_positions.device)
        return TokenSelection(patch_index=noise.topk(num_keep, dim=1).indices.sort(dim=1).values)


def accuracy(folder: str, selector: str, keep_rate: float) -> float:
    """Top-1 accuracy (%) of `folder`'s classifier on the digits validation images at `keep_rate` with `selector`."""
    model = AutoModelForImageClassification.from_pretrained(
        folder, token_selector=selector, token_keep_rate=keep_rate
    ).eval()
    validation = load_digits_dataset(max(as_pair(model.config.image_size)))["validation"]
    pixel_values = preprocess(AutoImageProcessor.from_pretrained(folder), list(validation["image"]), model.config)
    with torch.inference_mode():
        logits = torch.cat([model(pixel_values=batch).logits for batch in pixel_values.split(120)])
    return 100 * (logits.argmax(-1) == torch.tensor(list(validation["label"]))).float().mean().item()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="saved TriLevel digits folders (e.g. the example's --output_dir)")
    parser.add_argument("--keep-rates", nargs="+", type=float, default=[0.9, 0.7, 0.5, 0.3])
    args = parser.parse_args(argv)
    register_token_selector("random", RandomSelector, overwrite=True)
    print("| selector | keep rate | accuracy % | per folder |\n|---|---:|---:|---|")
    for selector in ("class_attention", "random"):
        for rate in args.keep_rates:
            scores = [accuracy(folder, selector, rate) for folder in args.folders]
            spread = f" ± {statistics.stdev(scores):.2f}" if len(scores) > 1 else ""
            per_folder = " / ".join(f"{score:.2f}" for score in scores)
            print(f"| {selector} | {rate:g} | {statistics.mean(scores):.2f}{spread} | {per_folder} |", flush=True)


if __name__ == "__main__":
    main()
