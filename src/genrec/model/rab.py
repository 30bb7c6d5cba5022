"""Relative attention bias rab^{p,t} (paper Sec. 3.1), one per layer, shared across heads: the
learned weights live here; the math (and the in-kernel form) lives in genrec.ops.attention.rab.
"""

from __future__ import annotations

import torch
from torch import nn

from genrec.ops.attention.rab import BucketedBias


class RelativeBias(nn.Module):
    def __init__(self, max_seq_len: int, num_time_buckets: int, time_bucket_scale: float,
                 use_position: bool = True, use_time: bool = True) -> None:
        super().__init__()
        self.time_bucket_scale = time_bucket_scale
        self.position_weights = nn.Parameter(torch.empty(2 * max_seq_len - 1).normal_(0, 0.02)) if use_position else None
        self.time_weights = nn.Parameter(torch.empty(num_time_buckets + 1).normal_(0, 0.02)) if use_time else None

    def forward(self, timestamps: torch.Tensor | None, sorted_timestamps: bool = False,
                query_timestamps: torch.Tensor | None = None) -> BucketedBias | None:
        """The bias for a batch with these per-token timestamps [T] (None: position part only) and query times
        t' [T] (None: genrec.ops.attention.rab.query_timestamps' default); sorted_timestamps: both never
        decrease within a sequence."""
        bias = BucketedBias(self.position_weights, self.time_weights, timestamps, self.time_bucket_scale,
                            sorted_timestamps, query_timestamps)
        return bias if bias.position_weights is not None or bias.uses_time else None
