"""Triton kernel vs the reference: forward and every gradient (q, k, v, rab weights).

Tolerance rule (flash-attention's): the kernel's error against an fp64 reference must be at most
2x (forward) / 3x (gradients) the error of the PyTorch reference run in the kernel's precision,
plus flash-attention's floor: twice the rounding error of the kernel's dtype at the values' scale,
max|(x + 0.3 - 0.3) - x|. On CPU the kernels run under TRITON_INTERPRET=1 (set in conftest.py) at
small sizes; the interpreter multiplies bf16 tiles in fp32 (kernel.py says why), so bf16 matrix
units are checked by the same test on a GPU.
"""

import pytest
import torch

pytest.importorskip("triton")

import triton  # noqa: E402

from genrec.ops import hstu_attention  # noqa: E402
from genrec.ops.attention import BucketedBias, kernel  # noqa: E402
from genrec.ops.attention.rab import query_timestamps  # noqa: E402
from genrec.ops.jagged import offsets_from_lengths  # noqa: E402
from tests.ops.tolerance import assert_within_rule  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Tiles are 16 wide under the interpreter and 64-128 on a GPU; lengths span several tiles either way, so
# whole tiles below the diagonal (no mask built) and diagonal ones are both checked.
LENGTH_SCALE = 1 if DEVICE == "cpu" else 8


def run(backend, dtype, inputs, lengths, max_seq_len, options):
    q, k, v, pos_w, time_w, stamps, num_targets = inputs
    leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    weights = [None if w is None else w.detach().to(dtype).requires_grad_() for w in (pos_w, time_w)]
    rab = None
    offsets = offsets_from_lengths(torch.tensor(lengths, device=DEVICE))
    if options.get("rab"):
        queries = None
        if options.get("query_times"):  # each history's last row asks about an event 0..9999 s after it
            history_end = offsets[1:] - (0 if num_targets is None else num_targets)
            gaps = torch.randint(0, 10_000, (len(lengths),), generator=torch.Generator().manual_seed(3)).to(DEVICE)
            queries = query_timestamps(stamps, offsets, num_targets, stamps[history_end - 1] + gaps)
        # with candidates, a query time after the history's end breaks the order the sorted path reads
        sorted_times = not (options.get("unsorted_times") or (options.get("query_times") and num_targets is not None))
        rab = BucketedBias(weights[0], weights[1], stamps, time_bucket_scale=0.3 if options.get("long") else 0.7,
                           sorted_timestamps=sorted_times, query_timestamps=queries)
    out = hstu_attention(*leaves, offsets,
                         max_seq_len=max_seq_len, alpha=0.5, num_targets=num_targets, rab=rab,
                         max_attn_len=options.get("window", 0), contextual_seq_len=options.get("context", 0),
                         backend=backend)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(DEVICE, dtype)
    out.backward(grad)
    grads = [t.grad for t in leaves] + [w.grad for w in weights if w is not None] if options.get("rab") else \
        [t.grad for t in leaves]
    return out, grads


OPTIONS = [
    {},
    {"targets": True},
    {"window": 5},
    {"context": 3},
    {"rab": True},
    {"rab": True, "window": 7, "context": 2},  # no candidates: the position bias comes from its table
    {"rab": True, "targets": True, "window": 7, "context": 2},  # candidates: it is gathered
    {"rab": True, "targets": True, "window": 5},  # candidates see past the window, from the history's end
    {"rab": True, "wide_times": True},
    {"rab": True, "unsorted_times": True},  # key tiles' time ranges reduced, not read off their ends
    {"rab": True, "time_only": True},  # the dK/dV kernel sums the time buckets; no bias kernel runs
    # many tiles per sequence and fine buckets with some long gaps: tiles whose gaps just fit two buckets, and
    # tiles whose last rows or keys cross into a third, are both common
    {"rab": True, "long": True},
    {"rab": True, "position_only": True, "targets": True},
    {"rab": True, "query_times": True},  # the last history row queries at a time of its own (evaluation, serving)
    {"rab": True, "query_times": True, "targets": True, "long": True},
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(o) or "plain")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_kernel_matches_reference(options, dtype):
    lengths = [1] + [n * LENGTH_SCALE for n in ((150, 70, 6) if options.get("long") else (19, 33, 6))]
    max_seq_len = (160 if options.get("long") else 40) * LENGTH_SCALE
    num_targets = [0, 4, 20, 2] if options.get("targets") else None
    check_against_reference(options, dtype, lengths, max_seq_len, num_targets,
                            seed=len(options) * 10 + (dtype == torch.bfloat16))


def check_against_reference(options, dtype, lengths, max_seq_len, num_targets, seed, ulps=0):
    """Forward and every gradient of the kernel against the reference by the tolerance rule (ulps: its slack)."""
    generator = torch.Generator().manual_seed(seed)
    heads, dqk, dv = 2, 25, 20
    total = sum(lengths)
    rand = lambda *shape: torch.randn(*shape, generator=generator).to(DEVICE)  # noqa: E731
    q, k, v = rand(total, heads, dqk), rand(total, heads, dqk), rand(total, heads, dv)
    steps = torch.randint(0, 4000, (total,), generator=generator)
    # wide_times: some gaps of ~1e10, past float32's exact integers (rounded as the reference does) and past
    # int32 within a tile (whose key times the kernel compares in int32 when they fit)
    if options.get("long"):
        steps = torch.where(torch.rand(total, generator=generator) < 0.05, steps * 30, steps)
    if options.get("wide_times"):
        steps = torch.where(torch.rand(total, generator=generator) < 0.1, steps * 2_500_000, steps)
    stamps = torch.cumsum(steps, 0)
    if options.get("unsorted_times"):  # every sequence's times in random order: gaps of both signs
        stamps = stamps[torch.randperm(total, generator=generator)]
    stamps = stamps.to(DEVICE)
    # with targets, 20 of 33 are candidates: under a window they still see the history's end from tiles beyond it
    num_targets = None if num_targets is None else torch.tensor(num_targets, device=DEVICE)
    position_weights = None if options.get("time_only") else rand(2 * max_seq_len - 1)
    time_weights = None if options.get("position_only") else rand(65)
    inputs = (q, k, v, position_weights, time_weights, stamps, num_targets)
    exact_out, exact_grads = run("torch", torch.float64, inputs, lengths, max_seq_len, options)
    ref_out, ref_grads = run("torch", dtype, inputs, lengths, max_seq_len, options)
    out, grads = run("triton", dtype, inputs, lengths, max_seq_len, options)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert_within_rule(out, ref_out, exact_out, 2, dtype, "out", ulps)
    names = ["dq", "dk", "dv", "d_position_weights", "d_time_weights"]
    for name, got, ref, exact in zip(names, grads, ref_grads, exact_grads):
        assert_within_rule(got, ref, exact, 3, dtype, name, ulps)


TILE_CASES = max(len(kernel._ROW_BLOCK_CONFIGS), len(kernel._KEY_BLOCK_CONFIGS) + len(kernel._SPLIT_KEY_BLOCK_CONFIGS),
                 len(kernel._DIAGONAL_CONFIGS))


@pytest.mark.skipif(DEVICE == "cpu", reason="the interpreter runs one 16 x 16 tile; the tuned tiles are GPU launches")
@pytest.mark.parametrize("case", range(TILE_CASES))
@pytest.mark.parametrize("options", [{"rab": True, "targets": True, "window": 7, "context": 2},
                                     {"rab": True, "long": True}], ids=lambda o: "-".join(o))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_every_tuned_tile_against_reference(monkeypatch, case, options, dtype):
    """Each tile the autotuner may pick, launched as it (case i: the i-th row-block tile for the forward and dQ
    kernels, the i-th key-block tile (split ones last) for dK/dV and the i-th diagonal tile for the bias
    gradients, each list wrapping around), on jagged lengths drawn at random per case."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    def only(configs, index, fn, **extra):
        return triton.autotune([configs[index % len(configs)]], key=kernel._TUNE_KEY, **extra)(fn)

    key_configs = (kernel._configs(kernel._KEY_BLOCK_CONFIGS, SPLIT=False)
                   + kernel._configs(kernel._SPLIT_KEY_BLOCK_CONFIGS, SPLIT=True))
    diagonal_configs = [triton.Config(kernel._diagonal_tiles(b), num_warps=w, num_stages=s)
                        for b, w, s in kernel._DIAGONAL_CONFIGS]
    row_configs = kernel._configs(kernel._ROW_BLOCK_CONFIGS)
    monkeypatch.setattr(kernel, "_fwd", only(row_configs, case, kernel._fwd_kernel))
    monkeypatch.setattr(kernel, "_bwd_q", only(row_configs, case, kernel._bwd_q_kernel))
    monkeypatch.setattr(kernel, "_bwd_kv", only(key_configs, case, kernel._bwd_kv_kernel, reset_to_zero=["DTIME"]))
    monkeypatch.setattr(kernel, "_bwd_bias", only(diagonal_configs, case, kernel._bwd_bias_kernel,
                                                  reset_to_zero=["DPOS", "DTIME"]))
    monkeypatch.setattr(kernel, "_FIXED", {})
    monkeypatch.setattr(kernel, "_FIXED_DIAGONAL", {})

    @settings(max_examples=3, deadline=None, derandomize=True, database=None)
    @given(st.lists(st.integers(1, 700), min_size=1, max_size=4))
    def check(lengths):
        num_targets = [min(length - 1, 5) for length in lengths] if options.get("targets") else None
        check_against_reference(options, dtype, lengths, max(lengths) + 3, num_targets, seed=case, ulps=4)

    check()


# With a position bias and no contextual prefix the backward goes through the scratch (kernel._backward_scratch)
SCRATCH_OPTIONS = [{"rab": True}, {"rab": True, "targets": True, "window": 5}, {"rab": True, "long": True},
                   {"rab": True, "position_only": True, "targets": True}, {"rab": True, "unsorted_times": True},
                   {"rab": True, "query_times": True, "targets": True, "long": True}]


def poison_scratch(monkeypatch) -> list:
    """Lets the backward take a scratch and fills it with NaN, so that reading a pair the dQ kernel did not write
    shows in the gradients; returns the sizes of the scratches made."""
    monkeypatch.setenv("GENREC_BACKWARD_SCRATCH_GB", "1")
    made = []

    def poisoned(numel, like):
        made.append(numel)
        return tuple(torch.full((numel,), float("nan"), dtype=like.dtype, device=like.device) for _ in range(2))

    monkeypatch.setattr(kernel, "_scratch_buffers", poisoned)
    return made


@pytest.mark.parametrize("options", SCRATCH_OPTIONS, ids=lambda o: "-".join(o))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_backward_through_scratch_matches_reference(monkeypatch, options, dtype):
    """The dQ kernel stores each visible pair's p and ds; the dK/dV and bias kernels read them back."""
    made = poison_scratch(monkeypatch)
    test_kernel_matches_reference(options, dtype)
    assert made


class _WiderTiles:
    """A launcher whose launches take other tile sizes than the kernels' fixed ones."""

    def __init__(self, launcher, **tiles):
        self.launcher, self.tiles = launcher, tiles

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launcher[grid](*args, **{**kwargs, **self.tiles})


@pytest.mark.skipif(DEVICE != "cpu", reason="the GPU's tuned tiles differ between the kernels anyway")
@pytest.mark.parametrize("options", [{"rab": True, "targets": True, "window": 5}, {"rab": True, "long": True}],
                         ids=lambda o: "-".join(o))
def test_scratch_read_through_other_tiles(monkeypatch, options):
    """The autotuner gives each kernel its own tiles, so the dK/dV and bias kernels meet pairs in their tiles that
    no dQ tile wrote (here 32 keys wide against 16): they must read only visible pairs."""
    made = poison_scratch(monkeypatch)
    monkeypatch.setattr(kernel, "_bwd_kv", _WiderTiles(kernel._bwd_kv, BLOCK_N=32))
    monkeypatch.setattr(kernel, "_FIXED_DIAGONAL", kernel._diagonal_tiles(32))
    test_kernel_matches_reference(options, torch.float32)
    assert made


def test_no_scratch_with_contextual_queries_or_past_the_budget(monkeypatch):
    made = poison_scratch(monkeypatch)
    test_kernel_matches_reference({"rab": True, "window": 7, "context": 2}, torch.float32)
    monkeypatch.setenv("GENREC_BACKWARD_SCRATCH_GB", "0")
    test_kernel_matches_reference({"rab": True}, torch.float32)
    assert not made


def test_no_scratch_when_the_memory_is_not_free(monkeypatch):
    """A scratch that does not fit leaves the backward to recompute, as it did before there was one."""
    monkeypatch.setenv("GENREC_BACKWARD_SCRATCH_GB", "1")
    tried = []

    def out_of_memory(numel, like):
        tried.append(numel)
        raise torch.OutOfMemoryError("no room for the scratch")

    monkeypatch.setattr(kernel, "_scratch_buffers", out_of_memory)
    test_kernel_matches_reference({"rab": True}, torch.float32)
    assert tried


def test_scratch_holds_every_sequence(monkeypatch):
    """The scratch is sized without reading the lengths back: from the token count and max_seq_len."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=200, deadline=None, derandomize=True, database=None)
    @given(st.integers(1, 700), st.data())
    def check(max_seq_len, data):
        lengths = data.draw(st.lists(st.integers(0, max_seq_len), min_size=1, max_size=6))
        offsets = offsets_from_lengths(torch.tensor(lengths))
        q = torch.empty(sum(lengths), 2, 8)
        options = kernel._Options(q, q, offsets, None, torch.zeros(2 * max_seq_len - 1), None, None, None,
                                  max_seq_len, 1.0, 0, 0, 0.3, False, backward=True)
        *_, starts, per_head = kernel._backward_scratch(options, q, offsets)  # in rows of SCRATCH_BLOCK pairs
        rows = kernel.SCRATCH_BLOCK
        blocks = [-(-length // rows) for length in lengths]
        assert starts.tolist() == [sum(rows * b * (b + 1) // 2 for b in blocks[:i]) for i in range(len(lengths))]
        assert starts[-1] + rows * blocks[-1] * (blocks[-1] + 1) // 2 <= per_head

    monkeypatch.setenv("GENREC_BACKWARD_SCRATCH_GB", "64")
    check()


@pytest.mark.parametrize("options", [{"rab": True, "targets": True, "window": 7, "context": 2},
                                     {"rab": True, "time_only": True}], ids=lambda o: "-".join(o))
def test_split_key_blocks_match_reference(monkeypatch, options):
    """dK and dV summed by programs of their own (the dK/dV kernel's SPLIT, autotuned on a GPU and taken from
    head dim 256 without autotuning); the time-bucket sums go with dK."""
    monkeypatch.setattr(kernel, "_split_key_blocks", lambda dqk, dv: True)
    test_kernel_matches_reference(options, torch.float32)


def test_kernel_edge_cases():
    """An empty batch, an empty sequence inside a batch, and every sequence of length 1."""
    q = torch.randn(3, 1, 16, device=DEVICE)
    for lengths in ([], [0, 2, 0, 1], [1, 1, 1]):
        n = sum(lengths)
        offsets = offsets_from_lengths(torch.tensor(lengths, dtype=torch.int64, device=DEVICE))
        out = hstu_attention(q[:n], q[:n], q[:n], offsets, max_seq_len=4, alpha=1.0, backend="triton")
        ref = hstu_attention(q[:n], q[:n], q[:n], offsets, max_seq_len=4, alpha=1.0, backend="torch")
        torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)


def _chunked_case(lengths, heads, max_seq_len):
    generator = torch.Generator().manual_seed(5)
    total = sum(lengths)
    rand = lambda *shape: torch.randn(*shape, generator=generator).to(DEVICE)  # noqa: E731
    stamps = torch.cumsum(torch.randint(0, 4000, (total,), generator=generator), 0).to(DEVICE)
    num_targets = torch.randint(0, 2, (len(lengths),), generator=generator).to(DEVICE)
    inputs = (rand(total, heads, 16), rand(total, heads, 16), rand(total, heads, 16), rand(2 * max_seq_len - 1),
              rand(65), stamps, num_targets)
    options = {"rab": True, "targets": True}
    ref_out, ref_grads = run("torch", torch.float32, inputs, lengths, max_seq_len, options)
    out, grads = run("triton", torch.float32, inputs, lengths, max_seq_len, options)
    for got, ref in zip([out, *grads], [ref_out, *ref_grads]):
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_launches_in_chunks_of_sequences(monkeypatch):
    """Sequences x heads past the grid's second-axis bound go in several launches; the bias gradients
    add up across them. The bound is lowered to 5 here: 2 sequences (of 2 heads) per launch."""
    monkeypatch.setattr(kernel, "_MAX_GRID_Y", 5)
    _chunked_case([1, 7, 3, 20, 5], heads=2, max_seq_len=24)


def test_launches_in_chunks_of_sequences_through_the_scratch(monkeypatch):
    """Each chunk's sequences find their own scratch: its starts are sliced with the offsets."""
    made = poison_scratch(monkeypatch)
    monkeypatch.setattr(kernel, "_MAX_GRID_Y", 5)
    _chunked_case([1, 7, 3, 20, 5], heads=2, max_seq_len=24)
    assert made


@pytest.mark.skipif(DEVICE == "cpu", reason="65,600 programs take the interpreter too long")
def test_more_sequence_heads_than_the_grid_axis_bound():
    _chunked_case([2] * 16_400, heads=4, max_seq_len=2)


def test_triton_backend_rejects_dense_rab():
    q = torch.randn(2, 1, 16, device=DEVICE)
    offsets = offsets_from_lengths(torch.tensor([2], device=DEVICE))
    with pytest.raises(ValueError, match="BucketedBias"):
        hstu_attention(q, q, q, offsets, max_seq_len=2, alpha=1.0, rab=torch.zeros(1, 1, 2, 2), backend="triton")


def _op_inputs(with_time: bool, sorted_timestamps: bool = False):
    generator = torch.Generator().manual_seed(5)
    lengths, max_seq_len = [3, 1, 6], 8
    rand = lambda *shape: torch.randn(*shape, generator=generator).to(DEVICE).requires_grad_()  # noqa: E731
    stamps = torch.cumsum(torch.randint(0, 500, (10,), generator=generator), 0).to(DEVICE)
    offsets = offsets_from_lengths(torch.tensor(lengths, device=DEVICE))
    time_weights = rand(9) if with_time else None
    return (rand(10, 2, 16), rand(10, 2, 16), rand(10, 2, 8), offsets, None, rand(2 * max_seq_len - 1),
            time_weights, stamps if with_time else None, stamps.roll(-1) if with_time else None, max_seq_len, 0.25, 0,
            0, 0.7, sorted_timestamps)


@pytest.mark.parametrize("with_time", [False, True], ids=["position-bias", "position-and-time-bias"])
def test_registered_op_passes_opcheck(with_time):
    """Schema, fake (shape) function, autograd registration and AOT dispatch of genrec::hstu_attention_fwd."""
    from genrec.ops.attention.op import hstu_attention_fwd

    torch.library.opcheck(hstu_attention_fwd, _op_inputs(with_time))


def test_compiles_without_graph_breaks():
    from genrec.ops.attention.op import hstu_attention_fwd

    inputs = _op_inputs(True)
    compiled = torch.compile(hstu_attention_fwd, backend="aot_eager", fullgraph=True)
    out = compiled(*inputs)
    out.square().sum().backward()
    grads = [t.grad.clone() for t in (inputs[0], inputs[5], inputs[6])]
    for t in (inputs[0], inputs[5], inputs[6]):
        t.grad = None
    eager = hstu_attention_fwd(*inputs)
    eager.square().sum().backward()
    torch.testing.assert_close(out, eager)
    for got, t in zip(grads, (inputs[0], inputs[5], inputs[6])):
        torch.testing.assert_close(got, t.grad)


def test_kernels_compile_for_hopper():
    """The GPU-only code paths (bf16 tensor-core products, tanh and lg2 approximations, bias-gradient sums)
    never run under the interpreter; compiling them for sm_90 with triton's ptxas catches what it can."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).with_name("compile_for_hopper.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, str(script), "--quick"], capture_output=True, text=True, env=env,
                         timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = {tuple(line.split()[:3:2]): line for line in run.stdout.strip().splitlines()}  # (kernel, variant)
    with_rab = [line for (_, variant), line in lines.items() if variant == "all"]
    plain = [line for (_, variant), line in lines.items() if variant == "plain"]
    position = [line for (_, variant), line in lines.items() if variant == "position"]
    # 64 x 64 tiles: 32 scores a thread on 4 warps, 16 on the bias kernel's 8
    assert len(with_rab) == 4 and all(("'tanh': 16" if line.startswith("bwd_bias") else "'tanh': 32") in line
                                      for line in with_rab), run.stdout
    assert all("'lg2': 0" not in line for line in with_rab), run.stdout  # the time-bucket log on the SFU
    # the time scale is divided once per program (ln 2 / scale), not once per score (64 in this tile)
    assert all("'divisions': 1," in line for line in with_rab), run.stdout
    # without a window each kernel has two loops, unmasked and masked, both on tanh.approx
    assert len(plain) == 3 and all("'tanh': 64" in line and "'divisions': 0," in line for line in plain), run.stdout
    # gathered bias weights: 2-byte plain loads in the forward; fp32 in the backward, where the pipeliner
    # makes them one 4-byte async copy per score
    assert "'4-byte async copies': 0," in lines["fwd", "all"], run.stdout
    assert "'4-byte async copies': 0," not in lines["bwd_q", "all"], run.stdout
    # the dK/dV kernel has no bias reductions left, so its tile loop is software-pipelined even with both biases
    assert "'async_copies': 0," not in lines["bwd_kv", "all"], run.stdout
    # without candidates the position bias is a block of its table, never gathered, and its gradient
    # (summed along block diagonals) keeps the bias kernel's tile loop pipelined
    assert len(position) == 4 and all("'4-byte async copies': 0," in line for line in position), run.stdout
    assert "'async_copies': 0," not in lines["bwd_kv", "position"], run.stdout
    assert "'async_copies': 0," not in lines["bwd_bias", "position"], run.stdout
    # compiled as split programs there: the dK-only and the dV-only program, each with its two loops
    assert "'tanh': 128" in lines["bwd_kv", "position"], run.stdout
    # the forward never keeps part of its tile in local memory (cuobjdump's spill stack), nor the bias-gradient
    # kernel with its table (its diagonal sums and bucket runs sit beside the accumulator)
    for key in [("fwd", "all"), ("fwd", "plain"), ("fwd", "position"), ("bwd_bias", "position")]:
        assert "'stack': 0}" in lines[key], run.stdout
    # through the scratch the dK/dV and bias kernels compute no score (no sigmoid), and dK/dV does not spill
    assert all("'tanh': 0," in lines[name, "scratch"] for name in ("bwd_kv", "bwd_bias")), run.stdout
    assert "'stack': 0}" in lines["bwd_kv", "scratch"] and "'tanh': 64," in lines["bwd_q", "scratch"], run.stdout
    # the dQ kernel stores its scratch tiles, and the bias kernel loads them, in 16-byte vectors: not one 2-byte access
    assert "'2-byte stores': 0," in lines["bwd_q", "scratch"], run.stdout
    assert "'2-byte loads': 0," in lines["bwd_bias", "scratch"], run.stdout
