"""DIN baseline (Zhou et al. 2018): target attention over the history (unnormalised weights from
an MLP of [history, target, product, difference]), then an MLP over [pooled, target, product].

Shapes: B impressions, n history length (padded), D dim, A tasks.
"""

from __future__ import annotations

import torch
from torch import nn


class DIN(nn.Module):
    def __init__(self, num_items: int, dim: int, num_tasks: int, hidden: int = 64) -> None:
        super().__init__()
        self.item = nn.Embedding(num_items + 1, dim, padding_idx=0)
        self.action = nn.Linear(num_tasks, dim)
        self.attention = nn.Sequential(nn.Linear(4 * dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.output = nn.Sequential(nn.Linear(3 * dim, hidden), nn.ReLU(), nn.Linear(hidden, num_tasks))

    def forward(self, history_ids: torch.Tensor, history_labels: torch.Tensor, history_mask: torch.Tensor,
                target_ids: torch.Tensor) -> torch.Tensor:
        """history_ids [B, n], history_labels [B, n, A], history_mask [B, n] bool, target_ids [B] -> [B, A]."""
        history = self.item(history_ids) + self.action(history_labels)
        target = self.item(target_ids)
        expanded = target.unsqueeze(1).expand_as(history)
        weights = self.attention(torch.cat([history, expanded, history * expanded, history - expanded], -1))
        pooled = (weights * history * history_mask.unsqueeze(-1)).sum(1)
        return self.output(torch.cat([pooled, target, pooled * target], -1))

    def forward_flops(self, history_lengths: torch.Tensor) -> float:
        """Matrix-multiply FLOPs of one forward pass over impressions with histories of these lengths (real, not
        padded, events): per history event the action projection and the attention MLP, per impression the output
        MLP."""
        num_tasks, dim = self.action.in_features, self.action.out_features
        attention_in, hidden = self.attention[0].in_features, self.attention[0].out_features
        per_event = 2 * num_tasks * dim + 2 * attention_in * hidden + 2 * hidden
        per_impression = 2 * self.output[0].in_features * hidden + 2 * hidden * num_tasks
        return float(history_lengths.sum()) * per_event + history_lengths.numel() * per_impression
