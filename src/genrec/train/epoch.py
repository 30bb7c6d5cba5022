"""One training epoch, the same for every task: the trainer turns a slice of its sequences (its users; a
stream's window sequences) into a host batch (`host_batch(indices)`, deterministic, made ahead by
train.loader_workers processes: genrec.data.loader) and a host batch into a loss (`batch_loss(batch) -> StepLoss`,
under bf16 autocast on CUDA); this loop shuffles the sequences (split across ranks under torchrun), runs the
optimiser step with the learning rate as a pure function of the step (so a resumed run follows the same curve), the
weight average, the divergence guard and the progress log, and sums the epoch's loss and throughput without reading
anything back from the GPU per step. A checkpoint may be taken inside an epoch (EpochProgress): the resumed epoch
skips the batches done, in the same order, and reports the loss of the whole epoch."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from genrec.config import TrainConfig
from genrec.data.loader import host_batches
from genrec.train.parallel import num_batches, rank_slice


@dataclass
class StepLoss:
    loss: torch.Tensor  # what the step minimises
    reported: torch.Tensor  # the loss the epoch reports (the retrieval loss; the ranker's without DIN's)
    weight: int  # its weight in the epoch's mean (predicted positions, or 1 for a mean over steps)
    tokens: int
    flops: float  # matrix-multiply FLOPs of the forward and backward passes
    parts: dict[str, torch.Tensor] = field(default_factory=dict)  # more losses to report (DIN's)
    applied: bool = False  # the backward and the optimiser step already ran (train.compile = step)


@dataclass
class EpochProgress:
    """An epoch after `batches` of its batches: its batch order and its reported loss and parts so far (weighted
    sums, in float64, and their weight), what a checkpoint inside the epoch keeps."""
    order: np.ndarray
    batches: int = 0
    sums: list[float] | None = None
    weight: int = 0
    names: list[str] = field(default_factory=list)

    def state(self) -> dict:
        """Everything but the order, for a checkpoint's JSON state (the order goes as a tensor)."""
        return {"batches": self.batches, "sums": self.sums, "weight": self.weight, "names": self.names}


def train_epoch(trainer, num_sequences: int, resumed: EpochProgress | None = None,
                checkpoint: Callable[[EpochProgress], None] | None = None, checkpoint_every: int = 0
                ) -> dict[str, float]:
    """The trainer provides modules, optimizer, average (or None), guard, run_log, streams, ranks, state,
    config, device, autocast_dtype, peak_tflops, host_batch(indices) and batch_loss(host batch) -> StepLoss | None
    (None: skip; called with the step's learning rate set; applied: it stepped the optimiser itself). `resumed`
    continues an epoch a checkpoint was taken in; `checkpoint(progress)` is called every `checkpoint_every` batches
    (0: never; not after the last). Throughput counts this call's batches only."""
    trainer.modules.train()
    trainer.state.setdefault("step", 0)  # runs saved before steps were counted lack it
    train_config = trainer.config.train
    if resumed is None:
        resumed = EpochProgress(torch.randperm(num_sequences, generator=trainer.streams.shuffle).numpy())
    order = resumed.order
    steps_per_epoch = math.ceil(num_sequences / train_config.batch_size)
    # reported loss and the parts, weighted, summed on the device
    sums = None if resumed.sums is None else torch.tensor(resumed.sums, dtype=torch.float64, device=trainer.device)
    total_weight, names = resumed.weight, resumed.names
    total_tokens, total_flops = 0, 0.0
    started = time.perf_counter()
    autocast = trainer.autocast_dtype is not None
    slices = [rank_slice(order[index * train_config.batch_size:(index + 1) * train_config.batch_size], trainer.ranks)
              for index in range(num_batches(num_sequences, train_config.batch_size, trainer.ranks))]
    batches = host_batches(trainer.host_batch, slices[resumed.batches:], train_config.loader_workers,
                           trainer.device.type == "cuda")
    for index, batch in enumerate(batches, start=resumed.batches):
        if checkpoint_every and index and index % checkpoint_every == 0 and index != resumed.batches:
            checkpoint(EpochProgress(order, index, None if sums is None else sums.tolist(), total_weight, names))
        set_learning_rate(trainer.optimizer, train_config, trainer.state["step"], steps_per_epoch)
        with torch.autocast(trainer.device.type, dtype=trainer.autocast_dtype, enabled=autocast):
            step = trainer.batch_loss(batch)
        if step is None:
            continue
        if not step.applied:
            trainer.optimizer.zero_grad(set_to_none=True)
            step.loss.backward()
            trainer.optimizer.step()
        if trainer.average is not None:
            trainer.average.update()
        trainer.state["step"] += 1
        trainer.guard.observe(step.loss, trainer.state["step"])
        if trainer.run_log is not None:
            trainer.run_log.step(index + 1, trainer.state["step"], step.reported, step.tokens)
        names = list(step.parts)
        values = torch.stack([step.reported.detach(), *(part.detach() for part in step.parts.values())]) * step.weight
        sums = values.double() if sums is None else sums + values
        total_weight += step.weight
        total_tokens += step.tokens
        total_flops += step.flops
    seconds = time.perf_counter() - started
    means = [0.0] * (1 + len(names)) if sums is None else (sums / max(1, total_weight)).tolist()
    stats = {"loss": means[0], **dict(zip(names, means[1:])), "tokens_per_s": total_tokens / seconds,
             "tflops": total_flops / seconds / 1e12, "seconds": seconds}
    if trainer.peak_tflops is not None:
        stats["mfu"] = stats["tflops"] / trainer.peak_tflops
    return stats


def set_learning_rate(optimizer: torch.optim.Optimizer, train: TrainConfig, step: int, steps_per_epoch: int) -> None:
    """Linear warm-up over train.warmup_epochs, then constant or cosine to 0 at the last epoch."""
    warmup = train.warmup_epochs * steps_per_epoch
    total = max(1, train.epochs * steps_per_epoch - warmup)
    if step < warmup:
        factor = (step + 1) / warmup
    elif train.lr_schedule == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / total)))
    else:
        factor = 1.0
    for group in optimizer.param_groups:  # a group with its own rate (the row-wise item tables') carries it
        group["lr"] = group.get("base_lr", train.learning_rate) * factor
