"""What a cached history gives M-FALCON: per HSTU layer, the history's keys and values.

An object passed into the encoder's candidate pass (never stored on the module). Shapes:
L history length, H heads, Dqk / Dv head dims.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class HistoryCache:
    item_ids: torch.Tensor  # [L] events
    timestamps: torch.Tensor | None  # [L] event times, as requested
    labels: torch.Tensor | None = None  # [L, A] action signals (ranker)
    token_timestamps: torch.Tensor | None = None  # per history token (the ranker has two per event)
    query_time: int | None = None  # what the last history token asked about (see genrec.inference.mfalcon)
    keys: list[torch.Tensor] = field(default_factory=list)  # per layer [L, H, Dqk]
    values: list[torch.Tensor] = field(default_factory=list)  # per layer [L, H, Dv]
    # [0, L] on the device when keys and values hold rows past the history (a CUDA graph's fixed-size buffers:
    # the fused kernel reads L from here); None: they hold the history exactly
    history_offsets: torch.Tensor | None = None
    context: torch.Tensor | None = None  # [F] the user-context codes whose prefix tokens lead the keys and values
    changes: tuple[torch.Tensor, torch.Tensor] | None = None  # codes [S] and times [S] of its change tokens

    @property
    def history_len(self) -> int:
        return self.item_ids.shape[0]

    @property
    def candidate_position(self) -> int:
        """The candidates' token position (the history's tokens; context prefix and change tokens have none)."""
        return (self.keys[0].shape[0] - (0 if self.context is None else self.context.numel())
                - (0 if self.changes is None else self.changes[0].numel()))

    def matches(self, item_ids: torch.Tensor, timestamps: torch.Tensor | None, labels: torch.Tensor | None,
                query_time: int | None = None, context: torch.Tensor | None = None,
                changes: tuple[torch.Tensor, torch.Tensor] | None = None) -> bool:
        """True when this cache was built from exactly this history, context, changes and query time (which shapes
        the keys and values of the layers after the first, where the model uses time)."""
        same_changes = (changes is None) == (self.changes is None) and (
            changes is None or all(_same(mine, theirs) for mine, theirs in zip(self.changes, changes)))
        return (_same(self.item_ids, item_ids) and _same(self.timestamps, timestamps) and _same(self.labels, labels)
                and _same(self.context, context) and same_changes
                and (self.timestamps is None or self.query_time == query_time))


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and bool(torch.equal(a, b.to(a.device)))
