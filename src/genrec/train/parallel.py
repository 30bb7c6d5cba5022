"""All torch.distributed code: data-parallel training (DDP or FSDP2) under torchrun.

    torchrun --nproc_per_node 8 -m genrec train --dataset ml-1m ...
    torchrun --nproc_per_node 8 -m genrec train --set train.data_parallel=fsdp ...

Each rank trains on its slice of every global batch of users (the batch size stays global), with its
own negatives and dropout streams. DDP keeps a full replica per rank and averages the gradients;
FSDP2 (`fully_shard`, one group per encoder layer plus the root) keeps 1/world of every parameter
and of the optimiser state per rank, the item embedding table included (sharded by rows), gathers a
layer's weights for its forward and backward, and reduce-scatters the gradients. Every rank evaluates
(identical weights give identical numbers, so early stopping and epoch selection agree without
messages); rank 0 alone writes files. Checkpoints hold full (unsharded) tensors and every rank's random
streams, so --resume stays exact, and a checkpoint does not depend on the strategy that wrote it.
train.item_table_sharding = rows keeps 1/world of every item table's rows per rank instead of a replica, with
lookups answered where the rows live (genrec.train.sharded_embedding; shard_item_tables); DDP or FSDP2 then
takes the dense part and leaves those rows alone.
Without torchrun's environment (WORLD_SIZE unset or 1) all of this is a no-op.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.nn.parallel import DistributedDataParallel

from genrec.model.embeddings import InputEmbedding, item_rows
from genrec.train.sharded_embedding import RowShardedEmbedding


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> tuple[Distributed, torch.device | None]:
    """Joins torchrun's process group (NCCL on GPUs, Gloo on CPUs). Returns the ranks and, when
    distributed, this rank's device (None: let the caller resolve `device_name` as usual)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed(), None
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if device_name == "cuda" and not use_cuda:
        raise ValueError("--device cuda was asked for, but no CUDA device is available")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), local_rank), device


def shard_item_tables(model: nn.Module, ranks: Distributed) -> bool:
    """Replaces each item table of `model` (its InputEmbeddings') by a RowShardedEmbedding holding this rank's
    rows of it: a table left unbuilt (on the meta device; InputEmbedding(build_item_table=False)) has them drawn
    here, a rank's rows only, as the whole table would have drawn them; a built one gives its rows. Before
    data_parallel, which then leaves those rows out of DDP / FSDP2. Returns whether it sharded anything (not
    outside torchrun)."""
    if not ranks.enabled:
        return False
    for embedding in (child for child in model.modules() if isinstance(child, InputEmbedding)
                      and child.item is not None):
        weight, dim = embedding.item.weight, embedding.item.embedding_dim
        if weight.is_meta:
            rows = (lambda lo, hi, embedding=embedding, dim=dim:
                    item_rows(embedding.item_seed, lo, hi, dim).to(embedding.table_dtype))
        else:
            rows = (lambda lo, hi, weight=weight: weight.detach()[lo:hi])
        table = RowShardedEmbedding(embedding.item.num_embeddings, dim, init_rows=rows)
        # DDP averages the replicated weights' gradients over ranks; a shard's gradient arrives summed over the
        # ranks' lookups, so the same mean takes a division
        table.weight.register_hook(lambda grad: grad / ranks.world_size)
        embedding.item = table
    return True


def data_parallel(model: nn.Module, ranks: Distributed, device: torch.device, strategy: str = "ddp") -> nn.Module:
    """The module to run training forwards through: a DDP wrapper, or `model` itself sharded in place
    by FSDP2 (build the optimiser after this call: it must see the sharded parameters). Rows of tables sharded
    by shard_item_tables are left out of either: each rank's are its own, and their gradients arrive complete."""
    if not ranks.enabled:
        return model
    tables = {name: child for name, child in model.named_modules() if isinstance(child, RowShardedEmbedding)}
    if strategy == "fsdp":
        for layer in getattr(getattr(model, "encoder", None), "layers", []):
            fully_shard(layer)
        # the root keeps its weights gathered from forward to backward (FSDP2's default for the root),
        # so the loss may read the item table outside forward
        fully_shard(model, ignored_params={table.weight for table in tables.values()})
        return model
    own_rows = [f"{name}.{part}" for name in tables for part in ("weight", "bounds")]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, own_rows)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def full_tensors(state: dict) -> dict:
    """A (nested) state dict with every sharded tensor gathered whole (collective under FSDP)."""
    return {key: full_tensors(value) if isinstance(value, dict)
            else value.full_tensor() if isinstance(value, DTensor) else value for key, value in state.items()}


def load_weights(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Loads full tensors into `module`, sharding each like the parameter it replaces."""
    current = module.state_dict()
    module.load_state_dict({name: load_like(value, current[name]) if name in current else value
                            for name, value in state.items()})


def load_optimizer(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Loads a full optimiser state, sharding each per-parameter tensor like its parameter."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    optimizer.load_state_dict({**state, "state": {
        index: {name: load_like(value, params[index]) if value.shape == params[index].shape else value
                for name, value in per_param.items()} for index, per_param in state["state"].items()}})


def load_like(full: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """`full` placed like `reference`: sharded the same way when it is a DTensor."""
    if not isinstance(reference, DTensor):
        return full
    return distribute_tensor(full.to(reference.device), reference.device_mesh, reference.placements)


def rank_slice(users: np.ndarray, ranks: Distributed) -> np.ndarray:
    """This rank's share of one global batch: a strided slice, so shares differ by at most one user."""
    return users[ranks.rank::ranks.world_size]


def num_batches(num_users: int, batch_size: int, ranks: Distributed) -> int:
    """Global batches per epoch. A trailing batch with fewer users than ranks is dropped: every rank
    must take part in every step, or the gradient all-reduce would wait forever."""
    full, rest = divmod(num_users, batch_size)
    return full + (1 if rest >= ranks.world_size else 0)


def gather_rng(rng: dict[str, torch.Tensor], ranks: Distributed) -> dict[str, torch.Tensor]:
    """Every rank's random streams, keyed `<name>.<rank>` when distributed (collective call)."""
    if not ranks.enabled:
        return rng
    everyone: list[dict[str, torch.Tensor] | None] = [None] * ranks.world_size
    dist.all_gather_object(everyone, {k: v.cpu() for k, v in rng.items()})
    return {f"{name}.{rank}": state for rank, states in enumerate(everyone) for name, state in states.items()}


def own_rng(rng: dict[str, torch.Tensor], ranks: Distributed) -> dict[str, torch.Tensor] | None:
    """This rank's streams out of a checkpoint written by `gather_rng`, or None when another number of processes
    wrote it (see shared_shuffle)."""
    written_by = len({key.rpartition(".")[2] for key in rng if "." in key}) or 1
    if written_by != ranks.world_size:
        return None
    if not ranks.enabled:
        return rng
    suffix = f".{ranks.rank}"
    return {k[:-len(suffix)]: v for k, v in rng.items() if k.endswith(suffix)}


def shared_shuffle(rng: dict[str, torch.Tensor]) -> torch.Tensor:
    """The batch-order stream of a checkpoint, which every rank holds alike: a run resumed on another number of
    processes continues the same order of global batches."""
    return rng["shuffle"] if "shuffle" in rng else rng["shuffle.0"]


def barrier(ranks: Distributed) -> None:
    if ranks.enabled:
        dist.barrier()


def shutdown(ranks: Distributed) -> None:
    if ranks.enabled and dist.is_initialized():
        dist.destroy_process_group()


def exit_rank(ranks: Distributed) -> None:
    """Ends a torchrun rank's process once its output is written, without running destructors. Gloo's process
    group can deadlock in its destructor: the thread that finished a collective frees its tensors, which needs
    the GIL, while the destructor joining that thread holds it (seen after runs with row-sharded tables, whose
    lookups are all-to-alls). Every file is closed by then. Outside torchrun: nothing."""
    if ranks.enabled:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
