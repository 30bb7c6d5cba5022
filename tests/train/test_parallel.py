"""Data-parallel training under torchrun (two CPU processes over Gloo)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from genrec.checkpoint import load_checkpoint
from genrec.train.parallel import Distributed, num_batches, own_rng, rank_slice, shared_shuffle

TINY = Path(__file__).resolve().parents[1] / "tiny.toml"


def test_every_rank_gets_a_share_of_every_step():
    users = np.arange(10)
    shares = [rank_slice(users, Distributed(rank, 3)) for rank in range(3)]
    assert sorted(np.concatenate(shares).tolist()) == list(range(10))
    assert num_batches(130, 32, Distributed(0, 2)) == 5  # the last 2 users still make a step for 2 ranks
    assert num_batches(129, 32, Distributed(0, 2)) == 4  # one user cannot: dropped, or rank 1 would hang
    assert num_batches(129, 32, Distributed()) == 5


def test_a_rank_finds_its_streams_only_in_a_checkpoint_of_as_many_ranks():
    saved = {"torch.0": torch.zeros(1), "torch.1": torch.ones(1), "shuffle.0": torch.full((1,), 7),
             "shuffle.1": torch.full((1,), 7)}
    assert torch.equal(own_rng(saved, Distributed(1, 2))["torch"], torch.ones(1))
    assert own_rng(saved, Distributed(2, 3)) is None and own_rng(saved, Distributed()) is None
    assert own_rng({"torch": torch.zeros(1)}, Distributed(0, 2)) is None
    assert torch.equal(shared_shuffle(saved), torch.full((1,), 7))


def torchrun(out: Path, *args: str, processes: int = 2) -> subprocess.CompletedProcess:
    """genrec train on the tiny config: under torchrun with `processes` ranks, or as one plain process (1)."""
    if shutil.which("torchrun") is None:
        pytest.skip("torchrun not on PATH")
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)] if processes > 1 \
        else []
    command = [sys.executable, *launcher, "-m", "genrec", "train", "--config", str(TINY), "--device", "cpu", "--out",
               str(out), "--no-progress", "--mode", "validated", *args]
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
def test_row_sharded_item_tables_train_as_replicated_ones_resume_and_evaluate_alone(tmp_path):
    """Each rank holds half the table's rows (train.item_table_sharding = rows): the run equals the replicated
    one to rounding, its checkpoint holds the whole table and row sums, it resumes exactly (a bf16 table too),
    and one process evaluates it to the numbers the two ranks reported."""
    rowwise = ("--set", "train.embedding_optimizer=rowwise_adagrad")
    rows = (*rowwise, "--set", "train.item_table_sharding=rows")
    runs = [torchrun(tmp_path / "rows", "--epochs", "2", *rows),
            torchrun(tmp_path / "replicated", "--epochs", "2", *rowwise),
            torchrun(tmp_path / "bf16", "--epochs", "2", *rows, "--set", "model.item_table_dtype=bfloat16"),
            torchrun(tmp_path / "resumed", "--epochs", "1", *rows, "--set", "model.item_table_dtype=bfloat16"),
            torchrun(tmp_path / "resumed", "--epochs", "2", "--resume")]
    for run in runs:
        assert run.returncode == 0, run.stderr[-3000:]
    sharded, replicated, bf16, resumed = (load_checkpoint(tmp_path / name / "last.safetensors")
                                          for name in ("rows", "replicated", "bf16", "resumed"))
    table = sharded.model["embedding.item.weight"]
    for name, tensor in sharded.model.items():
        assert tensor.shape == replicated.model[name].shape, name  # whole tensors, not one rank's rows
        # gradients summed in another order: two epochs of AdamW leave differences of a few 1e-6
        torch.testing.assert_close(tensor, replicated.model[name], rtol=0, atol=1e-5, msg=name)
    assert f"item table sharded by rows: rank 0 holds {-(-table.shape[0] // 2):,} of {table.shape[0]:,}" in \
        runs[0].stdout
    row_sums, replicated_sums = ([state["sum"] for state in checkpoint.optimizer["state"].values() if "sum" in state]
                                 for checkpoint in (sharded, replicated))
    assert len(row_sums) == 1 and row_sums[0].shape == (table.shape[0],) and (row_sums[0] > 0).any()
    torch.testing.assert_close(row_sums[0], replicated_sums[0], rtol=1e-5, atol=1e-9)  # the same mean gradient
    for name, tensor in bf16.model.items():
        assert torch.equal(tensor, resumed.model[name]), name
    alone = subprocess.run([sys.executable, "-m", "genrec", "eval", "--checkpoint", str(tmp_path / "rows")],
                           capture_output=True, text=True, timeout=600)
    assert alone.returncode == 0, alone.stderr[-3000:]
    reported = json.loads((tmp_path / "rows/metrics.json").read_text())
    alone_metrics = json.loads((tmp_path / "rows/metrics-test.json").read_text())["metrics"]
    # ranks count exactly; the likelihood's log-sum-exp adds the ranks' partial sums in another order
    assert alone_metrics.pop("nll") == pytest.approx(reported.pop("nll"), rel=1e-6)
    assert alone_metrics == reported


@pytest.mark.slow
def test_a_ranker_with_a_row_sharded_item_table_trains_as_a_replicated_one(tmp_path):
    rowwise = ("--task", "ranking", "--set", "train.embedding_optimizer=rowwise_adagrad")
    runs = [torchrun(tmp_path / "rows", "--epochs", "2", *rowwise, "--set", "train.item_table_sharding=rows"),
            torchrun(tmp_path / "replicated", "--epochs", "2", *rowwise)]
    for run in runs:
        assert run.returncode == 0, run.stderr[-3000:]
    sharded, replicated = (load_checkpoint(tmp_path / name / "last.safetensors") for name in ("rows", "replicated"))
    assert sharded.model.keys() == replicated.model.keys()
    for name, tensor in sharded.model.items():
        torch.testing.assert_close(tensor, replicated.model[name], rtol=0, atol=1e-6)


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
@pytest.mark.parametrize("task, options", [
    ("retrieval", ("--set", "train.ema_decay=0.9")), ("ranking", ()),
    ("retrieval", ("--set", "train.embedding_optimizer=rowwise_adagrad", "--set", "train.item_table_sharding=rows")),
], ids=["retrieval-weight-average", "ranking", "retrieval-row-sharded-table"])
def test_sharded_training_matches_replicas_and_resumes_exactly(tmp_path, task, options):
    """FSDP2 shards every parameter (the item table by rows, unless it is a row-sharded table, which it leaves
    alone) and the optimiser state; its checkpoints hold whole tensors, so they equal DDP's (two ranks average
    gradients exactly alike) and resume. The first retrieval runs keep a weight average, sharded like the
    weights."""
    fsdp = ("--set", "train.data_parallel=fsdp", *options)
    runs = [torchrun(tmp_path / "fsdp", "--epochs", "2", "--task", task, *fsdp),
            torchrun(tmp_path / "ddp", "--epochs", "2", "--task", task, *options),
            torchrun(tmp_path / "resumed", "--epochs", "1", "--task", task, *fsdp),
            torchrun(tmp_path / "resumed", "--epochs", "2", "--resume", *fsdp)]
    for run in runs:
        assert run.returncode == 0, run.stderr[-3000:]
    assert ("item table sharded by rows" in runs[0].stdout) == ("train.item_table_sharding=rows" in options)
    sharded, replicated, resumed = (load_checkpoint(tmp_path / name / "last.safetensors")
                                    for name in ("fsdp", "ddp", "resumed"))
    assert (sharded.averaged is not None) == (replicated.averaged is not None) == ("train.ema_decay=0.9" in options)
    for weights in ("model", "averaged"):
        for name, tensor in (getattr(sharded, weights) or {}).items():
            assert tensor.shape == getattr(replicated, weights)[name].shape, name  # whole tensors, not shards
            torch.testing.assert_close(tensor, getattr(replicated, weights)[name], rtol=0, atol=1e-6)
            assert torch.equal(tensor, getattr(resumed, weights)[name]), name
    assert sharded.optimizer["state"].keys() == replicated.optimizer["state"].keys()


@pytest.mark.slow
@pytest.mark.parametrize("before, after", [(2, 1), (1, 4)])
def test_a_run_resumes_on_another_number_of_processes(tmp_path, before, after):
    """Whole tensors in the checkpoint (a row-sharded table's too): a run resumes on any number of processes; the
    batch order continues (the shuffle stream), each rank's own streams start afresh."""
    sharded = ("--set", "train.embedding_optimizer=rowwise_adagrad", "--set", "train.item_table_sharding=rows")
    first = torchrun(tmp_path / "run", "--epochs", "1", *sharded, processes=before)
    assert first.returncode == 0, first.stderr[-3000:]
    after_one = load_checkpoint(tmp_path / "run/last.safetensors")
    resumed = torchrun(tmp_path / "run", "--epochs", "2", "--resume", processes=after)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "was written by another number of processes" in resumed.stdout
    straight = torchrun(tmp_path / "straight", "--epochs", "2", *sharded, processes=before)
    assert straight.returncode == 0, straight.stderr[-3000:]
    after_two, unbroken = (load_checkpoint(tmp_path / name / "last.safetensors") for name in ("run", "straight"))
    assert after_two.state["epoch"] == 2
    assert torch.equal(shared_shuffle(after_two.rng), shared_shuffle(unbroken.rng))
    assert not torch.equal(after_two.model["embedding.item.weight"], after_one.model["embedding.item.weight"])
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    assert all(np.isfinite(value) for value in metrics.values())
