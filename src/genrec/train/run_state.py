"""What a training run carries across a restart besides its weights: its random streams, and the
collective save / resume that puts them, the model, the optimiser and the trainer state into one
checkpoint (shared by the retrieval and the ranking trainer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from genrec.checkpoint import (Checkpoint, atomic_write_bytes, load_checkpoint, remove_stale_temporaries,
                               restore_rng, rng_state, save_checkpoint)
from genrec.config import Config, config_to_json
from genrec.train.averaging import WeightAverage
from genrec.train.divergence import failure_recorded
from genrec.train.parallel import (Distributed, barrier, full_tensors, gather_rng, load_optimizer, load_weights,
                                   own_rng)
from genrec.train.run_log import RunLog


class RandomStreams:
    """The shuffle is the same on every rank (so ranks split one batch order); sampling (negatives,
    impressions) and Stochastic Length differ per rank. The length stream is checkpointed only when
    Stochastic Length is on, so runs without it keep their checkpoint layout."""

    def __init__(self, seed: int, rank: int, sample_device: torch.device | str, stochastic_length: bool) -> None:
        self.shuffle = torch.Generator().manual_seed(seed)
        self.sample = torch.Generator(sample_device).manual_seed(seed + 1 + rank)
        self.length = torch.Generator().manual_seed(seed + 1000 + rank)
        self.stochastic_length = stochastic_length

    def named(self) -> dict[str, torch.Generator]:
        streams = {"shuffle": self.shuffle, "sample": self.sample}
        if self.stochastic_length:
            streams["length"] = self.length
        return streams


def save_run(path: Path, module: nn.Module, optimizer: torch.optim.Optimizer, streams: RandomStreams,
             device: torch.device, ranks: Distributed, config: dict[str, Any], state: dict[str, Any],
             item_vocab: torch.Tensor | None, average: WeightAverage | None = None) -> None:
    """Collective under torchrun: every rank hands in its random streams (and, under FSDP, its shards),
    rank 0 writes."""
    rng = gather_rng(rng_state(streams.named(), device), ranks)
    weights, optimizer_state = full_tensors(module.state_dict()), full_tensors(optimizer.state_dict())
    averaged = full_tensors(average.state_dict()) if average is not None else None
    if ranks.is_main:
        save_checkpoint(path, weights, optimizer_state, rng, config, state, item_vocab, averaged)
    barrier(ranks)


def resume_run(path: Path, module: nn.Module, optimizer: torch.optim.Optimizer, streams: RandomStreams,
               device: torch.device, ranks: Distributed, average: WeightAverage | None = None) -> dict[str, Any]:
    """Restores weights, their average, optimiser and this rank's random streams; returns the trainer
    state."""
    checkpoint = load_run_weights(path, module, average)
    load_optimizer(optimizer, checkpoint.optimizer)
    restore_rng(own_rng(checkpoint.rng, ranks), streams.named(), device)
    return checkpoint.state


def load_run_weights(path: Path, module: nn.Module, average: WeightAverage | None = None) -> Checkpoint:
    """Loads a checkpoint's weights into `module` and its weight average into `average`, which must be
    kept by both or by neither; returns the checkpoint."""
    checkpoint = load_checkpoint(path)
    if (average is None) != (checkpoint.averaged is None):
        raise ValueError(f"{path}: the run {'kept' if checkpoint.averaged else 'did not keep'} a weight average "
                         "(train.ema_decay) and this config does not match")
    load_weights(module, checkpoint.model)
    if average is not None:
        average.load_state_dict(checkpoint.averaged)
    return checkpoint


RUN_FILES = ("config.json", "last.safetensors", "best.safetensors", "metrics.json", "summary.json", "failure.json",
             "curves.png")


def check_run_directory(out_dir: Path, resume: bool, overwrite: bool) -> None:
    """An --out that holds a run (config.json) is refused unless the run is resumed or overwritten, so that a
    finished run's results are never lost to a second command; a file is no run directory."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: --out must be a directory, and this is a file")
    holds_run = (out_dir / "config.json").is_file()
    if resume and not holds_run:
        raise ValueError(f"{out_dir}: nothing to resume (no config.json)")
    if holds_run and not (resume or overwrite):
        raise ValueError(f"{out_dir}: already holds a run; --resume continues it, --overwrite replaces it, or "
                         "choose another --out")


def start_run_directory(out_dir: Path, config: Config, resume: bool = False, overwrite: bool = False) -> None:
    """Creates the run directory, drops what a killed run left (temporary files, an old failure.json) and, when
    overwriting, the old run's files (others stay), then writes config.json."""
    check_run_directory(out_dir, resume, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    (out_dir / "failure.json").unlink(missing_ok=True)
    if overwrite and not resume:
        for name in RUN_FILES:
            (out_dir / name).unlink(missing_ok=True)
        for stale in [*out_dir.glob("metrics-*.json"), *(out_dir / "tensorboard").glob("events.*")]:
            stale.unlink()
    atomic_write_bytes(out_dir / "config.json", config_to_json(config).encode())


def run_fit(trainer, resume: bool, overwrite: bool) -> dict:
    """The frame of both trainers' fit: the run directory (rank 0 writes files under torchrun), the run's log,
    resuming, and a divergence recorded in failure.json; the trainer's _fit() runs the epochs."""
    main = trainer.ranks.is_main
    if main:
        start_run_directory(trainer.out_dir, trainer.config, resume, overwrite)
    trainer.run_log = RunLog(trainer.out_dir if main else None, trainer.log, trainer.progress)
    try:
        if resume:
            trainer.resume()
        with failure_recorded(trainer.out_dir, lambda: trainer.state["epoch"], main):
            return trainer._fit()
    finally:
        trainer.run_log.close()
