"""What a cached history gives M-FALCON: per HSTU layer, the history's keys and values.

An object passed into the encoder's candidate pass (never stored on the module). Shapes:
L history length, H heads, Dqk / Dv head dims.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class HistoryCache:
    item_ids: torch.Tensor  # [L]
    timestamps: torch.Tensor | None  # [L]
    keys: list[torch.Tensor] = field(default_factory=list)  # per layer [L, H, Dqk]
    values: list[torch.Tensor] = field(default_factory=list)  # per layer [L, H, Dv]

    @property
    def history_len(self) -> int:
        return self.item_ids.shape[0]

    def matches(self, item_ids: torch.Tensor, timestamps: torch.Tensor | None) -> bool:
        """True when this cache was built from exactly this history."""
        same_items = self.item_ids.shape == item_ids.shape and bool(torch.equal(self.item_ids, item_ids.to(self.item_ids.device)))
        if self.timestamps is None or timestamps is None:
            return same_items and self.timestamps is None and timestamps is None
        return same_items and bool(torch.equal(self.timestamps, timestamps.to(self.timestamps.device)))
