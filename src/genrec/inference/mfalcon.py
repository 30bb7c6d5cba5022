"""M-FALCON (paper Sec. 3.4): score many candidates for one user in few passes.

Candidates are appended after the history with num_targets = m, so each attends to the whole
history and to itself, never to another candidate; they run in micro-batches of b_m. The history's
per-layer keys/values are computed once (prefill) and cached per user in a bounded LRU, so each
micro-batch computes only the candidate rows. The history's last token asks about the query time
(the request's: when the candidates are shown), as training asks each position about the next
event's time; each candidate carries its own time (by default the query time). Returns the encoder's candidate
representations through the model's own output (l2-normalised embeddings for the retriever, per-task
probabilities for the ranker). On a GPU the candidates attend through a fused kernel
(genrec.ops.attention.candidate_kernel) and each micro-batch replays a captured CUDA graph
(genrec.inference.candidate_graphs). A model serves M-FALCON through one interface, `CandidateModel`: both the
retriever and the ranker provide it, and MFalcon calls nothing else of theirs.

Shapes: L history events, C candidates, D model dim.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Protocol

import torch
from torch import nn

from genrec.data.batch import SequenceBatch
from genrec.inference.candidate_graphs import CandidateGraphs, graphs_apply
from genrec.model.hstu import HSTUEncoder
from genrec.model.kv_cache import HistoryCache
from genrec.ops.jagged import offsets_from_lengths


class CandidateModel(Protocol):
    """What M-FALCON needs of a model (SequentialRetriever and GenerativeRanker provide it)."""

    encoder: HSTUEncoder
    max_seq_len: int
    num_items: int

    def history_tokens(self, item_ids: torch.Tensor, timestamps: torch.Tensor | None,
                       labels: torch.Tensor | None = None, context: torch.Tensor | None = None,
                       changes: tuple[torch.Tensor, torch.Tensor] | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One user's history as encoder input: ([tokens, D], per-token timestamps), with the tokens of its
        user-feature changes (codes [S], times [S]) merged in by time and behind the prefix tokens of its
        user-context codes [F], when the model reads them."""

    def candidate_tokens(self, item_ids: torch.Tensor, position: int | torch.Tensor) -> torch.Tensor:
        """[C, D] encoder input of the candidates, all at token position `position` (an int or a one-element
        device tensor)."""

    def candidate_outputs(self, hidden: torch.Tensor) -> torch.Tensor:
        """The model's output for the candidates' encoder rows [C, D]."""

    def __call__(self, batch: SequenceBatch, num_targets: torch.Tensor | None = None) -> torch.Tensor:
        """The model's forward pass (the uncached path runs it whole)."""

    def forward_candidate_outputs(self, out: torch.Tensor) -> torch.Tensor:
        """The same output as candidate_outputs, from the forward pass's rows of the candidates."""

    def eval(self) -> nn.Module: ...


class MFalcon:
    def __init__(self, model: CandidateModel, micro_batch_size: int = 256, cache_capacity: int = 1024,
                 cuda_graphs: bool = True) -> None:
        """cuda_graphs: replay the candidate pass from captured CUDA graphs (genrec.inference.candidate_graphs)
        where the model runs on a GPU through the fused kernel; elsewhere it runs eagerly either way."""
        if not isinstance(model.encoder, HSTUEncoder):
            raise ValueError("M-FALCON needs an HSTU encoder (candidates attend through num_targets)")
        if any(layer.softmax for layer in model.encoder.layers):
            raise ValueError("M-FALCON needs pointwise attention (model.attention = softmax has no candidate path)")
        if micro_batch_size <= 0 or cache_capacity < 0:
            raise ValueError("micro_batch_size must be positive and cache_capacity >= 0")
        self.model = model.eval()
        self.micro_batch_size = micro_batch_size
        self.cache_capacity = cache_capacity
        self._caches: OrderedDict[Hashable, HistoryCache] = OrderedDict()
        self._lock = threading.Lock()  # the LRU is shared by a server's request threads
        self._graphs = CandidateGraphs(model, micro_batch_size) if cuda_graphs and graphs_apply(model) else None
        self._graph_lock = threading.Lock()  # and so are the graphs' buffers

    def _check(self, history_ids: torch.Tensor, candidate_ids: torch.Tensor) -> None:
        if history_ids.numel() == 0:
            raise ValueError("empty history: M-FALCON scores candidates against a user's history")
        if history_ids.numel() >= self.model.max_seq_len:  # events; candidates take the next position
            raise ValueError(f"history of {history_ids.numel()} events; at most {self.model.max_seq_len - 1} fit")
        for name, ids in (("history", history_ids), ("candidate", candidate_ids)):
            if ids.numel() and (int(ids.min()) < 1 or int(ids.max()) > self.model.num_items):
                raise ValueError(f"unknown {name} item id (valid: 1..{self.model.num_items})")

    @torch.no_grad()
    def prefill(self, history_ids: torch.Tensor, history_timestamps: torch.Tensor | None,
                history_labels: torch.Tensor | None = None, query_time: int | None = None,
                context: torch.Tensor | None = None,
                changes: tuple[torch.Tensor, torch.Tensor] | None = None) -> HistoryCache:
        """Runs the history once and keeps every layer's keys/values; query_time: see the module docstring
        (None: the last history event's own time); context: the user's context codes [F], for a model with a
        user-context prefix; changes: codes [S] and times [S] of the user's feature changes up to the query time
        (genrec.inference.user_inputs), for a model with change tokens: merged into the history by time, all of
        them before the candidates."""
        x, token_stamps = self.model.history_tokens(history_ids, history_timestamps, history_labels, context,
                                                    changes)
        cache = HistoryCache(history_ids, history_timestamps, history_labels, token_stamps, query_time,
                             context=context, changes=changes)
        offsets = offsets_from_lengths(torch.tensor([x.shape[0]], device=x.device))
        query_times = None
        if token_stamps is not None and query_time is not None:
            query_times = torch.tensor([query_time], dtype=torch.int64, device=x.device)
        self.model.encoder(x, offsets, token_stamps, cache=cache, query_times=query_times)
        return cache

    def cached_history(self, user: Hashable, history_ids: torch.Tensor, history_timestamps: torch.Tensor | None,
                       history_labels: torch.Tensor | None = None, query_time: int | None = None,
                       context: torch.Tensor | None = None,
                       changes: tuple[torch.Tensor, torch.Tensor] | None = None) -> HistoryCache:
        """The user's cache, rebuilt when the history (or the query time, the context, the changes) changed; least
        recently used ones are evicted. Safe to call from several threads."""
        with self._lock:
            cache = self._caches.get(user)
        if cache is None or not cache.matches(history_ids, history_timestamps, history_labels, query_time, context,
                                              changes):
            cache = self.prefill(history_ids, history_timestamps, history_labels, query_time, context, changes)
        with self._lock:
            self._caches[user] = cache
            self._caches.move_to_end(user)
            while len(self._caches) > self.cache_capacity:
                self._caches.popitem(last=False)
        return cache

    def invalidate(self, user: Hashable) -> None:
        """Drops a user's cache (call when new events arrive)."""
        with self._lock:
            self._caches.pop(user, None)

    @torch.no_grad()
    def encode_candidates(self, history_ids: torch.Tensor, history_timestamps: torch.Tensor | None,
                          candidate_ids: torch.Tensor, candidate_timestamps: torch.Tensor | None = None,
                          user: Hashable | None = None, history_labels: torch.Tensor | None = None,
                          query_time: int | None = None, context: torch.Tensor | None = None,
                          changes: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Candidate outputs via the cached history (cached across calls when `user` is given); context, changes:
        the user's context codes [F] and feature changes (see prefill)."""
        self._check(history_ids, candidate_ids)
        candidate_timestamps = self._candidate_times(history_timestamps, candidate_ids, candidate_timestamps,
                                                     query_time)
        history = (history_ids, history_timestamps, history_labels, query_time, context, changes)
        cache = self.cached_history(user, *history) if user is not None else self.prefill(*history)
        if self._graphs is not None:
            with self._graph_lock:
                return self._graphs.encode(cache, candidate_ids, candidate_timestamps)
        position = cache.candidate_position
        outputs = []
        for start in range(0, candidate_ids.numel(), self.micro_batch_size):
            ids = candidate_ids[start:start + self.micro_batch_size]
            stamps = None if candidate_timestamps is None else candidate_timestamps[start:start + self.micro_batch_size]
            hidden = self.model.encoder.forward_candidates(self.model.candidate_tokens(ids, position), stamps, cache)
            outputs.append(self.model.candidate_outputs(hidden))
        return torch.cat(outputs)

    @staticmethod
    def _candidate_times(history_timestamps: torch.Tensor | None, candidate_ids: torch.Tensor,
                         candidate_timestamps: torch.Tensor | None, query_time: int | None) -> torch.Tensor | None:
        """Each candidate's time: as given, else the query time, else the last history event's."""
        if history_timestamps is None or candidate_timestamps is not None:
            return candidate_timestamps
        now = query_time if query_time is not None else int(history_timestamps[-1])
        return torch.full_like(candidate_ids, now)

    @torch.no_grad()
    def encode_candidates_uncached(self, history_ids: torch.Tensor, history_timestamps: torch.Tensor | None,
                                   candidate_ids: torch.Tensor, candidate_timestamps: torch.Tensor | None = None,
                                   history_labels: torch.Tensor | None = None,
                                   query_time: int | None = None, context: torch.Tensor | None = None,
                                   changes: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """The same through full passes over [history; micro-batch] with num_targets (no cache)."""
        self._check(history_ids, candidate_ids)
        candidate_timestamps = self._candidate_times(history_timestamps, candidate_ids, candidate_timestamps,
                                                     query_time)
        outputs = []
        for start in range(0, candidate_ids.numel(), self.micro_batch_size):
            ids = candidate_ids[start:start + self.micro_batch_size]
            tokens = torch.cat([history_ids, ids])
            stamps = query_times = labels = None
            if history_timestamps is not None:
                stamps = torch.cat([history_timestamps, candidate_timestamps[start:start + self.micro_batch_size]])
                if query_time is not None:
                    query_times = torch.tensor([query_time], device=tokens.device)
            if history_labels is not None:  # the candidates' own actions are never seen (target-aware)
                labels = torch.cat([history_labels, history_labels.new_zeros(ids.numel(), history_labels.shape[1])])
            offsets = offsets_from_lengths(torch.tensor([tokens.numel()], device=tokens.device))
            series = {} if changes is None else {
                "series_codes": changes[0], "series_timestamps": changes[1],
                "series_offsets": torch.tensor([0, changes[0].numel()], device=tokens.device)}
            batch = SequenceBatch(tokens, offsets, max_seq_len=history_ids.numel() + ids.numel(), timestamps=stamps,
                                  labels=labels, query_times=query_times,
                                  context=None if context is None else context.view(1, -1), **series)
            num_targets = torch.tensor([ids.numel()], device=tokens.device)
            out = self.model(batch, num_targets)[history_ids.numel():]
            outputs.append(self.model.forward_candidate_outputs(out))
        return torch.cat(outputs)
