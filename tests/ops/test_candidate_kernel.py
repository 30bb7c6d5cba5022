"""M-FALCON's fused cached attention (candidate_kernel) against its reference, several users at once: ragged
histories (one of a single token) and candidate counts (one of a single candidate), each bias alone and both,
candidates with their own times and sharing one, fp32 and bf16, by the tolerance rule of tests/ops/tolerance.py.
On CPU the kernel runs under TRITON_INTERPRET=1 (conftest.py)."""

import pytest
import torch

pytest.importorskip("triton")

from genrec.ops.attention import BucketedBias, candidate_attention, candidate_attention_reference  # noqa: E402
from genrec.ops.attention import hstu_attention_reference  # noqa: E402
from genrec.ops.attention import candidate_kernel  # noqa: E402
from genrec.ops.jagged import offsets_from_lengths  # noqa: E402
from tests.ops.tolerance import assert_within_rule  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SCALE = 1 if DEVICE == "cpu" else 8  # lengths span several tiles: 16 wide under the interpreter, 64-128 on a GPU
HEADS, DQK, DV = 2, 25, 20

OPTIONS = [{}, {"position": True}, {"time": True}, {"position": True, "time": True},
           {"position": True, "time": True, "shared_time": True}, {"time": True, "shared_time": True, "wide": True},
           {"time": True, "wide": True},
           # key ranges summed by programs of their own (taken on a GPU when candidates are few): 3 splits
           {"position": True, "time": True, "splits": 3}]


def make_case(options, seed):
    generator = torch.Generator().manual_seed(seed)
    histories = [1, 19 * SCALE, 40 * SCALE, 6]
    candidates = [3, 1, 20 * SCALE, 17]
    max_seq_len = 48 * SCALE
    rand = lambda *shape: torch.randn(*shape, generator=generator).to(DEVICE)  # noqa: E731
    history_stamps, candidate_stamps = [], []
    for length, count in zip(histories, candidates):
        steps = torch.randint(0, 4000, (length,), generator=generator)
        if options.get("wide"):  # gaps past float32's exact integers and past int32
            steps = torch.where(torch.rand(length, generator=generator) < 0.2, steps * 2_500_000, steps)
        stamps = torch.cumsum(steps, 0)
        history_stamps.append(stamps)
        later = torch.randint(0, 50_000, (1 if options.get("shared_time") else count,), generator=generator)
        candidate_stamps.append((stamps[-1] + later).expand(count))
    return dict(
        histories=histories, candidates=candidates, max_seq_len=max_seq_len,
        q=rand(sum(candidates), HEADS, DQK), k=rand(sum(candidates), HEADS, DQK), v=rand(sum(candidates), HEADS, DV),
        history_k=rand(sum(histories), HEADS, DQK), history_v=rand(sum(histories), HEADS, DV),
        position_weights=rand(2 * max_seq_len - 1) if options.get("position") else None,
        time_weights=rand(65) if options.get("time") else None,
        history_stamps=torch.cat(history_stamps).to(DEVICE), candidate_stamps=torch.cat(candidate_stamps).to(DEVICE))


def reference(case, dtype):
    """candidate_attention_reference user by user, in `dtype`."""
    out = []
    cand = offsets_from_lengths(torch.tensor(case["candidates"])).tolist()
    hist = offsets_from_lengths(torch.tensor(case["histories"])).tolist()
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    for b in range(len(case["candidates"])):
        rows, keys = slice(cand[b], cand[b + 1]), slice(hist[b], hist[b + 1])
        rab = BucketedBias(cast(case["position_weights"]), cast(case["time_weights"]),
                           case["history_stamps"][keys], time_bucket_scale=0.3)
        out.append(candidate_attention_reference(
            case["q"][rows].to(dtype), case["k"][rows].to(dtype), case["v"][rows].to(dtype),
            case["history_k"][keys].to(dtype), case["history_v"][keys].to(dtype), max_seq_len=case["max_seq_len"],
            alpha=0.5, rab=rab, candidate_timestamps=case["candidate_stamps"][rows]))
    return torch.cat(out)


def fused(case, dtype, splits=None):
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    has_time = case["time_weights"] is not None
    return candidate_kernel.forward(
        case["q"].to(dtype), case["k"].to(dtype), case["v"].to(dtype),
        offsets_from_lengths(torch.tensor(case["candidates"], device=DEVICE)), case["history_k"].to(dtype),
        case["history_v"].to(dtype), offsets_from_lengths(torch.tensor(case["histories"], device=DEVICE)),
        cast(case["position_weights"]), cast(case["time_weights"]), case["history_stamps"] if has_time else None,
        case["candidate_stamps"] if has_time else None, max(case["candidates"]), case["max_seq_len"], 0.5, 0.3, splits)


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(o) or "plain")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_candidate_kernel_matches_reference(options, dtype):
    case = make_case(options, seed=len(options) * 10 + (dtype == torch.bfloat16))
    exact = reference(case, torch.float64)
    out = fused(case, dtype, options.get("splits"))
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert_within_rule(out, reference(case, dtype), exact, 2, dtype, "out")


@pytest.mark.skipif(DEVICE == "cpu", reason="the interpreter runs one 16 x 16 tile; the tuned tiles are GPU launches")
@pytest.mark.parametrize("tile", candidate_kernel.CONFIGS, ids=lambda t: "x".join(map(str, t)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_every_tuned_tile_matches_reference(monkeypatch, tile, dtype):
    """Each tile the autotuner may pick, launched as it (not only the one it picks on this machine)."""
    block_m, block_n, warps, stages = tile
    monkeypatch.setattr(candidate_kernel, "_fwd", candidate_kernel._candidate_fwd_kernel)
    monkeypatch.setattr(candidate_kernel, "_FIXED", {"BLOCK_M": block_m, "BLOCK_N": block_n, "num_warps": warps,
                                                     "num_stages": stages})
    test_candidate_kernel_matches_reference({"position": True, "time": True}, dtype)


def test_reference_is_the_candidate_rows_of_the_full_attention():
    """The reference itself: one user's candidate rows of hstu_attention_reference with num_targets, where the
    history's last row asks about its own time (the candidates' rows do not depend on it)."""
    case = make_case({"position": True, "time": True}, seed=3)
    length, count = case["histories"][2], case["candidates"][2]
    keys = slice(sum(case["histories"][:2]), sum(case["histories"][:3]))
    rows = slice(sum(case["candidates"][:2]), sum(case["candidates"][:3]))
    double = {name: t.double() for name, t in case.items() if isinstance(t, torch.Tensor) and t.is_floating_point()}
    stamps = torch.cat([case["history_stamps"][keys], case["candidate_stamps"][rows]])
    offsets = offsets_from_lengths(torch.tensor([length + count], device=DEVICE))
    rab = BucketedBias(double["position_weights"], double["time_weights"], stamps, time_bucket_scale=0.3)
    full = hstu_attention_reference(
        torch.cat([double["history_k"][keys], double["q"][rows]]),  # history rows' queries: any (their rows unused)
        torch.cat([double["history_k"][keys], double["k"][rows]]),
        torch.cat([double["history_v"][keys], double["v"][rows]]), offsets, max_seq_len=case["max_seq_len"], alpha=0.5,
        num_targets=torch.tensor([count], device=DEVICE), rab=rab)[length:]
    torch.testing.assert_close(reference(case, torch.float64)[rows], full)


def test_dispatcher_takes_the_kernel_and_checks_the_backend():
    case = make_case({"position": True, "time": True}, seed=5)
    rows, keys = slice(0, 3), slice(0, 1)
    rab = BucketedBias(case["position_weights"], case["time_weights"], case["history_stamps"][keys],
                       time_bucket_scale=0.3)
    arguments = (case["q"][rows], case["k"][rows], case["v"][rows], case["history_k"][keys], case["history_v"][keys])
    options = dict(max_seq_len=case["max_seq_len"], alpha=0.5, rab=rab,
                   candidate_timestamps=case["candidate_stamps"][rows])
    torch.testing.assert_close(candidate_attention(*arguments, **options, backend="triton"),
                               candidate_attention(*arguments, **options, backend="torch"), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="backend must be one of"):
        candidate_attention(*arguments, **options, backend="cuda")


def test_registered_op_passes_opcheck():
    from genrec.ops.attention.op import hstu_candidate_attention

    case = make_case({"position": True, "time": True}, seed=7)
    inputs = (case["q"], case["k"], case["v"], offsets_from_lengths(torch.tensor(case["candidates"], device=DEVICE)),
              case["history_k"], case["history_v"],
              offsets_from_lengths(torch.tensor(case["histories"], device=DEVICE)),
              case["position_weights"], case["time_weights"], case["history_stamps"], case["candidate_stamps"],
              max(case["candidates"]), case["max_seq_len"], 0.5, 0.3)
    torch.library.opcheck(hstu_candidate_attention, inputs, test_utils=("test_schema", "test_faketensor"))


def test_history_buffers_longer_than_the_history():
    """Fixed-size buffers (CUDA graphs): rows past the history's length, here garbage, are never read when
    history_offsets gives the length; the reference refuses such buffers."""
    case = make_case({"position": True, "time": True}, seed=9)
    rows, keys = slice(0, 3), slice(0, case["histories"][0] + case["histories"][1])
    length = keys.stop
    padded = {name: torch.cat([case[name][keys], 1e3 * torch.randn_like(case[name][:7])])
              for name in ("history_k", "history_v")}
    stamps = case["history_stamps"][keys]
    padded_stamps = torch.cat([stamps, torch.randint(0, 10**9, (7,), device=DEVICE)])
    options = dict(max_seq_len=case["max_seq_len"], alpha=0.5, candidate_timestamps=case["candidate_stamps"][rows])
    query = (case["q"][rows], case["k"][rows], case["v"][rows])
    exact = candidate_attention(*query, case["history_k"][keys], case["history_v"][keys], backend="torch",
                                rab=BucketedBias(case["position_weights"], case["time_weights"], stamps, 0.3),
                                **options)
    fused_padded = candidate_attention(
        *query, padded["history_k"], padded["history_v"], backend="triton",
        rab=BucketedBias(case["position_weights"], case["time_weights"], padded_stamps, 0.3),
        history_offsets=torch.tensor([0, length], device=DEVICE), **options)
    torch.testing.assert_close(fused_padded, exact, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="need the fused kernel"):
        candidate_attention(*query, padded["history_k"], padded["history_v"], backend="torch",
                            history_offsets=torch.tensor([0, length], device=DEVICE), **options)
