"""FSDP2 (``fully_shard``) on 2 CPU processes with gloo, against one unsharded process on the same
batches: every inner product and finiteness check of SaLSa is global, so both ranks take the step
sizes of the single process. (accelerate runs FSDP only on accelerators; on a CPU the Trainer would
fall back to DDP, so this drives ``fully_shard`` directly, as SaLSaTrainer would hand the steps over.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .conftest import REPO

SCRIPT = Path(__file__).parent / "fsdp_train.py"


def test_two_sharded_processes_take_the_steps_of_one_unsharded_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    single = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], env=env, capture_output=True, text=True,
                            timeout=300)
    assert single.returncode == 0, single.stderr[-4000:]
    sharded = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                              "29541", str(SCRIPT), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert sharded.returncode == 0, sharded.stderr[-4000:]
    one, rank0, rank1 = (torch.load(tmp_path / f"{name}.pt", weights_only=False)
                         for name in ("world1_rank0", "world2_rank0", "world2_rank1"))

    assert rank0["search"] == rank1["search"] and rank0["step_sizes"] == rank1["step_sizes"]
    for name in rank0["params"]:
        assert torch.equal(rank0["params"][name], rank1["params"][name]), name

    # The same decisions as one process: the same searches, backtracks and trials, the same step sizes.
    decisions = ("searches", "backtracks", "trial_forwards", "failed_searches", "skipped_steps")
    assert {k: rank0["search"][k] for k in decisions} == {k: one["search"][k] for k in decisions}
    assert one["search"]["backtracks"] > 0  # several trials per search: each must see the moved shards
    assert rank0["step_sizes"] == pytest.approx(one["step_sizes"], rel=1e-6)
    for name, value in one["params"].items():
        torch.testing.assert_close(rank0["params"][name], value, rtol=0, atol=1e-5, msg=name)
