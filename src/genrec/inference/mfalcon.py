"""M-FALCON (paper Sec. 3.4): score many candidates for one user in few passes.

Candidates are appended after the history with num_targets = m, so each attends to the whole
history and to itself, never to another candidate; they run in micro-batches of b_m. The history's
per-layer keys/values are computed once (prefill) and cached per user in a bounded LRU, so each
micro-batch computes only the candidate rows. Returns the encoder's candidate representations
[C, D] (l2-normalised), which task heads turn into scores.

Shapes: L history length, C candidates, D model dim.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

import torch
import torch.nn.functional as F

from genrec.data.batch import SequenceBatch
from genrec.model.hstu import HSTUEncoder
from genrec.model.kv_cache import HistoryCache
from genrec.model.retrieval import SequentialRetriever
from genrec.ops.jagged import offsets_from_lengths


class MFalcon:
    def __init__(self, model: SequentialRetriever, micro_batch_size: int = 256, cache_capacity: int = 1024) -> None:
        if not isinstance(model.encoder, HSTUEncoder):
            raise ValueError("M-FALCON needs an HSTU encoder (candidates attend through num_targets)")
        if micro_batch_size <= 0 or cache_capacity < 0:
            raise ValueError("micro_batch_size must be positive and cache_capacity >= 0")
        self.model = model.eval()
        self.micro_batch_size = micro_batch_size
        self.cache_capacity = cache_capacity
        self._caches: OrderedDict[Hashable, HistoryCache] = OrderedDict()

    def _check(self, history_ids: torch.Tensor, candidate_ids: torch.Tensor) -> None:
        if history_ids.numel() == 0:
            raise ValueError("empty history: M-FALCON scores candidates against a user's history")
        if history_ids.numel() >= self.model.max_seq_len:
            raise ValueError(f"history of {history_ids.numel()} events; at most {self.model.max_seq_len - 1} fit")
        for name, ids in (("history", history_ids), ("candidate", candidate_ids)):
            if ids.numel() and (int(ids.min()) < 1 or int(ids.max()) > self.model.num_items):
                raise ValueError(f"unknown {name} item id (valid: 1..{self.model.num_items})")

    @torch.no_grad()
    def prefill(self, history_ids: torch.Tensor, history_timestamps: torch.Tensor | None) -> HistoryCache:
        """Runs the history once and keeps every layer's keys/values."""
        cache = HistoryCache(history_ids, history_timestamps)
        offsets = offsets_from_lengths(torch.tensor([history_ids.numel()], device=history_ids.device))
        x = self.model.embedding(history_ids, offsets)
        self.model.encoder(x, offsets, history_timestamps, cache=cache)
        return cache

    def cached_history(self, user: Hashable, history_ids: torch.Tensor,
                       history_timestamps: torch.Tensor | None) -> HistoryCache:
        """The user's cache, rebuilt when the history changed; least recently used ones are evicted."""
        cache = self._caches.get(user)
        if cache is None or not cache.matches(history_ids, history_timestamps):
            cache = self.prefill(history_ids, history_timestamps)
        self._caches[user] = cache
        self._caches.move_to_end(user)
        while len(self._caches) > self.cache_capacity:
            self._caches.popitem(last=False)
        return cache

    def invalidate(self, user: Hashable) -> None:
        """Drops a user's cache (call when new events arrive)."""
        self._caches.pop(user, None)

    @torch.no_grad()
    def encode_candidates(self, history_ids: torch.Tensor, history_timestamps: torch.Tensor | None,
                          candidate_ids: torch.Tensor, candidate_timestamps: torch.Tensor | None = None,
                          user: Hashable | None = None) -> torch.Tensor:
        """[C, D] candidate representations via the cached history (cached across calls when `user` is given)."""
        self._check(history_ids, candidate_ids)
        cache = (self.cached_history(user, history_ids, history_timestamps) if user is not None
                 else self.prefill(history_ids, history_timestamps))
        position = torch.full_like(candidate_ids, history_ids.numel())
        outputs = []
        for start in range(0, candidate_ids.numel(), self.micro_batch_size):
            ids = candidate_ids[start:start + self.micro_batch_size]
            stamps = None if candidate_timestamps is None else candidate_timestamps[start:start + self.micro_batch_size]
            x = self.model.embedding.item(ids) * self.model.embedding.scale
            x = x + self.model.embedding.position(position[:ids.numel()].clamp(max=self.model.max_seq_len - 1))
            outputs.append(self.model.encoder.forward_candidates(x, stamps, cache))
        return F.normalize(torch.cat(outputs), dim=-1)

    @torch.no_grad()
    def encode_candidates_uncached(self, history_ids: torch.Tensor, history_timestamps: torch.Tensor | None,
                                   candidate_ids: torch.Tensor,
                                   candidate_timestamps: torch.Tensor | None = None) -> torch.Tensor:
        """The same through full passes over [history; micro-batch] with num_targets (no cache)."""
        self._check(history_ids, candidate_ids)
        outputs = []
        for start in range(0, candidate_ids.numel(), self.micro_batch_size):
            ids = candidate_ids[start:start + self.micro_batch_size]
            tokens = torch.cat([history_ids, ids])
            stamps = None
            if history_timestamps is not None:
                stamps = torch.cat([history_timestamps, candidate_timestamps[start:start + self.micro_batch_size]])
            offsets = offsets_from_lengths(torch.tensor([tokens.numel()], device=tokens.device))
            batch = SequenceBatch(tokens, offsets, max_seq_len=history_ids.numel() + ids.numel(), timestamps=stamps)
            num_targets = torch.tensor([ids.numel()], device=tokens.device)
            outputs.append(self.model(batch, num_targets)[history_ids.numel():])
        return torch.cat(outputs)
