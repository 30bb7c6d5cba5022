"""Leave-one-out protocol splits (the paper's public protocol).

paper:     train on all but the last event; test on the last event.
validated: train on all but the last two; validate on the second-to-last (epoch selection);
           test on the last. Nothing is ever selected on test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from genrec.data.sequences import JaggedEvents, SequenceData

MODES = ("paper", "validated")


@dataclass
class EvalSplit:
    """Per user: the history the model reads and the held-out next item (and its time: the query time of
    the model's last history position, as training asks position i about event i + 1's time)."""

    histories: JaggedEvents
    target_items: np.ndarray  # [U]
    target_timestamps: np.ndarray | None = None  # [U], where the events have timestamps


@dataclass
class ProtocolSplit:
    train: JaggedEvents
    valid: EvalSplit | None
    test: EvalSplit
    mode: str


def min_length_for(mode: str) -> int:
    """Shortest sequence the mode can use: every held-out event needs a non-empty history."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return 2 if mode == "paper" else 3


def _held_out(sequences: JaggedEvents, n_from_end: int) -> EvalSplit:
    index = sequences.nth_from_end(n_from_end)
    times = None if sequences.timestamps is None else sequences.timestamps[index]
    return EvalSplit(sequences.drop_last(n_from_end), sequences.item_ids[index], times)


def leave_one_out(data: SequenceData, mode: str) -> ProtocolSplit:
    min_len = min_length_for(mode)
    if np.any(data.sequences.lengths < min_len):
        raise ValueError(f"mode {mode!r} needs sequences of at least {min_len} events")
    if mode == "paper":
        return ProtocolSplit(data.sequences.drop_last(1), None, _held_out(data.sequences, 1), mode)
    return ProtocolSplit(data.sequences.drop_last(2), _held_out(data.sequences, 2),
                         _held_out(data.sequences, 1), mode)


def train_on_share(split: ProtocolSplit, fraction: float, seed: int) -> ProtocolSplit:
    """The split with training on the first ceil(fraction * U) users of a seeded permutation (so shares of one
    seed nest), kept in user order; validation and test keep every user."""
    if fraction == 1.0:
        return split
    num_users = split.train.num_users
    users = np.sort(np.random.default_rng(seed).permutation(num_users)[:math.ceil(fraction * num_users)])
    return ProtocolSplit(split.train.select(users), split.valid, split.test, split.mode)


def sample_users(split: EvalSplit, max_users: int, seed: int) -> EvalSplit:
    """A seeded sample of at most max_users of the split's users, in user order (the whole split when it has no
    more, or when max_users is 0): the same users for the same seed and split size."""
    num_users = split.histories.num_users
    if max_users == 0 or max_users >= num_users:
        return split
    users = np.sort(np.random.default_rng(seed).choice(num_users, max_users, replace=False))
    times = None if split.target_timestamps is None else split.target_timestamps[users]
    return EvalSplit(split.histories.select(users), split.target_items[users], times)
