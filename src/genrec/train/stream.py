"""One-pass streaming training with prequential evaluation (data.mode = "stream").

The events are taken once, in time order, in windows of `stream.window_days`. Each window is first
evaluated and then trained on:
- evaluation: every event of the window is predicted from the user's events before it (earlier events of
  the same window included, as inputs only) by the weights trained on the windows before, and ranked
  against every item the vocabulary holds at that moment (full catalogue, pessimistic ties). An item first
  seen in this window is not held yet and ranks last: a cold miss, counted. A user's first event has no
  history and is not predicted (counted as `first_events`).
  Beside it, a popularity baseline: the held items ranked by their consumption in the window before.
- training: the window's items are admitted to the vocabulary (genrec.data.item_vocabulary; rows handed
  to new items are re-initialised and their optimiser state cleared), then one pass over the window's
  sequences, the next-item loss at the positions whose targets fall in the window, negatives drawn from the
  held items. With Stochastic Length (train.stochastic_length_alpha), a long sequence may keep only some of its
  events (genrec.data.stochastic_length): its window events first, then history before them; its kept window
  events are predicted from the kept events before them, and the others are not trained on, which in one pass
  means never.
Both read the window's sequences (StreamEvents.window_sequences): each user's last max_seq_len events up to the
window's end and, for a user with more window events than one sequence predicts, more sequences ending earlier,
so that every event of the window but a user's first is the target of exactly one sequence.
With data.user_series, each batch also carries its users' changes of that feature up to their last event
(genrec.data.user_series), merged into the sequences by the model. With item content (data.item_features), a
row handed to a new item takes that item's content codes.
Metrics per window and overall (event-weighted) go to metrics.json and stream.png; a checkpoint after each
window (weights, optimiser, random streams, vocabulary), and every stream.checkpoint_every_steps batches inside one
(with the window's evaluation, batch order and loss so far), resumes exactly. One process (no torchrun).

Shapes: E events (time order), T tokens of a batch, P predicted positions, R vocabulary rows.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch

from genrec.checkpoint import atomic_write_json, load_checkpoint, restore_rng, rng_state, save_checkpoint
from genrec.config import Config, config_to_dict
from genrec.data.batch import SequenceBatch
from genrec.data.item_vocabulary import UNKNOWN_ROW, ItemVocabulary
from genrec.data.stochastic_length import keep_tokens, stochastic_length_keep
from genrec.data.stream_events import DAY, StreamEvents
from genrec.data.user_features import read_user_features
from genrec.data.user_series import UserSeries
from genrec.devices import resolve_device
from genrec.eval.metrics import summarize
from genrec.eval.protocol import target_ranks
from genrec.model import SequentialRetriever
from genrec.model.embeddings import ItemContent
from genrec.ops.jagged import offsets_from_lengths
from genrec.train.divergence import DivergenceGuard
from genrec.train.epoch import EpochProgress, StepLoss, train_epoch
from genrec.train.experiment import (changes_of, compiled, graph_batches, item_features_of, open_store, peak_tflops,
                                     read_events)
from genrec.train.losses import loss_flops, sampled_softmax_loss
from genrec.train.optimizers import build_optimizer
from genrec.train.parallel import Distributed, load_optimizer, num_batches
from genrec.train.run_state import RandomStreams, run_fit
from genrec.train.run_log import print_line

KS = (10, 50)
EVAL_CHUNK = 4096  # predicted positions scored against the catalogue at once


class WindowBatch(NamedTuple):
    batch: SequenceBatch
    positions: torch.Tensor  # [P] the tokens whose next event is a window event to predict
    targets: torch.Tensor  # [P] those events' vocabulary rows
    first_events: int  # window events with nothing before them (a user's first): not predicted
    in_window: torch.Tensor  # [T] bool: the token is an event of the window


class StreamTrainer:
    def __init__(self, config: Config, out_dir: Path, log: Callable[[str], None] = print_line,
                 progress: bool = True) -> None:
        self.config = config.validate()
        if config.data.mode != "stream":
            raise ValueError("StreamTrainer needs data.mode = stream")
        ignored = unsupported_options(config)
        if ignored:
            raise ValueError(f"data.mode = stream does not support {', '.join(ignored)} yet")
        self.out_dir, self.log, self.progress = out_dir, log, progress
        self.ranks = Distributed()
        self.device = resolve_device(config.train.device)
        if config.data.dataset == "store":  # its events stay on disk
            events = None
            self.stream = StreamEvents.of_store(open_store(config.data), config.stream.window_days)
        else:
            events = read_events(config.data)
            self.stream = StreamEvents.of_events(events, config.stream.window_days)
        changes = None if config.data.user_series is None else changes_of(config.data, events)
        self.series = None if changes is None else UserSeries.of_users(changes, self.stream.user_vocab,
                                                                       config.data.max_series_len)
        features = None
        if config.data.user_features is not None:  # [users, F] codes, 0 for users the file lacks
            features = read_user_features(config.data.dataset, config.data.user_features, config.data.skip_bad_rows)
            self.context, _ = features.align(self.stream.user_vocab)
        capacity = config.stream.item_capacity or self.stream.num_items
        self.vocabulary = ItemVocabulary(capacity, round(config.stream.evict_after_days * DAY))
        self.cold_rank = max(capacity, *KS) + 1
        torch.manual_seed(config.train.seed)
        self.item_features = None if config.data.item_features is None else item_features_of(config.data, events)
        content = None
        if self.item_features is not None:  # rows hold no item yet: empty codes, set as items arrive
            slots = (self.vocabulary.num_rows, self.item_features.codes.shape[1])
            content = ItemContent(torch.zeros(slots, dtype=torch.int64), torch.zeros(slots),
                                  self.item_features.num_codes)
        self.model = SequentialRetriever(config.model, self.vocabulary.num_rows - 1, config.data.max_seq_len,
                                         use_time=True, item_content=content,
                                         context_cardinalities=() if features is None else features.cardinalities,
                                         series_cardinality=0 if self.series is None else self.series.cardinality,
                                         max_series_len=config.data.max_series_len).to(self.device)
        self.train_model = compiled(self.model, config)
        self.for_graphs = graph_batches(config, self.ranks)
        self.optimizer = build_optimizer(config.train, self.model, sparse_tables=True)
        self.streams = RandomStreams(config.train.seed, 0, self.device,
                                     stochastic_length=config.train.stochastic_length_alpha > 0)
        self.guard = DivergenceGuard(self.device)
        # what the shared epoch of steps (genrec.train.epoch) reads: bf16 autocast on CUDA, no weight average
        self.modules, self.average = self.model, None
        self.autocast_dtype = torch.bfloat16 if self.device.type == "cuda" else None
        self.peak_tflops = peak_tflops(self.device)
        self.state = {"epoch": 0, "step": 0, "windows": []}  # "epoch": windows done (the run frame reads it)
        input_values = {}  # what serving maps a request's user features and changes to codes by
        if features is not None:
            input_values["user_features"] = features.vocabulary()
        if changes is not None:
            input_values["user_series"] = list(changes.values)
        if input_values:
            self.state["input_values"] = input_values
        self.run_log = None  # opened by run_fit
        self._steps = {"tokens": 0.0, "seconds": 0.0, "flops": 0.0}  # this process's training steps, for throughput
        self._window_speed = 0.0  # the last window's training tokens/s
        self._resumed = None  # (evaluation row, items admitted, progress) of a window a checkpoint was taken in

    # ---- the run ---------------------------------------------------------------------------
    def fit(self, resume: bool = False, overwrite: bool = False) -> dict:
        return run_fit(self, resume, overwrite)

    def _fit(self) -> dict:
        last = self.stream.num_windows if not self.config.stream.max_windows else \
            min(self.stream.num_windows, self.config.stream.max_windows)
        started = time.perf_counter()
        for window in range(self.state["epoch"], last):
            if self._resumed is not None:  # a window a checkpoint was taken in: evaluated and admitted already
                (row, new_items, progress), self._resumed = self._resumed, None
            else:
                row, new_items, progress = {"window": window, **self.evaluate_window(window)}, None, None
            row.update(self.train_window(window, row, new_items, progress))
            self.state["windows"].append(row)
            self.state["epoch"] = window + 1
            self.guard.check(self.model)
            self.save()
            self.run_log.scalars("window", {k: v for k, v in row.items() if k != "window"}, window + 1)
            scores = f"HR@10 {row['hr@10']:.4f} NDCG@10 {row['ndcg@10']:.4f} over " if row["events"] else ""
            self.run_log.end_epoch(f"window {window + 1}/{self.stream.num_windows}: {scores}{row['events']} events "
                                   f"predicted ({row['cold_targets']} cold), loss {row['loss']:.4f}, "
                                   f"{row['held_items']} items held, {self._window_speed:,.0f} training tokens/s")
        summary = {"windows": self.state["windows"], "overall": overall(self.state["windows"]),
                   "windows_done": self.state["epoch"], "num_windows": self.stream.num_windows,
                   "train_seconds": time.perf_counter() - started, "throughput": self._throughput()}
        atomic_write_json(self.out_dir / "metrics.json", summary)
        write_stream_chart(self.out_dir / "stream.png", self.state["windows"])
        return summary

    def _throughput(self) -> dict:
        """Training speed over this process's windows (a resumed run's earlier windows are not counted): tokens/s
        and TFLOP/s of the training steps alone (evaluation and checkpoints excluded), MFU where the peak is known."""
        seconds = max(self._steps["seconds"], 1e-9)
        tflops = self._steps["flops"] / seconds / 1e12
        return {"train_tokens": int(self._steps["tokens"]), "step_seconds": round(self._steps["seconds"], 3),
                "tokens_per_s": self._steps["tokens"] / seconds, "tflops": tflops,
                "mfu": None if self.peak_tflops is None else tflops / self.peak_tflops}

    @torch.no_grad()
    def evaluate_window(self, window: int) -> dict:
        """Ranks of the window's events under the weights and vocabulary of the windows before it."""
        self.model.eval()
        held = torch.from_numpy(self.vocabulary.held_rows()).to(self.device)
        popularity = self._previous_window_counts(window)
        ranks, popular_ranks, cold, first_events = [], [], 0, 0
        users, ends = self.stream.window_sequences(window, self.config.data.max_seq_len)
        for start in range(0, len(users), self.config.train.eval_batch_size):
            chosen_sequences = slice(start, start + self.config.train.eval_batch_size)
            batch, positions, targets, unpredicted, _ = self._batch(window, users[chosen_sequences],
                                                                    ends[chosen_sequences])
            first_events += unpredicted
            if positions.numel() == 0:
                continue
            cold += int((targets == UNKNOWN_ROW).sum())
            with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
                encoded = self.model(batch.to(self.device))
            items = self.model.item_embeddings().float()
            for chunk in range(0, positions.numel(), EVAL_CHUNK):
                chosen = positions[chunk:chunk + EVAL_CHUNK].to(self.device)
                scores = self.model.similarity.all(encoded[chosen].float(), items)
                chunk_targets = targets[chunk:chunk + EVAL_CHUNK].to(self.device)
                cold_targets = chunk_targets == UNKNOWN_ROW
                for scored, into in ((scores, ranks), (popularity.expand(len(chosen), -1), popular_ranks)):
                    chunk_ranks = target_ranks(scored, chunk_targets, None, exclude_history=False, candidates=held)
                    # a cold target cannot be recommended: a miss at every cut-off, however few items are held
                    into.append(chunk_ranks.masked_fill(cold_targets, self.cold_rank).cpu())
        counts = {"cold_targets": cold, "first_events": first_events, "held_items": int(held.sum())}
        if not ranks:  # a window of first events only: nothing to score
            return {"events": 0, **counts}
        all_ranks = torch.cat(ranks)
        baseline = {f"popularity_{key}": value for key, value in summarize(torch.cat(popular_ranks), KS).items()}
        return {**summarize(all_ranks, KS), **baseline, "events": all_ranks.numel(), **counts}

    def _previous_window_counts(self, window: int) -> torch.Tensor:
        """The baseline's scores [1, R]: how often each held item was consumed in the window before."""
        before = self.stream.window_rows(window - 1) if window > 0 else np.zeros(0, np.int64)
        rows = self.vocabulary.lookup(self.stream.items[before])
        counts = np.bincount(rows, minlength=self.vocabulary.num_rows).astype(np.float32)
        return torch.from_numpy(counts).to(self.device).view(1, -1)

    def train_window(self, window: int, row: dict, new_items: int | None = None,
                     resumed: EpochProgress | None = None) -> dict:
        """Admits the window's items, then one pass of the next-item loss over its sequences (genrec.train.epoch),
        with a checkpoint every stream.checkpoint_every_steps batches. `row` (the window's evaluation) and, for a
        window a checkpoint was taken in, the items admitted and the pass's progress go into those checkpoints."""
        if resumed is None:  # a resumed window's admission is in the restored vocabulary, weights and optimiser
            events = self.stream.window_rows(window)
            new_rows = self.vocabulary.admit(self.stream.items[events], self.stream.timestamps[events])
            self._reset_rows(new_rows)
            new_items = int(new_rows.size)
        self._window, self._sequences = window, self.stream.window_sequences(window, self.config.data.max_seq_len)
        self._negatives = torch.from_numpy(np.flatnonzero(self.vocabulary.held_rows())).to(self.device)
        num_sequences = len(self._sequences[0])
        self.run_log.start_epoch(window + 1, self.stream.num_windows,
                                 num_batches(num_sequences, self.config.train.batch_size, self.ranks))

        def checkpoint(progress: EpochProgress) -> None:
            self.guard.check(self.model)
            self.save({"row": row, "new_items": new_items, **progress.state()}, progress.order)

        stats = train_epoch(self, num_sequences, resumed, checkpoint, self.config.stream.checkpoint_every_steps)
        self._window_speed = stats["tokens_per_s"]
        for key, value in (("tokens", stats["tokens_per_s"] * stats["seconds"]), ("seconds", stats["seconds"]),
                           ("flops", stats["tflops"] * 1e12 * stats["seconds"])):
            self._steps[key] += value
        self.guard.check_loss()
        self.run_log.scalars("train", stats, window + 1)  # throughput goes there, not into the (reproducible) rows
        return {"loss": stats["loss"], "new_items": new_items, "evicted_so_far": self.vocabulary.evicted}

    def host_batch(self, indices: np.ndarray) -> WindowBatch:
        users, ends = self._sequences
        return self._batch(self._window, users[indices], ends[indices])

    def batch_loss(self, host_batch: WindowBatch) -> StepLoss | None:
        """Next-item loss at the positions whose targets fall in the window, negatives from the held items. With
        Stochastic Length, a long sequence may keep only some of its events, its window events first: each kept
        window event is then predicted from the kept events before it, and the others are not trained on (in one
        pass: never)."""
        batch, positions, targets = host_batch.batch, host_batch.positions, host_batch.targets
        alpha = self.config.train.stochastic_length_alpha
        keep = None if alpha == 0 else stochastic_length_keep(batch, alpha, self.streams.length, host_batch.in_window)
        if keep is not None:
            batch = keep_tokens(batch, keep)
            positions, targets = predicted_tokens(batch.seq_offsets, host_batch.in_window[keep], batch.item_ids)
        if positions.numel() == 0:
            return None
        loss_config = self.config.train.loss
        encoded = self.train_model(self.for_graphs(batch).to(self.device)).index_select(0, positions.to(self.device))
        loss = sampled_softmax_loss(encoded, targets.to(self.device), self.model.item_embeddings,
                                    self.vocabulary.num_rows - 1, loss_config.num_negatives, loss_config.temperature,
                                    self.streams.sample, similarity=self.model.similarity,
                                    negative_pool=self._negatives)
        lengths = batch.lengths
        flops = 3 * (self.model.encoder.forward_flops(lengths) + loss_flops(
            positions.numel(), encoded.shape[-1], self.vocabulary.num_rows - 1, "sampled",
            loss_config.num_negatives, 0))
        return StepLoss(loss, loss, positions.numel(), int(lengths.sum()), flops)

    def _batch(self, window: int, users: np.ndarray, ends: np.ndarray) -> WindowBatch:
        """Sequences of the window (window_sequences' users and ends) as vocabulary rows, with the positions whose
        next event lies in the window and how many window events had no position before them (a user's first)."""
        events, lengths = self.stream.histories(users, ends, self.config.data.max_seq_len)
        offsets = offsets_from_lengths(torch.from_numpy(lengths))
        times = self.stream.timestamps[events]
        in_window = times >= self.stream.window_start_times[window]
        first_in_sequence = np.zeros(events.size, dtype=bool)
        first_in_sequence[offsets[:-1].numpy()[lengths > 0]] = True
        users_first = first_in_sequence.copy()  # a sequence's first event is the target of one ending earlier ...
        users_first[first_in_sequence] = (ends == lengths)[lengths > 0]  # ... unless it is its user's first
        rows = torch.from_numpy(self.vocabulary.lookup(self.stream.items[events]))
        series = {}
        if self.series is not None:  # each sequence's user's changes up to its last event
            stops = offsets[1:].numpy()
            codes, change_times, change_offsets = self.series.select(users).window(times[stops - lengths],
                                                                                   times[stops - 1])
            series = {"series_codes": torch.from_numpy(codes), "series_timestamps": torch.from_numpy(change_times),
                      "series_offsets": torch.from_numpy(change_offsets)}
        context = None if self.model.context is None else torch.from_numpy(self.context[users])
        batch = SequenceBatch(rows, offsets, self.config.data.max_seq_len, timestamps=torch.from_numpy(times),
                              context=context, **series)
        in_window = torch.from_numpy(in_window)
        return WindowBatch(batch, *predicted_tokens(offsets, in_window, rows),
                           int((in_window.numpy() & users_first).sum()), in_window)

    def _reset_rows(self, rows: np.ndarray) -> None:
        """New owners of rows start from a fresh embedding (their own content) and no optimiser history."""
        if rows.size == 0:
            return
        index = torch.from_numpy(rows).to(self.device)
        content = self.model.embedding.content
        if content is not None:
            codes, weights, _ = self.item_features.lookup(self.vocabulary.sources[rows])
            content.codes.index_copy_(0, index, torch.from_numpy(codes).to(self.device))
            content.weights.index_copy_(0, index, torch.from_numpy(weights).to(self.device))
        if self.model.embedding.item is None:
            return
        weight = self.model.embedding.item.weight
        with torch.no_grad():
            fresh = torch.empty(rows.size, weight.shape[1], dtype=weight.dtype, device=self.device)
            torch.nn.init.trunc_normal_(fresh, std=0.02, a=-0.04, b=0.04)
            weight.index_copy_(0, index, fresh)
        for moment in self.optimizer.state.get(weight, {}).values():
            if isinstance(moment, torch.Tensor) and moment.dim() and moment.shape[0] == weight.shape[0]:  # per row
                moment.index_fill_(0, index, 0.0)

    # ---- checkpoints -------------------------------------------------------------------------
    def save(self, in_window: dict | None = None, order: np.ndarray | None = None) -> None:
        """After a window, or inside one (`in_window`: its evaluation row, items admitted and progress; `order`: its
        batch order), so that a resumed run neither evaluates nor admits that window again."""
        vocabulary = self.vocabulary.state()
        state = {**self.state, "evicted": vocabulary["evicted"]}
        extra = {"vocab_last_seen": torch.from_numpy(vocabulary["last_seen"])}
        if in_window is not None:
            state["in_window"] = in_window
            extra["window_order"] = torch.from_numpy(order)
        save_checkpoint(self.out_dir / "last.safetensors", self.model.state_dict(), self.optimizer.state_dict(),
                        rng_state(self.streams.named(), self.device), config_to_dict(self.config), state,
                        item_vocab=torch.from_numpy(vocabulary["sources"][1:]), extra=extra)

    def resume(self) -> None:
        checkpoint = load_checkpoint(self.out_dir / "last.safetensors")
        self.model.load_state_dict(checkpoint.model)
        load_optimizer(self.optimizer, checkpoint.optimizer)
        restore_rng(checkpoint.rng, self.streams.named(), self.device)
        sources = np.concatenate([[-1], checkpoint.item_vocab.numpy()])
        self.vocabulary = ItemVocabulary.from_state(
            {"sources": sources, "last_seen": checkpoint.extra["vocab_last_seen"].numpy(),
             "evicted": checkpoint.state["evicted"]}, self.vocabulary.evict_after)
        self.state.update({key: checkpoint.state[key] for key in ("epoch", "step", "windows")})
        in_window = checkpoint.state.get("in_window")
        if in_window is None:
            self.log(f"resumed after window {self.state['epoch']}")
            return
        progress = EpochProgress(checkpoint.extra["window_order"].numpy(), in_window["batches"], in_window["sums"],
                                 in_window["weight"], in_window["names"])
        self._resumed = (in_window["row"], in_window["new_items"], progress)
        self.log(f"resumed in window {self.state['epoch'] + 1} after {progress.batches} of its batches")


def predicted_tokens(seq_offsets: torch.Tensor, in_window: torch.Tensor, rows: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions [P], targets [P]): each window event but a sequence's first is predicted from the token before
    it; its row is the target."""
    first_in_sequence = torch.zeros_like(in_window)
    lengths = seq_offsets[1:] - seq_offsets[:-1]
    first_in_sequence[seq_offsets[:-1][lengths > 0]] = True
    predicted = torch.nonzero(in_window & ~first_in_sequence).flatten()
    return predicted - 1, rows[predicted]


def unsupported_options(config: Config) -> list[str]:
    """The options a stream run would otherwise ignore, each as `name = value`."""
    train, loss = config.train, config.train.loss
    checks = {"train.ema_decay": train.ema_decay != 0, "train.lr_schedule": train.lr_schedule != "constant",
              "train.warmup_epochs": train.warmup_epochs != 0,
              "train.patience": train.patience != 0, "train.loss.negatives": loss.negatives != "sampled",
              "train.loss.in_batch_negatives": loss.in_batch_negatives != 0,
              "eval.max_users": config.eval.max_users != 0,
              "torchrun (WORLD_SIZE > 1)": int(os.environ.get("WORLD_SIZE", "1")) > 1}
    values = {"torchrun (WORLD_SIZE > 1)": os.environ.get("WORLD_SIZE")}
    return [f"{name} = {values.get(name, _config_value(config, name))!r}" for name, bad in checks.items() if bad]


def _config_value(config: Config, dotted: str):
    value = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def overall(windows: list[dict]) -> dict:
    """Event-weighted means of the windows' metrics (each is a mean over its events)."""
    scored = [row for row in windows if row["events"]]
    events = sum(row["events"] for row in scored)
    keys = [key for key in scored[0] if "@" in key or key.endswith("mrr")] if scored else []
    result = {key: sum(row[key] * row["events"] for row in scored) / events for key in keys}
    result.update({"events": events, "cold_targets": sum(row["cold_targets"] for row in windows)})
    return result


def write_stream_chart(path: Path, windows: list[dict]) -> None:
    """HR@10 / NDCG@10 per window and the items held; skipped (with the run intact) without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    scored = [row for row in windows if row["events"]]
    for key in ("hr@10", "ndcg@10", "popularity_hr@10"):
        axis.plot([row["window"] for row in scored], [row[key] for row in scored], marker=".", label=key)
    axis.set(xlabel="window (evaluated before it is trained on)", ylabel="metric", title="prequential evaluation")
    held = axis.twinx()
    held.plot([row["window"] for row in windows], [row["held_items"] for row in windows], color="grey",
              linestyle="--", label="items held")
    held.set_ylabel("items held")
    axis.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
