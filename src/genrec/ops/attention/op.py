"""The fused kernels as registered PyTorch operators: `genrec::hstu_attention_fwd` / `_bwd`, each with a
fake (shape-only) twin, and autograd tying them together; M-FALCON's forward-only
`genrec::hstu_candidate_attention`. Registration through torch.library (not a
bare autograd.Function) is what lets torch.compile trace through without a graph break, and FSDP,
export and `torch.library.opcheck` treat the kernel like any aten op. Eager calls skip the dispatcher
(`_EagerAttention`): same launchers, same gradients, less Python per call.

Shapes: T tokens, H heads, Dqk / Dv head dims, B sequences.
"""

from __future__ import annotations

import functools

import torch

from genrec.ops.attention import candidate_kernel, kernel


@torch.library.custom_op("genrec::hstu_attention_fwd", mutates_args=())
def hstu_attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seq_offsets: torch.Tensor,
                       num_targets: torch.Tensor | None, position_weights: torch.Tensor | None,
                       time_weights: torch.Tensor | None, timestamps: torch.Tensor | None,
                       query_timestamps: torch.Tensor | None, max_seq_len: int, alpha: float, max_attn_len: int,
                       contextual_seq_len: int, time_bucket_scale: float, sorted_timestamps: bool) -> torch.Tensor:
    """out [T, H, Dv]; q, k [T, H, Dqk], v [T, H, Dv] contiguous (see genrec.ops.hstu_attention)."""
    return kernel.forward(q, k, v, seq_offsets, num_targets, position_weights, time_weights, timestamps,
                          query_timestamps, max_seq_len, alpha, max_attn_len, contextual_seq_len, time_bucket_scale,
                          sorted_timestamps)


@hstu_attention_fwd.register_fake
def _(q, k, v, seq_offsets, num_targets, position_weights, time_weights, timestamps, query_timestamps, max_seq_len,
      alpha, max_attn_len, contextual_seq_len, time_bucket_scale, sorted_timestamps):
    return q.new_empty(q.shape[0], q.shape[1], v.shape[2])


@torch.library.custom_op("genrec::hstu_attention_bwd", mutates_args=())
def hstu_attention_bwd(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       seq_offsets: torch.Tensor, num_targets: torch.Tensor | None,
                       position_weights: torch.Tensor | None, time_weights: torch.Tensor | None,
                       timestamps: torch.Tensor | None, query_timestamps: torch.Tensor | None, max_seq_len: int,
                       alpha: float, max_attn_len: int, contextual_seq_len: int, time_bucket_scale: float,
                       sorted_timestamps: bool) -> list[torch.Tensor]:
    """[dq, dk, dv, d position_weights, d time_weights]; the weight gradients are fp32 and empty ([0])
    where that part of the bias is off."""
    return list(kernel.backward(grad_out, q, k, v, seq_offsets, num_targets, position_weights, time_weights,
                                timestamps, query_timestamps, max_seq_len, alpha, max_attn_len, contextual_seq_len,
                                time_bucket_scale, sorted_timestamps))


@hstu_attention_bwd.register_fake
def _(grad_out, q, k, v, seq_offsets, num_targets, position_weights, time_weights, timestamps, query_timestamps,
      max_seq_len, alpha, max_attn_len, contextual_seq_len, time_bucket_scale, sorted_timestamps):
    uses_time = time_weights is not None and timestamps is not None
    return [torch.empty_like(q), torch.empty_like(k), torch.empty_like(v),
            q.new_empty(position_weights.shape if position_weights is not None else 0, dtype=torch.float32),
            q.new_empty(time_weights.shape if uses_time else 0, dtype=torch.float32)]


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, seq_offsets, num_targets, position_weights, time_weights, timestamps, query_timestamps, *scalars = inputs
    ctx.save_for_backward(q, k, v, seq_offsets, num_targets, position_weights, time_weights, timestamps,
                          query_timestamps)
    ctx.scalars = scalars


def _gradients(ctx, grad_out, backward):
    """The inputs' gradients from `backward` (the custom op, or the bare launcher in eager mode)."""
    q, k, v, seq_offsets, num_targets, position_weights, time_weights, timestamps, query_timestamps = ctx.saved_tensors
    dq, dk, dv, dpos, dtime = backward(grad_out.contiguous(), q, k, v, seq_offsets, num_targets, position_weights,
                                       time_weights, timestamps, query_timestamps, *ctx.scalars)
    grad_pos = None if position_weights is None else dpos.to(position_weights.dtype)
    grad_time = None if time_weights is None or timestamps is None else dtime.to(time_weights.dtype)
    return dq, dk, dv, None, None, grad_pos, grad_time, None, None, None, None, None, None, None, None


hstu_attention_fwd.register_autograd(lambda ctx, grad_out: _gradients(ctx, grad_out, hstu_attention_bwd),
                                     setup_context=_setup_context)


class _EagerAttention(torch.autograd.Function):
    """The same launchers without the custom-op dispatcher, whose Python cost (about 0.35 ms per forward +
    backward on torch 2.11, measured on CPU) outweighs the kernels at ML-1M sizes. torch.compile traces
    the custom ops instead."""

    @staticmethod
    def forward(ctx, *inputs):
        _setup_context(ctx, inputs, None)
        return kernel.forward(*inputs)

    @staticmethod
    def backward(ctx, grad_out):
        return _gradients(ctx, grad_out, kernel.backward)


def hstu_attention_triton(q, k, v, seq_offsets, *, max_seq_len, alpha, num_targets=None, rab=None,
                          max_attn_len=0, contextual_seq_len=0):
    """Fused twin of `hstu_attention_reference`; `rab` is a BucketedBias (computed in-kernel) or None."""
    position_weights = time_weights = timestamps = query_timestamps = None
    scale, sorted_timestamps = 0.301, False
    if rab is not None:
        position_weights, time_weights, timestamps = rab.position_weights, rab.time_weights, rab.timestamps
        scale, sorted_timestamps = rab.time_bucket_scale, rab.sorted_timestamps
        if rab.uses_time:
            query_timestamps = rab.query_times_for(seq_offsets, num_targets)
    attention = hstu_attention_fwd if torch.compiler.is_compiling() else _EagerAttention.apply
    # contiguous inputs: the gradients then share their strides
    return attention(q.contiguous(), k.contiguous(), v.contiguous(), seq_offsets, num_targets, position_weights,
                     time_weights, timestamps, query_timestamps, int(max_seq_len), float(alpha), int(max_attn_len),
                     int(contextual_seq_len), float(scale), bool(sorted_timestamps))


@torch.library.custom_op("genrec::hstu_candidate_attention", mutates_args=())
def hstu_candidate_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, candidate_offsets: torch.Tensor,
                             history_k: torch.Tensor, history_v: torch.Tensor, history_offsets: torch.Tensor,
                             position_weights: torch.Tensor | None, time_weights: torch.Tensor | None,
                             history_timestamps: torch.Tensor | None, candidate_timestamps: torch.Tensor | None,
                             max_candidates: int, max_seq_len: int, alpha: float,
                             time_bucket_scale: float) -> torch.Tensor:
    """M-FALCON's cached attention, forward only: out [C, H, Dv] (see candidate_kernel)."""
    return candidate_kernel.forward(q, k, v, candidate_offsets, history_k, history_v, history_offsets,
                                    position_weights, time_weights, history_timestamps, candidate_timestamps,
                                    max_candidates, max_seq_len, alpha, time_bucket_scale)


@hstu_candidate_attention.register_fake
def _(q, k, v, candidate_offsets, history_k, history_v, history_offsets, position_weights, time_weights,
      history_timestamps, candidate_timestamps, max_candidates, max_seq_len, alpha, time_bucket_scale):
    return q.new_empty(q.shape[0], q.shape[1], v.shape[2])


@functools.lru_cache(maxsize=256)
def _one_user_offsets(length: int, device: torch.device) -> torch.Tensor:
    """[0, length] on the device, made once per length (read only): no host-to-device copy per layer and call."""
    return torch.tensor([0, length], device=device)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """t with unit stride along its last dim, which the kernel needs (its other strides are arguments): the
    projection's split views as they are, without a copy."""
    return t if t.stride(-1) == 1 else t.contiguous()


def candidate_attention_triton(q, k, v, history_k, history_v, *, max_seq_len, alpha, rab=None,
                               candidate_timestamps=None, history_offsets=None):
    """Fused twin of `candidate_attention_reference` for one user (the kernel takes many: offsets [0, n]);
    history_offsets: see genrec.ops.attention.candidate_attention."""
    position_weights = time_weights = history_timestamps = None
    scale = 0.301
    if rab is not None:
        position_weights, scale = rab.position_weights, rab.time_bucket_scale
        if rab.uses_time and candidate_timestamps is not None:
            time_weights, history_timestamps = rab.time_weights, rab.timestamps
    if time_weights is None:
        candidate_timestamps = None
    # eager calls skip the dispatcher, as _EagerAttention does; torch.compile traces the custom op
    attention = hstu_candidate_attention if torch.compiler.is_compiling() else candidate_kernel.forward
    if history_offsets is None:
        history_offsets = _one_user_offsets(history_k.shape[0], q.device)
    return attention(_rows(q), _rows(k), _rows(v), _one_user_offsets(q.shape[0], q.device), _rows(history_k),
                     _rows(history_v), history_offsets, position_weights,
                     time_weights, history_timestamps, candidate_timestamps, q.shape[0], int(max_seq_len),
                     float(alpha), float(scale))
