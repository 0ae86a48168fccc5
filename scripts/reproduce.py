"""Reproduce the talk's table: optimizers x tasks x seeds through run_glue.py and run_clm.py.

    python scripts/reproduce.py --suite demo                     # SaLSa vs AdamW on the main job, ~10 min
    python scripts/reproduce.py --suite lora                     # LoRA adapters: SaLSa vs AdamW 5e-5 and 2e-4
    python scripts/reproduce.py --suite offline                  # ~1 hour on 2 CPU cores
    python scripts/reproduce.py --suite offline --tasks mrpc --optimizers adam salsa --seeds 42 43
    python scripts/reproduce.py --suite paper --runs_dir runs/paper   # Hub models and data, for a GPU
    python scripts/reproduce.py --suite epochs --jobs 6          # one epoch of each shared GLUE file, for a GPU
    python scripts/reproduce.py --suite lab --optimizers salsa --seeds 0 1 2   # the optimizer lab (scripts/lab.py)

Each finished run leaves one JSON in RUNS_DIR/results (its log history, validation metrics, wall
time and the command that made it); a run whose JSON exists is skipped, so an interrupted grid
resumes where it stopped and loses at most the run in progress. A run that fails leaves a JSON with
status "failed" and its log's tail (delete the file to retry it). At the end the table and the
plots are written from whatever results exist (scripts/report.py; --report_only skips training).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
import report  # scripts/report.py (beside this one): the table and the plots

TASKS = ("mnli", "qnli", "mrpc", "sst2", "gpt2")
WARMUP_FRACTION = 0.1  # ADAM and SGD of the talk: 10% linear warm-up, then cosine decay to 0


def optimizer_settings(max_steps: int) -> dict[str, dict]:
    """Every optimizer of the grid as the script flags that select it (one setting for every task)."""
    warmup = max(1, round(WARMUP_FRACTION * max_steps))
    schedule = {"lr_scheduler_type": "cosine", "warmup_steps": warmup}
    return {
        # The talk's six columns.
        "adam": {"optim": "adamw_torch", "learning_rate": 2e-5, "weight_decay": 0.0, **schedule},
        "sgd": {"optim": "sgd", "learning_rate": 2e-3, **schedule},
        "sls": {"optim": "sls"},
        "sls_sgd": {"optim": "sls_sgd"},
        "salsa": {"optim": "salsa"},
        "salsa_sgd": {"optim": "salsa_sgd"},
        # What users pick instead: AdamW as the Trainer ships it (lr 5e-5, linear decay, no warm-up),
        # schedule-free AdamW at the Trainer's lr (it warms up inside; the Trainer's schedule must be
        # constant), Prodigy at lr 1 with the ADAM schedule, and the authors' SaLSa at its defaults.
        "adamw": {"optim": "adamw_torch"},
        "sf_adamw": {"optim": "schedule_free_adamw", "lr_scheduler_type": "constant", "warmup_steps": warmup},
        "prodigy": {"optim": "prodigy", "learning_rate": 1.0, **schedule},
        "salsa_authors": {"optim": "salsa_authors"},
        # AdamW at a rate typical of LoRA, which needs 10-100x full fine-tuning's (the Trainer's linear decay).
        "adamw_lora": {"optim": "adamw_torch", "learning_rate": 2e-4},
    }


OPTIMIZERS = tuple(optimizer_settings(100))
# The optimizers a suite runs when --optimizers is not given (offline and paper: the talk's grid).
SUITE_OPTIMIZERS = {"demo": ("salsa", "adamw"), "lora": ("salsa", "adamw", "adamw_lora"),
                    "epochs": ("salsa", "adamw", "adam"), "epochs_lora": ("salsa", "adamw", "adamw_lora")}
TALK_GRID = tuple(name for name in OPTIMIZERS if name != "adamw_lora")

# suite -> task -> (script, config, flags). The offline budget: 100 steps of batch 8 (length 64)
# per GLUE run, 100 steps of 4 x 64 tokens for GPT-2; 50 runs take about an hour on 2 cores.
OFFLINE_GLUE = {"max_steps": 100, "per_device_train_batch_size": 8, "max_seq_length": 64, "max_eval_samples": 256}
OFFLINE_GPT2 = {"max_steps": 100, "per_device_train_batch_size": 4, "block_size": 64, "max_eval_samples": 64}
# Paper: 5 epochs at batch 32 (as steps, so that warm-up is known in steps): GLUE train sizes / 32.
PAPER_STEPS = {"mnli": 5 * 12272, "qnli": 5 * 3274, "mrpc": 5 * 115, "sst2": 5 * 2105, "gpt2": 5000}
# Epochs: one pass over each shared GLUE train file (its rows: ../shared/data/README.md) at batch 32;
# the longest first, so that --jobs starts them first.
SHARED_TRAIN_ROWS = {"sst2": 67349, "qnli": 8999, "mnli": 8999, "mrpc": 3667}


def _one_epoch(task: str, **flags) -> tuple[str, str, dict]:
    rows = SHARED_TRAIN_ROWS[task]
    return ("run_glue.py", f"glue_configs/offline/{task}.json",
            {"max_steps": -(-rows // 32), "per_device_train_batch_size": 32, "max_train_samples": rows,
             "logging_steps": 10, **flags})


SUITES = {
    "offline": {
        task: ("run_clm.py" if task == "gpt2" else "run_glue.py", f"glue_configs/offline/{task}.json",
               {**(OFFLINE_GPT2 if task == "gpt2" else OFFLINE_GLUE), "logging_steps": 1})
        for task in TASKS
    },
    # The README's main job (SST2) with SaLSa and with AdamW at the Trainer's defaults, same batches.
    "demo": {"sst2": ("run_glue.py", "glue_configs/offline/sst2.json", {"max_steps": None, "logging_steps": 5})},
    # A LoRA adapter (peft's default targets, r 16) on the main job and on the GPT-2 preset.
    "lora": {
        "sst2": ("run_glue.py", "glue_configs/offline/sst2.json", {"max_steps": None, "logging_steps": 5, "use_peft": True}),
        "gpt2": ("run_clm.py", "glue_configs/offline/gpt2.json", {"max_steps": None, "logging_steps": 5, "use_peft": True}),
    },
    # The lab's MiniLM and LoRA workloads for a whole epoch of the shared files (a GPU's hour, or minutes).
    "epochs": {task: _one_epoch(task) for task in SHARED_TRAIN_ROWS},
    "epochs_lora": {task: _one_epoch(task, use_peft=True) for task in ("sst2", "qnli")},
    "paper": {
        task: ("run_clm.py" if task == "gpt2" else "run_glue.py", f"glue_configs/{task}.json",
               {"max_steps": PAPER_STEPS[task], "logging_steps": 10, "save_strategy": "no"})
        for task in TASKS
    },
}


def run_command(suite: str, task: str, optimizer: str, seed: int, output_dir: str,
                max_steps: int | None = None) -> list[str]:
    script, config, flags = SUITES[suite][task]
    max_steps = max_steps or flags["max_steps"] or json.loads((REPO / config).read_text())["max_steps"]
    flags = {**flags, "max_steps": max_steps}
    flags = {**flags, **optimizer_settings(flags["max_steps"])[optimizer], "seed": seed,
             "output_dir": output_dir, "save_strategy": "no", "report_to": "none", "disable_tqdm": True}
    return [sys.executable, f"scripts/{script}", config, *(f"--{k}={v}" for k, v in flags.items())]


def result_path(runs_dir: Path, task: str, optimizer: str, seed: int) -> Path:
    return runs_dir / "results" / f"{task}__{optimizer}__seed{seed}.json"


def run_one(suite: str, task: str, optimizer: str, seed: int, runs_dir: Path, max_steps: int | None = None) -> dict:
    """Train one cell of the grid in a scratch folder; keep the log and a JSON of what matters."""
    log_path = runs_dir / "logs" / f"{task}__{optimizer}__seed{seed}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="salsa-run-") as scratch:  # the saved model is not kept
        command = run_command(suite, task, optimizer, seed, scratch, max_steps)
        started = time.time()
        env = dict(os.environ)
        if suite != "paper":  # local models and data only
            env.setdefault("HF_HUB_OFFLINE", "1")
        with open(log_path, "w") as log:
            code = subprocess.call(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
        record = {"suite": suite, "task": task, "optimizer": optimizer, "seed": seed,
                  "command": " ".join(command[1:]).replace(scratch, "SCRATCH"), "process_seconds": time.time() - started}
        if code != 0:
            tail = log_path.read_text(errors="replace").splitlines()[-15:]
            return {**record, "status": "failed", "exit_code": code, "log_tail": tail}
        out = Path(scratch)
        history = json.loads((out / "trainer_state.json").read_text())["log_history"]
        train = json.loads((out / "train_results.json").read_text())
        evaluation = json.loads((out / "eval_results.json").read_text()) if (out / "eval_results.json").exists() else {}
        summary = json.loads((out / "summary.json").read_text())
    return {**record, "status": "ok", "train_runtime": train["train_runtime"], "eval": evaluation, "summary": summary,
            "log_history": [entry for entry in history if "loss" in entry]}


def write_atomically(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(record, indent=1, allow_nan=True))
    partial.replace(path)


def main(argv: list[str] | None = None) -> None:
    # --suite lab: the optimizer lab, in process, with its own flags (scripts/lab.py --help).
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--suite")
    known, rest = pre.parse_known_args(argv)
    if known.suite == "lab":
        import lab

        return lab.main(rest)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=(*SUITES, "lab"), default="offline",
                        help="offline, paper, demo, lora, or lab (the optimizer lab: see scripts/lab.py --help)")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=None, help="Default: the suite's tasks.")
    parser.add_argument("--optimizers", nargs="+", choices=OPTIMIZERS, default=None,
                        help="Default: the talk's grid (all but adamw_lora); salsa and adamw for --suite demo; "
                             "salsa, adamw and adamw_lora for --suite lora.")
    parser.add_argument("--seeds", nargs="+", type=int, default=[42])
    parser.add_argument("--max_steps", type=int, default=None, help="Steps per run, instead of the suite's budget.")
    parser.add_argument("--runs_dir", type=Path, default=None, help="Default: runs/<suite>.")
    parser.add_argument("--jobs", type=int, default=1, help="Cells trained at once, each in its own process.")
    parser.add_argument("--report_only", action="store_true", help="Write the table and plots from existing results.")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    runs_dir = args.runs_dir or REPO / "runs" / args.suite
    tasks = args.tasks or list(SUITES[args.suite])
    unknown = sorted(set(tasks) - set(SUITES[args.suite]))
    if unknown:
        parser.error(f"--suite {args.suite} has no tasks {unknown} (it has {', '.join(SUITES[args.suite])})")
    optimizers = args.optimizers or list(SUITE_OPTIMIZERS.get(args.suite, TALK_GRID))

    if not args.report_only:
        grid = [(t, o, s) for s in args.seeds for t in tasks for o in optimizers]
        todo = []
        for number, (task, optimizer, seed) in enumerate(grid, 1):
            path = result_path(runs_dir, task, optimizer, seed)
            if path.exists():
                print(f"[{number}/{len(grid)}] {path.name}: done before, skipped", flush=True)
            else:
                todo.append((number, task, optimizer, seed, path))

        def train(cell) -> str:
            number, task, optimizer, seed, path = cell
            record = run_one(args.suite, task, optimizer, seed, runs_dir, args.max_steps)
            write_atomically(path, record)
            summary = (f"{record['train_runtime']:.0f} s of training" if record["status"] == "ok"
                       else f"FAILED (exit {record['exit_code']}), see logs/{path.stem}.log")
            return f"[{number}/{len(grid)}] {path.name}: {summary}"

        # Each cell is its own process, so cells in parallel only share the machine (a GPU that one
        # small model leaves mostly idle); every cell's batches are its seed's, whatever runs beside it.
        with ThreadPoolExecutor(args.jobs) as pool:
            for line in pool.map(train, todo):
                print(line, flush=True)
    (report.write_demo_report if args.suite in SUITE_OPTIMIZERS else report.write_report)(runs_dir)


if __name__ == "__main__":
    main()
