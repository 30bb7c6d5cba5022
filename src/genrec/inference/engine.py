"""A trained run, loaded for inference: `genrec.load(run_dir)` returns one of these. They speak source ids
(the data set's own), hold the prepared item table and, for ranking, M-FALCON's per-user cache, and raise
ValueError for bad requests; the HTTP service (genrec.serve) is a thin JSON layer over them.

Time: `query_time` is the time the model is asked about (training asks each position about the next
event's time): the request's, by default now. Shapes: B users, K results, D dims, C candidates, A tasks.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Sequence
from pathlib import Path

import numpy as np
import torch

from genrec.checkpoint import load_checkpoint, locate_checkpoint, ranker_weights
from genrec.config import load_run_config
from genrec.data.batch import SequenceBatch
from genrec.data.item_vocabulary import UNKNOWN_ROW
from genrec.devices import resolve_device
from genrec.inference.mfalcon import MFalcon
from genrec.inference.retrieval import FaissIndex, top_k_exact
from genrec.inference.user_inputs import Changes, Features, UserInputs
from genrec.model import SequentialRetriever
from genrec.model.embeddings import ItemContent
from genrec.model.ranking import GenerativeRanker
from genrec.ops.jagged import offsets_from_lengths


class NonFiniteOutput(RuntimeError):
    """The model's output is not finite: a defect of the run, not of the request."""


class LoadedRun:
    """Config, weights (checked finite) and the source <-> dense item id maps of a run directory."""

    task = "retrieval"

    def __init__(self, run_dir: str | Path, device: str = "cpu") -> None:
        """run_dir: a run directory (its best checkpoint, else its last) or a checkpoint file in one."""
        run_dir, checkpoint = locate_checkpoint(Path(run_dir))
        self.config = load_run_config(run_dir)
        if self.config.train.task != self.task:
            raise ValueError(f"{run_dir}: a {self.config.train.task} run, where a {self.task} run is needed")
        self.checkpoint = load_checkpoint(checkpoint)
        self.name = str(run_dir)
        broken = [k for k, v in self.checkpoint.inference_weights().items()
                  if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if broken:
            raise ValueError(f"{run_dir}: non-finite weights ({', '.join(broken[:3])}); refusing to serve them")
        if self.checkpoint.item_vocab is None:
            raise ValueError(f"{run_dir}: checkpoint has no item vocabulary (retrain with this genrec)")
        self.source_ids = self.checkpoint.item_vocab.to(torch.int64)  # dense id k -> source_ids[k - 1]
        # a stream run's table also has rows that hold no item (-1: its unknown row and free rows)
        self.is_item = self.source_ids >= 0
        self.dense_of = {int(source): dense + 1 for dense, source in enumerate(self.source_ids.tolist()) if source >= 0}
        # stream runs read an id they never saw (or evicted) through their unknown row; other runs refuse it
        self.unknown_row = UNKNOWN_ROW if self.config.data.mode == "stream" else None
        self.uses_time = any(k.endswith("time_weights") for k in self.checkpoint.model)
        # change tokens are merged in by time, with or without a time bias
        self.takes_time = self.uses_time or self.config.data.user_series is not None
        self.device = resolve_device(device)
        self.max_history = self.config.data.max_seq_len - (1 if self.task == "ranking" else 0)
        self.inputs = UserInputs(self.checkpoint.state.get("input_values", {}), self.config.data.max_series_len)
        if ((self.config.data.user_features is None) != (self.inputs.feature_values is None)
                or (self.config.data.user_series is None) != (self.inputs.series_values is None)):
            raise ValueError(f"{self.name}: the checkpoint lacks the values of its user features (retrain with this "
                             "genrec)")

    @property
    def num_items(self) -> int:
        """Items that can be recommended (the rows that hold one)."""
        return int(self.is_item.sum())

    def dense_ids(self, ids: Sequence[int], what: str, unknown_row: int | None = None) -> torch.Tensor:
        """Rows of these source ids; an unknown id is an error, or reads `unknown_row` when one is given."""
        unknown = [item for item in ids if item not in self.dense_of]
        if unknown and unknown_row is None:
            raise ValueError(f"unknown {what} item id(s): {list(unknown)[:10]}")
        return torch.tensor([self.dense_of.get(item, unknown_row) for item in ids], dtype=torch.int64,
                            device=self.device)

    def history(self, history: Sequence[int], timestamps: Sequence[int] | None,
                what: str = "history") -> tuple[torch.Tensor, torch.Tensor | None]:
        """Validated dense ids and timestamps (None when the model has no time bias) of one history."""
        if len(history) == 0:
            raise ValueError(f"{what} is empty: at least one item is needed")
        if len(history) > self.max_history:
            raise ValueError(f"{what} has {len(history)} items; at most {self.max_history} are accepted")
        if timestamps is not None and len(timestamps) != len(history):
            raise ValueError(f"{what}: timestamps must have one entry per history item")
        if self.takes_time and timestamps is None:
            raise ValueError(f"{what}: this model uses time: send timestamps with the history")
        stamps = torch.tensor(list(timestamps), dtype=torch.int64, device=self.device) if self.takes_time else None
        return self.dense_ids(history, what, self.unknown_row), stamps

    def query_time(self, requested: int | None, timestamps: Sequence[int] | None) -> int | None:
        """The request's time (now by default), which may not precede its history; None for a model without time."""
        if not self.takes_time:
            return None
        now = int(time.time()) if requested is None else int(requested)
        if timestamps is not None and len(timestamps) and now < timestamps[-1]:
            raise ValueError(f"query_time {now} is before the last history event ({timestamps[-1]})")
        return now

    def change_tokens(self, changes: Sequence[Changes | None] | None, timestamps: Sequence[Sequence[int]] | None,
                      query_times: Sequence[int | None]) -> dict[str, torch.Tensor]:
        """The series fields of a batch of histories (genrec.inference.user_inputs.UserInputs.changes: the state at
        each history's first event and the changes up to its query time) on the device; {} for a model without."""
        batch = len(query_times)
        first_and_query = (np.array([[timestamps[b][0], query_times[b]] for b in range(batch)], np.int64)
                           if self.takes_time else np.zeros((batch, 2), np.int64))
        series = self.inputs.changes(changes, first_and_query[:, 0], first_and_query[:, 1])
        return {name: part.to(self.device) for name, part in series.items()}

    def finite(self, values: torch.Tensor) -> torch.Tensor:
        if not bool(torch.isfinite(values).all()):
            raise NonFiniteOutput(f"{self.name}: the model produced non-finite scores; refusing to serve them")
        return values


INDEXES = ("exact", "hnsw", "ivf")


class RetrievalRun(LoadedRun):
    """A retrieval run: user embeddings, item embeddings and top-K recommendations."""

    def __init__(self, run_dir: str | Path, device: str = "cpu", index: str = "exact",
                 index_breadth: int = 128) -> None:
        """index: how recommend searches the catalogue: "exact" (chunked top-K) or a FAISS index built once here
        ("hnsw", "ivf"; extra `ann`; genrec.inference.retrieval.FaissIndex), searched `index_breadth` wide."""
        if index not in INDEXES:
            raise ValueError(f"index must be one of {', '.join(INDEXES)}, got {index!r}")
        super().__init__(run_dir, device)
        weights = self.checkpoint.inference_weights()
        self.model = SequentialRetriever(self.config.model, len(self.source_ids), self.config.data.max_seq_len,
                                         use_time=self.uses_time,
                                         context_cardinalities=self.inputs.context_cardinalities,
                                         item_content=ItemContent.in_weights(weights),
                                         series_cardinality=self.inputs.series_cardinality,
                                         max_series_len=self.config.data.max_series_len)
        self.model.load_state_dict(weights)
        self.model.to(self.device).eval()
        with torch.no_grad():
            self._items = self.model.item_embeddings()  # prepared once, not per request
        self.index = None
        if index != "exact":
            if self.config.model.similarity != "dot":
                raise ValueError(f"FAISS indexes search inner products; this run scores by "
                                 f"model.similarity = {self.config.model.similarity!r}: use index = exact")
            self.index = FaissIndex(self._items, kind=index, breadth=index_breadth)

    def _batch(self, histories: Sequence[Sequence[int]], timestamps: Sequence[Sequence[int]] | None,
               query_times: Sequence[int | None] | None, user_features: Sequence[Features | None] | None = None,
               changes: Sequence[Changes | None] | None = None) -> SequenceBatch:
        if len(histories) == 0:
            raise ValueError("no histories given")
        if timestamps is not None and len(timestamps) != len(histories):
            raise ValueError(f"timestamps: {len(timestamps)} lists for {len(histories)} histories")
        if query_times is not None and len(query_times) != len(histories):
            raise ValueError(f"query_times: {len(query_times)} values for {len(histories)} histories")
        ids, stamps, queries = [], [], []
        for index, history in enumerate(histories):
            times = None if timestamps is None else timestamps[index]
            dense, stamp = self.history(history, times, what=f"history {index}" if len(histories) > 1 else "history")
            ids.append(dense)
            stamps.append(stamp)
            queries.append(self.query_time(None if query_times is None else query_times[index], times))
        lengths = torch.tensor([len(h) for h in ids], device=self.device)
        context = self.inputs.context(user_features, len(histories))
        return SequenceBatch(torch.cat(ids), offsets_from_lengths(lengths), self.config.data.max_seq_len,
                             timestamps=torch.cat(stamps) if self.takes_time else None,
                             query_times=torch.tensor(queries, device=self.device) if self.takes_time else None,
                             context=None if context is None else context.to(self.device),
                             **self.change_tokens(changes, timestamps, queries))

    @torch.no_grad()
    def embed_users(self, histories: Sequence[Sequence[int]], timestamps: Sequence[Sequence[int]] | None = None,
                    query_times: Sequence[int | None] | None = None,
                    user_features: Sequence[Features | None] | None = None,
                    changes: Sequence[Changes | None] | None = None) -> torch.Tensor:
        """[B, D] l2-normalised user embeddings after each history (source ids, oldest first); user_features and
        changes: per history, for a model trained with them (genrec.inference.user_inputs)."""
        return self._encode(self._batch(histories, timestamps, query_times, user_features, changes))

    def _encode(self, batch: SequenceBatch) -> torch.Tensor:
        return self.finite(self.model(batch)[batch.seq_offsets[1:] - 1])

    @torch.no_grad()
    def item_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(source ids [I], l2-normalised embeddings [I, D]) of every item, in the same order."""
        return self.source_ids[self.is_item].clone(), self._items[1:][self.is_item.to(self._items.device)].clone()

    @torch.no_grad()
    def recommend(self, histories: Sequence[Sequence[int]], k: int = 10,
                  timestamps: Sequence[Sequence[int]] | None = None, exclude_seen: bool = True,
                  query_times: Sequence[int | None] | None = None,
                  user_features: Sequence[Features | None] | None = None,
                  changes: Sequence[Changes | None] | None = None) -> tuple[list[list[int]], list[list[float]]]:
        """Top-k source item ids and their scores per history, best first (exact search over the catalogue;
        with exclude_seen, never an item of the history, so fewer than k when the rest runs out). user_features,
        changes: as embed_users."""
        if not 1 <= k <= self.num_items:
            raise ValueError(f"k must be in [1, {self.num_items}], got {k}")
        batch = self._batch(histories, timestamps, query_times, user_features, changes)
        users = self._encode(batch)
        exclude, offsets = (batch.item_ids, batch.seq_offsets) if exclude_seen else (None, None)  # dense ids
        no_item = len(self.source_ids) - self.num_items  # rows a stream run holds no item in: searched, dropped
        if self.index is None:
            scores, dense = top_k_exact(users, self._items, k + no_item, exclude, offsets,
                                        similarity=self.model.similarity.all)
        else:
            scores, dense = self.index.search(users, k + no_item, exclude, offsets)
        ids, values = [], []
        for row_scores, row_ids in zip(scores.cpu(), dense.cpu()):
            # slots excluded out when k passes the unseen items, and rows that hold no item
            keep = (row_scores > float("-inf")) & self.is_item[row_ids - 1]
            ids.append(self.source_ids[row_ids[keep][:k] - 1].tolist())
            values.append(row_scores[keep][:k].tolist())
        return ids, values


class RankingRun(LoadedRun):
    """A ranking run: per-task probabilities of candidates after a history of (item, actions) events,
    scored by M-FALCON (cached per user when `user` is given)."""

    task = "ranking"

    def __init__(self, run_dir: str | Path, device: str = "cpu", cache_capacity: int = 1024) -> None:
        super().__init__(run_dir, device)
        self.tasks = list(self.checkpoint.state["tasks"])
        weights = ranker_weights(self.checkpoint.inference_weights())
        model = GenerativeRanker(self.config.model, self.num_items, len(self.tasks), self.config.data.max_seq_len,
                                 use_time=self.uses_time, context_cardinalities=self.inputs.context_cardinalities,
                                 item_content=ItemContent.in_weights(weights),
                                 series_cardinality=self.inputs.series_cardinality,
                                 max_series_len=self.config.data.max_series_len)
        model.load_state_dict(weights)
        self.scorer = MFalcon(model.to(self.device).eval(), cache_capacity=cache_capacity)

    def rank(self, history: Sequence[int], actions: Sequence[Sequence[int]], candidates: Sequence[int],
             timestamps: Sequence[int] | None = None, query_time: int | None = None,
             user: Hashable | None = None, max_candidates: int | None = None,
             user_features: Features | None = None, changes: Changes | None = None) -> np.ndarray:
        """[C, A] probabilities, one per candidate and task (self.tasks); actions: per history item, one 0/1
        per task; user_features, changes (the user's feature changes up to the query time, all before the
        candidates): for a model trained with them (genrec.inference.user_inputs)."""
        ids, stamps = self.history(history, timestamps)
        if len(candidates) == 0:
            raise ValueError("no candidates to rank")
        if max_candidates is not None and len(candidates) > max_candidates:
            raise ValueError(f"{len(candidates)} candidates; at most {max_candidates} per request")
        if len(actions) != len(history) or any(len(a) != len(self.tasks) for a in actions):
            raise ValueError(f"actions must hold, per history item, {len(self.tasks)} values "
                             f"(tasks: {', '.join(self.tasks)})")
        if any(value not in (0, 1) for row in actions for value in row):
            raise ValueError("actions must be 0 or 1")
        labels = torch.tensor([list(a) for a in actions], dtype=torch.float32, device=self.device)
        context = self.inputs.context(None if user_features is None else [user_features], 1)
        query = self.query_time(query_time, timestamps)
        series = self.change_tokens(None if changes is None else [changes],
                                    None if timestamps is None else [timestamps], [query])
        scores = self.scorer.encode_candidates(ids, stamps, self.dense_ids(candidates, "candidate"), user=user,
                                               history_labels=labels, query_time=query,
                                               context=None if context is None else context[0].to(self.device),
                                               changes=(series["series_codes"], series["series_timestamps"])
                                               if series else None)
        return self.finite(scores.float()).cpu().numpy()


def load(run_dir: str | Path, device: str = "cpu", index: str = "exact", index_breadth: int = 128
         ) -> RetrievalRun | RankingRun:
    """The run in `run_dir` (a `genrec train` output directory), ready for inference; index, index_breadth: how a
    retrieval run searches its catalogue (RetrievalRun)."""
    task = load_run_config(locate_checkpoint(Path(run_dir))[0]).train.task
    if task == "ranking":
        return RankingRun(run_dir, device)
    return RetrievalRun(run_dir, device, index, index_breadth)
