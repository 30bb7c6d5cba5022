"""A row-sharded embedding table equals the unsharded nn.Embedding: lookups, gradients and an optimizer
step, on 2 and 4 CPU processes over Gloo, with uneven shards, repeated ids and ranks whose batch is empty."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from genrec.train.sharded_embedding import RowShardedEmbedding, RowWiseAdagrad, row_bounds

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


def run(rank: int, world_size: int, init_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        full = torch.randn(NUM_ROWS, DIM, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        table = RowShardedEmbedding(NUM_ROWS, DIM, full_weight=full)
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
        torch.testing.assert_close(table.weight.grad, reference.weight.grad[lo:hi], rtol=1e-12, atol=1e-12)
        before = reference.weight.detach().clone()
        RowWiseAdagrad(table.parameters(), lr=0.1).step()
        RowWiseAdagrad(reference.parameters(), lr=0.1).step()
        torch.testing.assert_close(table.full_weight(), reference.weight.detach(), rtol=1e-12, atol=1e-12)
        untouched = torch.ones(NUM_ROWS, dtype=torch.bool)
        untouched[torch.cat([i.flatten() for i in ids])] = False
        assert untouched.any() and torch.equal(reference.weight.detach()[untouched], before[untouched])
        with pytest.raises(ValueError, match="ids must be in"):
            table(torch.tensor([NUM_ROWS]))
    finally:
        dist.barrier()
        dist.destroy_process_group()


@pytest.mark.parametrize("world_size", [2, 4])
def test_sharded_equals_unsharded(tmp_path, world_size):
    mp.spawn(run, args=(world_size, str(tmp_path / "init")), nprocs=world_size)


def test_row_wise_adagrad_by_hand():
    weight = torch.nn.Parameter(torch.ones(3, 2))
    weight.grad = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, -1.0]])
    optimizer = RowWiseAdagrad([weight], lr=1.0, eps=0.0)
    optimizer.step()
    # row 0: s = (9 + 16) / 2 = 12.5; row 2: s = 1; row 1 untouched
    expected = torch.tensor([[1 - 3 / 12.5 ** 0.5, 1 - 4 / 12.5 ** 0.5], [1.0, 1.0], [0.0, 2.0]])
    torch.testing.assert_close(weight.detach(), expected)
    assert optimizer.state[weight]["sum"].tolist() == [12.5, 0.0, 1.0]


def test_row_bounds_cover_the_table_unevenly():
    assert row_bounds(23, 4).tolist() == [0, 6, 12, 18, 23]
    assert row_bounds(3, 4).tolist() == [0, 1, 2, 3, 3]  # a rank may own no row
