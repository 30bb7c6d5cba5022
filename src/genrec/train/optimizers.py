"""The optimiser of a run: AdamW for every weight, or AdamW for the dense weights and row-wise AdaGrad for the
item tables (train.embedding_optimizer = "rowwise_adagrad"), as industrial recommenders train embeddings.

AdamW keeps two fp32 moments per weight, which triples a table of millions of rows; row-wise AdaGrad keeps one
number per row. With it, the tables take sparse gradients (only the looked-up rows) outside torchrun, and may be
stored in bf16 (model.item_table_dtype), updated with stochastic rounding. Shapes: R rows, D dims.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from genrec.config import TrainConfig
from genrec.model.embeddings import InputEmbedding
from genrec.train.sharded_embedding import RowShardedEmbedding

# low bits a bf16 drops from an fp32 (bf16 is the upper half of fp32's bit pattern)
_BF16_DROPPED = 1 << 16


class RowWiseAdagrad(torch.optim.Optimizer):
    """Row-wise AdaGrad for embedding tables [R, D]: per row, s += mean(g^2) over the row, then
    w -= lr * g / (sqrt(s) + eps). Rows not looked up this step (absent from a sparse gradient, all zero in a
    dense one) keep their weights and their state. Row-local, so a sharded table steps exactly as a whole one.
    A bf16 table's arithmetic is fp32, and its result is rounded stochastically, so that updates below half a bf16 step
    survive on average instead of vanishing, with the noise drawn from (seed, step): a resumed run rounds
    exactly as an unbroken one."""

    def __init__(self, params, lr: float = 0.01, eps: float = 1e-8, seed: int = 0,
                 row_shards: list[RowShardedEmbedding] = ()) -> None:
        """row_shards: tables among `params`' owners that are sharded by rows across ranks, whose row sums the
        state dict holds whole (gathered: a collective) and loading takes this rank's rows of."""
        if not lr > 0 or not eps >= 0:
            raise ValueError(f"RowWiseAdagrad needs lr > 0 and eps >= 0, got {lr}, {eps}")
        super().__init__(params, {"lr": lr, "eps": eps, "seed": seed})
        self.row_shards = {id(table.weight): table for table in row_shards}

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for weight in group["params"]:
                if weight.grad is None:
                    continue
                if weight.dtype == torch.float16:
                    raise ValueError("RowWiseAdagrad updates float32, float64 or bfloat16 tables, not float16")
                compute = torch.float32 if weight.dtype == torch.bfloat16 else weight.dtype
                touched, rows = _touched_rows(weight.grad)
                state = self.state[weight]
                if "sum" not in state:
                    state["sum"] = torch.zeros(weight.shape[0], dtype=compute, device=weight.device)  # [R]
                    state["step"] = torch.zeros((), dtype=torch.int64)
                state["step"] += 1
                rows = rows.to(compute)
                state["sum"][touched] += rows.square().mean(dim=1)
                scale = group["lr"] / (state["sum"][touched].sqrt() + group["eps"])
                updated = weight[touched].to(compute) - scale.unsqueeze(1) * rows
                if weight.dtype == torch.bfloat16:
                    updated = _stochastic_bf16(updated, group["seed"], int(state["step"]))
                weight[touched] = updated
        return None

    def state_dict(self) -> dict:
        state = super().state_dict()
        for index, weight in enumerate(self._weights()):
            shard = self.row_shards.get(id(weight))
            if shard is not None and index in state["state"]:
                state["state"][index] = {**state["state"][index],
                                         "sum": shard.gather_rows(state["state"][index]["sum"])}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """torch casts a loaded state to its parameter's dtype; the row sums keep theirs (a bf16 table's fp32
        sums would lose their precision, and the resumed run would not step as the unbroken one)."""
        sums = {index: state["sum"].clone() for index, state in state_dict["state"].items()}
        super().load_state_dict(state_dict)
        weights = self._weights()
        for index, row_sums in sums.items():
            shard = self.row_shards.get(id(weights[index]))
            row_sums = row_sums if shard is None else shard.local_rows(row_sums)
            self.state[weights[index]]["sum"] = row_sums.to(weights[index].device)

    def _weights(self) -> list[torch.Tensor]:
        return [weight for group in self.param_groups for weight in group["params"]]


def _touched_rows(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row indices [U], their gradient rows [U, D]) of a sparse or dense table gradient."""
    if grad.is_sparse:
        grad = grad.coalesce()  # repeated ids' rows summed, as a dense gradient holds them
        return grad.indices()[0], grad.values()
    touched = (grad != 0).any(dim=1).nonzero().squeeze(1)
    return touched, grad[touched]


def _stochastic_bf16(values: torch.Tensor, seed: int, step: int) -> torch.Tensor:
    """fp32 values rounded to bf16 up or down, up with probability equal to the dropped fraction: adding
    uniform noise below the kept bits, then truncating (the bit pattern's magnitude, so negatives round
    away from zero with that probability as positives do)."""
    generator = torch.Generator(values.device).manual_seed(seed * 1_000_003 + step)
    noise = torch.randint(0, _BF16_DROPPED, values.shape, dtype=torch.int32, device=values.device,
                          generator=generator)
    bits = (values.contiguous().view(torch.int32) + noise) & -_BF16_DROPPED
    return bits.view(torch.float32).to(torch.bfloat16)  # exact: the dropped bits are zero


class CombinedOptimizer:
    """Several optimisers stepping as one, which is all the trainers, the learning-rate schedule and
    checkpoints see: one list of parameter groups, and one state dict numbered across all of them the way
    torch numbers one optimiser's parameters."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]

    @property
    def state(self) -> dict:
        return {weight: state for optimizer in self.optimizers for weight, state in optimizer.state.items()}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()

    def state_dict(self) -> dict:
        states, groups, offset = {}, [], 0
        for optimizer in self.optimizers:
            own = optimizer.state_dict()
            states.update({offset + index: state for index, state in own["state"].items()})
            groups += [{**group, "params": [offset + index for index in group["params"]]}
                       for group in own["param_groups"]]
            offset += sum(len(group["params"]) for group in optimizer.param_groups)
        return {"state": states, "param_groups": groups}

    def load_state_dict(self, state: dict) -> None:
        groups = state["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"the optimiser state has {len(groups)} parameter groups; this run has "
                             f"{len(self.param_groups)}")
        offset, first = 0, 0
        for optimizer in self.optimizers:
            own_groups = groups[first:first + len(optimizer.param_groups)]
            first += len(own_groups)
            count = sum(len(group["params"]) for group in optimizer.param_groups)
            optimizer.load_state_dict({
                "state": {index - offset: value for index, value in state["state"].items()
                          if offset <= index < offset + count},
                "param_groups": [{**group, "params": [index - offset for index in group["params"]]}
                                 for group in own_groups]})
            offset += count


def item_tables(module: nn.Module) -> list[nn.Embedding | RowShardedEmbedding]:
    """The item embedding tables of a model (its InputEmbeddings'), the rows a row-wise optimiser takes."""
    return [child.item for child in module.modules() if isinstance(child, InputEmbedding) and child.item is not None]


def build_optimizer(train: TrainConfig, module: nn.Module, sparse_tables: bool, capturable: bool = False
                    ) -> torch.optim.Optimizer | CombinedOptimizer:
    """AdamW over `module`'s parameters, or (train.embedding_optimizer = rowwise_adagrad) AdamW over all but
    the item tables and RowWiseAdagrad over those (whole or sharded by rows: genrec.train.parallel.shard_item_tables),
    whole ones switched to sparse gradients when `sparse_tables` (not under DDP, whose all-reduce takes dense
    gradients). The table's group carries its own base learning rate
    (base_lr), which the schedule scales. capturable: AdamW's step may be captured in a CUDA graph (on CUDA; it keeps
    its step counts on the device)."""
    def adamw(params) -> torch.optim.Optimizer:
        params = list(params)
        # fused: one kernel per step on CUDA instead of several per group of tensors (short steps are launch-bound);
        # FSDP2's sharded parameters keep the default
        fused = bool(params) and all(p.is_cuda and not isinstance(p, DTensor) for p in params)
        return torch.optim.AdamW(params, lr=train.learning_rate, betas=train.betas, weight_decay=train.weight_decay,
                                 fused=fused or None, capturable=capturable and fused)

    if train.embedding_optimizer == "adamw":
        return adamw(module.parameters())
    tables = item_tables(module)
    if not tables:
        raise ValueError("train.embedding_optimizer = rowwise_adagrad: this model has no item table")
    shards = [table for table in tables if isinstance(table, RowShardedEmbedding)]
    for table in tables:
        if isinstance(table, nn.Embedding):
            table.sparse = sparse_tables
    table_ids = {id(table.weight) for table in tables}
    dense = [p for p in module.parameters() if id(p) not in table_ids]
    rowwise = RowWiseAdagrad([table.weight for table in tables], lr=train.embedding_learning_rate, seed=train.seed,
                             row_shards=shards)
    rowwise.param_groups[0]["base_lr"] = train.embedding_learning_rate
    return CombinedOptimizer([adamw(dense), rowwise])
