"""Generative ranking training: one causal pass per user predicts every event's action signals
(multi-task BCE), beside a DIN baseline trained on the same batches (train.baseline_impressions impressions per
user and step); both are evaluated on each user's held-out last event (AUC and normalised entropy per task).

The held-out event's item is in the ranker's input (target-aware) but its action is not visible
to the prediction (causal). Validated mode holds out the second-to-last event for validation and
tests the epoch with the best mean validation AUC of the ranker (best.safetensors). Ranker and DIN
share one optimiser (their parameters are disjoint, so the updates are those of two) and one
checkpoint file, written atomically every epoch; --resume continues from it exactly. Under torchrun
both train data-parallel, as the retriever does (see genrec.train.parallel).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from genrec.checkpoint import atomic_write_json, locate_checkpoint
from genrec.config import Config, config_to_dict, load_run_config
from genrec.data import make_batch, min_length_for
from genrec.data.batch import SequenceBatch
from genrec.data.sequences import JaggedEvents
from genrec.data.stochastic_length import stochastic_length
from genrec.devices import resolve_device
from genrec.eval.metrics import auc, normalized_entropy
from genrec.model.din import DIN
from genrec.model.ranking import GenerativeRanker
from genrec.ops.jagged import jagged_to_padded, lengths_from_offsets
from genrec.train.averaging import WeightAverage
from genrec.train.curves import write_curves
from genrec.train.divergence import DivergenceGuard
from genrec.train.epoch import StepLoss, train_epoch
from genrec.train.experiment import build_checked, compiled, graph_batches, load_sequences, peak_tflops
from genrec.train.optimizers import build_optimizer
from genrec.train.parallel import data_parallel, init_distributed, num_batches
from genrec.train.run_log import RunLog, print_line
from genrec.train.run_state import RandomStreams, load_run_weights, resume_run, run_epochs, run_fit, save_run


def _din_inputs(batch: SequenceBatch, targets: torch.Tensor):
    """DIN's impressions at positions `targets` [B, K] of the batch's sequences (K per sequence; [B]: one), in
    sequence order: the history before each (padded) and its item."""
    n = int(lengths_from_offsets(batch.seq_offsets).max())
    per_sequence = targets.view(targets.shape[0], -1).shape[1]
    ids = jagged_to_padded(batch.item_ids, batch.seq_offsets, n).repeat_interleave(per_sequence, 0)
    labels = jagged_to_padded(batch.labels, batch.seq_offsets, n).repeat_interleave(per_sequence, 0)
    mask = torch.arange(n, device=ids.device).view(1, n) < targets.reshape(-1, 1)
    return ids * mask, labels * mask.unsqueeze(-1), mask, ids.gather(1, targets.reshape(-1, 1)).squeeze(1)


class RankingTrainer:
    def __init__(self, config: Config, out_dir: Path, log: Callable[[str], None] = print_line,
                 progress: bool = True) -> None:
        self.config = config.validate()
        self.out_dir = out_dir
        self.ranks, device = init_distributed(config.train.device)
        self.log = log if self.ranks.is_main else (lambda _: None)
        self.device = device or resolve_device(config.train.device)
        self.peak_tflops = peak_tflops(self.device)
        self.autocast_dtype = torch.bfloat16 if self.device.type == "cuda" else None
        data_config = config.data
        held_out = 1 if data_config.mode == "paper" else 2
        # every user keeps an event to learn from before the held-out ones, and one to read before those
        loaded = load_sequences(config, max(min_length_for(data_config.mode), held_out + 2), with_actions=True)
        data, self.task_names, self.summary = loaded.data, loaded.task_names, loaded.summary
        self.sequences, self.held_out, self.num_items = data.sequences, held_out, data.num_items
        self.item_vocab = torch.from_numpy(data.item_vocab)
        cardinalities = loaded.context_cardinalities
        torch.manual_seed(config.train.seed)
        num_tasks = len(self.task_names)
        self.model = build_checked(lambda build_item_table: GenerativeRanker(
            config.model, self.num_items, num_tasks, data_config.max_seq_len, loaded.has_timestamps, cardinalities,
            loaded.item_content, build_item_table, loaded.series_cardinality, data_config.max_series_len),
            config, self.device, 2 * int(loaded.summary["events"]), self.ranks)
        self.baseline = DIN(self.num_items, config.model.embedding_dim, num_tasks).to(self.device)
        self.modules = nn.ModuleDict({"ranker": self.model, "din": self.baseline})
        # before the optimiser: FSDP2 replaces the parameters with their shards
        self.train_ranker = compiled(data_parallel(self.model, self.ranks, self.device, config.train.data_parallel),
                                     config)
        self.train_baseline = compiled(data_parallel(self.baseline, self.ranks, self.device,
                                                     config.train.data_parallel), config, padded=False)
        self.for_graphs = graph_batches(config, self.ranks)
        self.average = WeightAverage(self.modules, config.train.ema_decay) if config.train.ema_decay > 0 else None
        self.optimizer = build_optimizer(config.train, self.modules, sparse_tables=not self.ranks.enabled)
        self.streams = RandomStreams(config.train.seed, self.ranks.rank, "cpu",
                                     config.train.stochastic_length_alpha > 0)
        if self.ranks.enabled:
            torch.manual_seed(config.train.seed + self.ranks.rank)
        self.state = {"epoch": 0, "step": 0, "tasks": self.task_names, "epochs": [], "best_metric": None,
                      "best_epoch": None}
        if loaded.input_values:  # what serving maps a request's user features to codes by
            self.state["input_values"] = loaded.input_values
        self.guard = DivergenceGuard(self.device)
        self.progress = progress and self.ranks.is_main
        self.run_log: RunLog | None = None  # opened by fit

    def _batch(self, sequences: JaggedEvents, users: np.ndarray, drop_last: int) -> SequenceBatch:
        return make_batch(sequences, users, self.config.data.max_seq_len, drop_last).to(self.device)

    def train_epoch(self) -> dict[str, float]:
        return train_epoch(self, self.sequences.num_users)

    def host_batch(self, users: np.ndarray) -> SequenceBatch:
        return make_batch(self.sequences, users, self.config.data.max_seq_len, self.held_out)

    def batch_loss(self, host_batch: SequenceBatch) -> StepLoss:
        """The ranker's multi-task loss at every event, plus DIN's at train.baseline_impressions per user."""
        if self.config.train.stochastic_length_alpha > 0:
            host_batch = stochastic_length(host_batch, self.config.train.stochastic_length_alpha, self.streams.length,
                                           self.config.train.stochastic_length_sampling == "contiguous")
        token_lengths = 2 * lengths_from_offsets(host_batch.seq_offsets)  # item and action tokens; no sync
        batch = host_batch.to(self.device)
        flops = 3 * self.model.encoder.forward_flops(token_lengths)  # forward + 2x for backward
        padded = self.for_graphs(host_batch)
        logits = self.train_ranker(batch if padded is host_batch else padded.to(self.device))[:batch.item_ids.shape[0]]
        loss = F.binary_cross_entropy_with_logits(logits, batch.labels)
        # DIN: train.baseline_impressions per user, each at a random position with a non-empty history
        lengths = lengths_from_offsets(batch.seq_offsets)
        impressions = (lengths.shape[0], self.config.train.baseline_impressions)
        uniform = torch.rand(impressions, generator=self.streams.sample).to(self.device)
        targets = 1 + (uniform * (lengths - 1).unsqueeze(1)).long()  # [B, K]
        history_ids, history_labels, mask, target_ids = _din_inputs(batch, targets)
        labels = batch.labels[(batch.seq_offsets[:-1].unsqueeze(1) + targets).reshape(-1)]
        baseline_loss = F.binary_cross_entropy_with_logits(
            self.train_baseline(history_ids, history_labels, mask, target_ids), labels)
        return StepLoss(loss + baseline_loss, loss, 1, int(token_lengths.sum()), flops,
                        {"baseline_loss": baseline_loss})

    @torch.no_grad()
    def evaluate(self, drop_last: int) -> dict[str, dict[str, float]]:
        """AUC / NE per task on each user's event `drop_last + 1` from the end, scored by the weight average
        where the run keeps one."""
        with self.average.swapped_in() if self.average is not None else contextlib.nullcontext():
            return self._evaluate(drop_last)

    def _evaluate(self, drop_last: int) -> dict[str, dict[str, float]]:
        self.model.eval()
        self.baseline.eval()
        model_logits, baseline_logits, labels = [], [], []
        for start in range(0, self.sequences.num_users, self.config.train.eval_batch_size):
            users = np.arange(start, min(start + self.config.train.eval_batch_size, self.sequences.num_users))
            batch = self._batch(self.sequences, users, drop_last)
            last = batch.seq_offsets[1:] - 1
            model_logits.append(self.model(batch)[last].cpu())
            last_position = lengths_from_offsets(batch.seq_offsets) - 1
            baseline_logits.append(self.baseline(*_din_inputs(batch, last_position)).cpu())
            labels.append(batch.labels[last].cpu())
        labels = torch.cat(labels)
        for name, logits in (("ranker", model_logits), ("din", baseline_logits)):
            if not all(bool(torch.isfinite(part).all()) for part in logits):
                raise ValueError(f"{self.out_dir}: non-finite {name} scores; refusing to evaluate them")
        result = {}
        for name, logits in (("model", torch.cat(model_logits)), ("din", torch.cat(baseline_logits))):
            result[name] = {}
            for task, task_name in enumerate(self.task_names):
                result[name][f"{task_name}/auc"] = auc(logits[:, task], labels[:, task])
                result[name][f"{task_name}/ne"] = normalized_entropy(logits[:, task], labels[:, task])
        return result

    def save(self, name: str) -> None:
        save_run(self.out_dir / name, self.modules, self.optimizer, self.streams, self.device, self.ranks,
                 config_to_dict(self.config), self.state, self.item_vocab, self.average)

    def resume(self) -> None:
        self.state = resume_run(self.out_dir / "last.safetensors", self.modules, self.optimizer, self.streams,
                                self.device, self.ranks, self.average, self.log)
        self.log(f"resumed from {self.out_dir / 'last.safetensors'} after epoch {self.state['epoch']}")

    # ---- what the shared epoch loop (run_state.run_epochs) asks of a trainer --------------------
    def steps_per_epoch(self) -> int:
        return num_batches(self.sequences.num_users, self.config.train.batch_size, self.ranks)

    def validate(self, epoch: int) -> tuple[dict[str, float], float] | None:
        """The ranker's AUC / NE on each user's second-to-last event (validated mode); selects on the mean AUC of
        the tasks where it is defined (a task whose held-out labels are all one class has none: its NaN would
        make every epoch compare as no better, so that selection kept the first and patience stopped the run)."""
        if self.held_out != 2:
            return None
        valid = self.evaluate(drop_last=1)["model"]
        defined = [v for k, v in valid.items() if k.endswith("/auc") and math.isfinite(v)]
        if not defined:
            raise ValueError(f"{self.out_dir}: no task's validation AUC is defined (each task's held-out labels are "
                             f"all one class); select epochs with mode = paper, or on data with both outcomes")
        return valid, float(np.mean(defined))

    def record_epoch(self, epoch: int, stats: dict[str, float], valid: dict[str, float] | None) -> None:
        self.state["epochs"].append({"epoch": epoch, **stats, **({"valid": valid} if valid is not None else {})})

    def validated_epochs(self) -> list[int]:
        return [row["epoch"] for row in self.state["epochs"] if "valid" in row]

    @staticmethod
    def epoch_note(stats: dict[str, float], metric: float | None) -> str:
        return f"din loss {stats['baseline_loss']:.4f}" + ("" if metric is None else f"; valid mean AUC {metric:.4f}")

    def fit(self, resume: bool = False, overwrite: bool = False) -> dict:
        return run_fit(self, resume, overwrite)

    def _fit(self) -> dict:
        main = self.ranks.is_main
        self.log(f"data: {json.dumps(self.summary)}; device {self.device}")
        started = time.perf_counter()
        run_epochs(self)
        if self.state["best_epoch"] is not None:
            load_run_weights(self.out_dir / "best.safetensors", self.modules, self.average)
            self.log(f"selected epoch {self.state['best_epoch']} on mean validation AUC")
        test = self.evaluate(drop_last=0)
        summary = {"split": "test", "metrics": test["model"], "din": test["din"], **self.state,
                   "train_seconds": time.perf_counter() - started, "data": self.summary}
        if main:
            atomic_write_json(self.out_dir / "metrics.json", test["model"])
            atomic_write_json(self.out_dir / "summary.json", summary)
            epochs_run = self.state["epochs"]
            write_curves(self.out_dir / "curves.png", [(e["epoch"], e["loss"]) for e in epochs_run],
                         {k: [(e["epoch"], e["valid"][k]) for e in epochs_run if "valid" in e] for k in test["model"]},
                         test["model"], self.state["best_epoch"] or self.state["epoch"], self.log)
        self.run_log.scalars("test", test["model"], self.state["epoch"])
        return summary


def evaluate_ranking_run(path: Path, split_name: str, log: Callable[[str], None] = print_line,
                         data_dir: str | None = None) -> dict:
    """Re-evaluates a finished ranking run (ranker and DIN; the selected epoch in validated mode, or the
    checkpoint file `path` names); data_dir: where its data set lives now, if it moved."""
    run_dir, checkpoint = locate_checkpoint(path)
    config = load_run_config(run_dir)
    if data_dir is not None:
        config.data.path = str(Path(data_dir).resolve())
    trainer = RankingTrainer(config, run_dir, log=log, progress=False)
    load_run_weights(checkpoint, trainer.modules, trainer.average)
    if split_name == "valid" and trainer.held_out == 1:
        raise ValueError(f"{run_dir}: mode 'paper' has no validation split; use --split test")
    result = trainer.evaluate(drop_last=0 if split_name == "test" else 1)
    return {"split": split_name, "checkpoint": checkpoint.name, "metrics": result["model"], "din": result["din"]}
