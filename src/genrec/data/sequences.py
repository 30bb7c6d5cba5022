"""Per-user, time-ordered, densely re-indexed event sequences stored jagged (values + offsets).

Dense item ids run 1..num_items; 0 is reserved for padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from genrec.data.events import Events
from genrec.data.user_series import UserSeries

TIE_ORDERS = ("stable", "paper")


@dataclass
class JaggedEvents:
    """U users; E events. offsets int64 [U+1]; item_ids [E] dense; timestamps/ratings [E] or None;
    labels [E, A] per-event action signals (0/1) for ranking, or None; context [U, F] per-user
    feature codes (genrec.data.user_features), or None; series: a slow-changing user feature's changes
    (genrec.data.user_series), or None.

    A view (starts/ends set, made by drop_last and select) shares the columns of the sequences it came from:
    user u's events are [starts[u], ends[u]) of them, so splitting or filtering users copies per-user bounds only,
    never events (the columns may be memory-mapped files, genrec.data.event_store). A view's columns still hold
    the events it hides: read events through window, compact, item_counts or nth_from_end, not the raw columns."""

    item_ids: np.ndarray
    offsets: np.ndarray
    timestamps: np.ndarray | None = None
    ratings: np.ndarray | None = None
    labels: np.ndarray | None = None
    context: np.ndarray | None = None
    starts: np.ndarray | None = None  # [U] int64, views only
    ends: np.ndarray | None = None  # [U] int64, views only
    series: UserSeries | None = None

    @property
    def num_users(self) -> int:
        return len(self.offsets) - 1 if self.starts is None else len(self.starts)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(starts, ends) [U]: user u's events are columns[starts[u]:ends[u]]."""
        if self.starts is None:
            return self.offsets[:-1], self.offsets[1:]
        return self.starts, self.ends

    @property
    def lengths(self) -> np.ndarray:
        starts, ends = self.bounds()
        return ends - starts

    @property
    def num_events(self) -> int:
        return int(self.lengths.sum())

    def _take(self, users: np.ndarray, index: np.ndarray, offsets: np.ndarray) -> "JaggedEvents":
        take = lambda column: None if column is None else column[index]  # noqa: E731
        return JaggedEvents(self.item_ids[index], offsets, take(self.timestamps), take(self.ratings),
                            take(self.labels), None if self.context is None else self.context[users],
                            series=None if self.series is None else self.series.select(users))

    def _view(self, starts: np.ndarray, ends: np.ndarray, users: np.ndarray | None = None) -> "JaggedEvents":
        """Bounds of the users `users` picks (None: all of them, in order)."""
        context, series = self.context, self.series
        if users is not None:
            context = None if context is None else context[users]
            series = None if series is None else series.select(users)
        return JaggedEvents(self.item_ids, self.offsets, self.timestamps, self.ratings, self.labels, context,
                            np.asarray(starts, np.int64), np.asarray(ends, np.int64), series)

    def drop_last(self, n: int) -> "JaggedEvents":
        """A view of every user's sequence without its last n events (lengths must exceed n)."""
        starts, ends = self.bounds()
        if np.any(ends - n <= starts):
            raise ValueError(f"a sequence is too short to drop its last {n} event(s)")
        return self._view(starts, ends - n)

    def select(self, users: np.ndarray) -> "JaggedEvents":
        """A view of these users (indices or a boolean mask), in that order."""
        starts, ends = self.bounds()
        return self._view(starts[users], ends[users], users)

    def window(self, users: np.ndarray, max_len: int | None, drop_last: int = 0) -> "JaggedEvents":
        """The given users' sequences, minus the last `drop_last` events, cut to the last max_len: a
        contiguous copy of those events only."""
        starts, ends = self.bounds()
        ends = ends[users] - drop_last
        starts = starts[users]
        if np.any(ends <= starts):
            raise ValueError(f"a sequence is too short to drop its last {drop_last} event(s)")
        if max_len is not None:
            starts = np.maximum(starts, ends - max_len)
        index, offsets = _gather_index(starts, ends)
        return self._take(users, index, offsets)

    def compact(self) -> "JaggedEvents":
        """Every user's events as contiguous sequences (a copy, unless they already are)."""
        return self if self.starts is None else self.window(np.arange(self.num_users), None)

    def nth_from_end(self, n: int) -> np.ndarray:
        """Index into item_ids/timestamps of each user's n-th last event (n = 1 is the last)."""
        return self.bounds()[1] - n

    def item_counts(self, num_items: int, chunk_events: int = 1 << 24) -> np.ndarray:
        """[num_items + 1] how often each dense item id occurs among the events (a view's visible ones), read in
        chunks of users holding about chunk_events events."""
        counts = np.zeros(num_items + 1, np.int64)
        lengths = self.lengths
        users_per_chunk = max(1, int(chunk_events // max(1, lengths.mean() if lengths.size else 1)))
        starts, ends = self.bounds()
        for first in range(0, self.num_users, users_per_chunk):
            chunk = slice(first, first + users_per_chunk)
            counts += np.bincount(self.item_ids[_gather_index(starts[chunk], ends[chunk])[0]], minlength=num_items + 1)
        return counts


def _gather_index(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index into the columns of the events [starts[u], ends[u]) user after user, their offsets [U + 1])."""
    lengths = ends - starts
    offsets = np.zeros(len(starts) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1]), offsets


@dataclass
class SequenceData:
    """Sequences plus the vocabularies that map dense ids back to the source's ids."""

    sequences: JaggedEvents
    item_vocab: np.ndarray  # [num_items]: source id of dense item id k at index k - 1
    user_vocab: np.ndarray  # [U]: source id of each kept user
    dropped_users: int
    source: str

    @property
    def num_items(self) -> int:
        return len(self.item_vocab)


def event_order(events: Events, tie_order: str) -> np.ndarray:
    """Row order that groups events by user (ascending id) and sorts each user's events by time.

    stable: ties in time keep the file order. paper: as the official GR preprocessing, a global
    pandas `sort_values` (numpy's default, unstable quicksort) by timestamp over the raw file
    order, then grouped by user; NumPy's quicksort may order ties differently across CPUs (it
    dispatches to SIMD sorts), just as the official pipeline's does.
    """
    if tie_order not in TIE_ORDERS:
        raise ValueError(f"tie_order must be one of {TIE_ORDERS}, got {tie_order!r}")
    if events.timestamps is None:
        return np.argsort(events.user_ids, kind="stable")
    if tie_order == "stable":
        return np.lexsort((events.timestamps, events.user_ids))
    by_time = np.argsort(events.timestamps, kind="quicksort")
    return by_time[np.argsort(events.user_ids[by_time], kind="stable")]


def build_sequences(events: Events, tie_order: str = "stable", min_length: int = 2,
                    labels: np.ndarray | None = None) -> SequenceData:
    """Sorts, re-indexes items densely (by ascending source id) and drops users shorter than min_length.
    `labels` [E, A] (in the events' order) travel with their events."""
    order = event_order(events, tie_order)
    users = events.user_ids[order]
    item_vocab, dense_items = np.unique(events.item_ids[order], return_inverse=True)
    user_vocab, user_counts = np.unique(users, return_counts=True)
    keep = user_counts >= min_length
    if not keep.any():
        raise ValueError(f"{events.source}: no user has at least {min_length} events")
    row_keep = np.repeat(keep, user_counts)
    offsets = np.zeros(int(keep.sum()) + 1, np.int64)
    np.cumsum(user_counts[keep], out=offsets[1:])
    order = order[row_keep]
    sequences = JaggedEvents(
        item_ids=(dense_items[row_keep] + 1).astype(np.int64),
        offsets=offsets,
        timestamps=None if events.timestamps is None else events.timestamps[order],
        ratings=None if events.ratings is None else events.ratings[order],
        labels=None if labels is None else labels[order],
    )
    return SequenceData(sequences, item_vocab, user_vocab[keep], int((~keep).sum()), events.source)
