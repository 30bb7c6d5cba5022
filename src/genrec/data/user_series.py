"""Slow-changing user features sequentialized (the paper's Sec. 2.1): a categorical user feature that changes now
and then (the topic a user follows, a subscription tier) becomes one time-stamped token per change, merged into
the user's sequence of events where it happened (genrec.model.retrieval).

Sources: a CSV with a header `user_id,timestamp,<feature>` (one change per row; values are categories), or the
synthetic stream's followed topics (genrec.data.synthetic_stream). A change at time t comes before an event at t.

Shapes: M changes, U users, B users of a batch.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genrec.data.events import BadRows, numbered_lines, parse_int


@dataclass
class UserChanges:
    """A feature's changes as a source lists them: user_ids, timestamps, codes [M] (codes in 1..cardinality; code c
    is the value values[c - 1])."""

    user_ids: np.ndarray
    timestamps: np.ndarray
    codes: np.ndarray
    name: str
    values: tuple[str, ...]
    skipped_rows: int = 0

    @property
    def cardinality(self) -> int:
        return len(self.values)


@dataclass
class UserSeries:
    """The changes of the users of a JaggedEvents, in its user order: user u's are [starts[u], ends[u]) of the
    columns, oldest first; a batch takes at most max_len of them per sequence. Views (select) share the columns."""

    timestamps: np.ndarray  # [M] int64
    codes: np.ndarray  # [M] int64 in 1..cardinality
    starts: np.ndarray  # [U] int64
    ends: np.ndarray  # [U] int64
    name: str
    cardinality: int
    max_len: int

    @classmethod
    def of_users(cls, changes: UserChanges, user_vocab: np.ndarray, max_len: int) -> "UserSeries":
        """The changes of the users user_vocab lists (source ids, in the sequences' order); others are dropped."""
        if not np.all(np.diff(user_vocab) > 0):
            raise ValueError("user_vocab must list each user once, ascending")
        order = np.lexsort((np.arange(len(changes.user_ids)), changes.timestamps, changes.user_ids))
        users = changes.user_ids[order]
        starts = np.searchsorted(users, user_vocab, side="left")
        ends = np.searchsorted(users, user_vocab, side="right")
        return cls(changes.timestamps[order].astype(np.int64), changes.codes[order].astype(np.int64),
                   starts.astype(np.int64), ends.astype(np.int64), changes.name, changes.cardinality, max_len)

    def select(self, users: np.ndarray) -> "UserSeries":
        """A view of these users (indices or a boolean mask), in that order."""
        return UserSeries(self.timestamps, self.codes, self.starts[users], self.ends[users], self.name,
                          self.cardinality, self.max_len)

    def window(self, first_times: np.ndarray, last_times: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(codes, timestamps, offsets [U + 1]) of each user's changes that a sequence of its events from
        first_times[u] to last_times[u] sees: the state it starts in (the last change at or before its first
        event) and every change up to last_times[u] (the query time, or the last event), the latest max_len."""
        starts, ends = self.starts, self.ends
        # each user's changes are sorted by time, so counting those at or before t is searching for t
        counts = ends - starts
        user = np.repeat(np.arange(starts.size), counts)
        times = self.timestamps[np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())]

        def at_or_before(limits: np.ndarray) -> np.ndarray:
            return np.bincount(user, weights=times <= np.asarray(limits)[user], minlength=starts.size).astype(np.int64)

        hi = starts + at_or_before(last_times)
        lo = starts + np.maximum(at_or_before(first_times) - 1, 0)
        lo = np.minimum(np.maximum(lo, hi - self.max_len), hi)
        lengths = hi - lo
        offsets = np.zeros(len(starts) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        index = np.repeat(lo - offsets[:-1], lengths) + np.arange(offsets[-1])
        return self.codes[index], self.timestamps[index], offsets


def read_user_changes(path: str | Path, skip_bad_rows: bool = False) -> UserChanges:
    """A CSV of `user_id,timestamp,<feature>` rows (any header name for the feature, whose values are categories
    numbered 1..V in sorted order); a row with the wrong number of fields or a non-integer id or time is an error
    (or skipped and counted)."""
    path = Path(path)
    bad = BadRows(str(path), skip_bad_rows)
    reader = csv.reader(line for _, line in numbered_lines(path))
    header = [name.strip() for name in next(reader, [])]
    if len(header) != 3 or header[:2] != ["user_id", "timestamp"]:
        raise ValueError(f"{path}: expected the header user_id,timestamp,<feature>, got {','.join(header)}")
    users, times, values = [], [], []
    for row in reader:
        if not row:
            continue
        if len(row) != 3:
            bad.report(reader.line_num, f"expected 3 fields, got {len(row)}")
            continue
        user = parse_int(row[0].strip(), "user id", reader.line_num, bad)
        time = parse_int(row[1].strip(), "timestamp", reader.line_num, bad) if user is not None else None
        if time is not None:
            users.append(user)
            times.append(time)
            values.append(row[2].strip())
    if not users:
        raise ValueError(f"{path}: no changes")
    vocabulary, codes = np.unique(np.asarray(values), return_inverse=True)
    return UserChanges(np.asarray(users, np.int64), np.asarray(times, np.int64), codes.astype(np.int64) + 1,
                       header[2], tuple(vocabulary.tolist()), bad.count)
