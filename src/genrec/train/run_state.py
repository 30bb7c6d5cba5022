"""The frame both trainers (retrieval and ranking) share: the epoch loop, the run directory, what a run
carries across a restart besides its weights (its random streams), and the collective save / resume that
puts them, the model, the optimiser and the trainer state into one checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from genrec.checkpoint import (Checkpoint, atomic_write_bytes, load_checkpoint, remove_stale_temporaries,
                               restore_rng, rng_state, save_checkpoint)
from genrec.config import Config, config_to_json
from genrec.train.averaging import WeightAverage
from genrec.train.divergence import failure_recorded
from genrec.train.parallel import (Distributed, barrier, full_tensors, gather_rng, load_optimizer, load_weights,
                                   own_rng, shared_shuffle)
from genrec.train.run_log import RunLog, epoch_line


class RandomStreams:
    """The shuffle is the same on every rank (so ranks split one batch order); sampling (negatives,
    impressions) and Stochastic Length differ per rank. The length stream is checkpointed only when
    Stochastic Length is on, so runs without it keep their checkpoint layout."""

    def __init__(self, seed: int, rank: int, sample_device: torch.device | str, stochastic_length: bool) -> None:
        self.seed, self.rank = seed, rank
        self.shuffle = torch.Generator().manual_seed(seed)
        self.sample = torch.Generator(sample_device).manual_seed(seed + 1 + rank)
        self.length = torch.Generator().manual_seed(seed + 1000 + rank)
        self.stochastic_length = stochastic_length

    def rederive(self, step: int) -> None:
        """This rank's own streams (dropout through torch's global generator, negatives, Stochastic Length) seeded
        from (seed, rank, step), for a run resumed on another number of processes than wrote its checkpoint:
        reproducible, though not the streams an unchanged number of processes would have drawn."""
        seeds = np.random.SeedSequence([self.seed, self.rank, step]).generate_state(3, np.uint64)
        torch.manual_seed(int(seeds[0]))
        self.sample.manual_seed(int(seeds[1]))
        self.length.manual_seed(int(seeds[2]))

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
               device: torch.device, ranks: Distributed, average: WeightAverage | None = None,
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """Restores weights, their average, optimiser and this rank's random streams; returns the trainer state. A
    checkpoint of another number of processes resumes too (its tensors are whole): the batch order continues,
    and each rank's own streams are derived afresh (RandomStreams.rederive), so the run is not the one an
    unchanged number of processes would have made."""
    checkpoint = load_run_weights(path, module, average)
    load_optimizer(optimizer, checkpoint.optimizer)
    mine = own_rng(checkpoint.rng, ranks)
    if mine is not None:
        restore_rng(mine, streams.named(), device)
    else:
        streams.shuffle.set_state(shared_shuffle(checkpoint.rng))
        streams.rederive(checkpoint.state["step"])
        log(f"{path} was written by another number of processes than {ranks.world_size}: the batch order continues, "
            "each process's random streams (dropout, negatives, Stochastic Length) start afresh")
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


def run_epochs(trainer) -> None:
    """The epoch loop of both trainers: train an epoch, check the weights before anything is scored or
    saved, validate when the trainer says so (keeping best.safetensors at each gain of its selection
    metric), save last.safetensors, log one line; stop early after train.patience validations without a
    gain. The trainer supplies train_epoch() -> stats, validate(epoch) -> (metrics, selection value) or
    None, record_epoch(epoch, stats, valid) (its own bookkeeping in `state`), validated_epochs(),
    steps_per_epoch() and epoch_note(stats, selection value)."""
    epochs, state = trainer.config.train.epochs, trainer.state
    for epoch in range(state["epoch"] + 1, epochs + 1):
        if _out_of_patience(trainer):  # checked first so a resumed run stops too
            trainer.log(f"early stop after epoch {epoch - 1}: no validation gain since epoch {state['best_epoch']}")
            break
        trainer.run_log.start_epoch(epoch, epochs, trainer.steps_per_epoch())
        stats = trainer.train_epoch()
        trainer.guard.check(trainer.modules)
        state["epoch"] = epoch
        trainer.run_log.scalars("train", stats, epoch)
        validated = trainer.validate(epoch)
        valid, metric = validated if validated is not None else (None, None)
        if valid is not None:
            trainer.run_log.scalars("valid", valid, epoch)
        trainer.record_epoch(epoch, stats, valid)
        if metric is not None and (state["best_metric"] is None or metric > state["best_metric"]):
            state["best_metric"], state["best_epoch"] = metric, epoch
            trainer.save("best.safetensors")
        trainer.save("last.safetensors")
        trainer.run_log.end_epoch(epoch_line(epoch, epochs, stats, trainer.epoch_note(stats, metric)))


def _out_of_patience(trainer) -> bool:
    patience, best = trainer.config.train.patience, trainer.state["best_epoch"]
    if patience == 0 or best is None:
        return False
    return sum(1 for epoch in trainer.validated_epochs() if epoch > best) >= patience
