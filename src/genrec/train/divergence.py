"""Stops a run whose loss or weights stop being finite, before a checkpoint could keep them.

A NaN loss makes NaN gradients, then NaN weights, and every later metric is meaningless. Reading the
loss back each step would stall a GPU step on a sync, so the first bad step is recorded on the device
and read back every `check_every` steps and before each checkpoint; the weights are checked there too.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from genrec.checkpoint import atomic_write_bytes


class TrainingDiverged(ValueError):
    """The run's loss or weights went non-finite (a user-facing error: the config diverges)."""


class DivergenceGuard:
    def __init__(self, device: torch.device, check_every: int = 50) -> None:
        self.check_every = check_every
        self.first_bad_step = torch.full((), -1, dtype=torch.int64, device=device)  # -1: none yet

    def observe(self, loss: torch.Tensor, step: int) -> None:
        """Records `step` if it is the first whose loss is not finite; reads back every check_every steps."""
        fresh = ~torch.isfinite(loss.detach()) & (self.first_bad_step < 0)
        self.first_bad_step = torch.where(fresh, torch.full_like(self.first_bad_step, step), self.first_bad_step)
        if step % self.check_every == 0:
            self.check_loss()

    def check_loss(self) -> None:
        step = int(self.first_bad_step)
        if step >= 0:
            raise TrainingDiverged(f"the training loss became non-finite at step {step}; lower "
                                   "train.learning_rate (or check the data); checkpoints already written "
                                   "hold the last good weights")

    def check(self, module: nn.Module) -> None:
        """Before a checkpoint: the loss of every step so far and the weights must be finite."""
        self.check_loss()
        bad = [name for name, tensor in module.state_dict().items()
               if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
        if bad:
            raise TrainingDiverged(f"non-finite weights ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); "
                                   "lower train.learning_rate; checkpoints already written hold the last good weights")


@contextlib.contextmanager
def failure_recorded(out_dir: Path, epoch: Callable[[], int], write: bool) -> Iterator[None]:
    """A divergence inside becomes a ValueError naming the run; with `write`, failure.json in the run directory
    says what stopped it (so that it is not mistaken for a finished run)."""
    try:
        yield
    except TrainingDiverged as error:
        if write:
            atomic_write_bytes(out_dir / "failure.json", json.dumps(
                {"error": str(error), "kind": type(error).__name__, "epoch": epoch()}, indent=2).encode())
        raise ValueError(f"{out_dir}: {error}") from error
