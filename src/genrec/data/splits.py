"""Leave-one-out protocol splits (the paper's public protocol).

paper:     train on all but the last event; test on the last event.
validated: train on all but the last two; validate on the second-to-last (epoch selection);
           test on the last. Nothing is ever selected on test.
"""

from __future__ import annotations

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
