"""rab^{p,t} in factored form: learned weights + per-token timestamps, so a fused kernel can
compute the bias tile by tile instead of reading a dense [B, N, N] tensor.

bias(i, j) = position_weights[p(j) - p(i) + N - 1] + time_weights[bucket(t'_i - t_j)], with
bucket(dt) = floor(ln(max(|dt|, 1)) / time_bucket_scale) clamped to [0, num_time_buckets],
p(x) = min(x, Lh) (candidates share the position right after the history of length Lh) and
t'_i the query time of token i (query_timestamps): the time of the event it predicts, i.e. the
next history event's t_{i+1}; for the last history token the sequence's query time (the held-out
target's time in evaluation, the request's in serving; its own time when none is given), and
candidates their own time. So training (where row i predicts event i + 1), evaluation and serving
ask each row the same question; history rows never depend on the candidates, and a candidate's
bias does not depend on where it sits among the others (what M-FALCON's exactness rests on).
Shapes: B sequences, T tokens, N max_seq_len, n longest length in the batch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from genrec.ops.jagged import jagged_to_padded


@dataclass
class BucketedBias:
    position_weights: torch.Tensor | None  # [2N - 1]
    time_weights: torch.Tensor | None  # [num_time_buckets + 1]
    timestamps: torch.Tensor | None  # [T] int64; time part is skipped when None
    time_bucket_scale: float = 0.301
    # True promises timestamps that never decrease within a sequence (genrec's batches check it on the host):
    # the fused kernel then reads a key tile's time range off its ends instead of reducing it. A broken
    # promise gives wrong time biases; the reference ignores it. It covers the query timestamps too.
    sorted_timestamps: bool = False
    query_timestamps: torch.Tensor | None = None  # [T] int64 t' per token; None: query_timestamps() without query times

    @property
    def num_time_buckets(self) -> int:
        return 0 if self.time_weights is None else self.time_weights.numel() - 1

    @property
    def uses_time(self) -> bool:
        return self.time_weights is not None and self.timestamps is not None

    def query_times_for(self, seq_offsets: torch.Tensor, num_targets: torch.Tensor | None) -> torch.Tensor:
        """[T] t' of every token (the given query_timestamps, else their default)."""
        if self.query_timestamps is not None:
            return self.query_timestamps
        return query_timestamps(self.timestamps, seq_offsets, num_targets)


def query_timestamps(timestamps: torch.Tensor, seq_offsets: torch.Tensor, num_targets: torch.Tensor | None = None,
                     query_times: torch.Tensor | None = None) -> torch.Tensor:
    """t' [T] of every token: t_{i+1} inside the history; for the last history token query_times[b] [B] (the
    time of the event it predicts) or, when None, its own time; candidates their own time. No host sync."""
    num_tokens = timestamps.shape[0]
    device = timestamps.device
    lengths = seq_offsets[1:] - seq_offsets[:-1]
    sequence = torch.repeat_interleave(torch.arange(lengths.shape[0], device=device), lengths, output_size=num_tokens)
    history_end = seq_offsets[1:] if num_targets is None else seq_offsets[1:] - num_targets
    end = history_end[sequence]
    index = torch.arange(num_tokens, device=device)
    query = timestamps.gather(0, torch.where(index + 1 < end, index + 1, index))
    if query_times is not None:
        query = torch.where(index == end - 1, query_times.to(timestamps.dtype)[sequence], query)
    return query


def time_buckets_by_formula(delta: torch.Tensor, scale: float, num_buckets: int) -> torch.Tensor:
    """The formula, floor(ln(max(|dt|, 1)) / scale) clamped to [0, num_buckets], in float32; as the CPU computes it,
    the definition (see time_buckets). |dt| and the clamps are taken in float32 (the same result: rounding is
    symmetric and the bounds are integers)."""
    log_gap = torch.log(delta.to(torch.float32).abs().clamp(min=1))
    return (log_gap / scale).clamp(0, num_buckets).floor().to(torch.int64)


NEVER = 1 << 62  # a gap no timestamps within +-2^61 of each other reach


def time_bucket_thresholds(scale: float, num_buckets: int) -> torch.Tensor:
    """int64 [num_buckets + 4]: entry b (1 <= b <= num_buckets) is the smallest gap whose bucket is >= b, so
    time_buckets(dt) = #{b >= 1: |dt| >= entry b}; entry 0 is below every gap, entries past num_buckets (and
    those of buckets no gap under NEVER reaches) are NEVER. With them a fused kernel tests a pair against a
    bucket boundary with one comparison instead of a logarithm (see kernel._time_bias). Found by bisection on
    the formula, which is monotone in the gap."""
    target = torch.arange(1, num_buckets + 1)
    lo, hi = torch.ones(num_buckets, dtype=torch.int64), torch.full((num_buckets,), NEVER)
    while bool((lo < hi).any()):
        mid = (lo + hi) // 2
        reached = time_buckets_by_formula(mid, scale, num_buckets) >= target
        lo, hi = torch.where(reached, lo, mid + 1), torch.where(reached, mid, hi)
    return torch.cat([torch.tensor([-NEVER]), lo, torch.tensor([NEVER] * 3)])


@functools.lru_cache(maxsize=None)
def thresholds_on(scale: float, num_buckets: int, device: torch.device) -> torch.Tensor:
    """time_bucket_thresholds on a device, built once per setting (read only)."""
    return time_bucket_thresholds(scale, num_buckets).to(device)


def time_buckets(delta: torch.Tensor, scale: float, num_buckets: int) -> torch.Tensor:
    """The time bucket of int64 gaps: the formula as float32 computes it on a CPU, so that it is the same on every
    device (CUDA's logf and the CPU's differ in the last bit at some gaps, e.g. 3,269,017 at scale 0.3, where the
    bucket flips); elsewhere by counting the thresholds at or below |dt| (on a CPU the formula is 1.4x faster)."""
    if delta.device.type == "cpu":
        return time_buckets_by_formula(delta, scale, num_buckets)
    inner = thresholds_on(float(scale), num_buckets, delta.device)[1:num_buckets + 1]
    return torch.searchsorted(inner, delta.abs(), right=True)


def _lookup(weights: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """weights[index]; through gather, whose backward (scatter_add) runs ~2x faster on a CPU than
    indexing's (index_put with accumulation)."""
    return weights.gather(0, index.flatten()).view(index.shape)


def dense_bias(bias: BucketedBias, seq_offsets: torch.Tensor, n: int, max_seq_len: int,
               num_targets: torch.Tensor | None = None) -> torch.Tensor | None:
    """Materialises [B, 1, n, n] (positions inside each sequence; entries past a sequence's end are
    unspecified: the attention mask drops them); None when nothing is on."""
    lengths = seq_offsets[1:] - seq_offsets[:-1]
    history_len = (lengths if num_targets is None else lengths - num_targets).view(-1, 1)
    index = torch.arange(n, device=seq_offsets.device).view(1, n)
    # Without candidates p(x) = x inside every sequence, so one [1, n, n] position bias serves the
    # whole batch (B times less lookup work, forward and backward); candidates make it per sequence.
    position = index if num_targets is None else torch.minimum(index, history_len)  # p(x): [1 or B, n]
    dense = None
    if bias.position_weights is not None:
        relative = position.unsqueeze(1) - position.unsqueeze(2) + max_seq_len - 1  # p(j) - p(i) + N - 1
        dense = _lookup(bias.position_weights, relative)
    if bias.uses_time:
        key_times = jagged_to_padded(bias.timestamps, seq_offsets, n)
        query_times = jagged_to_padded(bias.query_times_for(seq_offsets, num_targets), seq_offsets, n)
        buckets = time_buckets(query_times.unsqueeze(2) - key_times.unsqueeze(1), bias.time_bucket_scale,
                               bias.num_time_buckets)
        time_part = _lookup(bias.time_weights, buckets)
        dense = time_part if dense is None else dense + time_part
    return None if dense is None else dense.unsqueeze(1).expand(lengths.shape[0], 1, n, n)
