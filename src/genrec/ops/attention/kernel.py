"""Fused jagged HSTU attention in Triton: forward, and a backward split into a dK/dV kernel (on transposed
tiles, keys by queries) and a dQ kernel, so no dQ atomics are needed, and a kernel for the relative-bias
weight gradients.
This file holds the kernels and their launchers; op.py registers the launchers with PyTorch.

The relative bias rab^{p,t} is computed inside the kernels from positions, timestamps and the
bucket weights (see rab.py), never materialised. With a position bias the backward computes it once: the dQ
kernel stores each pair's p and ds in a scratch that the other two read (see _backward_scratch). Plain pointers
and, for the dK/dV kernel's scratch loads, tensor descriptors (no block pointers), so the kernels run on triton 3.6
and its CPU interpreter. Head dims need not be powers of two: tiles are padded to the next power of two and masked.

Shapes: B sequences, T tokens, H heads, Dqk / Dv head dims, N max_seq_len.
Grid: (cdiv(N, BLOCK), B * H); the bias kernel's (block diagonals, B), each program over every head; in chunks of
sequences past 65,535. A head's blocks run side by side (sharing its K/V in L2), costliest first; programs past a
sequence's end exit at once (no host sync).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from genrec.ops.attention.rab import query_timestamps as default_query_timestamps
from genrec.ops.attention.rab import thresholds_on

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# GENREC_AUTOTUNE=0 launches one fixed tile instead of autotuning (quick GPU test runs).
AUTOTUNE = os.environ.get("GENREC_AUTOTUNE", "1") != "0"
_INTERPRETED = tl.constexpr(INTERPRET)
# The kernels' TIME_BIAS: 0 = none, 1 = a time bias, SORTED_TIMES = one over timestamps that never decrease
# within a sequence (the caller's promise: BucketedBias.sorted_timestamps), read off a key tile's ends
SORTED_TIMES = tl.constexpr(2)


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    """a @ b with fp32 accumulation; exact fp32 products (no tf32) when the inputs are fp32.
    triton 3.6's interpreter computes garbage for tl.dot on bf16 operands (seen: errors of 1e10 on a
    16x16 product), so under the interpreter products run in fp32; on a GPU bf16 goes to the MMA units."""
    if IEEE or _INTERPRETED:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _sigmoid(x, IEEE: tl.constexpr):
    """sigmoid(x). On a GPU with 16-bit inputs: 0.5 + 0.5 tanh(x / 2) through one tanh.approx, a single
    special-function-unit op instead of exp + reciprocal. At D = 128 the SFU (16 ops/clock/SM) needs
    about as long per score as the tensor cores' two products, so this halves a co-bottleneck; its
    ~5e-4 error is far below bf16's resolution. fp32 inputs and the interpreter (no PTX) keep the exact form."""
    if IEEE or _INTERPRETED:
        return tl.sigmoid(x)
    half_tanh = tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [x * 0.5], dtype=tl.float32,
                                          is_pure=True, pack=1)
    return 0.5 + 0.5 * half_tanh


@triton.jit
def _silu_over(s, inv_n, IEEE: tl.constexpr):
    """SiLU(s) / n. On a GPU with 16-bit inputs s * (c + c * tanh(s / 2)) with c = 1 / 2n: one SFU op and
    three FMA-pipe ops per score, where the scores' elementwise work competes with the tensor cores."""
    if IEEE or _INTERPRETED:
        return s * tl.sigmoid(s) * inv_n
    half_tanh = tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [s * 0.5], dtype=tl.float32,
                                          is_pure=True, pack=1)
    c = 0.5 * inv_n
    return s * (c + c * half_tanh)


@triton.jit
def _silu_grad_over(s, sig, dp, valid, inv_n, MASKED: tl.constexpr):
    """dp * d SiLU(s) / ds / n with sig = sigmoid(s); zero outside `valid` when MASKED."""
    ds = dp * sig * (1.0 + s * (1.0 - sig)) * inv_n
    if MASKED:
        ds = tl.where(valid, ds, 0.0)
    return ds


@triton.jit
def _log_over(x, scale, IEEE: tl.constexpr):
    """ln(x) / scale. On a GPU with 16-bit inputs: one lg2.approx (an SFU op, relative error ~2^-22) times
    ln(2) / scale, one division per tile: tl.log lowers to libdevice's logf (some twenty instructions
    per score), and `/ scale` per score to div.full.f32 (a second SFU op). fp32 inputs and the
    interpreter keep the reference's exact ln(x) / scale."""
    if IEEE or _INTERPRETED:
        return tl.log(x) / scale
    log2 = tl.inline_asm_elementwise("lg2.approx.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True, pack=1)
    return log2 * (0.6931471805599453 / scale)


TABLE_ROWS = tl.constexpr(128)  # rows of the position table: the tallest query block


@triton.jit
def _table_shape(max_seq_len):
    """(column shift, row length) of the position table, both multiples of 16; see _position_tile."""
    shift = tl.cdiv(max_seq_len, 16) * 16
    return shift, tl.cdiv(shift + max_seq_len + TABLE_ROWS, 16) * 16


@triton.jit
def _position_tile(table, max_seq_len, m0, n0, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The position bias of a tile whose queries are all history, where weight[j - i + N - 1] is constant
    along diagonals. The table (position_table) holds row r = weight[r + x - TABLE_ROWS - shift + N] at
    column x, so the tile is one block of it: row TABLE_ROWS - 1 - (i - m0), columns n0 - m0 + shift + (j - n0),
    contiguous and 16-byte aligned. That is a plain pipelined block load instead of a gather per score
    (one 4-byte async copy each, plus index arithmetic, which doubled the forward's time)."""
    tl.static_assert(BLOCK_M <= TABLE_ROWS)
    shift, row_length = _table_shape(max_seq_len)
    rows = TABLE_ROWS - 1 - tl.arange(0, BLOCK_M)
    base = tl.minimum(tl.maximum(n0 - m0 + shift, 0), row_length - BLOCK_N)  # in bounds even past N
    return tl.load(table + rows[:, None] * row_length + base + tl.arange(0, BLOCK_N)[None, :]).to(tl.float32)


@triton.jit
def _across_queries(x, TRANSPOSED: tl.constexpr):
    """A per-query vector broadcast along the tile's query axis: rows, or columns of a transposed tile."""
    if TRANSPOSED:
        y = x[None, :]
    else:
        y = x[:, None]
    return y


@triton.jit
def _across_keys(x, TRANSPOSED: tl.constexpr):
    """A per-key vector broadcast along the tile's key axis: columns, or rows of a transposed tile."""
    if TRANSPOSED:
        y = x[:, None]
    else:
        y = x[None, :]
    return y


@triton.jit
def _tile(q, k, offs_m, offs_n, m0, n0, seq_start, seq_len, history_len, t_query, query_min, query_max, alpha,
          max_seq_len, max_attn_len, contextual_len, pos_w, time_w, ts, time_g, time_scale, num_buckets,
          HAS_POS: tl.constexpr, POS_TABLE: tl.constexpr, TIME_BIAS: tl.constexpr, HAS_WINDOW: tl.constexpr,
          HAS_CONTEXT: tl.constexpr, IEEE: tl.constexpr, MASKED: tl.constexpr, TRANSPOSED: tl.constexpr):
    """Scores alpha*q.k + rab and the validity mask for the [BLOCK_M, BLOCK_N] tile at rows m0 + offs,
    keys n0 + offs; also returns the position and time bucket indices (for the bias gradient). t_query,
    query_min, query_max: the rows' times and their range (_query_times).
    MASKED=False: a tile whose every in-bounds pair is visible (see _key_range), where the mask is the
    bounds alone. POS_TABLE: pos_w is the Toeplitz table of _position_tile (batches without candidates).
    TRANSPOSED: the [BLOCK_N, BLOCK_M] tile k q^T instead (keys by queries), for the dK/dV kernel; with
    POS_TABLE, pos_w is then the table of the reversed weights (see _position_tile)."""
    t_key, key, key_min, two_buckets, far_gap, near_w, far_w, near = _tile_time_setup(
        query_min, query_max, offs_n, n0, seq_start, seq_len, time_w, ts, time_g, time_scale, num_buckets, TIME_BIAS,
        MASKED, IEEE)  # before the product, so that its loads' latency overlaps it
    if TRANSPOSED:
        s = _dot(k, tl.trans(q), IEEE) * alpha
    else:
        s = _dot(q, tl.trans(k), IEEE) * alpha
    return _add_bias(s, offs_m, offs_n, m0, n0, seq_len, history_len, t_query, max_seq_len, max_attn_len,
                     contextual_len, pos_w, time_w, time_g, time_scale, num_buckets, t_key, key, key_min, two_buckets,
                     far_gap, near_w, far_w, near, HAS_POS, POS_TABLE, TIME_BIAS, HAS_WINDOW, HAS_CONTEXT, IEEE,
                     MASKED, TRANSPOSED)


@triton.jit
def _tile_time_setup(query_min, query_max, offs_n, n0, seq_start, seq_len, time_w, ts, time_g, time_scale,
                     num_buckets, TIME_BIAS: tl.constexpr, MASKED: tl.constexpr, IEEE: tl.constexpr):
    """_time_setup with a time bias; placeholders (unused, compiled away) without one."""
    t_key, key, key_min, two_buckets, far_gap, near_w, far_w, near = 0, 0, 0, False, 0, 0.0, 0.0, 0
    if TIME_BIAS:
        t_key, key, key_min, two_buckets, far_gap, near_w, far_w, near = _time_setup(
            query_min, query_max, offs_n, n0, seq_start, seq_len, time_w, ts, time_g, time_scale, num_buckets,
            TIME_BIAS == SORTED_TIMES, MASKED, IEEE)
    return t_key, key, key_min, two_buckets, far_gap, near_w, far_w, near


@triton.jit
def _add_bias(s, offs_m, offs_n, m0, n0, seq_len, history_len, t_query, max_seq_len, max_attn_len, contextual_len,
              pos_w, time_w, time_g, time_scale, num_buckets, t_key, key, key_min, two_buckets, far_gap, near_w, far_w,
              near, HAS_POS: tl.constexpr, POS_TABLE: tl.constexpr, TIME_BIAS: tl.constexpr,
              HAS_WINDOW: tl.constexpr, HAS_CONTEXT: tl.constexpr, IEEE: tl.constexpr, MASKED: tl.constexpr,
              TRANSPOSED: tl.constexpr):
    """s + rab over the tile (s: the scaled product, or zeros for the bias alone), with the validity mask, the
    position indices and the time buckets and their range; the time setup from _tile_time_setup."""
    i = _across_queries(offs_m, TRANSPOSED)
    j = _across_keys(offs_n, TRANSPOSED)
    query_pos = tl.minimum(i, history_len)
    valid = _visible(offs_m, offs_n, seq_len, history_len, max_attn_len, contextual_len, HAS_WINDOW, HAS_CONTEXT,
                     MASKED, TRANSPOSED)
    # p(i), p(j) clamped per row and per column into [0, N): p(j) - p(i) + N - 1 lies in the weights'
    # range [0, 2N - 2] with one add per score (lengths past N are out of contract, never out of bounds)
    row_base = max_seq_len - 1 - tl.minimum(query_pos, max_seq_len - 1)
    rel = row_base + tl.minimum(tl.minimum(j, history_len), max_seq_len - 1)
    bucket = tl.zeros_like(rel)
    bucket_lo = 0
    bucket_hi = -1
    if POS_TABLE and TRANSPOSED:  # its bias w[j - i + N - 1] is w reversed at i - j + N - 1: the same geometry
        s += _position_tile(pos_w, max_seq_len, n0, m0, offs_n.shape[0], offs_m.shape[0])
    elif POS_TABLE:
        s += _position_tile(pos_w, max_seq_len, m0, n0, offs_m.shape[0], offs_n.shape[0])
    elif HAS_POS:
        s += tl.load(pos_w + rel).to(tl.float32)  # rel is in range: no mask to evaluate
    if TIME_BIAS:
        time_bias, bucket = _time_bias(t_query, t_key, key, key_min, two_buckets, far_gap, near_w, far_w, near,
                                       time_w, time_g, time_scale, num_buckets, TIME_BIAS == SORTED_TIMES, IEEE,
                                       TRANSPOSED)
        s += time_bias
        # the range of the tile's buckets, for the gradient's sums: known in a two-bucket tile
        if two_buckets:
            bucket_lo, bucket_hi = near, near + 1
        else:
            bucket_lo = tl.min(tl.where(valid, bucket, 1 << 30))
            bucket_hi = tl.max(tl.where(valid, bucket, -1))
    return s, valid, rel, bucket, bucket_lo, bucket_hi


@triton.jit
def _visible(offs_m, offs_n, seq_len, history_len, max_attn_len, contextual_len, HAS_WINDOW: tl.constexpr,
             HAS_CONTEXT: tl.constexpr, MASKED: tl.constexpr, TRANSPOSED: tl.constexpr):
    """Which pairs of the tile a query sees and both lie inside the sequence; MASKED=False: the bounds alone."""
    i = _across_queries(offs_m, TRANSPOSED)
    j = _across_keys(offs_n, TRANSPOSED)
    if MASKED:
        query_pos = tl.minimum(i, history_len)
        past = j < query_pos
        if HAS_WINDOW:
            past = past & (query_pos - j <= max_attn_len)
        valid = (i == j) | past
        if HAS_CONTEXT:
            valid = valid | (j < contextual_len) | ((i < contextual_len) & (j < history_len))
        valid = valid & (i < seq_len) & (j < seq_len)
    else:
        valid = (i < seq_len) & (j < seq_len)
    return valid


@triton.jit
def _log_bucket(gap, time_scale, num_buckets, IEEE: tl.constexpr):
    """The time bucket of int64 gaps by rab.time_buckets' formula (on a GPU through lg2.approx)."""
    # truncation, not floor: the two differ only below 0, which the clamp maps to 0 either way
    bucket = _log_over(tl.maximum(tl.abs(gap).to(tl.float32), 1.0), time_scale, IEEE).to(tl.int32)
    return tl.minimum(tl.maximum(bucket, 0), num_buckets)


@triton.jit
def _settle_bucket(bucket, gap, time_g):
    """A bucket estimated by the logarithm (_log_bucket), made exact by the thresholds of
    rab.time_bucket_thresholds: the estimate may be one off next to a boundary."""
    gap = tl.abs(gap)
    bucket += (gap >= tl.load(time_g + bucket + 1)).to(tl.int32)
    bucket -= (gap < tl.load(time_g + bucket)).to(tl.int32)
    return bucket


@triton.jit
def _query_time(qts, seq_start, i, seq_len):
    """t' of rows i (see rab.query_timestamps); rows past the sequence's end repeat its last row's."""
    return tl.load(qts + seq_start + tl.minimum(i, seq_len - 1))


@triton.jit
def _query_times(qts, seq_start, m0, offs_m, seq_len, TIME_BIAS: tl.constexpr):
    """Each query row's time t' and their range, for _time_bias. Over sorted times t' never decreases either
    (the caller's promise covers the query times too), so the range is the first and last rows' (two scalar
    loads); otherwise it costs a reduction across warps, per tile in the kernels whose rows change from tile
    to tile."""
    t_query = offs_m.to(tl.int64)  # unused without a time bias (and then compiled away)
    if TIME_BIAS:
        t_query = _query_time(qts, seq_start, offs_m, seq_len)
    if TIME_BIAS == SORTED_TIMES:
        query_min = _query_time(qts, seq_start, m0, seq_len)
        query_max = _query_time(qts, seq_start, m0 + offs_m.shape[0] - 1, seq_len)
    else:
        query_min, query_max = tl.min(t_query, 0), tl.max(t_query, 0)
    return t_query, query_min, query_max


@triton.jit
def _time_setup(query_min, query_max, offs_n, n0, seq_start, seq_len, time_w, ts, time_g, time_scale, num_buckets,
                SORTED: tl.constexpr, MASKED: tl.constexpr, IEEE: tl.constexpr):
    """Per tile, for _time_bias: the key times (pointers to them when SORTED), whether the tile's gaps fall in two
    buckets (near and near + 1), and if so its key times relative to key_min in int32, the smallest gap of bucket
    near + 1 and both buckets' weights. Keys past the sequence's end repeat its last timestamp. Called before the
    tile's product, so that its loads' latency overlaps it. Per-tile work is what the per-pair comparison does
    not amortise over a thread's 32 scores: in the sm_90 compile each instruction counts (whole tiles' key times
    at unclamped addresses, in the product's layout only, instead of 48 single async copies per thread read back
    in two layouts, and 5 scalar loads instead of 8: forward with both biases at N = 8192 4.69 -> 3.68 ms)."""
    if SORTED:  # the range is the tile's ends: two scalar loads instead of two reductions across warps
        key_min = tl.load(ts + seq_start + tl.minimum(n0, seq_len - 1))
        key_max = tl.load(ts + seq_start + tl.minimum(n0 + offs_n.shape[0] - 1, seq_len - 1))
        # pointers, loaded below or by _time_bias's per-pair path, each in its own layout; a whole tile's keys
        # lie inside the sequence, where unclamped (contiguous) addresses save ~50 instructions per thread
        t_key = ts + seq_start + (tl.minimum(offs_n, seq_len - 1) if MASKED else offs_n)
    else:
        t_key = tl.load(ts + seq_start + tl.minimum(offs_n, seq_len - 1))
        key_min = tl.min(t_key, 0)
        key_max = tl.max(t_key, 0)
    nearest = query_min - key_max  # the tile's smallest gap, when >= 0
    near = _log_bucket(nearest, time_scale, num_buckets, IEEE)  # on a GPU possibly one off near a threshold
    near_gap, far_gap, beyond = tl.load(time_g + near), tl.load(time_g + near + 1), tl.load(time_g + near + 2)
    near_w = tl.load(time_w + near).to(tl.float32)
    far_w = tl.load(time_w + tl.minimum(near + 1, num_buckets)).to(tl.float32)  # never crossed past the last
    # every gap in [near_gap, beyond): buckets near and near + 1 (an estimate one too high sends the tile to the
    # per-pair path, one too low leaves all its pairs crossed); int32 key times relative to key_min must fit
    two_buckets = ((nearest >= 0) & (nearest >= near_gap) & (query_max - key_min < beyond)
                   & (key_max - key_min < 2147483647))
    # loaded whether or not the tile takes two buckets, so that triton's pipeliner prefetches it (forward,
    # time bias only, N = 8192: 3.34 -> 3.11 ms; 2048: 1.39 -> 1.21)
    key = ((tl.load(t_key) if SORTED else t_key) - key_min).to(tl.int32)
    return t_key, key, key_min, two_buckets, far_gap, near_w, far_w, near


@triton.jit
def _time_bias(t_query, t_key, key, key_min, two_buckets, far_gap, near_w, far_w, near, time_w, time_g, time_scale,
               num_buckets, SORTED: tl.constexpr, IEEE: tl.constexpr, TRANSPOSED: tl.constexpr):
    """The time bias of a tile and its buckets. Per pair, a bucket is an int64 subtraction and conversion, a
    logarithm, a float-to-int conversion and a gather: ~32 instructions, which made the forward 3x slower
    than without rab. But where every key of the tile is at or before every query's time t' and the
    tile's gaps span at most two buckets (anywhere but near the diagonal or inside bursts; see
    _time_setup), a pair's bucket is one int32 comparison with its row's boundary time t' - far_gap, and
    its bias one of two values (far_gap: from the exact thresholds of rab.time_bucket_thresholds)."""
    if two_buckets:
        row_boundary = tl.minimum(tl.maximum(t_query - far_gap - key_min, -1), 2147483647).to(tl.int32)
        crossed = _across_keys(key, TRANSPOSED) <= _across_queries(row_boundary, TRANSPOSED)
        bias = tl.where(crossed, far_w, near_w)
        bucket = near + crossed.to(tl.int32)
    else:
        key_times = tl.load(t_key) if SORTED else t_key
        gap = _across_queries(t_query, TRANSPOSED) - _across_keys(key_times, TRANSPOSED)
        bucket = _log_bucket(gap, time_scale, num_buckets, IEEE)
        if IEEE or _INTERPRETED:  # exact: the thresholds settle the logarithm's last-bit differences (see rab)
            bucket = _settle_bucket(bucket, gap, time_g)
        bias = tl.load(time_w + bucket).to(tl.float32)  # so is bucket
    return bias, bucket


@triton.jit
def _segment_start(index, first_end, second_start, second_blocks, third_start, BLOCK: tl.constexpr):
    """Start of the index-th block over up to three disjoint ranges [0, first_end),
    [second_start, second_start + second_blocks * BLOCK) and [third_start, ...), in that order."""
    first_blocks = first_end // BLOCK
    start = tl.where(index < first_blocks, index * BLOCK, second_start + (index - first_blocks) * BLOCK)
    return tl.where(index < first_blocks + second_blocks, start,
                    third_start + (index - first_blocks - second_blocks) * BLOCK)


@triton.jit
def _seq_bounds(seq_offsets, num_targets, b, HAS_TARGETS: tl.constexpr):
    seq_start = tl.load(seq_offsets + b)
    seq_len = (tl.load(seq_offsets + b + 1) - seq_start).to(tl.int32)
    history_len = seq_len
    if HAS_TARGETS:
        history_len = seq_len - tl.load(num_targets + b).to(tl.int32)
    return seq_start, seq_len, history_len


@triton.jit
def _load_rows(ptr, rows, seq_start, seq_len, stride_t, head_offset, cols, num_cols):
    mask = (rows < seq_len)[:, None] & (cols < num_cols)[None, :]
    return tl.load(ptr + (seq_start + rows)[:, None] * stride_t + head_offset + cols[None, :], mask=mask, other=0.0)


@triton.jit
def _key_range(m0, seq_len, history_len, max_attn_len, contextual_len, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_CONTEXT: tl.constexpr):
    """Key blocks a query block can see: [0, full_hi) with no mask to build, then [0, ctx_hi) and
    [lo, hi) masked, all disjoint. Without a window, key blocks before the query block and inside the
    history are visible to each of its queries (candidates see the whole history); its rows past the
    sequence's end compute values no one stores, and keys past it load as zero rows."""
    hi = tl.minimum(seq_len, m0 + BLOCK_M)
    lo = 0
    full_hi = 0
    if HAS_WINDOW:
        lo = tl.maximum(tl.minimum(m0, history_len) - max_attn_len, 0) // BLOCK_N * BLOCK_N
    else:
        full_hi = tl.minimum(m0, history_len) // BLOCK_N * BLOCK_N
        lo = full_hi
    ctx_hi = 0
    if HAS_CONTEXT:
        if m0 < contextual_len:
            hi = seq_len
        if HAS_WINDOW:  # without one, [0, full_hi) already holds the context keys before lo
            ctx_hi = tl.minimum(tl.cdiv(contextual_len, BLOCK_N) * BLOCK_N, lo)
    return full_hi, ctx_hi, lo, hi


@triton.jit
def _fwd_kernel(Q, K, V, Out, seq_offsets, num_targets, pos_w, time_w, ts, qts, time_g,
                stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
                alpha, inv_n, max_seq_len, max_attn_len, contextual_len, time_scale, num_buckets, length_tier,
                H: tl.constexpr, DQK: tl.constexpr, DV: tl.constexpr,
                HAS_TARGETS: tl.constexpr, HAS_POS: tl.constexpr, POS_TABLE: tl.constexpr, TIME_BIAS: tl.constexpr,
                HAS_WINDOW: tl.constexpr, HAS_CONTEXT: tl.constexpr, IEEE: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr):
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)  # a head's costliest row blocks first
    b = tl.program_id(1) // H
    h = tl.program_id(1) % H
    seq_start, seq_len, history_len = _seq_bounds(seq_offsets, num_targets, b, HAS_TARGETS)
    m0 = pid_m * BLOCK_M
    if m0 >= seq_len:
        return
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = _load_rows(Q, offs_m, seq_start, seq_len, stride_qt, h * stride_qh, offs_dqk, DQK)
    t_query, query_min, query_max = _query_times(qts, seq_start, m0, offs_m, seq_len, TIME_BIAS)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    full_hi, ctx_hi, lo, hi = _key_range(m0, seq_len, history_len, max_attn_len, contextual_len, BLOCK_M,
                                         BLOCK_N, HAS_WINDOW, HAS_CONTEXT)
    if not HAS_WINDOW:
        for start_n in range(0, full_hi, BLOCK_N):
            acc = _fwd_step(acc, q, K, V, start_n, offs_m, m0, seq_start, seq_len, history_len, t_query, query_min,
                            query_max, stride_kt, stride_kh, stride_vt, stride_vh, h, alpha, inv_n, max_seq_len,
                            max_attn_len, contextual_len, pos_w, time_w, ts, time_g, time_scale, num_buckets, DQK, DV,
                            HAS_POS, POS_TABLE, TIME_BIAS, HAS_WINDOW, HAS_CONTEXT, IEEE, BLOCK_N, BLOCK_DQK, BLOCK_DV,
                            False)
    num_blocks = ctx_hi // BLOCK_N + tl.cdiv(hi - lo, BLOCK_N)
    for index in range(0, num_blocks):
        start_n = _segment_start(index, ctx_hi, lo, tl.cdiv(hi - lo, BLOCK_N), hi, BLOCK_N)
        acc = _fwd_step(acc, q, K, V, start_n, offs_m, m0, seq_start, seq_len, history_len, t_query, query_min,
                        query_max, stride_kt, stride_kh, stride_vt, stride_vh, h, alpha, inv_n, max_seq_len,
                        max_attn_len, contextual_len, pos_w, time_w, ts, time_g, time_scale, num_buckets, DQK, DV,
                        HAS_POS, POS_TABLE, TIME_BIAS, HAS_WINDOW, HAS_CONTEXT, IEEE, BLOCK_N, BLOCK_DQK, BLOCK_DV,
                        True)
    out_mask = (offs_m < seq_len)[:, None] & (offs_dv < DV)[None, :]
    tl.store(Out + (seq_start + offs_m)[:, None] * stride_ot + h * stride_oh + offs_dv[None, :],
             acc.to(Out.dtype.element_ty), mask=out_mask)


@triton.jit
def _fwd_step(acc, q, K, V, start_n, offs_m, m0, seq_start, seq_len, history_len, t_query, query_min, query_max,
              stride_kt, stride_kh, stride_vt, stride_vh, h, alpha, inv_n, max_seq_len, max_attn_len, contextual_len,
              pos_w, time_w, ts, time_g, time_scale, num_buckets, DQK: tl.constexpr, DV: tl.constexpr,
              HAS_POS: tl.constexpr, POS_TABLE: tl.constexpr, TIME_BIAS: tl.constexpr, HAS_WINDOW: tl.constexpr,
              HAS_CONTEXT: tl.constexpr, IEEE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DQK: tl.constexpr,
              BLOCK_DV: tl.constexpr, MASKED: tl.constexpr):
    offs_n = start_n + tl.arange(0, BLOCK_N)
    k = _load_rows(K, offs_n, seq_start, seq_len, stride_kt, h * stride_kh, tl.arange(0, BLOCK_DQK), DQK)
    v = _load_rows(V, offs_n, seq_start, seq_len, stride_vt, h * stride_vh, tl.arange(0, BLOCK_DV), DV)
    s, valid, _, _, _, _ = _tile(q, k, offs_m, offs_n, m0, start_n, seq_start, seq_len, history_len, t_query, query_min,
                                 query_max, alpha, max_seq_len, max_attn_len, contextual_len, pos_w, time_w, ts, time_g,
                                 time_scale, num_buckets, HAS_POS, POS_TABLE, TIME_BIAS, HAS_WINDOW, HAS_CONTEXT, IEEE,
                                 MASKED, False)
    p = _silu_over(s, inv_n, IEEE)
    if MASKED:
        p = tl.where(valid, p, 0.0)
    return acc + _dot(p.to(v.dtype), v, IEEE)


# The backward's scratch (with a position bias and no contextual prefix; see _backward_scratch). Computing the
# relative bias costs more than the products it feeds (N = 8192, H100: the dK/dV kernel 11.9 ms with both biases
# against 3.9 without, and a bias-gradient kernel of 9 ms that recomputes both products to get ds). So the dQ kernel,
# which meets every visible pair once, stores each pair's p and ds per head; the dK/dV kernel then reads them for its
# two products (no scores, no bias), and the bias-gradient kernel reads ds (no products). Values are in the inputs'
# dtype, the precision the products take them in. Pairs no one wrote are never read: readers mask to visible pairs.
SCRATCH_ROWS = tl.constexpr(128)  # query rows per scratch block: a multiple of every query tile's height
SCRATCH_BLOCK = SCRATCH_ROWS.value  # the same, for the launcher


@triton.jit
def _scratch_start(scratch_offsets, b, h, scratch_stride, SCRATCH: tl.constexpr):
    """The row at which sequence b's scratch of head h starts (0, unused, without a scratch)."""
    start = 0
    if SCRATCH:
        start = tl.load(scratch_offsets + b).to(tl.int32) + h * scratch_stride
    return start


@triton.jit
def _scratch_corner(start, m0, n0, WIDTH: tl.constexpr):
    """(row, column) of the tile at queries m0, keys n0 in the [rows, SCRATCH_ROWS] view of a sequence's scratch
    that starts at row `start`. Pairs lie in square tiles of SCRATCH_ROWS, each row-major: query block r holds the
    r + 1 tiles of its keys up to its diagonal, after the r (r + 1) / 2 tiles of the blocks before it. A kernel's
    tile lies inside one of them (its sides divide SCRATCH_ROWS), at one pitch: a tensor descriptor's block. n0 is a
    multiple of the tile's WIDTH; the column is written as one (// WIDTH * WIDTH) so that the compiler knows its
    alignment and vectorises the accesses (the bias kernel's loads and the dQ kernel's stores on its diagonal tiles
    were 2 bytes wide without it)."""
    block = m0 // SCRATCH_ROWS
    column_block = n0 // SCRATCH_ROWS
    square = block * (block + 1) // 2 + column_block
    column = (n0 - column_block * SCRATCH_ROWS) // WIDTH * WIDTH
    return start + square * SCRATCH_ROWS + m0 - block * SCRATCH_ROWS, column


@triton.jit
def _scratch_pointers(scratch, row, col, ROWS: tl.constexpr, COLS: tl.constexpr):
    """Pointers to the [ROWS, COLS] tile at (row, col) of a [rows, SCRATCH_ROWS] scratch (int64 past its corner)."""
    tile = tl.arange(0, ROWS)[:, None] * SCRATCH_ROWS + col + tl.arange(0, COLS)[None, :]
    return scratch + row.to(tl.int64) * SCRATCH_ROWS + tile


@triton.jit
def _bwd_kv_kernel(Q, K, V, DO, DK, DV_, DTIME, seq_offsets, num_targets, scratch_offsets, pos_w, time_w, ts, qts,
                   time_g, P_S, DS_S, stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot,
                   stride_doh, scratch_stride, alpha, inv_n, max_seq_len, max_attn_len, contextual_len, time_scale,
                   num_buckets, length_tier, H: tl.constexpr, DQK: tl.constexpr, DV: tl.constexpr,
                   HAS_TARGETS: tl.constexpr, HAS_POS: tl.constexpr, POS_TABLE: tl.constexpr, TIME_BIAS: tl.constexpr,
                   HAS_WINDOW: tl.constexpr, HAS_CONTEXT: tl.constexpr, IEEE: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
                   TIME_GRAD: tl.constexpr, BLOCK_BUCKETS: tl.constexpr, SPLIT: tl.constexpr, SCRATCH: tl.constexpr):
    """TIME_GRAD: also sum the time-bucket gradient (when the bias kernel does not run: no position bias).
    SCRATCH: read each tile's p and ds from the dQ kernel's scratch instead of computing them.
    SPLIT: two programs per key block, one summing dV and one dK (and the time buckets), each holding one
    [BLOCK_N, D] fp32 accumulator. At head dim 256 the two accumulators of one program spill whatever the tile,
    and computing the scores twice (five products per tile between the two programs, not four) costs less."""
    pid_n = tl.program_id(0) // 2 if SPLIT else tl.program_id(0)
    b = tl.program_id(1) // H
    h = tl.program_id(1) % H
    seq_start, seq_len, history_len = _seq_bounds(seq_offsets, num_targets, b, HAS_TARGETS)
    n0 = pid_n * BLOCK_N
    if n0 >= seq_len:
        return
    scratch = _scratch_start(scratch_offsets, b, h, scratch_stride, SCRATCH)
    dv_only = False  # and the other program of a split pair: dK only
    if SPLIT:
        dv_only = tl.program_id(0) % 2 == 0
    if dv_only:
        _bwd_kv_block(Q, K, V, DO, DK, DV_, DTIME, n0, seq_start, seq_len, history_len, h, stride_qt, stride_qh,
                      stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh, alpha, inv_n, max_seq_len,
                      max_attn_len, contextual_len, pos_w, time_w, ts, qts, time_g, time_scale, num_buckets, P_S, DS_S,
                      scratch, DQK, DV, HAS_POS, POS_TABLE, TIME_BIAS, HAS_WINDOW, HAS_CONTEXT, IEEE, BLOCK_M, BLOCK_N,
                      BLOCK_DQK, BLOCK_DV, False, BLOCK_BUCKETS, False, True, SCRATCH)
    else:
        _bwd_kv_block(Q, K, V, DO, DK, DV_, DTIME, n0, seq_start, seq_len, history_len, h, stride_qt, stride_qh,
                      stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh, alpha, inv_n, max_seq_len,
                      max_attn_len, contextual_len, pos_w, time_w, ts, qts, time_g, time_scale, num_buckets, P_S, DS_S,
                      scratch, DQK, DV, HAS_POS, POS_TABLE, TIME_BIAS, HAS_WINDOW, HAS_CONTEXT, IEEE, BLOCK_M, BLOCK_N,
                      BLOCK_DQK, BLOCK_DV, TIME_GRAD, BLOCK_BUCKETS, True, not SPLIT, SCRATCH)


@triton.jit
def _bwd_kv_block(Q, K, V, DO, DK, DV_, DTIME, n0, seq_start, seq_len, history_len, h, stride_qt, stride_qh,
                  stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh, alpha, inv_n, max_seq_len,
                  max_attn_len, contextual_len, pos_w, time_w, ts, qts, time_g, time_scale, num_buckets, P_S, DS_S,
                  scratch, DQK: tl.constexpr, DV: tl.constexpr, HAS_POS: tl.constexpr, POS_TABLE: tl.constexpr,
                  TIME_BIAS: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_CONTEXT: tl.constexpr, IEEE: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
                  TIME_GRAD: tl.constexpr, BLOCK_BUCKETS: tl.constexpr, WITH_DK: tl.constexpr,
                  WITH_DV: tl.constexpr, SCRATCH: tl.constexpr):
    """One key block's dK (and time-bucket sums), dV, or both, over the query blocks that see it."""
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    k = _load_rows(K, offs_n, seq_start, seq_len, stride_kt, h * stride_kh, offs_dqk, DQK)
    v = _load_rows(V, offs_n, seq_start, seq_len, stride_vt, h * stride_vh, offs_dv, DV)
    dk = tl.zeros([BLOCK_N, BLOCK_DQK], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
    dtime = tl.zeros([BLOCK_BUCKETS], dtype=tl.float32)
    # query blocks that can see this key block: [0, ctx_hi), [lo, hi), then candidates [cand_lo, seq_len)
    lo = n0 // BLOCK_M * BLOCK_M
    hi = seq_len
    ctx_hi = 0
    if HAS_CONTEXT:
        if n0 < contextual_len:
            lo = 0
        ctx_hi = tl.minimum(tl.cdiv(contextual_len, BLOCK_M) * BLOCK_M, lo)
    cand_lo = seq_len
    if HAS_WINDOW:
        if not (HAS_CONTEXT and n0 < contextual_len):
            hi = tl.minimum(seq_len, tl.cdiv(n0 + BLOCK_N + max_attn_len, BLOCK_M) * BLOCK_M)
        cand_lo = tl.maximum(hi, history_len // BLOCK_M * BLOCK_M)
    # Without a window, query blocks wholly after this key block see all of it (the keys are history):
    # [full_lo, seq_len) needs no mask; rows past the sequence's end have zero dO, so add nothing.
    full_lo = seq_len
    if not HAS_WINDOW:
        if n0 + BLOCK_N <= history_len:
            full_lo = tl.cdiv(n0 + BLOCK_N, BLOCK_M) * BLOCK_M
        hi = tl.minimum(hi, full_lo)
    main_blocks = tl.cdiv(hi - lo, BLOCK_M)
    num_blocks = ctx_hi // BLOCK_M + main_blocks + tl.cdiv(seq_len - cand_lo, BLOCK_M)
    for index in range(0, num_blocks):
        start_m = _segment_start(index, ctx_hi, lo, main_blocks, cand_lo, BLOCK_M)
        dk, dv, dtime = _bwd_kv_step(dk, dv, dtime, k, v, Q, DO, start_m, n0, offs_n, seq_start, seq_len,
                                     history_len, stride_qt, stride_qh, stride_dot, stride_doh, h, alpha, inv_n,
                                     max_seq_len, max_attn_len, contextual_len, pos_w, time_w, ts, qts, time_g,
                                     time_scale, num_buckets, P_S, DS_S, scratch, DQK, DV, HAS_POS, POS_TABLE,
                                     TIME_BIAS, HAS_WINDOW, HAS_CONTEXT, IEEE, BLOCK_M, BLOCK_DQK, BLOCK_DV, TIME_GRAD,
                                     BLOCK_BUCKETS, WITH_DK, WITH_DV, SCRATCH, True)
    if not HAS_WINDOW:
        for start_m in range(full_lo, seq_len, BLOCK_M):
            dk, dv, dtime = _bwd_kv_step(dk, dv, dtime, k, v, Q, DO, start_m, n0, offs_n, seq_start, seq_len,
                                         history_len, stride_qt, stride_qh, stride_dot, stride_doh, h, alpha, inv_n,
                                         max_seq_len, max_attn_len, contextual_len, pos_w, time_w, ts, qts, time_g,
                                         time_scale, num_buckets, P_S, DS_S, scratch, DQK, DV, HAS_POS, POS_TABLE,
                                         TIME_BIAS, HAS_WINDOW, HAS_CONTEXT, IEEE, BLOCK_M, BLOCK_DQK, BLOCK_DV,
                                         TIME_GRAD, BLOCK_BUCKETS, WITH_DK, WITH_DV, SCRATCH, False)
    if TIME_GRAD:
        _flush_bucket_grad(DTIME, dtime, num_buckets, BLOCK_BUCKETS)
    row_mask = (offs_n < seq_len)[:, None]
    if WITH_DK:
        tl.store(DK + (seq_start + offs_n)[:, None] * stride_kt + h * stride_kh + offs_dqk[None, :],
                 (dk * alpha).to(DK.dtype.element_ty), mask=row_mask & (offs_dqk < DQK)[None, :])
    if WITH_DV:
        tl.store(DV_ + (seq_start + offs_n)[:, None] * stride_vt + h * stride_vh + offs_dv[None, :],
                 dv.to(DV_.dtype.element_ty), mask=row_mask & (offs_dv < DV)[None, :])


@triton.jit
def _bwd_kv_step(dk, dv, dtime, k, v, Q, DO, start_m, n0, offs_n, seq_start, seq_len, history_len, stride_qt, stride_qh,
                 stride_dot, stride_doh, h, alpha, inv_n, max_seq_len, max_attn_len, contextual_len, pos_w, time_w, ts,
                 qts, time_g, time_scale, num_buckets, P_S, DS_S, scratch, DQK: tl.constexpr, DV: tl.constexpr,
                 HAS_POS: tl.constexpr, POS_TABLE: tl.constexpr, TIME_BIAS: tl.constexpr, HAS_WINDOW: tl.constexpr,
                 HAS_CONTEXT: tl.constexpr, IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_DQK: tl.constexpr,
                 BLOCK_DV: tl.constexpr, TIME_GRAD: tl.constexpr, BLOCK_BUCKETS: tl.constexpr, WITH_DK: tl.constexpr,
                 WITH_DV: tl.constexpr, SCRATCH: tl.constexpr, MASKED: tl.constexpr):
    """One query block's share of a key block's dK and dV. The tile is transposed (keys by queries): p and ds are
    then the left operands of the dV and dK products as they are, where q k^T needed each turned around
    through shared memory (dK/dV kernel at D = 128, N = 8192: 5.12 -> 3.90 ms)."""
    offs_m = start_m + tl.arange(0, BLOCK_M)
    q = _load_rows(Q, offs_m, seq_start, seq_len, stride_qt, h * stride_qh, tl.arange(0, BLOCK_DQK), DQK)
    do = _load_rows(DO, offs_m, seq_start, seq_len, stride_dot, h * stride_doh, tl.arange(0, BLOCK_DV), DV)
    if SCRATCH:
        dk, dv = _bwd_kv_read(dk, dv, q, do, P_S, DS_S, scratch, start_m, n0, offs_m, offs_n, seq_len, history_len,
                              max_attn_len, contextual_len, HAS_WINDOW, HAS_CONTEXT, IEEE, WITH_DK, WITH_DV, MASKED)
    else:
        dk, dv, dtime = _bwd_kv_compute(dk, dv, dtime, k, v, q, do, start_m, n0, offs_m, offs_n, seq_start, seq_len,
                                        history_len, alpha, inv_n, max_seq_len, max_attn_len, contextual_len, pos_w,
                                        time_w, ts, qts, time_g, time_scale, num_buckets, HAS_POS, POS_TABLE,
                                        TIME_BIAS, HAS_WINDOW, HAS_CONTEXT, IEEE, TIME_GRAD, BLOCK_BUCKETS, WITH_DK,
                                        WITH_DV, MASKED)
    return dk, dv, dtime


@triton.jit
def _bwd_kv_compute(dk, dv, dtime, k, v, q, do, start_m, n0, offs_m, offs_n, seq_start, seq_len, history_len, alpha,
                    inv_n, max_seq_len, max_attn_len, contextual_len, pos_w, time_w, ts, qts, time_g, time_scale,
                    num_buckets, HAS_POS: tl.constexpr, POS_TABLE: tl.constexpr, TIME_BIAS: tl.constexpr,
                    HAS_WINDOW: tl.constexpr, HAS_CONTEXT: tl.constexpr, IEEE: tl.constexpr, TIME_GRAD: tl.constexpr,
                    BLOCK_BUCKETS: tl.constexpr, WITH_DK: tl.constexpr, WITH_DV: tl.constexpr, MASKED: tl.constexpr):
    """The tile's p and ds from its scores and bias, into dV and dK."""
    t_query, query_min, query_max = _query_times(qts, seq_start, start_m, offs_m, seq_len, TIME_BIAS)
    s, valid, _, bucket, bucket_lo, bucket_hi = _tile(q, k, offs_m, offs_n, start_m, n0, seq_start, seq_len,
                                                      history_len, t_query, query_min, query_max, alpha, max_seq_len,
                                                      max_attn_len, contextual_len, pos_w, time_w, ts, time_g,
                                                      time_scale, num_buckets, HAS_POS, POS_TABLE, TIME_BIAS,
                                                      HAS_WINDOW, HAS_CONTEXT, IEEE, MASKED, True)
    sig = _sigmoid(s, IEEE)
    if WITH_DV:
        p = s * sig * inv_n
        if MASKED:
            p = tl.where(valid, p, 0.0)
        dv += _dot(p.to(do.dtype), do, IEEE)
    if WITH_DK:
        ds = _silu_grad_over(s, sig, _dot(v, tl.trans(do), IEEE), valid, inv_n, MASKED)
        dk += _dot(ds.to(q.dtype), q, IEEE)
        if TIME_GRAD:
            dtime = _accumulate_bucket_grad(dtime, ds, bucket, valid, bucket_lo, bucket_hi, BLOCK_BUCKETS)
    return dk, dv, dtime


@triton.jit
def _bwd_kv_read(dk, dv, q, do, P_S, DS_S, scratch, start_m, n0, offs_m, offs_n, seq_len, history_len, max_attn_len,
                 contextual_len, HAS_WINDOW: tl.constexpr, HAS_CONTEXT: tl.constexpr, IEEE: tl.constexpr,
                 WITH_DK: tl.constexpr, WITH_DV: tl.constexpr, MASKED: tl.constexpr):
    """The tile's p and ds read from the scratch, into dV and dK. A masked tile takes its visible pairs alone: the
    rest of its block was never written or holds other pairs. An unmasked tile lies inside a dQ tile that wrote all
    of it (those rows past the sequence's end too, finite, against zero rows of dO and q), so its blocks go to the
    products as they are, which lets triton's pipeliner prefetch them."""
    row, col = _scratch_corner(scratch, start_m, n0, offs_n.shape[0])
    p = tl.trans(P_S.load([row, col]))
    ds = tl.trans(DS_S.load([row, col]))
    if MASKED:
        seen = _visible(offs_m, offs_n, seq_len, history_len, max_attn_len, contextual_len, HAS_WINDOW, HAS_CONTEXT,
                        True, True)
        p = tl.where(seen, p, 0.0)
        ds = tl.where(seen, ds, 0.0)
    if WITH_DV:
        dv += _dot(p, do, IEEE)
    if WITH_DK:
        dk += _dot(ds, q, IEEE)
    return dk, dv


# The bias-weight gradients are sums of ds over the (query, key) pairs sharing a weight. One atomic
# per pair (the first build) funnels B*H*N^2 atomics into ~2N + 130 addresses, which the L2 serialises:
# that backward ran 30-100x slower than without rab. With a position bias a kernel of their own walks
# each sequence's tiles along block diagonals: the tiles of one diagonal share their relative positions,
# so their ds add up elementwise and the program sums diagonals once at the end; reducing every tile of
# the dK/dV loop instead (a shear, a column sum and ~190 atomics per tile) cost more than the dK/dV
# products (N = 8192, position bias only: forward + backward 20.2 -> 17.6 ms). The time-bucket sums (a
# masked reduction per bucket a tile meets) go with them, or without a position bias stay in the dK/dV
# loop: a kernel recomputing ds for them alone cost more than it saved (time only: 37.8 -> 42.3 ms).
@triton.jit
def _bwd_bias_kernel(Q, K, V, DO, DPOS, DTIME, seq_offsets, num_targets, scratch_offsets, pos_w, time_w, ts, qts,
                     time_g, P_S, DS_S, stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot,
                     stride_doh, scratch_stride, alpha, inv_n, max_seq_len, max_attn_len, contextual_len, time_scale,
                     num_buckets, length_tier, H: tl.constexpr, DQK: tl.constexpr, DV: tl.constexpr,
                     HAS_TARGETS: tl.constexpr, HAS_POS: tl.constexpr, POS_TABLE: tl.constexpr,
                     TIME_BIAS: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_CONTEXT: tl.constexpr, IEEE: tl.constexpr,
                     BLOCK: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
                     BLOCK_REL: tl.constexpr, BLOCK_BUCKETS: tl.constexpr, SCRATCH: tl.constexpr):
    """Program (d, sequence): the tiles with m0 - n0 = lag * BLOCK, lag = d for the first cdiv(N, BLOCK)
    programs (on and below the diagonal, the longest first), then -1, -2, ... (above it: only contextual queries
    see keys there), each tile over every head. Launched only with a position bias. SCRATCH: each head's ds read
    from the dQ kernel's scratch instead of computed (no contextual queries then: nothing above the diagonal)."""
    tl.static_assert(HAS_POS)
    b = tl.program_id(1)
    seq_start, seq_len, history_len = _seq_bounds(seq_offsets, num_targets, b, HAS_TARGETS)
    scratch = _scratch_start(scratch_offsets, b, 0, scratch_stride, SCRATCH)
    below = tl.cdiv(max_seq_len, BLOCK)
    lag = tl.where(tl.program_id(0) < below, tl.program_id(0), below - 1 - tl.program_id(0))
    first_m = tl.maximum(lag, 0) * BLOCK  # tile t of the diagonal: rows first_m + t * BLOCK
    context_end = 0
    if HAS_CONTEXT:
        context_end = tl.cdiv(contextual_len, BLOCK) * BLOCK
    end = seq_len - first_m + tl.minimum(lag, 0) * BLOCK  # past the last tile's rows, relative to first_m
    if end <= 0:
        return
    # which tiles of the diagonal hold a visible pair: above it, contextual queries'; beyond the window,
    # contextual keys' and candidates' (which see the history from its end); else every tile
    first_end = tl.cdiv(end, BLOCK) * BLOCK
    second_start = first_end  # no second range unless beyond a window
    if lag < 0:
        first_end = tl.minimum(first_end, context_end)
    if HAS_WINDOW:
        if lag * BLOCK - (BLOCK - 1) > max_attn_len:
            first_end = tl.minimum(first_end, context_end)
            second_start = tl.maximum(first_end, history_len // BLOCK * BLOCK - first_m)
    first_blocks = first_end // BLOCK
    second_blocks = tl.maximum(tl.cdiv(end - second_start, BLOCK), 0)
    # Below the diagonal without a window, a tile whose keys are all history has every in-bounds pair visible (each
    # query is after each key; a candidate sees the whole history): no mask to compute. These are the first
    # tiles of the first range (keys n0 = index * BLOCK); rows past the sequence's end have zero dO, so zero ds.
    unmasked = 0
    if not HAS_WINDOW:
        if lag > 0:
            unmasked = tl.minimum(first_blocks, history_len // BLOCK)
    acc = tl.zeros([BLOCK, BLOCK], dtype=tl.float32)  # the diagonal's ds, summed over its candidate-free tiles
    dtime = tl.zeros([BLOCK_BUCKETS], dtype=tl.float32)  # this program's time-bucket gradient sums
    # A run of tiles whose gaps fall in buckets near and near + 1 sums its ds elementwise, split by bucket, and
    # reduces once when near changes, which along a diagonal it seldom does (_bwd_bias_step); a tile reduction costs
    # more than the elementwise sums (bias kernel alone, H200, N = 8192, both biases: 11.78 -> 10.26 ms)
    run_lower = tl.zeros([BLOCK, BLOCK], dtype=tl.float32)
    run_upper = tl.zeros([BLOCK, BLOCK], dtype=tl.float32)
    run_near = -1
    for index in range(0, unmasked):
        m0 = first_m + index * BLOCK
        acc, dtime, run_lower, run_upper, run_near = _bwd_bias_step(
            acc, dtime, run_lower, run_upper, run_near, Q, K, V, DO, DPOS, m0, m0 - lag * BLOCK, seq_start, seq_len,
            history_len, stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh, H,
            alpha, inv_n, max_seq_len, max_attn_len, contextual_len, pos_w, time_w, ts, qts, time_g, time_scale,
            num_buckets, DS_S, scratch, scratch_stride, DQK, DV, HAS_POS, POS_TABLE, TIME_BIAS, HAS_WINDOW,
            HAS_CONTEXT, IEEE, BLOCK, BLOCK_DQK, BLOCK_DV, BLOCK_REL, BLOCK_BUCKETS, SCRATCH, False)
    for index in range(unmasked, first_blocks + second_blocks):
        m0 = first_m + _segment_start(index, first_end, second_start, second_blocks, end, BLOCK)
        acc, dtime, run_lower, run_upper, run_near = _bwd_bias_step(
            acc, dtime, run_lower, run_upper, run_near, Q, K, V, DO, DPOS, m0, m0 - lag * BLOCK, seq_start, seq_len,
            history_len, stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh, H,
            alpha, inv_n, max_seq_len, max_attn_len, contextual_len, pos_w, time_w, ts, qts, time_g, time_scale,
            num_buckets, DS_S, scratch, scratch_stride, DQK, DV, HAS_POS, POS_TABLE, TIME_BIAS, HAS_WINDOW,
            HAS_CONTEXT, IEEE, BLOCK, BLOCK_DQK, BLOCK_DV, BLOCK_REL, BLOCK_BUCKETS, SCRATCH, True)
    _add_diagonal_sums(DPOS, acc, max_seq_len - (lag + 1) * BLOCK, 2 * max_seq_len - 2, BLOCK, BLOCK_REL)
    if TIME_BIAS:
        dtime = _close_run(dtime, run_lower, run_upper, run_near, BLOCK_BUCKETS)
        _flush_bucket_grad(DTIME, dtime, num_buckets, BLOCK_BUCKETS)


@triton.jit
def _close_run(dtime, run_lower, run_upper, run_near, BLOCK_BUCKETS: tl.constexpr):
    """dtime with a run's sums added: its lower bucket's, then its upper's."""
    offs = tl.arange(0, BLOCK_BUCKETS)
    return (dtime + tl.where(offs == run_near, tl.sum(run_lower), 0.0)
            + tl.where(offs == run_near + 1, tl.sum(run_upper), 0.0))


@triton.jit
def _bwd_bias_step(acc, dtime, run_lower, run_upper, run_near, Q, K, V, DO, DPOS, m0, n0, seq_start, seq_len,
                   history_len, stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot,
                   stride_doh, H, alpha, inv_n, max_seq_len, max_attn_len, contextual_len, pos_w, time_w, ts, qts,
                   time_g, time_scale, num_buckets, DS_S, scratch, scratch_stride,
                   DQK: tl.constexpr, DV: tl.constexpr, HAS_POS: tl.constexpr, POS_TABLE: tl.constexpr,
                   TIME_BIAS: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_CONTEXT: tl.constexpr, IEEE: tl.constexpr,
                   BLOCK: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
                   BLOCK_REL: tl.constexpr, BLOCK_BUCKETS: tl.constexpr, SCRATCH: tl.constexpr, MASKED: tl.constexpr):
    """One tile's ds summed over the heads (the bias is the same for all: computed, and its gradient summed,
    once per tile instead of once per head). MASKED=False: a tile whose every in-bounds pair is visible (see
    _bwd_bias_kernel)."""
    offs_m = m0 + tl.arange(0, BLOCK)
    offs_n = n0 + tl.arange(0, BLOCK)
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    t_query, query_min, query_max = _query_times(qts, seq_start, m0, offs_m, seq_len, TIME_BIAS)
    t_key, key, key_min, two_buckets, far_gap, near_w, far_w, near = _tile_time_setup(
        query_min, query_max, offs_n, n0, seq_start, seq_len, time_w, ts, time_g, time_scale, num_buckets, TIME_BIAS,
        MASKED, IEEE)
    bias, valid, rel, bucket, bucket_lo, bucket_hi = _add_bias(
        tl.zeros([BLOCK, BLOCK], dtype=tl.float32), offs_m, offs_n, m0, n0, seq_len, history_len, t_query,
        max_seq_len, max_attn_len, contextual_len, pos_w, time_w, time_g, time_scale, num_buckets, t_key, key,
        key_min, two_buckets, far_gap, near_w, far_w, near, HAS_POS, POS_TABLE, TIME_BIAS, HAS_WINDOW, HAS_CONTEXT,
        IEEE, MASKED, False)
    ds = tl.zeros([BLOCK, BLOCK], dtype=tl.float32)
    if SCRATCH:  # rows past the sequence's end may be unwritten; a masked tile's invisible pairs are zeroed below
        # plain loads: per-head tensor-descriptor loads, waited on one by one, took this kernel 0.96 -> 1.23 ms
        # (H100, N = 2048, both biases)
        row, col = _scratch_corner(scratch, m0, n0, BLOCK)
        for h in tl.static_range(H):
            ds += tl.load(_scratch_pointers(DS_S, row + h * scratch_stride, col, BLOCK, BLOCK),
                          mask=(offs_m < seq_len)[:, None], other=0.0).to(tl.float32)
    else:
        for h in range(H):
            q = _load_rows(Q, offs_m, seq_start, seq_len, stride_qt, h * stride_qh, offs_dqk, DQK)
            do = _load_rows(DO, offs_m, seq_start, seq_len, stride_dot, h * stride_doh, offs_dv, DV)
            k = _load_rows(K, offs_n, seq_start, seq_len, stride_kt, h * stride_kh, offs_dqk, DQK)
            v = _load_rows(V, offs_n, seq_start, seq_len, stride_vt, h * stride_vh, offs_dv, DV)
            s = _dot(q, tl.trans(k), IEEE) * alpha + bias
            ds += _silu_grad_over(s, _sigmoid(s, IEEE), _dot(do, tl.trans(v), IEEE), valid, inv_n, False)
    if MASKED:  # once for all heads
        ds = tl.where(valid, ds, 0.0)
    if POS_TABLE:  # static: no inner loop, which would stop the tile loop's pipelining
        acc += ds
    elif (tl.minimum(m0 + BLOCK, seq_len) <= history_len) & (tl.minimum(n0 + BLOCK, seq_len) <= history_len):
        acc += ds
    else:  # candidates map many queries or keys to one position
        _add_sums_by_value(DPOS, ds, rel, valid, BLOCK_REL)
    if TIME_BIAS:  # ds is zero outside valid pairs (masked, or past the sequence's end where dO is zero)
        if bucket_hi <= bucket_lo + 1:  # one or two buckets: the tile joins a run
            if bucket_lo != run_near:
                dtime = _close_run(dtime, run_lower, run_upper, run_near, BLOCK_BUCKETS)
                run_lower = tl.zeros_like(run_lower)
                run_upper = tl.zeros_like(run_upper)
                run_near = bucket_lo
            crossed = bucket > bucket_lo
            run_lower += tl.where(crossed, 0.0, ds)
            run_upper += tl.where(crossed, ds, 0.0)
        else:
            dtime = _accumulate_bucket_grad(dtime, ds, bucket, valid, bucket_lo, bucket_hi, BLOCK_BUCKETS)
    return acc, dtime, run_lower, run_upper, run_near


@triton.jit
def _add_diagonal_sums(DPOS, ds, base, last, BLOCK: tl.constexpr, BLOCK_REL: tl.constexpr):
    """DPOS[base + (j - i + BLOCK - 1)] += the sum of ds[i, j] along each diagonal. Shearing the tile (row i
    shifted right by BLOCK - 1 - i) turns diagonals into columns: one gather and one column sum."""
    column = tl.arange(0, BLOCK_REL)[None, :] + tl.arange(0, BLOCK)[:, None] - (BLOCK - 1)
    inside = (column >= 0) & (column < BLOCK)
    sheared = tl.gather(ds, tl.minimum(tl.maximum(column, 0), BLOCK - 1), 1)
    sums = tl.sum(tl.where(inside, sheared, 0.0), 0)
    offs = tl.arange(0, BLOCK_REL)
    target = base + offs
    tl.atomic_add(DPOS + target, sums, mask=(sums != 0.0) & (target >= 0) & (target <= last), sem="relaxed")


@triton.jit
def _add_sums_by_value(DPOS, ds, rel, valid, BLOCK_REL: tl.constexpr):
    """Any tile (candidates map many keys or queries to one position): one masked reduction per value."""
    lo = tl.min(tl.where(valid, rel, 1 << 30))
    hi = tl.max(tl.where(valid, rel, -1))
    offs = tl.arange(0, BLOCK_REL)
    sums = tl.zeros([BLOCK_REL], dtype=tl.float32)
    for r in range(lo, hi + 1):
        sums = tl.where(offs == r - lo, tl.sum(tl.where(valid & (rel == r), ds, 0.0)), sums)
    tl.atomic_add(DPOS + lo + offs, sums, mask=offs <= hi - lo, sem="relaxed")


@triton.jit
def _accumulate_bucket_grad(dtime, ds, bucket, valid, lo, hi, BLOCK_BUCKETS: tl.constexpr):
    """dtime[b] += sum of the tile's ds in time bucket b, for its buckets lo..hi (flushed once per program).
    Tiles of one or two buckets (every two-bucket tile) take two sums and no loop."""
    offs = tl.arange(0, BLOCK_BUCKETS)
    if hi <= lo + 1:
        upper = tl.sum(tl.where(valid & (bucket > lo), ds, 0.0))
        total = tl.sum(tl.where(valid, ds, 0.0))
        dtime += tl.where(offs == lo, total - upper, 0.0) + tl.where(offs == lo + 1, upper, 0.0)
    else:
        for b in range(lo, hi + 1):
            dtime += tl.where(offs == b, tl.sum(tl.where(valid & (bucket == b), ds, 0.0)), 0.0)
    return dtime


@triton.jit
def _flush_bucket_grad(DTIME, dtime, num_buckets, BLOCK_BUCKETS: tl.constexpr):
    offs = tl.arange(0, BLOCK_BUCKETS)
    tl.atomic_add(DTIME + offs, dtime, mask=offs <= num_buckets, sem="relaxed")


@triton.jit
def _bwd_q_kernel(Q, K, V, DO, DQ, seq_offsets, num_targets, scratch_offsets, pos_w, time_w, ts, qts, time_g, P_S, DS_S,
                  stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh,
                  scratch_stride, alpha, inv_n, max_seq_len, max_attn_len, contextual_len, time_scale, num_buckets,
                  length_tier, H: tl.constexpr, DQK: tl.constexpr, DV: tl.constexpr,
                  HAS_TARGETS: tl.constexpr, HAS_POS: tl.constexpr, POS_TABLE: tl.constexpr, TIME_BIAS: tl.constexpr,
                  HAS_WINDOW: tl.constexpr, HAS_CONTEXT: tl.constexpr, IEEE: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
                  SCRATCH: tl.constexpr):
    """SCRATCH: also store each tile's p and ds for the other two backward kernels (see _scratch_corner)."""
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)  # a head's costliest row blocks first
    b = tl.program_id(1) // H
    h = tl.program_id(1) % H
    seq_start, seq_len, history_len = _seq_bounds(seq_offsets, num_targets, b, HAS_TARGETS)
    m0 = pid_m * BLOCK_M
    if m0 >= seq_len:
        return
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_dqk = tl.arange(0, BLOCK_DQK)
    q = _load_rows(Q, offs_m, seq_start, seq_len, stride_qt, h * stride_qh, offs_dqk, DQK)
    do = _load_rows(DO, offs_m, seq_start, seq_len, stride_dot, h * stride_doh, tl.arange(0, BLOCK_DV), DV)
    dq = tl.zeros([BLOCK_M, BLOCK_DQK], dtype=tl.float32)
    t_query, query_min, query_max = _query_times(qts, seq_start, m0, offs_m, seq_len, TIME_BIAS)
    scratch = _scratch_start(scratch_offsets, b, h, scratch_stride, SCRATCH)
    full_hi, ctx_hi, lo, hi = _key_range(m0, seq_len, history_len, max_attn_len, contextual_len, BLOCK_M,
                                         BLOCK_N, HAS_WINDOW, HAS_CONTEXT)
    if not HAS_WINDOW:
        for start_n in range(0, full_hi, BLOCK_N):
            dq = _bwd_q_step(dq, q, do, K, V, start_n, offs_m, m0, seq_start, seq_len, history_len, t_query, query_min,
                             query_max, stride_kt, stride_kh, stride_vt, stride_vh, h, alpha, inv_n, max_seq_len,
                             max_attn_len, contextual_len, pos_w, time_w, ts, time_g, time_scale, num_buckets, P_S,
                             DS_S, scratch, DQK, DV, HAS_POS, POS_TABLE, TIME_BIAS, HAS_WINDOW, HAS_CONTEXT, IEEE,
                             BLOCK_N, BLOCK_DQK, BLOCK_DV, SCRATCH, False)
    num_blocks = ctx_hi // BLOCK_N + tl.cdiv(hi - lo, BLOCK_N)
    for index in range(0, num_blocks):
        start_n = _segment_start(index, ctx_hi, lo, tl.cdiv(hi - lo, BLOCK_N), hi, BLOCK_N)
        dq = _bwd_q_step(dq, q, do, K, V, start_n, offs_m, m0, seq_start, seq_len, history_len, t_query, query_min,
                         query_max, stride_kt, stride_kh, stride_vt, stride_vh, h, alpha, inv_n, max_seq_len,
                         max_attn_len, contextual_len, pos_w, time_w, ts, time_g, time_scale, num_buckets, P_S, DS_S,
                         scratch, DQK, DV, HAS_POS, POS_TABLE, TIME_BIAS, HAS_WINDOW, HAS_CONTEXT, IEEE, BLOCK_N,
                         BLOCK_DQK, BLOCK_DV, SCRATCH, True)
    tl.store(DQ + (seq_start + offs_m)[:, None] * stride_qt + h * stride_qh + offs_dqk[None, :],
             (dq * alpha).to(DQ.dtype.element_ty), mask=(offs_m < seq_len)[:, None] & (offs_dqk < DQK)[None, :])


@triton.jit
def _bwd_q_step(dq, q, do, K, V, start_n, offs_m, m0, seq_start, seq_len, history_len, t_query, query_min, query_max,
                stride_kt, stride_kh, stride_vt, stride_vh, h, alpha, inv_n, max_seq_len, max_attn_len, contextual_len,
                pos_w, time_w, ts, time_g, time_scale, num_buckets, P_S, DS_S, scratch, DQK: tl.constexpr,
                DV: tl.constexpr, HAS_POS: tl.constexpr, POS_TABLE: tl.constexpr, TIME_BIAS: tl.constexpr,
                HAS_WINDOW: tl.constexpr, HAS_CONTEXT: tl.constexpr, IEEE: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, SCRATCH: tl.constexpr, MASKED: tl.constexpr):
    offs_n = start_n + tl.arange(0, BLOCK_N)
    k = _load_rows(K, offs_n, seq_start, seq_len, stride_kt, h * stride_kh, tl.arange(0, BLOCK_DQK), DQK)
    v = _load_rows(V, offs_n, seq_start, seq_len, stride_vt, h * stride_vh, tl.arange(0, BLOCK_DV), DV)
    s, valid, _, _, _, _ = _tile(q, k, offs_m, offs_n, m0, start_n, seq_start, seq_len, history_len, t_query, query_min,
                                 query_max, alpha, max_seq_len, max_attn_len, contextual_len, pos_w, time_w, ts, time_g,
                                 time_scale, num_buckets, HAS_POS, POS_TABLE, TIME_BIAS, HAS_WINDOW, HAS_CONTEXT, IEEE,
                                 MASKED, False)
    sig = _sigmoid(s, IEEE)
    ds = _silu_grad_over(s, sig, _dot(do, tl.trans(v), IEEE), valid, inv_n, MASKED)
    if SCRATCH:  # every visible pair passes here once: written whole, no mask (the scratch holds the tile)
        p = s * sig * inv_n
        if MASKED:
            p = tl.where(valid, p, 0.0)
        row, col = _scratch_corner(scratch, m0, start_n, BLOCK_N)
        tl.store(_scratch_pointers(P_S, row, col, offs_m.shape[0], BLOCK_N), p.to(P_S.dtype.element_ty))
        tl.store(_scratch_pointers(DS_S, row, col, offs_m.shape[0], BLOCK_N), ds.to(DS_S.dtype.element_ty))
    return dq + _dot(ds.to(k.dtype), k, IEEE)


def _configs(shapes: list[tuple[int, int, int, int]], **constants) -> list[triton.Config]:
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n, **constants}, num_warps=w, num_stages=s)
            for m, n, w, s in shapes]


def _diagonal_tiles(block: int) -> dict[str, int]:
    # BLOCK_REL: room for the 2 * BLOCK - 1 relative positions one square tile spans
    return {"BLOCK": block, "BLOCK_REL": 2 * block}


_MAX_GRID_Y = 65_535  # CUDA's bound on a grid's second axis
# length_tier: max_seq_len's next power of two, so that nearby lengths share a tuning instead of each tuning anew
_TUNE_KEY = ["length_tier", "H", "DQK", "DV", "HAS_POS", "TIME_BIAS", "SCRATCH"]
# single-stage tiles keep head dim 256 within shared memory: 128 x 64 on 8 warps is the dQ kernel's pick there
# (its q and dO rows take 128 KB; 4 x 256: 4.51 -> 3.75 ms against 64 x 32 on 4 warps). At D = 128, N = 2048 the
# last tile of each list below took dQ 0.911 -> 0.885 ms and dK/dV 1.369 -> 1.280 (README, fused attention)
# 128 x 32 on 8 warps: the one tile on which the dQ kernel holds both biases and its scratch stores without
# spilling (sm_90 compile: 248 registers, no stack; 128 x 64 on 8 warps, the pick without them: 168-216 bytes)
_ROW_BLOCK_CONFIGS = [(64, 64, 4, 3), (128, 64, 8, 2), (128, 64, 4, 3), (128, 64, 8, 3), (128, 64, 8, 4),
                      (128, 128, 8, 2), (128, 128, 8, 3), (64, 32, 4, 1), (128, 64, 8, 1), (64, 64, 4, 2),
                      (128, 32, 8, 3)]
# 32 x 64 on 8 warps, two stages: with rab the only two-accumulator tile that does not spill at D = 128 (sm_90,
# tests/ops/compile_for_hopper.py: 254-255 registers, no stack; the one picked before, 32 x 64 on 4 warps:
# 152-288 bytes)
_KEY_BLOCK_CONFIGS = [(64, 64, 4, 2), (32, 128, 4, 2), (64, 128, 8, 2), (32, 64, 4, 1), (64, 128, 8, 3), (32, 64, 8, 2)]
_SPLIT_KEY_BLOCK_CONFIGS = [(32, 128, 8, 2), (64, 64, 4, 2)]  # dK and dV in programs of their own (SPLIT)
_DIAGONAL_CONFIGS = [(64, 4, 2), (64, 4, 3), (64, 8, 2), (128, 8, 2), (32, 4, 2), (32, 4, 1)]
# the dK/dV kernel reads its unmasked tiles from the scratch unmasked (_bwd_kv_read): each must lie inside a dQ tile
assert max(m for m, *_ in _KEY_BLOCK_CONFIGS + _SPLIT_KEY_BLOCK_CONFIGS) <= min(m for m, *_ in _ROW_BLOCK_CONFIGS)
if INTERPRET or not AUTOTUNE:  # the CPU interpreter is slow: one small tile there
    _fwd, _bwd_kv, _bwd_q, _bwd_bias = _fwd_kernel, _bwd_kv_kernel, _bwd_q_kernel, _bwd_bias_kernel
    _FIXED = {"BLOCK_M": 16, "BLOCK_N": 16} if INTERPRET else {"BLOCK_M": 64, "BLOCK_N": 64}
    _FIXED_DIAGONAL = _diagonal_tiles(_FIXED["BLOCK_M"])
else:
    _fwd = triton.autotune(_configs(_ROW_BLOCK_CONFIGS), key=_TUNE_KEY)(_fwd_kernel)
    _bwd_q = triton.autotune(_configs(_ROW_BLOCK_CONFIGS), key=_TUNE_KEY)(_bwd_q_kernel)
    _bwd_kv = triton.autotune(_configs(_KEY_BLOCK_CONFIGS, SPLIT=False)
                              + _configs(_SPLIT_KEY_BLOCK_CONFIGS, SPLIT=True),
                              key=_TUNE_KEY, reset_to_zero=["DTIME"])(_bwd_kv_kernel)
    _bwd_bias = triton.autotune([triton.Config(_diagonal_tiles(b), num_warps=w, num_stages=s)
                                 for b, w, s in _DIAGONAL_CONFIGS], key=_TUNE_KEY,
                                reset_to_zero=["DPOS", "DTIME"])(_bwd_bias_kernel)
    _FIXED = _FIXED_DIAGONAL = {}


def _position_table(weights: torch.Tensor, max_seq_len: int, dtype: torch.dtype) -> torch.Tensor:
    """[TABLE_ROWS, row_length] with row r = weights[r + x - TABLE_ROWS - shift + N] at column x (zero past the
    weights' ends; shift and row_length as _table_shape), in the scores' input dtype: the bias of a
    candidate-free tile is one aligned block of it (see _position_tile). 4 MB at N = 8192 in bf16."""
    shift = triton.cdiv(max_seq_len, 16) * 16
    row_length = triton.cdiv(shift + max_seq_len + TABLE_ROWS, 16) * 16
    left = TABLE_ROWS + shift - max_seq_len
    padded = torch.nn.functional.pad(weights.to(dtype), (left, TABLE_ROWS - 1 + row_length - left - weights.numel()))
    return padded.unfold(0, row_length, 1).contiguous()


def _block_dim(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


def _split_key_blocks(dqk: int, dv: int) -> bool:
    """The dK/dV kernel's SPLIT without autotuning: from head dim 256 on, where one program's two
    accumulators spill."""
    return _block_dim(dqk) + _block_dim(dv) > 256


class _Options:
    """The non-tensor arguments shared by the kernels."""

    def __init__(self, q, v, seq_offsets, num_targets, position_weights, time_weights, timestamps, query_timestamps,
                 max_seq_len, alpha, max_attn_len, contextual_seq_len, time_bucket_scale, sorted_timestamps,
                 backward=False):
        has_time = time_weights is not None and timestamps is not None
        if has_time and query_timestamps is None:
            query_timestamps = default_query_timestamps(timestamps, seq_offsets, num_targets)
        position_table = position_weights is not None and num_targets is None
        # Gathered bias weights: in the forward, in the scores' input dtype (the reference rounds rab so too),
        # where a 2-byte gather stays a plain load and triton's pipeliner turns a 4-byte one into an async
        # copy per score: forward 18-21% faster with the time bias at N = 8192, but the backward slower.
        gathered_dtype = torch.float32 if backward else q.dtype
        reversed_table = None  # for the dK/dV kernel's transposed tiles (see _tile)
        if position_table and backward:
            reversed_table = _position_table(position_weights.flip(0), max_seq_len, q.dtype)
        if position_weights is not None:
            position_weights = (_position_table(position_weights, max_seq_len, q.dtype) if position_table
                                else position_weights.to(gathered_dtype))
        if has_time:
            time_weights = time_weights.to(gathered_dtype)
        num_buckets = int(time_weights.numel() - 1) if time_weights is not None else 0
        self.scalars = (float(alpha), 1.0 / max_seq_len, int(max_seq_len), int(max_attn_len),
                        int(contextual_seq_len), float(time_bucket_scale), num_buckets,
                        triton.next_power_of_2(int(max_seq_len)))
        shared = dict(
            H=q.shape[1], DQK=q.shape[2], DV=v.shape[2], HAS_TARGETS=num_targets is not None,
            HAS_POS=position_weights is not None, POS_TABLE=position_table,
            TIME_BIAS=(SORTED_TIMES.value if sorted_timestamps else 1) if has_time else 0,
            HAS_WINDOW=max_attn_len > 0, HAS_CONTEXT=contextual_seq_len > 0, IEEE=q.dtype == torch.float32,
            BLOCK_DQK=_block_dim(q.shape[2]), BLOCK_DV=_block_dim(v.shape[2]))
        self.constexprs = {**shared, **_FIXED}
        buckets = {"BLOCK_BUCKETS": triton.next_power_of_2(time_weights.numel()) if has_time else 16}
        self.kv_constexprs = {**self.constexprs, **buckets, "TIME_GRAD": has_time and position_weights is None}
        if _FIXED:  # else the autotuner picks SPLIT with the tile
            self.kv_constexprs["SPLIT"] = _split_key_blocks(q.shape[2], v.shape[2])
        self.bias_constexprs = {**shared, **_FIXED_DIAGONAL, **buckets}
        dummy = seq_offsets
        self.seq_offsets, self.num_targets = seq_offsets, num_targets
        self.bias_pointers = (dummy if position_weights is None else position_weights,
                              dummy if time_weights is None else time_weights,
                              dummy if not has_time else timestamps,
                              dummy if not has_time else query_timestamps,
                              thresholds_on(float(time_bucket_scale), num_buckets, q.device) if has_time else dummy)
        self.transposed_bias_pointers = self.bias_pointers
        if reversed_table is not None:
            self.transposed_bias_pointers = (reversed_table, *self.bias_pointers[1:])
        self.num_seqs, self.num_heads = seq_offsets.shape[0] - 1, q.shape[1]
        self.max_seq_len = max_seq_len

    @staticmethod
    def _programs(blocks: int, above: bool) -> int:
        return 2 * blocks - 1 if above else blocks  # block diagonals on and below the main one, then above

    def launches(self, block: str, diagonals: bool = False, transposed: bool = False, scratch_offsets=None):
        """(grid, pointers) per launch. CUDA bounds the grid's second axis (sequences x heads) at 65,535,
        so larger batches go in chunks of sequences; sliced offsets keep token indices global. Every chunk
        has the same autotune key, so only the first can tune (and zero DPOS / DTIME while it does).
        diagonals: one program per block diagonal and sequence (the bias kernel, which loops over the heads); those
        above the main one only hold pairs when contextual queries see every key. transposed: for the kernel of
        transposed tiles (dK/dV). scratch_offsets: the backward kernels' (see _backward_scratch), sliced with the
        sequences and passed after the targets."""
        above = diagonals and self.constexprs["HAS_CONTEXT"]
        step = _MAX_GRID_Y // self.num_heads
        for start in range(0, self.num_seqs, step):
            stop = min(start + step, self.num_seqs)
            offsets, targets, starts = self.seq_offsets, self.num_targets, scratch_offsets
            if stop - start < self.num_seqs:  # only then: no views made on the usual, one-launch path
                offsets = offsets[start:stop + 1]
                targets = None if targets is None else targets[start:stop]
                starts = None if starts is None else starts[start:stop]
            grid = lambda meta, rows=(stop - start) * (1 if diagonals else self.num_heads): (  # noqa: E731
                self._programs(triton.cdiv(self.max_seq_len, meta[block]) * (2 if meta.get("SPLIT") else 1), above),
                rows)
            bias_pointers = self.transposed_bias_pointers if transposed else self.bias_pointers
            per_sequence = (offsets, self.seq_offsets if targets is None else targets)
            if scratch_offsets is not None:
                per_sequence += (starts,)
            yield grid, (*per_sequence, *bias_pointers)


def forward(q, k, v, seq_offsets, num_targets, position_weights, time_weights, timestamps, query_timestamps,
            max_seq_len, alpha, max_attn_len, contextual_seq_len, time_bucket_scale, sorted_timestamps) -> torch.Tensor:
    """Launches the forward kernel; q, k, v must be contiguous. Returns out [T, H, Dv]."""
    options = _Options(q, v, seq_offsets, num_targets, position_weights, time_weights, timestamps, query_timestamps,
                       max_seq_len, alpha, max_attn_len, contextual_seq_len, time_bucket_scale, sorted_timestamps)
    out = torch.empty(q.shape[0], q.shape[1], v.shape[2], dtype=q.dtype, device=q.device)
    for grid, pointers in options.launches("BLOCK_M") if q.shape[0] else ():
        _fwd[grid](q, k, v, out, *pointers, q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0),
                   v.stride(1), out.stride(0), out.stride(1), *options.scalars, **options.constexprs)
    return out


def backward(grad_out, q, k, v, seq_offsets, num_targets, position_weights, time_weights, timestamps,
             query_timestamps, max_seq_len, alpha, max_attn_len, contextual_seq_len, time_bucket_scale,
             sorted_timestamps):
    """Launches the dQ, dK/dV and bias-gradient kernels; grad_out, q, k, v must be contiguous. Returns dq, dk,
    dv and the fp32 gradients of the position and time weights (shaped like them; [0] where a weight is absent)."""
    options = _Options(q, v, seq_offsets, num_targets, position_weights, time_weights, timestamps, query_timestamps,
                       max_seq_len, alpha, max_attn_len, contextual_seq_len, time_bucket_scale, sorted_timestamps,
                       backward=True)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dpos = torch.zeros(position_weights.shape if position_weights is not None else 0, dtype=torch.float32,
                       device=q.device)
    dtime = torch.zeros(time_weights.shape if options.constexprs["TIME_BIAS"] else 0, dtype=torch.float32,
                        device=q.device)
    if not (options.num_seqs and q.shape[0]):
        return dq.zero_(), dk.zero_(), dv.zero_(), dpos, dtime
    strides = (q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
               grad_out.stride(0), grad_out.stride(1))
    scratch = _backward_scratch(options, q, seq_offsets)
    p_scratch, ds_scratch, starts, head_stride = scratch or (None, None, seq_offsets, 0)
    descriptors = (None, None) if scratch is None else _descriptors(p_scratch, ds_scratch)
    flag = {"SCRATCH": scratch is not None}
    # dQ first: with a scratch it writes the p and ds the other two read
    for grid, pointers in options.launches("BLOCK_M", scratch_offsets=starts):
        _bwd_q[grid](q, k, v, grad_out, dq, *pointers, p_scratch, ds_scratch, *strides, head_stride, *options.scalars,
                     **options.constexprs, **flag)
    for grid, pointers in options.launches("BLOCK_N", transposed=True, scratch_offsets=starts):
        _bwd_kv[grid](q, k, v, grad_out, dk, dv, dtime, *pointers, *descriptors, *strides, head_stride,
                      *options.scalars, **options.kv_constexprs, **flag)
    if dpos.numel():  # the bias kernel, which also sums the time buckets (see _bwd_bias_kernel)
        for grid, pointers in options.launches("BLOCK", diagonals=True, scratch_offsets=starts):
            _bwd_bias[grid](q, k, v, grad_out, dpos, dtime, *pointers, None, ds_scratch, *strides, head_stride,
                            *options.scalars, **options.bias_constexprs, **flag)
    return dq, dk, dv, dpos, dtime


def scratch_budget(device: torch.device) -> int:
    """Bytes the backward may take for its scratch (_backward_scratch): GENREC_BACKWARD_SCRATCH_GB if set (0: never),
    else an eighth of the GPU's memory; none elsewhere (under the interpreter, tests set it)."""
    setting = os.environ.get("GENREC_BACKWARD_SCRATCH_GB")
    if setting is not None:
        return int(float(setting) * 2**30)
    return torch.cuda.get_device_properties(device).total_memory // 8 if device.type == "cuda" else 0


def _scratch_buffers(numel: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The p and ds scratch, uninitialised: the kernels read only what the dQ kernel wrote."""
    return (torch.empty(numel, dtype=like.dtype, device=like.device),
            torch.empty(numel, dtype=like.dtype, device=like.device))


def _backward_scratch(options: _Options, q: torch.Tensor, seq_offsets: torch.Tensor):
    """(p, ds, each sequence's first row, rows per head) for the backward kernels to share, or None: without a
    position bias (the time buckets' sums then stay in the dK/dV loop), with contextual queries (they see keys above
    the diagonal, which the scratch does not hold), past scratch_budget, or when the memory is not free. p and ds are
    [rows, SCRATCH_BLOCK] (see _scratch_corner). Sized from the token count and max_seq_len, which bound each
    sequence's pairs, so that no length is read back to the host: a sequence of L <= N tokens holds under
    (L + R) (N + 2R) / 2 pairs, R = SCRATCH_BLOCK."""
    if not options.constexprs["HAS_POS"] or options.constexprs["HAS_CONTEXT"]:
        return None
    rows, max_len, heads = SCRATCH_BLOCK, options.max_seq_len, q.shape[1]
    blocks = triton.cdiv(max_len, rows)
    per_head = min(options.num_seqs * rows * blocks * (blocks + 1) // 2,
                   triton.cdiv((q.shape[0] + options.num_seqs * rows) * (max_len + 2 * rows) // 2, rows))
    # the kernels address rows in int32
    if heads * per_head >= 2**31 or 2 * heads * per_head * rows * q.element_size() > scratch_budget(q.device):
        return None
    try:
        buffers = _scratch_buffers(heads * per_head * rows, q)
    except torch.OutOfMemoryError:  # a model that fills the GPU trains as it did without the scratch
        return None
    lengths = (seq_offsets[1:] - seq_offsets[:-1]).to(torch.int64).clamp(max=max_len)
    blocks_each = (lengths + rows - 1) // rows
    sizes = rows * blocks_each * (blocks_each + 1) // 2
    p, ds = (buffer.view(-1, rows) for buffer in buffers)
    return p, ds, torch.cumsum(sizes, 0) - sizes, per_head


def _descriptors(p: torch.Tensor, ds: torch.Tensor) -> tuple[TensorDescriptor, TensorDescriptor]:
    """Tensor descriptors over the scratch for the dK/dV kernel, which loads its tiles with bulk asynchronous copies
    (TMA) that triton pipelines (H100, N = 8192, both biases: 5.75 -> 2.82 ms, the tile-major layout included). Its
    launches set their block to their tile (_scratch_blocks). The dQ kernel stores with plain pointers: through
    descriptors it took 7.13 ms against 6.08; the bias kernel loads so (per-head descriptor loads, waited on one by
    one: 0.96 -> 1.23 ms at N = 2048)."""
    return TensorDescriptor.from_tensor(p, [SCRATCH_BLOCK] * 2), TensorDescriptor.from_tensor(ds, [SCRATCH_BLOCK] * 2)


def _scratch_blocks(kernel) -> None:
    """Before each launch of the kernel (each autotuned tile included), sets the scratch descriptors' block to the
    launch's tile (BLOCK_M queries by BLOCK_N keys)."""
    position = {name: index for index, name in enumerate(kernel.arg_names)}

    def set_blocks(*args, **kwargs):
        def argument(name):
            return kwargs[name] if name in kwargs else args[position[name]]

        for name in ("P_S", "DS_S"):
            descriptor = argument(name)
            if descriptor is not None:
                descriptor.block_shape = [argument("BLOCK_M"), argument("BLOCK_N")]

    kernel.add_pre_run_hook(set_blocks)


_scratch_blocks(_bwd_kv_kernel)
