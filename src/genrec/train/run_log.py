"""What a training run tells its user as it goes: a per-step progress bar on a terminal (loss, tokens/s),
otherwise (or with --no-progress) a plain line every `interval_s` seconds and one per epoch, and TensorBoard
scalars (per epoch, and the loss every `every` steps). Shared by the retrieval and the ranking trainer.

The loss is read back from the device only on the steps that report it (every 10th step under a bar): a
read per step would stall a GPU step on a sync.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

import torch


def print_line(line: str) -> None:
    """A run's default log: each line flushed at once, so that a pipe (genrec train | tee run.log) or a process
    watching the output sees it when it happens, not when a buffer fills."""
    print(line, flush=True)


class RunLog:
    BAR_EVERY = 10  # steps between the bar's loss readings

    def __init__(self, out_dir: Path | None, log: Callable[[str], None], progress: bool, every: int = 50,
                 interval_s: float = 10.0) -> None:
        """out_dir: where TensorBoard scalars go (None: nowhere, as on ranks other than 0); progress: a bar
        when stderr is a terminal and tqdm is installed."""
        self.log, self.every, self.interval_s = log, every, interval_s
        self.last_line = time.perf_counter()
        self.writer = _tensorboard(out_dir, log) if out_dir is not None else None
        self.bar_class = _tqdm() if progress and sys.stderr.isatty() else None
        self.bar = None
        self.epoch, self.num_steps, self.started, self.tokens = 0, 0, 0.0, 0

    def start_epoch(self, epoch: int, num_epochs: int, num_steps: int) -> None:
        """epoch: 1-based."""
        self.epoch, self.num_steps, self.started, self.tokens = epoch, num_steps, time.perf_counter(), 0
        if self.bar_class is not None:
            self.bar = self.bar_class(total=num_steps, desc=f"epoch {epoch}/{num_epochs}", unit="step",
                                      dynamic_ncols=True, leave=False)

    def step(self, step_in_epoch: int, global_step: int, loss: torch.Tensor, tokens: int) -> None:
        """After a step (step_in_epoch 1-based); the loss tensor is read only on the steps that report it."""
        self.tokens += tokens
        now = time.perf_counter()
        to_board = self.writer is not None and global_step % self.every == 0
        to_bar = self.bar is not None and step_in_epoch % self.BAR_EVERY == 0
        # the epoch's own line follows its last step
        to_line = self.bar is None and now - self.last_line >= self.interval_s and step_in_epoch < self.num_steps
        if self.bar is not None:
            self.bar.update(1)
        if not (to_board or to_bar or to_line):
            return
        value = float(loss.detach())
        rate = self.tokens / max(now - self.started, 1e-9)
        if to_board:
            self.writer.add_scalar("train/step_loss", value, global_step)
        if to_bar:
            self.bar.set_postfix(loss=f"{value:.4f}", tok_s=f"{rate:.0f}")
        if to_line:
            self.last_line = now
            self.log(f"epoch {self.epoch} step {step_in_epoch}/{self.num_steps}: loss {value:.4f}, {rate:.0f} tokens/s")

    def end_epoch(self, line: str) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.last_line = time.perf_counter()
        self.log(line)

    def batches(self, description: str) -> Callable[[range], Iterable[int]]:
        """A wrapper for an evaluation's batches: a bar on a terminal, else the batches as they are."""
        if self.bar_class is None:
            return iter
        return lambda batches: self.bar_class(batches, desc=description, unit="batch", dynamic_ncols=True,
                                              leave=False)

    def scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        """Numbers to TensorBoard; an undefined metric (NaN: an AUC over labels of one class) is left out, not
        drawn as a NaN point."""
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


def _tensorboard(out_dir: Path, log: Callable[[str], None]):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log("TensorBoard logging off (pip install 'genrec[train]' for tensorboard)")
        return None
    return SummaryWriter(str(out_dir / "tensorboard"))


def _tqdm():
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


def epoch_line(epoch: int, num_epochs: int, stats: dict[str, float], extra: str = "") -> str:
    """One epoch's log line: loss, throughput, MFU where known, then `extra` (validation, ...)."""
    line = (f"epoch {epoch}/{num_epochs}: loss {stats['loss']:.4f}, {stats['tokens_per_s']:.0f} tokens/s, "
            f"{stats['tflops']:.3f} TFLOP/s" + (f", MFU {stats['mfu']:.1%}" if "mfu" in stats else "")
            + f", {stats['seconds']:.1f} s")
    return line + (f"; {extra}" if extra else "")
