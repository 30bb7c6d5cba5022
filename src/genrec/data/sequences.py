"""Per-user, time-ordered, densely re-indexed event sequences stored jagged (values + offsets).

Dense item ids run 1..num_items; 0 is reserved for padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from genrec.data.events import Events

TIE_ORDERS = ("stable", "paper")


@dataclass
class JaggedEvents:
    """U users; E events. offsets int64 [U+1]; item_ids [E] dense; timestamps/ratings [E] or None;
    labels [E, A] per-event action signals (0/1) for ranking, or None; context [U, F] per-user
    feature codes (genrec.data.user_features), or None."""

    item_ids: np.ndarray
    offsets: np.ndarray
    timestamps: np.ndarray | None = None
    ratings: np.ndarray | None = None
    labels: np.ndarray | None = None
    context: np.ndarray | None = None

    @property
    def num_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def _take(self, users: np.ndarray, index: np.ndarray, offsets: np.ndarray) -> "JaggedEvents":
        take = lambda column: None if column is None else column[index]  # noqa: E731
        return JaggedEvents(self.item_ids[index], offsets, take(self.timestamps), take(self.ratings),
                            take(self.labels), None if self.context is None else self.context[users])

    def drop_last(self, n: int) -> "JaggedEvents":
        """Every user's sequence without its last n events (lengths must exceed n)."""
        return self.window(np.arange(self.num_users), max_len=None, drop_last=n)

    def window(self, users: np.ndarray, max_len: int | None, drop_last: int = 0) -> "JaggedEvents":
        """The given users' sequences, minus the last `drop_last` events, cut to the last max_len."""
        ends = self.offsets[users + 1] - drop_last
        starts = self.offsets[users]
        if np.any(ends <= starts):
            raise ValueError(f"a sequence is too short to drop its last {drop_last} event(s)")
        if max_len is not None:
            starts = np.maximum(starts, ends - max_len)
        lengths = ends - starts
        offsets = np.zeros(len(users) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        index = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
        return self._take(users, index, offsets)

    def nth_from_end(self, n: int) -> np.ndarray:
        """Index into item_ids/timestamps of each user's n-th last event (n = 1 is the last)."""
        return self.offsets[1:] - n


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
