"""Training time and accuracy on the bundled digits: dense vs example pruning, with and without token sparsity.

    python examples/benchmark_digits_training.py --seeds 0 1 2 --output outputs/digits-sweep

Runs `examples/run_image_classification.py` once per setting and seed, in sequence (one run at a time, so runs do
not compete for cores), with the example's default recipe and no per-epoch evaluation, so `train_runtime` is
training alone. Prints a markdown table of mean accuracy and training time per setting and writes every run's
numbers to `<output>/results.json`.
"""

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).with_name("run_image_classification.py")
TOKENS_OFF = ["--token_keep_rate", "1", "--attention_keep_rate", "1"]
SETTINGS = {
    "dense": TOKENS_OFF,
    "forgetting 0.8": [*TOKENS_OFF, "--example_pruning", "forgetting"],
    "loss (InfoBatch-style)": [*TOKENS_OFF, "--example_pruning", "loss"],
    "tokens 0.7 + attention 0.5": [],
    "tokens + forgetting 0.8": ["--example_pruning", "forgetting"],
    "tokens + loss": ["--example_pruning", "loss"],
}


def run(name: str, seed: int, output: Path) -> dict:
    folder = output / f"{name.split()[0]}-{abs(hash(name)) % 10_000}-seed{seed}"
    command = [sys.executable, str(EXAMPLE), *SETTINGS[name], "--seed", str(seed), "--output_dir", str(folder)]
    command += ["--eval_strategy", "no", "--disable_tqdm", "True", "--overwrite_output_dir"]  # reruns replace runs
    subprocess.run(command, check=True, capture_output=True, text=True)
    train = json.loads((folder / "train_results.json").read_text())
    evaluation = json.loads((folder / "eval_results.json").read_text())
    return {
        "setting": name,
        "seed": seed,
        "accuracy": evaluation["eval_accuracy"],
        "train_runtime": train["train_runtime"],
        "example_fraction_seen": train.get("example_fraction_seen", 1.0),
        "command": " ".join(command[1:]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--output", type=Path, default=Path("outputs/digits-sweep"))
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in args.seeds:  # seeds outermost: drift in machine speed spreads over all settings
        for name in args.settings:
            results.append(run(name, seed, args.output))
            print(json.dumps(results[-1]), flush=True)
            (args.output / "results.json").write_text(json.dumps(results, indent=2))

    dense_time = statistics.mean(r["train_runtime"] for r in results if r["setting"] == "dense")
    print("\n| setting | data seen | accuracy (mean ± sd) | train time (mean) | speedup |")
    print("|---|---:|---:|---:|---:|")
    for name in args.settings:
        runs = [r for r in results if r["setting"] == name]
        accuracy = [100 * r["accuracy"] for r in runs]
        spread = statistics.stdev(accuracy) if len(accuracy) > 1 else 0.0
        time = statistics.mean(r["train_runtime"] for r in runs)
        print(
            f"| {name} | {runs[0]['example_fraction_seen']:.0%} | {statistics.mean(accuracy):.2f}% ± {spread:.2f} "
            f"| {time:.1f} s | {dense_time / time:.2f}x |"
        )


if __name__ == "__main__":
    main()
