"""Two CPU processes (torch.distributed over gloo) train exactly like one process with the same global batch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parent / "scripts" / "distill_tiny.py"
FSDP_SCRIPT = Path(__file__).parent / "scripts" / "fsdp_tiny.py"


def run(cmd: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_processes_match_one(tmp_path, launcher):
    run([sys.executable, str(SCRIPT), str(tmp_path / "single"), "8"], tmp_path)
    if launcher == "torchrun":
        launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533"]
    else:
        assert shutil.which("accelerate"), "accelerate CLI not on PATH"
        launch = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", "29534"]
    run([*launch, str(SCRIPT), str(tmp_path / "ddp"), "4"], tmp_path)
    assert (tmp_path / "ddp" / "world_size.txt").read_text() == "2"
    single = torch.load(tmp_path / "single" / "params.pt")
    ddp = torch.load(tmp_path / "ddp" / "params.pt")
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], atol=2e-6, rtol=1e-5, msg=key)
    single_losses = [float(x) for x in (tmp_path / "single" / "losses.txt").read_text().split()]
    ddp_losses = [float(x) for x in (tmp_path / "ddp" / "losses.txt").read_text().split()]
    assert len(single_losses) == len(ddp_losses) == 8
    torch.testing.assert_close(torch.tensor(ddp_losses), torch.tensor(single_losses), rtol=1e-4, atol=1e-5)
    assert (tmp_path / "ddp" / "config.json").exists()  # the merged student, written once by the main process


@pytest.mark.slow
def test_fsdp2_sharded_student_saves_what_one_process_saves(tmp_path):
    """Real FSDP2 sharding (`fully_shard` over gloo, 2 CPU processes): the trainer's `_save`, handed the gathered full
    weights as `Trainer.save_model` hands them under FSDP, writes the same resumable multi-head checkpoint and the
    same merged student as one unsharded process trained on the same global batches."""
    from safetensors.torch import load_file

    run([sys.executable, str(FSDP_SCRIPT), str(tmp_path / "single"), "8"], tmp_path)
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29535"]
    run([*launch, str(FSDP_SCRIPT), str(tmp_path / "sharded"), "4"], tmp_path)
    for rank in (0, 1):  # the parameters really were sharded (DTensors) on both ranks
        assert int((tmp_path / "sharded" / f"sharded_rank{rank}.txt").read_text()) > 0
    for kind in ("checkpoint", "merged"):
        single = load_file(tmp_path / "single" / kind / "model.safetensors")
        sharded = load_file(tmp_path / "sharded" / kind / "model.safetensors")
        assert set(sharded) == set(single), kind
        for key in single:
            torch.testing.assert_close(sharded[key], single[key], atol=1e-6, rtol=1e-5, msg=f"{kind}: {key}")
    assert (tmp_path / "sharded" / "checkpoint" / "tmkd_student.json").is_file()  # every head, resumable
    initial = load_file(tmp_path / "single" / "initial" / "model.safetensors")
    trained = load_file(tmp_path / "single" / "merged" / "model.safetensors")
    assert max(float((trained[k] - initial[k]).abs().max()) for k in initial) > 1e-3  # training moved the weights

    from tmkd_hf import MultiHeadStudent

    resumed = MultiHeadStudent.from_pretrained(str(tmp_path / "sharded" / "checkpoint"))
    assert resumed.num_heads == 3
