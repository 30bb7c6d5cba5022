"""An embedding table sharded by rows across ranks, with lookups answered where the rows live (the
TorchRec pattern, on torch.distributed alone): the unsharded reference is nn.Embedding.

Rank r owns the contiguous rows [bounds[r], bounds[r + 1]) (the first num_rows % world ranks one more). A
lookup deduplicates the batch's ids, sends each unique id to its owner (all-to-all), reads the rows there
and sends them back (all-to-all); the backward sends each unique id's summed gradient to its owner, whose
table gets a sparse gradient of the rows asked for. Every rank must call forward and backward the same number
of times (they are collectives), as under DDP. genrec.train.optimizers.RowWiseAdagrad updates only the rows a
step touched and keeps one number of state per row (Adam's two moments would triple a large table). Its state
dict holds the whole table (gathered: a collective, as FSDP's is) and loading one takes this rank's rows, so
checkpoints do not depend on the number of ranks. Shapes: N ids in this rank's batch, U unique, D dims, R rows
of this shard.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
from torch import nn


GATHER_ROWS = 1 << 20  # rows of each rank per all-gather when a shard is gathered whole (gather_rows)


def row_bounds(num_rows: int, world_size: int) -> torch.Tensor:
    """int64 [world + 1]: rank r owns rows [bounds[r], bounds[r + 1])."""
    sizes = torch.full((world_size,), num_rows // world_size, dtype=torch.int64)
    sizes[: num_rows % world_size] += 1
    return torch.cat([torch.zeros(1, dtype=torch.int64), sizes.cumsum(0)])


class RowShardedEmbedding(nn.Module):
    def __init__(self, num_rows: int, dim: int, group: dist.ProcessGroup | None = None,
                 init_rows: Callable[[int, int], torch.Tensor] | None = None) -> None:
        """init_rows(lo, hi) -> [hi - lo, D]: rows lo..hi of the table, this rank's (the same table on every rank,
        e.g. drawn under one seed; no rank needs the whole); None: normal(0, 1) rows, like nn.Embedding."""
        super().__init__()
        self.group = group
        self.rank, self.world_size = dist.get_rank(group), dist.get_world_size(group)
        self.num_rows, self.dim = num_rows, dim
        self.register_buffer("bounds", row_bounds(num_rows, self.world_size), persistent=False)
        lo, hi = (int(b) for b in self.bounds[self.rank:self.rank + 2])
        rows = init_rows(lo, hi).detach().clone() if init_rows is not None else torch.randn(hi - lo, dim)
        self.bounds = self.bounds.to(rows.device)
        self.weight = nn.Parameter(rows)  # [R, D], this rank's rows
        self._register_state_dict_hook(_whole_weight)
        self._register_load_state_dict_pre_hook(_own_rows, with_module=True)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [*] int64 in [0, num_rows) -> [*, D]."""
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_rows):
            raise ValueError(f"embedding ids must be in [0, {self.num_rows})")
        unique, inverse = torch.unique(ids.flatten(), return_inverse=True)
        rows = _ShardedLookup.apply(self.weight, unique, self.bounds, self.group)
        return rows[inverse].view(*ids.shape, self.dim)

    @property
    def own_ids(self) -> tuple[int, int]:
        """The ids [lo, hi) whose rows this rank holds."""
        lo, hi = (int(b) for b in self.bounds[self.rank:self.rank + 2])
        return lo, hi

    def own_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows of ids this rank holds, read here (no message): for scoring where the rows live."""
        lo, hi = self.own_ids
        if ids.numel() and (int(ids.min()) < lo or int(ids.max()) >= hi):
            raise ValueError(f"rank {self.rank} holds ids [{lo}, {hi}) only")
        return self.weight[ids - lo]

    def combine(self, values: torch.Tensor, op: str) -> None:
        """All-reduces `values` in place over the table's ranks (op: "sum" or "max")."""
        dist.all_reduce(values, dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX, group=self.group)

    def full_weight(self) -> torch.Tensor:
        """The whole table [num_rows, D] in every rank's host memory (a collective: for checkpoints)."""
        return self.gather_rows(self.weight.detach())

    def gather_rows(self, local: torch.Tensor) -> torch.Tensor:
        """[R, *] per-row values of this shard (its weights, an optimiser's row state) -> [num_rows, *] in every
        rank's host memory (a collective). Gathered GATHER_ROWS rows of each rank at a time, so that a device holds
        at most world x that beside its shard: a table larger than one device still checkpoints."""
        sizes = (self.bounds[1:] - self.bounds[:-1]).tolist()
        whole = torch.empty(self.num_rows, *local.shape[1:], dtype=local.dtype)
        for start in range(0, max(sizes), GATHER_ROWS):
            count = min(GATHER_ROWS, max(sizes) - start)
            piece = local.new_zeros(count, *local.shape[1:])  # equal sizes on every rank: Gloo gathers no others
            mine = local[start:start + count]
            piece[: mine.shape[0]] = mine
            parts = [torch.empty_like(piece) for _ in range(self.world_size)]
            dist.all_gather(parts, piece, group=self.group)
            for rank, (part, size) in enumerate(zip(parts, sizes)):
                kept = max(0, min(count, size - start))
                first = int(self.bounds[rank]) + start
                whole[first:first + kept] = part[:kept].cpu()
        return whole

    def local_rows(self, whole: torch.Tensor) -> torch.Tensor:
        """[num_rows, *] -> this shard's rows [R, *]."""
        if whole.shape[0] != self.num_rows:
            raise ValueError(f"a row-sharded table of {self.num_rows} rows cannot load {whole.shape[0]} rows")
        lo, hi = (int(b) for b in self.bounds[self.rank:self.rank + 2])
        return whole[lo:hi]


def _whole_weight(module: RowShardedEmbedding, state: dict, prefix: str, local_metadata) -> None:
    state[prefix + "weight"] = module.full_weight()


def _own_rows(module: RowShardedEmbedding, state: dict, prefix: str, *args) -> None:
    key = prefix + "weight"
    if key in state:
        state[key] = module.local_rows(state[key])


def _route(unique: torch.Tensor, bounds: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """The owner of each (sorted, unique) id, and how many ids go to each rank."""
    owner = torch.searchsorted(bounds[1:], unique, right=True)
    counts = torch.bincount(owner, minlength=bounds.numel() - 1)
    return owner, counts.tolist()


def _exchange(values: torch.Tensor, send_counts: list[int], receive_counts: list[int],
              group: dist.ProcessGroup | None) -> torch.Tensor:
    """all_to_all of the rows of `values`, sent in rank order (send_counts[r] rows to rank r)."""
    out = values.new_empty(sum(receive_counts), *values.shape[1:])
    dist.all_to_all_single(out, values.contiguous(), receive_counts, send_counts, group=group)
    return out


class _ShardedLookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight: torch.Tensor, unique: torch.Tensor, bounds: torch.Tensor,
                group: dist.ProcessGroup | None) -> torch.Tensor:
        # unique ids are sorted, so grouping them by owner keeps their order: rank r's share is contiguous
        _, send_counts = _route(unique, bounds)
        counts = torch.tensor(send_counts, dtype=torch.int64, device=unique.device)
        receive = torch.empty_like(counts)
        dist.all_to_all_single(receive, counts, group=group)
        receive_counts = receive.tolist()
        asked = _exchange(unique, send_counts, receive_counts, group)  # ids other ranks ask this rank for
        local = asked - bounds[dist.get_rank(group)]
        rows = _exchange(weight[local], receive_counts, send_counts, group)  # [U, D], in `unique`'s order
        ctx.save_for_backward(local)
        ctx.counts, ctx.group, ctx.num_local = (send_counts, receive_counts), group, weight.shape[0]
        return rows

    @staticmethod
    def backward(ctx, grad_rows: torch.Tensor):
        (local,) = ctx.saved_tensors
        send_counts, receive_counts = ctx.counts
        grads = _exchange(grad_rows, send_counts, receive_counts, ctx.group)  # to the rows' owners
        # sparse, as nn.Embedding(sparse=True)'s: a dense [R, D] gradient would double a table too large for one
        # device; two ranks may ask for the same row, and their gradients add when it is coalesced
        grad_weight = torch.sparse_coo_tensor(local.unsqueeze(0), grads, (ctx.num_local, grad_rows.shape[1]))
        return grad_weight, None, None, None
