"""An exponential moving average (EMA) of a model's parameters, kept beside the training weights.

After every optimiser step: avg <- decay * avg + (1 - decay) * param (torch's own EMA update,
`torch.optim.swa_utils.get_ema_multi_avg_fn`). Evaluation and the checkpoint's inference weights use
the average: it smooths the step-to-step noise that makes one epoch's weights score better or worse
than their neighbours'. Works on sharded (FSDP2) parameters too: each rank averages its own shards.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn

from genrec.train.parallel import load_like


class WeightAverage:
    def __init__(self, module: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"an EMA decay must be in (0, 1), got {decay}")
        self.named = dict(module.named_parameters())
        self.averaged = {name: p.detach().clone() for name, p in self.named.items()}
        self._update = get_ema_multi_avg_fn(decay)

    @torch.no_grad()
    def update(self) -> None:
        """Call after each optimiser step."""
        self._update(list(self.averaged.values()), [p.detach() for p in self.named.values()], None)

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The module holds the averaged weights inside the block and its training weights again after."""
        training = {name: p.detach().clone() for name, p in self.named.items()}
        _copy_into(self.named, self.averaged)
        try:
            yield
        finally:
            _copy_into(self.named, training)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.averaged)

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Full tensors (as a checkpoint holds them), sharded like the parameters where they are."""
        if state.keys() != self.averaged.keys():
            missing, unexpected = self.averaged.keys() - state.keys(), state.keys() - self.averaged.keys()
            raise ValueError(f"averaged weights do not fit the model: missing {sorted(missing)}, "
                             f"unexpected {sorted(unexpected)}")
        for name, value in state.items():
            self.averaged[name].copy_(load_like(value, self.averaged[name]))


@torch.no_grad()
def _copy_into(targets: dict[str, torch.Tensor], sources: dict[str, torch.Tensor]) -> None:
    for name, target in targets.items():
        target.copy_(sources[name])
