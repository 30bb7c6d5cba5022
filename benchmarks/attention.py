"""How fast is the fused HSTU attention? bf16 jagged causal attention against PyTorch SDPA (flash,
padded, causal softmax) and the PyTorch reference, measured in the same run.

FLOPs counted as in the issue: 2 * H * D * L^2 / 2 per matmul per sequence (causal half); forward
has 2 matmuls, backward 5, so forward+backward = 3.5x the forward count.

    python benchmarks/attention.py --out benchmarks/results/attention.json
    python benchmarks/attention.py --sizes 1024,4096 --match rab --out /tmp/rab.json   # the bias rows only
    python benchmarks/attention.py --chart-from benchmarks/results/attention-backward-tiles.json   # no GPU

Writes a PNG chart beside the JSON (TFLOP/s against N, genrec and SDPA flash; needs matplotlib, extra `viz`).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from genrec.ops import BucketedBias, hstu_attention  # noqa: E402
from genrec.ops.attention.rab import query_timestamps  # noqa: E402
from genrec.ops.jagged import jagged_to_padded, offsets_from_lengths  # noqa: E402

TOKENS = 124_000


def make_case(n: int, heads: int, dim: int, num_seqs: int | None, fill: tuple[float, float], seed: int):
    gen = torch.Generator().manual_seed(seed)
    count = num_seqs or max(1, TOKENS // int(n * sum(fill) / 2))
    lengths = torch.randint(int(fill[0] * n), int(fill[1] * n) + 1, (count,), generator=gen)
    total = int(lengths.sum())
    make = lambda d: (torch.randn(total, heads, d, generator=gen) * 0.5).to("cuda", torch.bfloat16)  # noqa: E731
    q, k, v = make(dim), make(dim), make(dim)
    stamps = torch.cumsum(torch.randint(1, 3600, (total,), generator=gen), 0).cuda()
    return lengths.cuda(), q, k, v, stamps


def time_ms(fn) -> float:
    return do_bench(fn, warmup=25, rep=200, return_mode="median")


def fwd_bwd(fn, leaves):
    def run():
        out = fn()
        out.backward(torch.ones_like(out))
        for leaf in leaves:
            leaf.grad = None
    return run


@contextlib.contextmanager
def backward_scratch(allowed: bool):
    """With allowed=False the backward recomputes the bias in every kernel (GENREC_BACKWARD_SCRATCH_GB=0)."""
    before = os.environ.get("GENREC_BACKWARD_SCRATCH_GB")
    if not allowed:
        os.environ["GENREC_BACKWARD_SCRATCH_GB"] = "0"
    try:
        yield
    finally:
        os.environ.pop("GENREC_BACKWARD_SCRATCH_GB", None)
        if before is not None:
            os.environ["GENREC_BACKWARD_SCRATCH_GB"] = before


def measure(name, n, heads, dim, num_seqs=None, fill=(0.9, 1.0), rab_parts=(), candidates=0, baselines=True,
            sorted_times=True, scratch=True):
    """rab_parts: which parts of the relative bias are fused ("position", "time"); none by default.
    candidates: each sequence ends in this many ranking candidates (num_targets); FLOPs still count causal pairs.
    sorted_times: the bias is told that the (time-ordered) timestamps are sorted, as genrec's batches tell it.
    scratch: whether the backward may store p and ds once for its kernels (kernel._backward_scratch)."""
    with backward_scratch(scratch):
        return _measure(name, n, heads, dim, num_seqs, fill, rab_parts, candidates, baselines, sorted_times)


def _measure(name, n, heads, dim, num_seqs, fill, rab_parts, candidates, baselines, sorted_times):
    lengths, q, k, v, stamps = make_case(n, heads, dim, num_seqs, fill, seed=n + dim)
    offsets = offsets_from_lengths(lengths)
    num_targets = torch.full_like(lengths, candidates) if candidates else None
    flops_fwd = 2 * 2 * heads * dim * float((lengths.double() ** 2).sum()) / 2
    rab = None
    if rab_parts:
        position = torch.randn(2 * n - 1, device="cuda") * 0.02 if "position" in rab_parts else None
        time_weights = torch.randn(129, device="cuda") * 0.02 if "time" in rab_parts else None
        # the query times are computed once per batch, as the encoder does for all its layers
        queries = query_timestamps(stamps, offsets, num_targets) if time_weights is not None else None
        rab = BucketedBias(position, time_weights, stamps if time_weights is not None else None,
                           sorted_timestamps=sorted_times, query_timestamps=queries)
    leaves = [t.requires_grad_() for t in (q, k, v)]
    kernel = lambda: hstu_attention(q, k, v, offsets, max_seq_len=n, alpha=1.0 / dim, rab=rab,  # noqa: E731
                                    num_targets=num_targets, backend="triton")
    row = {"case": name, "N": n, "H": heads, "D": dim, "sequences": len(lengths), "tokens": int(lengths.sum()),
           "rab": "+".join(rab_parts) or None, "candidates": candidates, "fwd_ms": time_ms(kernel)}
    try:
        run = fwd_bwd(kernel, leaves)
        row["fwd_bwd_ms"] = time_ms(run)
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        run()
        row["fwd_bwd_peak_gb"] = (torch.cuda.max_memory_allocated() - before) / 2**30
    except Exception as error:  # report, keep measuring the other cases
        row["fwd_bwd_error"] = repr(error)[:200]
    if baselines:
        qp, kp, vp = (jagged_to_padded(t.detach(), offsets, n).transpose(1, 2).contiguous().requires_grad_()
                      for t in (q, k, v))
        sdpa = lambda: F.scaled_dot_product_attention(qp, kp, vp, is_causal=True)  # noqa: E731
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
            row["sdpa_flash_fwd_ms"] = time_ms(sdpa)
            row["sdpa_flash_fwd_bwd_ms"] = time_ms(fwd_bwd(sdpa, [qp, kp, vp]))
        reference = lambda: hstu_attention(q, k, v, offsets, max_seq_len=n, alpha=1.0 / dim, rab=rab,  # noqa: E731
                                           num_targets=num_targets, backend="torch")
        try:
            row["reference_fwd_ms"] = time_ms(reference)
        except torch.OutOfMemoryError:
            row["reference_fwd_ms"] = None
        torch.cuda.empty_cache()
    row["fwd_tflops"] = flops_fwd / row["fwd_ms"] / 1e9
    if "fwd_bwd_ms" in row:
        row["fwd_bwd_tflops"] = 3.5 * flops_fwd / row["fwd_bwd_ms"] / 1e9
    return row


HEADER = (f"{'case':<31}{'fwd ms':>9}{'TF/s':>7}{'f+b ms':>9}{'TF/s':>7}{'sdpa f':>9}{'sdpa f+b':>9}"
          f"{'x sdpa f':>9}{'x sdpa fb':>10}{'x ref f':>9}")


def format_row(r: dict) -> str:
    nan = float("nan")
    return (f"{r['case']:<31}{r['fwd_ms']:>9.3f}{r['fwd_tflops']:>7.0f}{r.get('fwd_bwd_ms', nan):>9.3f}"
            f"{r.get('fwd_bwd_tflops', nan):>7.0f}{r.get('sdpa_flash_fwd_ms', nan):>9.3f}"
            f"{r.get('sdpa_flash_fwd_bwd_ms', nan):>9.3f}{r.get('sdpa_flash_fwd_ms', nan) / r['fwd_ms']:>9.2f}"
            f"{r.get('sdpa_flash_fwd_bwd_ms', nan) / r.get('fwd_bwd_ms', nan):>10.2f}"
            f"{(r.get('reference_fwd_ms') or nan) / r['fwd_ms']:>9.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/attention.json"))
    parser.add_argument("--sizes", default="1024,2048,4096,8192")
    parser.add_argument("--match", default="", help="only the cases whose name this regex finds (e.g. rab, 'N=8192$')")
    parser.add_argument("--chart-from", type=Path, default=None,
                        help="draw the chart of a results JSON written by this script, and measure nothing")
    args = parser.parse_args()
    if args.chart_from is not None:
        results = json.loads(args.chart_from.read_text())
        chart(results, args.chart_from.with_suffix(".png"))
        return
    sizes = [int(n) for n in args.sizes.split(",")]
    cases = [dict(name=f"D128 N={n}", n=n, heads=4, dim=128) for n in sizes]
    both = ("position", "time")
    cases += [dict(name=f"D128 N={n} rab", n=n, heads=4, dim=128, rab_parts=both, baselines=False) for n in sizes]
    # the backward recomputing the bias in each kernel instead of storing p and ds once
    cases += [dict(name=f"D128 N={n} rab, no scratch", n=n, heads=4, dim=128, rab_parts=both, baselines=False,
                   scratch=False) for n in sizes]
    # which part of the bias costs what
    cases += [dict(name=f"D128 N={sizes[-1]} rab {part} only", n=sizes[-1], heads=4, dim=128, rab_parts=(part,),
                   baselines=False) for part in both]
    # timestamps not known to be sorted: each key tile's time range is reduced
    cases += [dict(name=f"D128 N={sizes[-1]} rab, order unknown", n=sizes[-1], heads=4, dim=128, rab_parts=both,
                   sorted_times=False, baselines=False)]
    # ranking: candidates take the position after the history, so their position bias is gathered per score
    cases += [dict(name=f"D128 N={sizes[-1]} rab, 64 candidates", n=sizes[-1], heads=4, dim=128, rab_parts=both,
                   candidates=64, baselines=False)]
    cases += [dict(name="D128 N=8192 SL 50% dense", n=8192, heads=4, dim=128, fill=(0.65, 0.75)),
              dict(name="4x256 B=32 N=4096", n=4096, heads=4, dim=256, num_seqs=32, fill=(1.0, 1.0)),
              dict(name="ML-1M D50 N=200", n=200, heads=1, dim=50, num_seqs=128, fill=(0.1, 1.0)),
              dict(name="ML-1M D50 N=200 rab position", n=200, heads=1, dim=50, num_seqs=128, fill=(0.1, 1.0),
                   rab_parts=("position",), baselines=False),
              dict(name="ML-1M D50 N=200 rab", n=200, heads=1, dim=50, num_seqs=128, fill=(0.1, 1.0),
                   rab_parts=both, baselines=False)]
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "command": " ".join(sys.argv), "date": datetime.date.today().isoformat(), "rows": []}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    print(HEADER, flush=True)
    for case in (c for c in cases if re.search(args.match, c["name"])):  # row by row: a time limit keeps what finished
        name = case.pop("name")
        row = measure(name, **case)
        result["rows"].append(row)
        args.out.write_text(json.dumps(result, indent=2))
        print(format_row(row), flush=True)
    chart(result, args.out.with_suffix(".png"))


def chart(result: dict, path: Path) -> None:
    """TFLOP/s against N of the D = 128 rows: genrec's forward and forward + backward beside SDPA flash (same
    FLOP count), and with both biases where measured; a run of a single length gets its rows' times as bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len({r["N"] for r in result["rows"]}) < 2:
        _bars(result, path, plt)
        return

    plain = sorted((r for r in result["rows"] if re.fullmatch(r"D128 N=\d+", r["case"])), key=lambda r: r["N"])
    biased = sorted((r for r in result["rows"] if re.fullmatch(r"D128 N=\d+ rab", r["case"])), key=lambda r: r["N"])
    recomputed = sorted((r for r in result["rows"] if re.fullmatch(r"D128 N=\d+ rab, no scratch", r["case"])),
                        key=lambda r: r["N"])
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for axis, (label, key, factor) in zip(axes, (("forward", "fwd", 1.0), ("forward + backward", "fwd_bwd", 3.5))):
        for rows, name, style in ((plain, "genrec", "o-"), (biased, "genrec, rab^{p,t}", "s--"),
                                  (recomputed, "genrec, rab^{p,t}, backward without scratch", "x:")):
            points = [(r["N"], r[f"{key}_tflops"]) for r in rows if f"{key}_tflops" in r]
            if points:
                axis.plot(*zip(*points), style, label=name)
        flops = {r["N"]: r["fwd_tflops"] * r["fwd_ms"] * factor for r in plain}  # TFLOP/s x ms = GFLOP
        sdpa = [(r["N"], flops[r["N"]] / r[f"sdpa_flash_{key}_ms"]) for r in plain if f"sdpa_flash_{key}_ms" in r]
        if sdpa:
            axis.plot(*zip(*sdpa), "^:", color="gray", label="SDPA flash (softmax)")
        axis.set_xscale("log", base=2)
        axis.set(title=label, xlabel="max sequence length N")
        axis.legend(fontsize=8)
    axes[0].set_ylabel("TFLOP/s (causal pairs)")
    figure.suptitle(f"Jagged HSTU attention, bf16, H = 4, D = 128 ({result['device']}, {result['date']})")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    print(f"wrote {path}")


def _bars(result: dict, path: Path, plt) -> None:
    rows = result["rows"]
    figure, axes = plt.subplots(1, 2, figsize=(9, 0.6 * len(rows) + 1.8))
    for axis, (label, key) in zip(axes, (("forward ms", "fwd_ms"), ("forward + backward ms", "fwd_bwd_ms"))):
        values = [r.get(key, float("nan")) for r in rows]
        bars = axis.barh(range(len(rows)), values, color="#2b6cb0")
        axis.bar_label(bars, fmt="%.3f", fontsize=8, padding=2)
        axis.set_yticks(range(len(rows)), [r["case"] for r in rows])
        axis.set(title=label)
    figure.suptitle(f"{result['device']}, {result['date']}: {result['command'][:90]}", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
