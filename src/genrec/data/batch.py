"""SequenceBatch: the one data contract between data and model (jagged, never padded).

Shapes: B sequences, T tokens in the batch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields

import numpy as np
import torch

from genrec.data.sequences import JaggedEvents


@dataclass
class SequenceBatch:
    """item_ids int64 [T] (dense, >= 1); seq_offsets int64 [B+1]; timestamps int64 [T] or None;
    ratings float32 [T] or None; labels float32 [T, A] (action signals) or None; context int64 [B, F]
    (per-user feature codes, the user-context prefix) or None; query_times int64 [B] or None: the time of
    the event each sequence's last position predicts (evaluation: the held-out target's; serving: the
    request's), the query time of the time bias there (training asks position i about event i + 1's time);
    max_seq_len: the bound every sequence respects (the prefix not counted). series_codes, series_timestamps [S]
    and series_offsets [B+1] (all or none): each sequence's slow-changing user feature changes that its events
    see, oldest first (genrec.data.user_series), merged in by time by the model. timestamps_sorted (derived):
    every sequence's timestamps, then its query time, never decrease, which lets the fused attention
    kernel read a tile's time range off its ends. token_query_times int64 [T] or None: the time of the event each
    token predicts where that is not the next token's (a Stochastic Length cut whose kept events predict their true
    successors: genrec.data.stochastic_length); it replaces query_times' default for every token. positions int64
    [T] or None: each token's index in its whole (uncut) history, where a cut keeps it (None: its index here)."""

    item_ids: torch.Tensor
    seq_offsets: torch.Tensor
    max_seq_len: int
    timestamps: torch.Tensor | None = None
    ratings: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    context: torch.Tensor | None = None
    query_times: torch.Tensor | None = None
    series_codes: torch.Tensor | None = None
    series_timestamps: torch.Tensor | None = None
    series_offsets: torch.Tensor | None = None
    token_query_times: torch.Tensor | None = None
    positions: torch.Tensor | None = None
    timestamps_sorted: bool = field(init=False, default=False)

    # fields of one value per sequence (the rest but seq_offsets and max_seq_len are per token)
    PER_SEQUENCE = ("context", "query_times", "series_codes", "series_timestamps", "series_offsets")

    def __post_init__(self) -> None:
        if self.seq_offsets.dtype != torch.int64 or self.seq_offsets.dim() != 1:
            raise ValueError("seq_offsets must be int64 [B+1]")
        if int(self.seq_offsets[-1]) != self.item_ids.shape[0]:
            raise ValueError("seq_offsets[-1] must equal the number of tokens")
        if self.num_sequences and int(self.lengths.max()) > self.max_seq_len:
            raise ValueError(f"a sequence is longer than max_seq_len={self.max_seq_len}")
        if self.context is not None and (self.context.dim() != 2 or self.context.shape[0] != self.num_sequences):
            raise ValueError(f"context must be [B, F] with B = {self.num_sequences}, got {list(self.context.shape)}")
        if self.timestamps is not None and self.timestamps.shape != self.item_ids.shape:
            raise ValueError(f"timestamps must be [T] like item_ids, got {list(self.timestamps.shape)}")
        if self.query_times is not None and (self.timestamps is None
                                             or self.query_times.shape != (self.num_sequences,)):
            raise ValueError(f"query_times must be [B] with B = {self.num_sequences}, beside timestamps")
        if self.token_query_times is not None and (self.timestamps is None
                                                   or self.token_query_times.shape != self.item_ids.shape):
            raise ValueError("token_query_times must be [T] like item_ids, beside timestamps")
        if self.positions is not None and self.positions.shape != self.item_ids.shape:
            raise ValueError(f"positions must be [T] like item_ids, got {list(self.positions.shape)}")
        if self.token_query_times is not None and self.query_times is not None:
            raise ValueError("token_query_times gives every token's query time: query_times must be None beside it")
        series = (self.series_codes, self.series_timestamps, self.series_offsets)
        if any(part is not None for part in series) and (
                any(part is None for part in series) or self.timestamps is None
                or self.series_offsets.shape != (self.num_sequences + 1,)
                or self.series_codes.shape != self.series_timestamps.shape
                or int(self.series_offsets[-1]) != self.series_codes.shape[0]):
            raise ValueError("series_codes, series_timestamps [S] and series_offsets [B+1] come together, beside "
                             "timestamps")
        if self.timestamps is not None:  # checked here, on the host: on a GPU the answer would cost a sync
            self.timestamps_sorted = self._ascending(self.timestamps) and (
                self.token_query_times is None or self._ascending(self.token_query_times))
            if self.query_times is not None and self.num_sequences:
                ends = self.seq_offsets[1:]
                nonempty = ends > self.seq_offsets[:-1]
                after = self.query_times[nonempty] >= self.timestamps[ends[nonempty] - 1]
                self.timestamps_sorted = self.timestamps_sorted and bool(after.all())

    def _ascending(self, values: torch.Tensor) -> bool:
        """values [T] never decrease within a sequence."""
        starts = self.seq_offsets[1:-1]
        steps = torch.diff(values)
        steps[starts[(starts > 0) & (starts < values.numel())] - 1] = 0  # across sequences: free
        return bool((steps >= 0).all())

    @property
    def num_sequences(self) -> int:
        return self.seq_offsets.shape[0] - 1

    @property
    def lengths(self) -> torch.Tensor:
        return self.seq_offsets[1:] - self.seq_offsets[:-1]

    def to(self, device: torch.device | str) -> "SequenceBatch":
        """A copy on `device`; not re-validated (that would read device tensors back: a sync per batch)."""
        return self._map_tensors(lambda tensor: tensor.to(device, non_blocking=True))

    def pin_memory(self) -> "SequenceBatch":
        """A copy in page-locked host memory, whose copies to a GPU overlap its work (torch's DataLoader calls it)."""
        return self._map_tensors(torch.Tensor.pin_memory)

    def _map_tensors(self, apply) -> "SequenceBatch":
        moved = copy.copy(self)
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, torch.Tensor):
                setattr(moved, item.name, apply(value))
        return moved


def successors(values: torch.Tensor, seq_offsets: torch.Tensor) -> torch.Tensor:
    """[T] each token's successor's value in its sequence, 0 for each sequence's last token (host tensors): the
    targets of next-item training (values = item ids, which are >= 1, so 0 marks a token without one). In numpy:
    torch's indexed assignment took ~5 ms a batch of 25k tokens on an H100's host, about the step's GPU time."""
    values_np, offsets = values.numpy(), seq_offsets.numpy()
    out = np.zeros_like(values_np)
    out[:-1] = values_np[1:]
    ends = offsets[1:]
    out[ends[ends > offsets[:-1]] - 1] = 0
    return torch.from_numpy(out)


def make_batch(sequences: JaggedEvents, users: np.ndarray, max_seq_len: int,
               drop_last: int = 0, query_times: np.ndarray | None = None) -> SequenceBatch:
    """The chosen users' most recent `max_seq_len` events (after dropping the last `drop_last`); query_times
    [len(users)]: see SequenceBatch (kept only where the events have timestamps)."""
    window = sequences.window(np.asarray(users, np.int64), max_seq_len, drop_last)
    as_tensor = (lambda a, dtype: None if a is None else torch.from_numpy(np.ascontiguousarray(a)).to(dtype))
    series = (None, None, None)
    if window.series is not None:
        last = window.timestamps[window.offsets[1:] - 1] if query_times is None else query_times
        series = window.series.window(window.timestamps[window.offsets[:-1]], last)
    return SequenceBatch(
        item_ids=as_tensor(window.item_ids, torch.int64),
        seq_offsets=as_tensor(window.offsets, torch.int64),
        max_seq_len=max_seq_len,
        timestamps=as_tensor(window.timestamps, torch.int64),
        ratings=as_tensor(window.ratings, torch.float32),
        labels=as_tensor(window.labels, torch.float32),
        context=as_tensor(window.context, torch.int64),
        query_times=None if window.timestamps is None else as_tensor(query_times, torch.int64),
        series_codes=as_tensor(series[0], torch.int64),
        series_timestamps=as_tensor(series[1], torch.int64),
        series_offsets=as_tensor(series[2], torch.int64),
    )
