"""Causal softmax attention over jagged sequences: the ablation of the paper's Table 2, "HSTU with
softmax instead of pointwise attention (and no rab)". Padded internally through PyTorch's SDPA (its flash
backend on GPUs): it is the baseline, not the hot path. On a CPU each group of like lengths is padded to its own
longest (genrec.ops.attention.length_groups), not to the batch's. Shapes: T tokens, B sequences, n longest,
H heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from genrec.ops.attention.length_groups import by_length_groups
from genrec.ops.jagged import jagged_to_padded, lengths_from_offsets, padded_to_jagged


def jagged_softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             seq_offsets: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(Dqk)) v under the causal mask of each sequence: q, k [T, H, Dqk], v [T, H, Dv]
    -> [T, H, Dv]."""
    if q.device.type == "cpu":
        return by_length_groups(lambda _, rows, offsets: _padded_attention(q[rows], k[rows], v[rows], offsets),
                                seq_offsets)
    return _padded_attention(q, k, v, seq_offsets)


def _padded_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seq_offsets: torch.Tensor) -> torch.Tensor:
    lengths = lengths_from_offsets(seq_offsets)
    longest = int(lengths.max()) if lengths.numel() else 0
    padded = [jagged_to_padded(t, seq_offsets, longest).transpose(1, 2) for t in (q, k, v)]  # [B, H, n, D]
    # padding sits after each sequence's tokens, so the causal mask already keeps real rows off it
    attended = F.scaled_dot_product_attention(*padded, is_causal=True)
    return padded_to_jagged(attended.transpose(1, 2), seq_offsets)
