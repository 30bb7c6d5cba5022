"""Run under torchrun by test_sharded_embedding.py: a row-sharded table equals one nn.Embedding for every
rank's batch (lookups, gradients, a RowWiseAdagrad step); prints one line on rank 0."""

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from genrec.train import sharded_embedding  # noqa: E402
from genrec.train.optimizers import RowWiseAdagrad  # noqa: E402
from genrec.train.sharded_embedding import RowShardedEmbedding, row_bounds  # noqa: E402

NUM_ROWS, DIM = 23, 5  # 23 rows: shards of unequal sizes on 2 and 4 ranks


def batches(world_size: int) -> list[torch.Tensor]:
    """Every rank's ids (known to all, so each can compute the reference): repeats; rank 1's only in the
    first shard; the last rank's empty."""
    generator = torch.Generator().manual_seed(world_size)
    ids = [torch.randint(0, NUM_ROWS, (3, 4), generator=generator) for _ in range(world_size)]
    ids[0][0, :2] = 7  # one id twice in a batch
    ids[1] = torch.tensor([[0, 1, 1], [2, 0, 3]])
    ids[-1] = torch.empty(0, 4, dtype=torch.int64)
    return ids


dist.init_process_group("gloo")
rank, world_size = dist.get_rank(), dist.get_world_size()
full = torch.randn(NUM_ROWS, DIM, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
table = RowShardedEmbedding(NUM_ROWS, DIM, init_rows=lambda lo, hi: full[lo:hi])
ids = batches(world_size)
weights = [torch.randn(*i.shape, DIM, generator=torch.Generator().manual_seed(10 + r), dtype=torch.float64)
           for r, i in enumerate(ids)]
out = table(ids[rank])
assert torch.equal(out, full[ids[rank]])  # lookups are copies: exact
(out * weights[rank]).sum().backward()
# the reference: one table, every rank's loss summed
reference = torch.nn.Embedding(NUM_ROWS, DIM, _weight=full.clone())
sum((reference(i) * w).sum() for i, w in zip(ids, weights)).backward()
lo, hi = (int(b) for b in row_bounds(NUM_ROWS, world_size)[rank:rank + 2])
assert table.weight.grad.is_sparse  # only the rows asked for
torch.testing.assert_close(table.weight.grad.to_dense(), reference.weight.grad[lo:hi], rtol=1e-12, atol=1e-12)
before = reference.weight.detach().clone()
RowWiseAdagrad(table.parameters(), lr=0.1).step()
RowWiseAdagrad(reference.parameters(), lr=0.1).step()
torch.testing.assert_close(table.full_weight(), reference.weight.detach(), rtol=1e-12, atol=1e-12)
untouched = torch.ones(NUM_ROWS, dtype=torch.bool)
untouched[torch.cat([i.flatten() for i in ids])] = False
assert untouched.any() and torch.equal(reference.weight.detach()[untouched], before[untouched])
# checkpoints hold the whole table, and loading one takes this rank's rows
assert torch.equal(table.state_dict()["weight"], reference.weight.detach())
restored = RowShardedEmbedding(NUM_ROWS, DIM, init_rows=lambda lo, hi: torch.zeros(hi - lo, DIM, dtype=torch.float64))
restored.load_state_dict(table.state_dict())
assert torch.equal(restored.weight, table.weight)
assert torch.equal(table.gather_rows(torch.arange(table.weight.shape[0]) + lo), torch.arange(NUM_ROWS))
sharded_embedding.GATHER_ROWS = 2  # several all-gathers of a few rows each, the last one short on some ranks
assert torch.equal(table.gather_rows(torch.arange(table.weight.shape[0]) + lo), torch.arange(NUM_ROWS))
assert torch.equal(table.full_weight(), reference.weight.detach())
assert table.own_ids == (lo, hi) and torch.equal(table.own_rows(torch.arange(lo, hi)), table.weight)
try:
    table.own_rows(torch.tensor([(hi + 1) % NUM_ROWS if hi < NUM_ROWS else 0]))
    raise AssertionError("another rank's row was read here")
except ValueError as error:
    assert "holds ids" in str(error)
totals = torch.tensor([float(rank)])
table.combine(totals, "max")
assert totals.item() == world_size - 1
try:
    table(torch.tensor([NUM_ROWS]))
    raise AssertionError("an id past the table was accepted")
except ValueError as error:
    assert "ids must be in" in str(error)
if rank == 0:
    print(f"ranks={world_size} sharded=unsharded")
# every rank done with gloo, then out without tearing it down: torch 2.13's Gloo teardown has aborted
# ("terminate called without an active exception") after a barrier too, in CI runs of this script
dist.barrier()
sys.stdout.flush()
os._exit(0)
