"""Data-parallel training under torchrun (two CPU processes over Gloo)."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from genrec.checkpoint import load_checkpoint
from genrec.train.parallel import Distributed, num_batches, own_rng, rank_slice

TINY = Path(__file__).resolve().parents[1] / "tiny.toml"


def test_every_rank_gets_a_share_of_every_step():
    users = np.arange(10)
    shares = [rank_slice(users, Distributed(rank, 3)) for rank in range(3)]
    assert sorted(np.concatenate(shares).tolist()) == list(range(10))
    assert num_batches(130, 32, Distributed(0, 2)) == 5  # the last 2 users still make a step for 2 ranks
    assert num_batches(129, 32, Distributed(0, 2)) == 4  # one user cannot: dropped, or rank 1 would hang
    assert num_batches(129, 32, Distributed()) == 5


def test_resume_needs_the_same_number_of_ranks():
    saved = {"torch.0": torch.zeros(1), "torch.1": torch.ones(1)}
    assert torch.equal(own_rng(saved, Distributed(1, 2))["torch"], torch.ones(1))
    with pytest.raises(ValueError, match="same number of processes"):
        own_rng(saved, Distributed(2, 3))


def torchrun(out: Path, *args: str) -> subprocess.CompletedProcess:
    if shutil.which("torchrun") is None:
        pytest.skip("torchrun not on PATH")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "genrec", "train", "--config", str(TINY), "--device", "cpu", "--out", str(out),
               "--no-progress", "--mode", "validated", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


ROWWISE = ("--set", "train.embedding_optimizer=rowwise_adagrad", "--set", "model.item_table_dtype=bfloat16")


@pytest.mark.slow
@pytest.mark.parametrize("task, options", [("retrieval", ()), ("ranking", ()), ("retrieval", ROWWISE)],
                         ids=["retrieval", "ranking", "retrieval-rowwise-bf16-table"])
def test_two_processes_train_and_resume_exactly(tmp_path, task, options):
    """Under DDP the row-wise item table takes dense gradients (the all-reduce needs them)."""
    straight = torchrun(tmp_path / "a", "--epochs", "3", "--task", task, *options)
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert straight.stdout.count("test metrics") == 1  # rank 0 alone reports
    first = torchrun(tmp_path / "b", "--epochs", "1", "--task", task, *options)
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = torchrun(tmp_path / "b", "--epochs", "3", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = load_checkpoint(tmp_path / "a/last.safetensors"), load_checkpoint(tmp_path / "b/last.safetensors")
    assert {"sample.0", "sample.1"} <= set(a.rng)  # both ranks' negative-sampling streams
    for name, tensor in a.model.items():
        assert torch.equal(tensor, b.model[name]), name
    assert (tmp_path / "a/metrics.json").read_text() == (tmp_path / "b/metrics.json").read_text()


@pytest.mark.slow
def test_ranks_hold_the_same_weights_after_training(tmp_path):
    if shutil.which("torchrun") is None:
        pytest.skip("torchrun not on PATH")
    script = Path(__file__).with_name("ddp_ranks_agree.py")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(script), str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "ranks=2 agree=True moved=True" in run.stdout


@pytest.mark.slow
@pytest.mark.parametrize("task, options", [("retrieval", ("--set", "train.ema_decay=0.9")), ("ranking", ())],
                         ids=["retrieval-weight-average", "ranking"])
def test_sharded_training_matches_replicas_and_resumes_exactly(tmp_path, task, options):
    """FSDP2 shards every parameter (the item table by rows) and the optimiser state; its checkpoints
    hold whole tensors, so they equal DDP's (two ranks average gradients exactly alike) and resume.
    The retrieval runs keep a weight average, sharded like the weights."""
    fsdp = ("--set", "train.data_parallel=fsdp", *options)
    runs = [torchrun(tmp_path / "fsdp", "--epochs", "2", "--task", task, *fsdp),
            torchrun(tmp_path / "ddp", "--epochs", "2", "--task", task, *options),
            torchrun(tmp_path / "resumed", "--epochs", "1", "--task", task, *fsdp),
            torchrun(tmp_path / "resumed", "--epochs", "2", "--resume", *fsdp)]
    for run in runs:
        assert run.returncode == 0, run.stderr[-3000:]
    sharded, replicated, resumed = (load_checkpoint(tmp_path / name / "last.safetensors")
                                    for name in ("fsdp", "ddp", "resumed"))
    assert (sharded.averaged is not None) == (replicated.averaged is not None) == bool(options)
    for weights in ("model", "averaged"):
        for name, tensor in (getattr(sharded, weights) or {}).items():
            assert tensor.shape == getattr(replicated, weights)[name].shape, name  # whole tensors, not shards
            torch.testing.assert_close(tensor, getattr(replicated, weights)[name], rtol=0, atol=1e-6)
            assert torch.equal(tensor, getattr(resumed, weights)[name]), name
    assert sharded.optimizer["state"].keys() == replicated.optimizer["state"].keys()
