"""A stream's events as `--mode stream` reads them (genrec.train.stream): laid out by user, each user's events in
time order (ties in source order), which is the order an event store keeps on disk (genrec.data.event_store), with
the global time order as a permutation of those rows and the day windows over it.

Built from a log in memory (`of_events`), or over an event store's memory-mapped columns (`of_store`): the events
and their time order (written by genrec prepare) then stay on disk, memory holds the per-user offsets, and a
window's sequences and batches read their rows from the mapped files. Rows: indices into the by-user layout.
"""

from __future__ import annotations

import numpy as np

from genrec.data.event_store import EventStore
from genrec.data.events import Events

DAY = 86_400


class SourceIds:
    """An event store's dense item column read as source item ids (rows -> ids), without a copy."""

    def __init__(self, dense: np.ndarray, vocabulary: np.ndarray) -> None:
        self.dense, self.vocabulary = dense, vocabulary

    def __getitem__(self, rows) -> np.ndarray:
        return self.vocabulary[self.dense[rows] - 1]


class StreamEvents:
    def __init__(self, items, timestamps: np.ndarray, user_offsets: np.ndarray, user_vocab: np.ndarray,
                 time_order: np.ndarray, num_items: int, window_days: float, source: str) -> None:
        """items, timestamps: per row (source item ids, int64 times); user_offsets [U + 1]: user u's rows are
        user_offsets[u]:user_offsets[u + 1]; user_vocab [U]: source user ids; time_order [E]: the rows by time."""
        if len(time_order) == 0:
            raise ValueError(f"{source}: no events to stream")
        self.items, self.timestamps, self.user_offsets, self.user_vocab = items, timestamps, user_offsets, user_vocab
        self.time_order, self.num_items = time_order, num_items
        width = round(window_days * DAY)
        first, last = int(timestamps[time_order[0]]), int(timestamps[time_order[-1]])
        self.window_start_times = first + width * np.arange((last - first) // width + 2)
        self.window_starts = _first_at_or_after(timestamps, time_order, self.window_start_times)

    @classmethod
    def of_events(cls, events: Events, window_days: float) -> "StreamEvents":
        """The stream of a log held in memory (copied into the by-user layout)."""
        if events.timestamps is None:
            raise ValueError(f"{events.source}: data.mode = stream needs timestamps, and this data set has none")
        times = np.asarray(events.timestamps).astype(np.int64)
        user_vocab, users = np.unique(np.asarray(events.user_ids), return_inverse=True)
        by_user = np.lexsort((times, users))  # stable: ties in source order
        time_order = np.lexsort((by_user, times[by_user]))  # the rows by time, ties in source order
        items = np.asarray(events.item_ids).astype(np.int64)[by_user]
        offsets = np.concatenate([[0], np.cumsum(np.bincount(users))])
        return cls(items, times[by_user], offsets, user_vocab, time_order, int(np.unique(items).size), window_days,
                   events.source)

    @classmethod
    def of_store(cls, store: EventStore, window_days: float) -> "StreamEvents":
        """The stream of an event store, its columns and its time order left mapped (ties in time keep the store's
        row order)."""
        if not store.has_timestamps:
            raise ValueError(f"{store.path}: data.mode = stream needs timestamps, and this store has none")
        times = store.column("timestamp")
        vocabulary = np.load(store.path / "items.npy")
        written = store.path / "time_order.npy"  # stores written before it was kept: sorted here, in memory
        time_order = np.load(written, mmap_mode="r") if written.exists() else np.argsort(times, kind="stable")
        return cls(SourceIds(store.column("item_id"), vocabulary), times, np.load(store.path / "offsets.npy"),
                   np.load(store.path / "users.npy"), time_order, vocabulary.size, window_days, str(store.path))

    @property
    def num_windows(self) -> int:
        return self.window_starts.size - 1

    def window_bounds(self, window: int) -> tuple[int, int]:
        """The window's span of the time order."""
        return int(self.window_starts[window]), int(self.window_starts[window + 1])

    def window_rows(self, window: int) -> np.ndarray:
        """The window's rows, in time order."""
        start, end = self.window_bounds(window)
        return self.time_order[start:end]

    def user_of(self, rows: np.ndarray) -> np.ndarray:
        """Each row's user (an index into user_vocab)."""
        return np.searchsorted(self.user_offsets, rows, side="right") - 1

    def window_sequences(self, window: int, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """The window's sequences as (users, ends): a sequence is its user's max_len events up to the end-th (in
        the user's own order). A sequence predicts its events after its first, max_len - 1 at most, so a user whose
        window events outnumber that gets more sequences, each ending max_len - 1 events before the last: every
        event of the window but a user's very first is predicted by exactly one sequence."""
        if max_len < 2:
            raise ValueError("stream mode needs data.max_seq_len >= 2 (a sequence predicts its events after its first)")
        rows = np.sort(self.window_rows(window))  # a user's window events are a run of its rows
        if rows.size == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        user = self.user_of(rows)
        first = np.flatnonzero(np.concatenate([[True], user[1:] != user[:-1]]))
        users = user[first]
        before_start = rows[first] - self.user_offsets[users]  # the user's events before the window
        before_end = np.concatenate([rows[first[1:] - 1], rows[-1:]]) + 1 - self.user_offsets[users]
        targets = before_end - np.maximum(before_start, 1)  # a user's first event has nothing to predict it
        counts = np.maximum(1, -(-targets // (max_len - 1)))
        back = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        return np.repeat(users, counts), np.repeat(before_end, counts) - back * (max_len - 1)

    def histories(self, users: np.ndarray, ends: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """The rows of each user's last max_len events up to its end-th (in time order), and the lengths."""
        lengths = np.minimum(ends, max_len)
        starts = self.user_offsets[users] + ends - lengths
        within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return np.repeat(starts, lengths) + within, lengths


def _first_at_or_after(times: np.ndarray, order: np.ndarray, boundaries: np.ndarray) -> np.ndarray:
    """For each boundary, the first position of `order` whose time is at or after it (a binary search per boundary,
    reading log2(E) times each rather than the sorted times whole)."""
    low, high = np.zeros(boundaries.size, np.int64), np.full(boundaries.size, len(order), np.int64)
    while (low < high).any():
        active = low < high
        middle = (low + high) // 2
        before = active & (times[order[np.minimum(middle, len(order) - 1)]] < boundaries)
        low = np.where(before, middle + 1, low)
        high = np.where(active & ~before, middle, high)
    return low
