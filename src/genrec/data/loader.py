"""Training batches made ahead of the step (train.loader_workers): worker processes (torch's DataLoader, forked)
gather the next batches' events from memory or a mapped store while the training process runs the current step,
which on a GPU is mostly launching kernels. 0 workers make each batch in the training process when it is due.

Making a batch reads no random stream, so the batches and their order are the same for any number of workers,
and so is the run. A worker never touches the GPU; on CUDA the batches come in pinned memory, so their copies
to the device overlap the step."""

from __future__ import annotations

import multiprocessing
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

BATCHES_AHEAD = 4  # per worker


class _Batches(Dataset):
    """Batch i is make(slices[i]); the workers inherit `make` and the data it reads by fork, never by pickling."""

    def __init__(self, make: Callable[[np.ndarray], Any], slices: Sequence[np.ndarray]) -> None:
        self.make, self.slices = make, slices

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, index: int) -> Any:
        return self.make(self.slices[index])


def _as_made(batch: Any) -> Any:
    return batch


def host_batches(make: Callable[[np.ndarray], Any], slices: Sequence[np.ndarray], workers: int,
                 pin_memory: bool = False) -> Iterator[Any]:
    """make(users) for each slice of users, in order; made by `workers` processes ahead of time (0: here, when
    due). pin_memory: return the batches' tensors in page-locked memory (what they hold must have pin_memory())."""
    if workers == 0:
        return map(make, slices)
    if "fork" not in multiprocessing.get_all_start_methods():
        raise ValueError("train.loader_workers > 0 needs processes started by fork, which this platform lacks; "
                         "set it to 0")
    # a generator of its own: DataLoader draws its workers' seeds from it, and from the global one (dropout's on
    # the CPU) otherwise
    return iter(DataLoader(_Batches(make, slices), batch_size=None, shuffle=False, num_workers=workers,
                           collate_fn=_as_made, pin_memory=pin_memory, prefetch_factor=BATCHES_AHEAD,
                           multiprocessing_context="fork", generator=torch.Generator()))
