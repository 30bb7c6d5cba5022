"""Relative attention bias rab^{p,t} (paper Sec. 3.1): one learned bias per relative position
plus one per log-bucketed time gap, shared across heads.

The time gap for query i and key j is t_{i+1} - t_j: the query's *next* event time minus the key's
event time, so the model knows how long until the event it predicts (a sequence's last query uses
its own time). Shapes: B sequences, n longest length in the batch, N max_seq_len.
"""

from __future__ import annotations

import torch
from torch import nn

from genrec.ops.jagged import jagged_to_padded, next_in_sequence


def time_buckets(delta: torch.Tensor, scale: float, num_buckets: int) -> torch.Tensor:
    """floor(ln(max(|dt|, 1)) / scale), clamped to [0, num_buckets]."""
    log_gap = torch.log(delta.abs().clamp(min=1).to(torch.float32))
    return (log_gap / scale).floor().to(torch.int64).clamp(0, num_buckets)


class RelativeBias(nn.Module):
    def __init__(self, max_seq_len: int, num_time_buckets: int, time_bucket_scale: float,
                 use_position: bool = True, use_time: bool = True) -> None:
        super().__init__()
        self.max_seq_len = max_seq_len
        self.num_time_buckets = num_time_buckets
        self.time_bucket_scale = time_bucket_scale
        self.position_weights = nn.Parameter(torch.empty(2 * max_seq_len - 1).normal_(0, 0.02)) if use_position else None
        self.time_weights = nn.Parameter(torch.empty(num_time_buckets + 1).normal_(0, 0.02)) if use_time else None

    @property
    def enabled(self) -> bool:
        return self.position_weights is not None or self.time_weights is not None

    def forward(self, seq_offsets: torch.Tensor, timestamps: torch.Tensor | None, n: int) -> torch.Tensor | None:
        """Dense bias [B, 1, n, n] for positions inside each sequence, or None when disabled."""
        num_seqs = seq_offsets.shape[0] - 1
        bias = None
        if self.position_weights is not None:
            i = torch.arange(n, device=seq_offsets.device)
            relative = i.view(1, n) - i.view(n, 1) + self.max_seq_len - 1  # j - i + N - 1
            bias = self.position_weights[relative].expand(num_seqs, n, n)
        if self.time_weights is not None and timestamps is not None:
            query_times = jagged_to_padded(next_in_sequence(timestamps, seq_offsets), seq_offsets, n)
            key_times = jagged_to_padded(timestamps, seq_offsets, n)
            buckets = time_buckets(query_times.unsqueeze(2) - key_times.unsqueeze(1),
                                   self.time_bucket_scale, self.num_time_buckets)
            time_bias = self.time_weights[buckets]
            bias = time_bias if bias is None else bias + time_bias
        return None if bias is None else bias.unsqueeze(1)
