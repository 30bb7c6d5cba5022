"""Generative retrieval training: next-item prediction at every position with sampled softmax.

Reads top to bottom: set-up, one step's loss, evaluation, checkpoints, the run. The epoch of steps
(genrec.train.epoch) and the loop over epochs with checkpoints and selection (run_state.run_epochs) are
shared with the ranking trainer.
Checkpoints are written at every epoch end (last.safetensors) and, in validated mode, when the
validation NDCG@10 improves (best.safetensors); --resume continues bit-exactly from last.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from genrec.checkpoint import atomic_write_json, locate_checkpoint
from genrec.config import Config, config_to_dict, load_run_config
from genrec.data import EvalSplit, SequenceBatch, make_batch
from genrec.data.batch import successors
from genrec.data.splits import sample_users
from genrec.data.stochastic_length import stochastic_length, stochastic_length_successors
from genrec.devices import resolve_device
from genrec.eval.metrics import summarize
from genrec.eval.protocol import model_scorer, popularity_scorer, rank_split
from genrec.ops.jagged import lengths_from_offsets
from genrec.train.averaging import WeightAverage
from genrec.train.curves import write_curves
from genrec.train.divergence import DivergenceGuard
from genrec.train.epoch import StepLoss, train_epoch
from genrec.train.experiment import build_model, compiled, graph_batches, peak_tflops, prepare_data
from genrec.train.losses import full_softmax_loss, loss_flops, sampled_softmax_loss
from genrec.train.optimizers import build_optimizer
from genrec.train.parallel import data_parallel, init_distributed, num_batches
from genrec.train.run_log import RunLog, print_line
from genrec.train.run_state import RandomStreams, load_run_weights, resume_run, run_epochs, run_fit, save_run
from genrec.train.step_graphs import StepGraphs

SELECTION_METRIC = "ndcg@10"


class Trainer:
    def __init__(self, config: Config, out_dir: Path, log: Callable[[str], None] = print_line,
                 progress: bool = True) -> None:
        self.config = config.validate()
        self.out_dir = out_dir
        self.ranks, device = init_distributed(config.train.device)
        self.log = log if self.ranks.is_main else (lambda _: None)
        self.progress = progress and self.ranks.is_main
        self.device = device or resolve_device(config.train.device)
        self.data = prepare_data(config)
        self.autocast_dtype = torch.bfloat16 if self.device.type == "cuda" else None
        self.peak_tflops = peak_tflops(self.device)
        torch.manual_seed(config.train.seed)
        self.model = build_model(config, self.data, self.device, self.ranks)
        self.sharded_tables = config.train.item_table_sharding == "rows" and self.ranks.enabled
        if self.sharded_tables:
            self.log(f"item table sharded by rows: rank 0 holds {self.model.embedding.item.weight.shape[0]:,} of "
                     f"{self.model.embedding.item.num_rows:,}")
        self.modules = self.model  # what is trained, checked for finite weights each epoch
        # before the optimiser: FSDP2 replaces the parameters with their shards
        self.train_model = compiled(data_parallel(self.model, self.ranks, self.device, config.train.data_parallel),
                                    config)
        self.for_graphs = graph_batches(config, self.ranks)
        self.average = WeightAverage(self.model, config.train.ema_decay) if config.train.ema_decay > 0 else None
        if self.ranks.enabled:  # same initial weights everywhere, then rank-specific dropout
            torch.manual_seed(config.train.seed + self.ranks.rank)
        whole_step = config.train.compile == "step"
        if whole_step and self.ranks.enabled:
            raise ValueError("train.compile = step captures one process's step: under torchrun take graphs")
        self.optimizer = build_optimizer(config.train, self.model, sparse_tables=not self.ranks.enabled,
                                         capturable=whole_step)
        self.streams = RandomStreams(config.train.seed, self.ranks.rank, self.device,
                                     config.train.stochastic_length_alpha > 0)
        self.whole_step = StepGraphs(self.padded_step, self.optimizer, self.device, [self.streams.sample]) \
            if whole_step else None
        self.state = {"epoch": 0, "step": 0, "best_metric": None, "best_epoch": None, "valid": [],
                      "epoch_seconds": []}
        if self.data.input_values:  # what serving maps a request's user features to codes by
            self.state["input_values"] = self.data.input_values
        self.run_log: RunLog | None = None  # opened by fit
        self.guard = DivergenceGuard(self.device)

    # ---- one step's loss (the epoch loop is genrec.train.epoch) -------------------------------
    def train_epoch(self) -> dict[str, float]:
        return train_epoch(self, self.data.split.train.num_users)

    def host_batch(self, users: np.ndarray) -> SequenceBatch:
        return make_batch(self.data.split.train, users, self.config.data.max_seq_len)

    def batch_loss(self, batch: SequenceBatch) -> StepLoss | None:
        """Next-item loss of these users' histories at every position that has a successor."""
        loss_config = self.config.train.loss
        alpha, sampling = self.config.train.stochastic_length_alpha, self.config.train.stochastic_length_sampling
        original_positions = self.config.train.stochastic_length_positions == "original"
        # each token's target, its successor's item id (0: none); found on the host so the step never waits on
        # the GPU
        if alpha > 0 and sampling == "successors":
            batch, next_ids = stochastic_length_successors(batch, alpha, self.streams.length, original_positions)
        else:
            if alpha > 0:
                batch = stochastic_length(batch, alpha, self.streams.length, sampling == "contiguous",
                                          original_positions)
            next_ids = successors(batch.item_ids, batch.seq_offsets)
        lengths = lengths_from_offsets(batch.seq_offsets)
        positions = torch.from_numpy(np.flatnonzero(next_ids.numpy()))
        num_positions = positions.numel()
        if num_positions == 0:
            return None
        flops = 3 * (self.model.encoder.forward_flops(lengths) + loss_flops(  # forward + 2x for backward
            num_positions, self.config.model.embedding_dim, self.data.num_items, loss_config.negatives,
            loss_config.num_negatives, loss_config.in_batch_negatives))
        if self.whole_step is not None:
            padded = self.for_graphs(batch)
            targets = successors(padded.item_ids, padded.seq_offsets)
            loss = self.whole_step(padded, targets, (targets > 0).float())  # 0: a last token, or padding
            return StepLoss(loss, loss, num_positions, int(lengths.sum()), flops, applied=True)
        targets = next_ids[positions].to(self.device, non_blocking=True)
        positions = positions.to(self.device, non_blocking=True)
        user_embeddings = self.train_model(self.for_graphs(batch).to(self.device)).index_select(0, positions)
        loss = self.next_item_loss(user_embeddings, targets)
        return StepLoss(loss, loss, num_positions, int(lengths.sum()), flops)

    def next_item_loss(self, user_embeddings: torch.Tensor, targets: torch.Tensor,
                       weights: torch.Tensor | None = None) -> torch.Tensor:
        loss_config = self.config.train.loss
        if loss_config.negatives == "all":
            return full_softmax_loss(user_embeddings, targets, self.model.item_embeddings, self.data.num_items,
                                     loss_config.temperature, weights)
        return sampled_softmax_loss(user_embeddings, targets, self.model.item_embeddings, self.data.num_items,
                                    loss_config.num_negatives, loss_config.temperature, self.streams.sample,
                                    loss_config.in_batch_negatives, self.model.similarity,
                                    whole_table=not self.sharded_tables, weights=weights)

    def padded_step(self, batch: SequenceBatch, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The whole step of train.compile = step (genrec.train.step_graphs): every row of a padded batch predicts
        its target, weighted; the autocast cache stays off, as it would otherwise hand the graph the casts of the
        weights that the eager step before its capture made."""
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None,
                            cache_enabled=False):
            loss = self.next_item_loss(self.train_model(batch), targets, weights)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    # ---- evaluation ------------------------------------------------------------------------
    def evaluate(self, split: EvalSplit) -> dict[str, float]:
        """Scores the weight average where the run keeps one, else the training weights (eval.max_users: on a
        seeded sample of the split's users)."""
        split = self.eval_users(split)
        self.model.eval()
        with self.average.swapped_in() if self.average is not None else contextlib.nullcontext():
            try:
                progress = self.run_log.batches("evaluate") if self.run_log is not None else iter
                result = rank_split(model_scorer(self.model, self.autocast_dtype), split,
                                    self.config.data.max_seq_len, self.config.train.eval_batch_size, self.device,
                                    self.config.eval.exclude_history, progress, self.config.train.loss.temperature)
            except ValueError as error:
                raise ValueError(f"{self.out_dir}: {error}") from error
        return summarize(result.ranks, self.config.eval.ks, result.nll)

    def eval_users(self, split: EvalSplit) -> EvalSplit:
        """The users evaluation ranks: all of the split, or its seeded sample of eval.max_users."""
        return sample_users(split, self.config.eval.max_users, self.config.train.seed)

    def popularity_baseline(self, split: EvalSplit) -> dict[str, float]:
        split = self.eval_users(split)
        scorer = popularity_scorer(self.data.split.train.item_counts(self.data.num_items), self.device)
        ranks = rank_split(scorer, split, self.config.data.max_seq_len, self.config.train.eval_batch_size,
                           self.device, self.config.eval.exclude_history).ranks
        return summarize(ranks, self.config.eval.ks)

    # ---- checkpoints -----------------------------------------------------------------------
    def save(self, name: str) -> None:
        save_run(self.out_dir / name, self.model, self.optimizer, self.streams, self.device, self.ranks,
                 config_to_dict(self.config), self.state, torch.from_numpy(self.data.item_vocab), self.average)

    def load(self, path: Path) -> None:
        """The weights (and their average) of a checkpoint of this run, for evaluation."""
        load_run_weights(path, self.model, self.average)

    def resume(self) -> None:
        self.state = resume_run(self.out_dir / "last.safetensors", self.model, self.optimizer, self.streams,
                                self.device, self.ranks, self.average, self.log)
        self.log(f"resumed from {self.out_dir / 'last.safetensors'} after epoch {self.state['epoch']}")

    # ---- the run ---------------------------------------------------------------------------
    def fit(self, resume: bool = False, overwrite: bool = False) -> dict[str, float]:
        return run_fit(self, resume, overwrite)

    def _fit(self) -> dict[str, float]:
        main = self.ranks.is_main
        split = self.data.split
        self.log(f"data: {json.dumps(self.data.summary)}; mode {split.mode}; device {self.device}")
        started = time.perf_counter()
        run_epochs(self)
        if split.valid is not None and self.state["best_epoch"] is not None:
            self.load(self.out_dir / "best.safetensors")
            self.log(f"selected epoch {self.state['best_epoch']} on validation {SELECTION_METRIC}")
        metrics = self.evaluate(split.test)
        summary = {"split": "test", "metrics": metrics, "popularity": self.popularity_baseline(split.test),
                   "eval_users": self.eval_users(split.test).histories.num_users,
                   "train_seconds": time.perf_counter() - started, **self.state, "data": self.data.summary}
        if main:
            atomic_write_json(self.out_dir / "metrics.json", metrics)
            atomic_write_json(self.out_dir / "summary.json", summary)
            cut = self.config.eval.ks[0]
            shown = (f"hr@{cut}", f"ndcg@{cut}")
            write_curves(self.out_dir / "curves.png", [tuple(pair) for pair in self.state.get("losses", [])],
                         {k: [(v["epoch"], v[k]) for v in self.state["valid"] if k in v] for k in shown},
                         {k: metrics[k] for k in shown if k in metrics},
                         self.state["best_epoch"] or self.state["epoch"], self.log)
        self.run_log.scalars("test", metrics, self.state["epoch"])
        return summary

    # ---- what the shared epoch loop (run_state.run_epochs) asks of a trainer --------------------
    def steps_per_epoch(self) -> int:
        return num_batches(self.data.split.train.num_users, self.config.train.batch_size, self.ranks)

    def validate(self, epoch: int) -> tuple[dict[str, float], float] | None:
        """Validation NDCG@10 every train.eval_every epochs and after the last (validated mode)."""
        valid_split, epochs = self.data.split.valid, self.config.train.epochs
        if valid_split is None or (epoch % self.config.train.eval_every and epoch != epochs):
            return None
        valid = self.evaluate(valid_split)
        return valid, valid[SELECTION_METRIC]

    def record_epoch(self, epoch: int, stats: dict[str, float], valid: dict[str, float] | None) -> None:
        self.state["epoch_seconds"].append(round(stats["seconds"], 3))
        # [epoch, loss] pairs; absent in runs saved before they were kept
        self.state.setdefault("losses", []).append([epoch, round(stats["loss"], 6)])
        if valid is not None:
            self.state["valid"].append({"epoch": epoch, **valid})

    def validated_epochs(self) -> list[int]:
        return [valid["epoch"] for valid in self.state["valid"]]

    @staticmethod
    def epoch_note(stats: dict[str, float], metric: float | None) -> str:
        return "" if metric is None else f"valid {SELECTION_METRIC} {metric:.4f}"



def evaluate_checkpoint(path: Path, split_name: str, log: Callable[[str], None] = print_line,
                        data_dir: str | None = None) -> dict:
    """Re-evaluates a finished run on valid or test: `path` is its directory (the best checkpoint in validated
    mode, else the last) or a checkpoint file in it; data_dir: where its data set lives now, if it moved."""
    run_dir, checkpoint = locate_checkpoint(path)
    config = load_run_config(run_dir)
    if data_dir is not None:
        config.data.path = str(Path(data_dir).resolve())
    trainer = Trainer(config, run_dir, log=log, progress=False)
    trainer.load(checkpoint)
    split = trainer.data.split.test if split_name == "test" else trainer.data.split.valid
    if split is None:
        raise ValueError(f"{run_dir}: mode 'paper' has no validation split; use --split test")
    log(f"evaluating {checkpoint} on {split_name}")
    return {"split": split_name, "checkpoint": checkpoint.name, "metrics": trainer.evaluate(split),
            "popularity": trainer.popularity_baseline(split)}
