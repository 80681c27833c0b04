"""Run by tests/test_example_distributed.py under `accelerate launch --multi_gpu --num_processes 2`: train with
`examples/run_image_classification.py` and write, per rank, how the Trainer was distributed and which examples each
epoch kept (the digests `ExamplePruning` logs), so the test can compare the ranks."""

import importlib.util
import json
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "run_image_classification.py"


def load_example():
    spec = importlib.util.spec_from_file_location("run_image_classification", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(report_dir: str, argv: list[str]) -> None:
    example = load_example()
    succeeded = False
    try:
        trainer, _ = example.main(argv)
        args = trainer.args
        logged = trainer.state.log_history
        report = {
            "world_size": args.world_size,
            "parallel_mode": str(args.parallel_mode),
            "use_cpu": args.use_cpu,
            "digests": [entry["example_pruning/digest"] for entry in logged if "example_pruning/digest" in entry],
            "kept": [entry["example_pruning/kept"] for entry in logged if "example_pruning/kept" in entry],
            "global_step": trainer.state.global_step,
            "max_steps": trainer.state.max_steps,
        }
        Path(report_dir, f"rank{args.process_index}.json").write_text(json.dumps(report))
        succeeded = True
    finally:
        example.end_distributed(wait_for_all=succeeded)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
