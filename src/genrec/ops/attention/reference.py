"""Plain-PyTorch HSTU attention: the specification every fused kernel is tested against.

Shapes: B sequences, T tokens, N = max_seq_len, H heads, Dqk / Dv head dims.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from genrec.ops.attention.rab import BucketedBias, dense_bias, time_buckets
from genrec.ops.jagged import jagged_to_padded, lengths_from_offsets, padded_to_jagged


def attention_mask(lengths: torch.Tensor, n: int, num_targets: torch.Tensor | None = None,
                   max_attn_len: int = 0, contextual_seq_len: int = 0) -> torch.Tensor:
    """[B, n, n] bool: may query i attend to key j (both positions inside the same sequence).

    With L = length, m = num_targets, Lh = L - m and p(i) = min(i, Lh) (candidates share the
    position right after the history):
      valid(i, j) = j == i, or j < p(i) and (max_attn_len == 0 or p(i) - j <= max_attn_len),
                    or j < contextual_seq_len, or (i < contextual_seq_len and j < Lh);
    and always i < L, j < L. So history is causal, a candidate sees the history and itself,
    never another candidate, and the first contextual_seq_len tokens see and are seen by all.
    """
    device = lengths.device
    i = torch.arange(n, device=device).view(1, n, 1)
    j = torch.arange(n, device=device).view(1, 1, n)
    seq_len = lengths.view(-1, 1, 1)
    history_len = seq_len if num_targets is None else seq_len - num_targets.view(-1, 1, 1)
    query_pos = torch.minimum(i, history_len)
    past = j < query_pos
    if max_attn_len > 0:
        past = past & (query_pos - j <= max_attn_len)
    valid = (j == i) | past
    if contextual_seq_len > 0:
        valid = valid | (j < contextual_seq_len) | ((i < contextual_seq_len) & (j < history_len))
    return valid & (i < seq_len) & (j < seq_len)


def hstu_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             seq_offsets: torch.Tensor, *, max_seq_len: int, alpha: float,
                             num_targets: torch.Tensor | None = None,
                             rab: torch.Tensor | BucketedBias | None = None, max_attn_len: int = 0,
                             contextual_seq_len: int = 0) -> torch.Tensor:
    """out_i = sum_j valid(i, j) * SiLU(alpha * q_i.k_j + rab_ij) / max_seq_len * v_j.

    q, k: [T, H, Dqk]; v: [T, H, Dv]; rab: dense [B, H or 1, N, N] indexed by position in
    sequence, or a BucketedBias (materialised here; the kernel computes it tile by tile).
    Computes in the inputs' dtype (so it doubles as the low-precision reference). Returns [T, H, Dv].
    """
    lengths = lengths_from_offsets(seq_offsets)
    if lengths.numel() == 0 or q.shape[0] == 0:
        return v.new_zeros(v.shape)
    n = int(lengths.max())
    qp = jagged_to_padded(q, seq_offsets, n).transpose(1, 2)  # [B, H, n, Dqk]
    kp = jagged_to_padded(k, seq_offsets, n).transpose(1, 2)
    vp = jagged_to_padded(v, seq_offsets, n).transpose(1, 2)  # [B, H, n, Dv]
    scores = alpha * torch.matmul(qp, kp.transpose(-1, -2))   # [B, H, n, n]
    if isinstance(rab, BucketedBias):
        rab = dense_bias(rab, seq_offsets, n, max_seq_len, num_targets)
    if rab is not None:
        scores = scores + rab[:, :, :n, :n].to(scores.dtype)
    mask = attention_mask(lengths, n, num_targets, max_attn_len, contextual_seq_len)
    weights = F.silu(scores) / max_seq_len
    weights = weights * mask.unsqueeze(1).to(weights.dtype)
    out = torch.matmul(weights, vp).transpose(1, 2)           # [B, n, H, Dv]
    return padded_to_jagged(out, seq_offsets)


def candidate_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, history_k: torch.Tensor,
                                  history_v: torch.Tensor, *, max_seq_len: int, alpha: float,
                                  rab: BucketedBias | None = None,
                                  candidate_timestamps: torch.Tensor | None = None) -> torch.Tensor:
    """The candidate rows of `hstu_attention_reference` for one user, from cached history keys/values.

    q, k: [C, H, Dqk], v: [C, H, Dv] for C candidates; history_k: [L, H, Dqk], history_v: [L, H, Dv];
    rab.timestamps holds the L history times. Each candidate sees the history and itself only, at
    position p = L, with its own time as query time (see rab.py). Returns [C, H, Dv].
    """
    history_len = history_k.shape[0]
    scores = alpha * torch.einsum("chd,lhd->chl", q, history_k)  # [C, H, L]
    self_scores = alpha * (q * k).sum(-1)  # [C, H]
    if rab is not None:
        if rab.position_weights is not None:
            keys = torch.arange(history_len, device=q.device)
            scores = scores + rab.position_weights[keys - history_len + max_seq_len - 1].to(scores.dtype)
            self_scores = self_scores + rab.position_weights[max_seq_len - 1].to(scores.dtype)
        if rab.uses_time and candidate_timestamps is not None:
            gaps = candidate_timestamps.view(-1, 1) - rab.timestamps.view(1, -1)  # [C, L]
            buckets = time_buckets(gaps, rab.time_bucket_scale, rab.num_time_buckets)
            scores = scores + rab.time_weights[buckets].unsqueeze(1).to(scores.dtype)
            self_scores = self_scores + rab.time_weights[0].to(scores.dtype)  # |dt| = 0
    out = torch.einsum("chl,lhd->chd", F.silu(scores) / max_seq_len, history_v)
    return out + (F.silu(self_scores) / max_seq_len).unsqueeze(-1) * v
