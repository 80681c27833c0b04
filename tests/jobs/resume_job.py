"""Run by tests/test_resume_matrix.py and tests/test_resume_processes.py: train with
`examples/run_image_classification.py`, optionally die by SIGKILL at a chosen moment, and write what the run did.

Two modes:

* `python resume_job.py PLAN.json [PLAN.json ...]` runs each plan's runs one after another (the plans side by
  side), each run in a child forked from this process once the example (torch, transformers, datasets: about 10 s
  of imports) is loaded. A child is as fresh as a
  new process for training purposes (it starts from imports only: the example's `main` seeds and builds
  everything), and a kill is a real SIGKILL of that child, so a plan of ten runs costs one start-up instead of ten.
  The plan is `{"runs": [{"name", "argv", "kill", "result", "copy"?}, ...], "status": PATH}` (`copy`: a
  `[source, destination]` folder copied first); the status file gets, per run,
  its exit code (`-9`: killed) and the files of every `checkpoint-*` folder right after the run, so a test can
  check that the kill left the checkpoint it meant to (an incomplete one, say).
* `python resume_job.py --run RUN.json` runs one run in this process: what `accelerate launch` starts on every rank.
  `{rank}` in the result path becomes the process index.

A run is the example's own `main(argv)`, with the job's `KillingTrainer` (a `TriLevelTrainer` that adds the job's
`KillCallback`) put in through the loaded example module's name, so the resumed runs go through the script's whole path
(`--resume_from_checkpoint latest` resolution, training, final save). Kill points (`kill`):

* `{"at": "step_end", "step": N}`: at `on_step_end` of global step N, before that step's checkpoint (mid-epoch).
* `{"at": "epoch_end", "epoch": E}`: at `on_epoch_end` of epoch E, after the epoch's last checkpoint.
* `{"at": "after_weights", "step": N}`: inside checkpoint N's save, right after `save_model` (weights, config,
  processor, and whatever the trainer writes there): no optimizer, RNG or `trainer_state.json` yet.
* `{"at": "after_optimizer", "step": N}`: inside checkpoint N's save, after the optimizer and scheduler, before
  the RNG state and `trainer_state.json`.
* `{"at": "after_trainer_state", "step": N}`: right after checkpoint N's `trainer_state.json` is written, before
  transformers rotates older checkpoints (`save_total_limit`).
* `{"at": "on_save", "step": N}`: at `on_save` of checkpoint N, after the whole save, rotation included.
* `{"at": "timer", "delay": SECONDS}`: a thread kills the run SECONDS after the first checkpoint is complete (use
  with `--save_steps 1`, so the kill lands in or near some save, wherever that is).

The result (JSON): the Trainer's `log_history`, `global_step`, `max_steps`, the train metrics the script returned,
and the example-pruning sizes; the final weights are the `model.safetensors` the script saves in `--output_dir`.
"""

import json
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from example_ranks import load_example  # the sibling job: this folder is on sys.path when a job runs


def die() -> None:
    """A hard kill: no `finally`, no atexit, no flush of anything the Trainer has not written yet."""
    os.kill(os.getpid(), signal.SIGKILL)


def install_kill(example, kill: dict | None) -> None:
    """Put the kill point into the loaded example module: its trainer class, which adds the kill callback."""
    from transformers import TrainerCallback, TrainerState

    base = example.TriLevelTrainer
    at = None if kill is None else kill["at"]

    class KillingTrainer(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(KillCallback())  # after the techniques, as the last callback

        def save_model(self, output_dir=None, _internal_call=False):
            super().save_model(output_dir, _internal_call=_internal_call)
            if at == "after_weights" and _internal_call and self.state.global_step == kill["step"]:
                die()

        def _save_rng_state(self, output_dir):
            if at == "after_optimizer" and self.state.global_step == kill["step"]:
                die()
            return super()._save_rng_state(output_dir)

    class KillCallback(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if at == "step_end" and state.global_step == kill["step"]:
                die()
            if at == "after_trainer_state" and state.global_step == kill["step"]:
                # This step's checkpoint writes its trainer_state.json through this object: die right after.
                def save_then_die(json_path, state=state):
                    TrainerState.save_to_json(state, json_path)
                    if Path(json_path).name == "trainer_state.json" and "checkpoint-" in str(json_path):
                        die()

                state.save_to_json = save_then_die

        def on_epoch_end(self, args, state, control, **kwargs):
            if at == "epoch_end" and round(state.epoch) == kill["epoch"] + 1:
                die()

        def on_save(self, args, state, control, **kwargs):
            if at == "on_save" and state.global_step == kill["step"]:
                die()
            if at == "timer" and not hasattr(self, "_timer"):
                self._timer = threading.Timer(kill["delay"], die)
                self._timer.daemon = True
                self._timer.start()

    example.TriLevelTrainer = KillingTrainer


def report(trainer, metrics: dict) -> dict:
    pruner = next((t.pruner for t in trainer.techniques() if t.name == "example_pruning"), None)
    return {
        "log_history": trainer.state.log_history,
        "global_step": trainer.state.global_step,
        "max_steps": trainer.state.max_steps,
        "world_size": trainer.args.world_size,
        "metrics": {key: value for key, value in metrics.items() if isinstance(value, (int, float, str))},
        "sizes": list(pruner.sizes) if pruner is not None else None,
    }


def run_one(spec: dict) -> None:
    """One run in this process (the example's `main`, with the kill point), writing its result unless killed."""
    example = load_example()
    install_kill(example, spec.get("kill"))
    succeeded = False
    try:
        trainer, metrics = example.main(spec["argv"])
        if spec.get("result"):
            path = Path(spec["result"].format(rank=trainer.args.process_index))
            path.write_text(json.dumps(report(trainer, metrics)))
        succeeded = True
    finally:
        example.end_distributed(wait_for_all=succeeded)


def checkpoint_files(output_dir: Path) -> dict[str, list[str]]:
    if not output_dir.is_dir():
        return {}
    return {
        folder.name: sorted(path.name for path in folder.iterdir())
        for folder in sorted(output_dir.glob("checkpoint-*"))
        if folder.is_dir()
    }


def output_dir_of(argv: list[str]) -> Path:
    return Path(argv[argv.index("--output_dir") + 1])


def fork_run(spec: dict, log_path: Path) -> tuple[int, float]:
    """Run `spec` in a forked child with its output in `log_path`; its exit code (`-signal` when killed) and the
    CPU seconds it used."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the parent's code, never runs its atexit handlers
        code = 1
        try:
            with open(log_path, "w") as log:
                os.dup2(log.fileno(), 1)
                os.dup2(log.fileno(), 2)
            run_one(spec)
            code = 0
        except SystemExit as error:  # the script's usage errors (exit 2)
            code = error.code if isinstance(error.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status, usage = os.wait4(pid, 0)
    return os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime


def run_plan(plan_path: str) -> None:
    plan = json.loads(Path(plan_path).read_text())
    logs = Path(plan.get("logs", Path(plan_path).parent))
    status = {}
    for spec in plan["runs"]:
        if spec.get("copy") and Path(spec["copy"][0]).is_dir():  # absent when the run before it failed early
            shutil.copytree(*spec["copy"])
        started = time.perf_counter()
        code, cpu_seconds = fork_run(spec, logs / f"{spec['name']}.log")
        status[spec["name"]] = {
            "exit_code": code,
            "seconds": round(time.perf_counter() - started, 2),
            "cpu_seconds": round(cpu_seconds, 2),
            "checkpoints": checkpoint_files(output_dir_of(spec["argv"])),
        }
        Path(plan["status"]).write_text(json.dumps(status))


def run_plans(plan_paths: list[str]) -> int:
    """Every plan at once, each in its own forked runner (runs within a plan stay in order); 1 if one failed."""
    sys.stdout.flush()
    sys.stderr.flush()
    runners = []
    for plan_path in plan_paths:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                run_plan(plan_path)
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(code)
        runners.append(pid)
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in runners]
    return int(any(codes))


def main(argv: list[str]) -> int:
    # The example is imported once here, so every forked runner and run starts with the imports done.
    load_example()
    if argv[0] == "--run":
        run_one(json.loads(Path(argv[1]).read_text()))
        return 0
    return run_plans(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
