"""Fused cached ("delta") attention for M-FALCON in Triton, forward only: each user's candidates attend to that
user's cached history keys/values and to themselves, never to one another (the candidate rows of
`hstu_attention` with num_targets; reference: `candidate_attention_reference`). Jagged over users.

A candidate sits at position p = L (its history's length), so its position bias against history key j is
weight[j - L + N - 1], one vector per key tile shared by every row, and against itself weight[N - 1]. Its time
bias is bucket(t_c - t_j) for its own time t_c; when a tile's candidates share one time (the usual request:
every candidate shown now) that too is one vector per key tile, else one bucket per pair.

Shapes: B users, C candidate tokens, L history tokens (both jagged), H heads, Dqk / Dv head dims, N max_seq_len.
Grid: (cdiv(largest candidate count, BLOCK_M), B * H, key-range splits); programs past a user's candidates exit at
once. Splits let a few candidates over a long history fill the GPU; their partial sums add up afterwards.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from genrec.ops.attention.kernel import (_MAX_GRID_Y, AUTOTUNE, INTERPRET, _block_dim, _dot, _load_rows, _log_bucket,
                                         _settle_bucket, _silu_over, _time_bias, _time_setup)
from genrec.ops.attention.rab import thresholds_on


@triton.jit
def _candidate_fwd_kernel(Q, K, V, HK, HV, Out, cand_offsets, hist_offsets, pos_w, time_w, hist_ts, cand_ts, time_g,
                          stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_hkt, stride_hkh,
                          stride_hvt, stride_hvh, stride_os, stride_ot, stride_oh, alpha, inv_n, max_seq_len,
                          time_scale, num_buckets, num_splits, candidates_tier, history_tier,
                          H: tl.constexpr, DQK: tl.constexpr, DV: tl.constexpr, HAS_POS: tl.constexpr,
                          HAS_TIME: tl.constexpr, IEEE: tl.constexpr, BLOCK_M: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr):
    """Program (candidate block, user x head, split): split z sums the key tiles z, z + num_splits, ... into its own
    slice of Out (attention without a softmax adds up across key ranges as it is); split 0 adds the self term."""
    b = tl.program_id(1) // H
    h = tl.program_id(1) % H
    split = tl.program_id(2)
    cand_start = tl.load(cand_offsets + b)
    num_cand = (tl.load(cand_offsets + b + 1) - cand_start).to(tl.int32)
    m0 = tl.program_id(0) * BLOCK_M
    if m0 >= num_cand:
        return
    hist_start = tl.load(hist_offsets + b)
    hist_len = (tl.load(hist_offsets + b + 1) - hist_start).to(tl.int32)
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = _load_rows(Q, offs_m, cand_start, num_cand, stride_qt, h * stride_qh, offs_dqk, DQK)
    t_query = offs_m.to(tl.int64)  # unused without a time bias (and then compiled away)
    query_min = 0
    query_max = 0
    if HAS_TIME:
        t_query = tl.load(cand_ts + cand_start + tl.minimum(offs_m, num_cand - 1))
        query_min, query_max = tl.min(t_query, 0), tl.max(t_query, 0)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    # keys past the history's end load as zero rows of V: whatever their score, they add nothing
    for n0 in range(split * BLOCK_N, hist_len, num_splits * BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        k = _load_rows(HK, offs_n, hist_start, hist_len, stride_hkt, h * stride_hkh, offs_dqk, DQK)
        v = _load_rows(HV, offs_n, hist_start, hist_len, stride_hvt, h * stride_hvh, offs_dv, DV)
        if HAS_TIME:
            if query_min == query_max:  # the usual request: one time for every candidate, one bias per key
                t_key = tl.load(hist_ts + hist_start + tl.minimum(offs_n, hist_len - 1))
                gap = query_max - t_key  # exact buckets on a GPU too: per key, not per pair, they cost little
                bucket = _settle_bucket(_log_bucket(gap, time_scale, num_buckets, IEEE), gap, time_g)
                time_bias = tl.broadcast_to(tl.load(time_w + bucket).to(tl.float32)[None, :], (BLOCK_M, BLOCK_N))
            else:  # the training kernel's per-tile path: two buckets by comparison where the gaps allow
                t_key, key, key_min, two_buckets, far_gap, near_w, far_w, near = _time_setup(
                    query_min, query_max, offs_n, n0, hist_start, hist_len, time_w, hist_ts, time_g, time_scale,
                    num_buckets, False, True, IEEE)
                time_bias, _ = _time_bias(t_query, t_key, key, key_min, two_buckets, far_gap, near_w, far_w, near,
                                          time_w, time_g, time_scale, num_buckets, False, IEEE, False)
        s = _dot(q, tl.trans(k), IEEE) * alpha
        if HAS_POS:
            key_pos = tl.minimum(offs_n, hist_len - 1) - hist_len + max_seq_len - 1
            s += tl.load(pos_w + tl.maximum(key_pos, 0)).to(tl.float32)[None, :]
        if HAS_TIME:
            s += time_bias
        p = _silu_over(s, inv_n, IEEE)
        acc += _dot(p.to(v.dtype), v, IEEE)
    if split == 0:  # each candidate's own key: position N - 1, time gap 0
        k_self = _load_rows(K, offs_m, cand_start, num_cand, stride_kt, h * stride_kh, offs_dqk, DQK)
        v_self = _load_rows(V, offs_m, cand_start, num_cand, stride_vt, h * stride_vh, offs_dv, DV)
        s_self = tl.sum(q.to(tl.float32) * k_self.to(tl.float32), 1) * alpha
        if HAS_POS:
            s_self += tl.load(pos_w + max_seq_len - 1).to(tl.float32)
        if HAS_TIME:
            s_self += tl.load(time_w).to(tl.float32)
        acc += _silu_over(s_self, inv_n, IEEE)[:, None] * v_self.to(tl.float32)
    out_mask = (offs_m < num_cand)[:, None] & (offs_dv < DV)[None, :]
    tl.store(Out + split * stride_os + (cand_start + offs_m)[:, None] * stride_ot + h * stride_oh + offs_dv[None, :],
             acc.to(Out.dtype.element_ty), mask=out_mask)


# (BLOCK_M, BLOCK_N, warps, stages) the autotuner picks from
CONFIGS = [(64, 64, 4, 2), (64, 64, 4, 3), (128, 64, 8, 2), (128, 64, 4, 3), (128, 128, 8, 2), (64, 128, 4, 3),
           (32, 64, 4, 2)]
if INTERPRET or not AUTOTUNE:
    _fwd = _candidate_fwd_kernel
    _FIXED = {"BLOCK_M": 16, "BLOCK_N": 16} if INTERPRET else {"BLOCK_M": 64, "BLOCK_N": 64}
else:
    _fwd = triton.autotune([triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
                            for m, n, w, s in CONFIGS],
                           key=["candidates_tier", "history_tier", "num_splits", "H", "DQK", "DV", "HAS_POS",
                                "HAS_TIME"])(_candidate_fwd_kernel)
    _FIXED = {}


@functools.lru_cache(maxsize=None)
def _multiprocessors(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _splits(max_candidates: int, max_history: int, programs_per_split: int, device: torch.device) -> int:
    """Key-range splits, so that short candidate lists still fill the GPU: about two programs per SM, at most
    one split per 64 history keys, none under the interpreter."""
    if INTERPRET or device.type != "cuda":
        return 1
    wanted = triton.cdiv(2 * _multiprocessors(device), programs_per_split * triton.cdiv(max_candidates, 64))
    return max(1, min(wanted, triton.cdiv(max_history, 64), 16))


def forward(q, k, v, candidate_offsets, history_k, history_v, history_offsets, position_weights, time_weights,
            history_timestamps, candidate_timestamps, max_candidates, max_seq_len, alpha, time_bucket_scale,
            splits=None):
    """Launches the kernel; every tensor's last dim contiguous. Returns out [C, H, Dv] in q's dtype. splits: the
    key-range splits (default: _splits); with more than one the partial sums add up in fp32 in a fixed order."""
    num_users, heads = candidate_offsets.shape[0] - 1, q.shape[1]
    if not (q.shape[0] and num_users):
        return q.new_empty(q.shape[0], heads, v.shape[2])
    if splits is None:
        splits = _splits(max_candidates, history_k.shape[0] // max(num_users, 1), num_users * heads, q.device)
    if splits == 1:
        out = q.new_empty(1, q.shape[0], heads, v.shape[2])
    else:
        out = torch.empty(splits, q.shape[0], heads, v.shape[2], dtype=torch.float32, device=q.device)
    has_time = time_weights is not None and history_timestamps is not None and candidate_timestamps is not None
    num_buckets = int(time_weights.numel() - 1) if time_weights is not None else 0
    dummy = candidate_offsets
    gathered_dtype = q.dtype  # the reference adds rab in the scores' dtype
    pointers = (dummy if position_weights is None else position_weights.to(gathered_dtype).contiguous(),
                time_weights.to(gathered_dtype).contiguous() if has_time else dummy,
                history_timestamps if has_time else dummy, candidate_timestamps if has_time else dummy,
                thresholds_on(float(time_bucket_scale), num_buckets, q.device) if has_time else dummy)
    strides = (q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), history_k.stride(0),
               history_k.stride(1), history_v.stride(0), history_v.stride(1), out.stride(0), out.stride(1),
               out.stride(2))
    constexprs = dict(H=heads, DQK=q.shape[2], DV=v.shape[2], HAS_POS=position_weights is not None,
                      HAS_TIME=has_time, IEEE=q.dtype == torch.float32,
                      BLOCK_DQK=_block_dim(q.shape[2]), BLOCK_DV=_block_dim(v.shape[2]), **_FIXED)
    # the autotune key's sizes: powers of two, so that request sizes do not each tune anew
    tiers = (triton.next_power_of_2(max_candidates), triton.next_power_of_2(history_k.shape[0]))
    step = _MAX_GRID_Y // heads
    for start in range(0, num_users, step):
        stop = min(start + step, num_users)
        grid = lambda meta, rows=(stop - start) * heads: (  # noqa: E731
            triton.cdiv(max_candidates, meta["BLOCK_M"]), rows, splits)
        _fwd[grid](q, k, v, history_k, history_v, out, candidate_offsets[start:stop + 1],
                   history_offsets[start:stop + 1], *pointers, *strides, float(alpha), 1.0 / max_seq_len,
                   int(max_seq_len), float(time_bucket_scale), num_buckets, splits, *tiers, **constexprs)
    return out[0] if splits == 1 else out.sum(0).to(q.dtype)
