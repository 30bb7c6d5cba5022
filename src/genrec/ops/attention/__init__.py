"""genrec.ops.hstu_attention: pointwise (SiLU, no softmax) jagged attention of HSTU (paper Eq. 2)."""

from __future__ import annotations

import importlib.util
import os

import torch

from genrec.ops.attention.length_groups import hstu_attention_grouped
from genrec.ops.attention.rab import BucketedBias, dense_bias, time_buckets
from genrec.ops.attention.reference import (attention_mask, candidate_attention_reference,
                                            hstu_attention_reference)

BACKENDS = ("auto", "torch", "triton")
TRITON_AVAILABLE = importlib.util.find_spec("triton") is not None


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seq_offsets: torch.Tensor,
                  max_seq_len: int, num_targets: torch.Tensor | None) -> None:
    if q.dim() != 3 or k.shape != q.shape or v.dim() != 3 or v.shape[:2] != q.shape[:2]:
        raise ValueError(f"expected q, k [T, H, Dqk] and v [T, H, Dv]; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if seq_offsets.dim() != 1 or seq_offsets.dtype != torch.int64:
        raise ValueError("seq_offsets must be a 1-D int64 tensor [B+1]")
    if max_seq_len <= 0:
        raise ValueError(f"max_seq_len must be positive, got {max_seq_len}")
    if num_targets is not None and num_targets.shape[0] != seq_offsets.shape[0] - 1:
        raise ValueError("num_targets must have one entry per sequence")


def _pick_backend(backend: str, q: torch.Tensor, rab) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        fusable = rab is None or isinstance(rab, BucketedBias)
        return "triton" if q.is_cuda and TRITON_AVAILABLE and fusable else "torch"
    if backend == "triton":
        if not TRITON_AVAILABLE:
            raise ValueError("backend='triton' needs triton (pip install triton)")
        if isinstance(rab, torch.Tensor):
            raise ValueError("backend='triton' computes rab in-kernel: pass a BucketedBias, not a dense tensor")
        if not q.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError("attention backend 'triton' runs on a CUDA GPU, and these tensors are on the CPU: "
                             "use --attention-backend torch or auto there (or TRITON_INTERPRET=1, which is slow)")
    return backend


def attention_flops(lengths: torch.Tensor, num_heads: int, qk_dim: int, v_dim: int) -> float:
    """Forward FLOPs of causal attention over sequences of these lengths: Q K^T and A V each cost
    2 * H * D per visible (query, key) pair, and a causal sequence of length L has L (L + 1) / 2 pairs."""
    lengths = lengths.double()
    return float((lengths * (lengths + 1) / 2).sum()) * 2 * num_heads * (qk_dim + v_dim)


def hstu_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seq_offsets: torch.Tensor, *,
                   max_seq_len: int, alpha: float, num_targets: torch.Tensor | None = None,
                   rab: torch.Tensor | BucketedBias | None = None, max_attn_len: int = 0,
                   contextual_seq_len: int = 0, backend: str = "auto") -> torch.Tensor:
    """Jagged HSTU attention.

    out_i = sum_j valid(i, j) * SiLU(alpha * q_i.k_j + rab_ij) / max_seq_len * v_j, where
    valid(i, j) is causal within a sequence; with num_targets[b] = m the last m tokens of
    sequence b are candidates that attend to the history and themselves only (see
    `attention_mask` for max_attn_len and contextual_seq_len).

    Args:
        q, k: [T, H, Dqk]; v: [T, H, Dv]; seq_offsets: int64 [B+1].
        max_seq_len: N, the bound on every length and the attention's normaliser.
        rab: a BucketedBias (position + time-gap bucket weights, fused in-kernel) or a dense
            bias [B, H or 1, N, N] indexed by position in sequence (reference backend only).
        backend: "torch" (the reference, over groups of like lengths: length_groups), "triton" (fused
            kernel) or "auto" (triton on CUDA).
    Returns:
        [T, H, Dv] in q's dtype.
    """
    _check_inputs(q, k, v, seq_offsets, max_seq_len, num_targets)
    arguments = dict(max_seq_len=max_seq_len, alpha=alpha, num_targets=num_targets, rab=rab,
                     max_attn_len=max_attn_len, contextual_seq_len=contextual_seq_len)
    if _pick_backend(backend, q, rab) == "triton":
        from genrec.ops.attention.op import hstu_attention_triton
        return hstu_attention_triton(q, k, v, seq_offsets, **arguments)
    return hstu_attention_grouped(q, k, v, seq_offsets, **arguments)


def candidate_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, history_k: torch.Tensor,
                        history_v: torch.Tensor, *, max_seq_len: int, alpha: float, rab: BucketedBias | None = None,
                        candidate_timestamps: torch.Tensor | None = None, history_offsets: torch.Tensor | None = None,
                        backend: str = "auto") -> torch.Tensor:
    """M-FALCON's cached attention for one user: the candidate rows of `hstu_attention` with num_targets, from
    the history's cached keys/values (see candidate_attention_reference for the arguments); "auto" takes the
    fused kernel on CUDA. history_offsets: [0, L] on the device when history_k/v (and rab's timestamps) hold
    rows past the history's L (fixed-size buffers); the fused kernel only."""
    arguments = dict(max_seq_len=max_seq_len, alpha=alpha, rab=rab, candidate_timestamps=candidate_timestamps)
    if _pick_backend(backend, q, rab) == "triton":
        from genrec.ops.attention.op import candidate_attention_triton
        return candidate_attention_triton(q, k, v, history_k, history_v, history_offsets=history_offsets,
                                          **arguments)
    if history_offsets is not None:
        raise ValueError("history buffers longer than the history (history_offsets) need the fused kernel")
    return candidate_attention_reference(q, k, v, history_k, history_v, **arguments)


__all__ = ["BACKENDS", "BucketedBias", "attention_flops", "attention_mask", "candidate_attention",
           "candidate_attention_reference", "dense_bias", "hstu_attention", "hstu_attention_reference", "time_buckets"]
