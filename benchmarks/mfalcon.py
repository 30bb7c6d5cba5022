"""How cheap is M-FALCON? Latency of scoring C candidates against an L-token history through the cached,
micro-batched path in three forms: replayed from CUDA graphs (the default on a GPU), eager with the fused
candidate kernel, and eager with the PyTorch reference attention; against no-cache micro-batching (full passes
over [history; micro-batch]) and the naive one-pass-per-candidate loop, all in the same run. The naive loop is
timed on a sample of candidates and scaled to C (it is linear by construction); the table says so. The cache is
warm (the same user each time). Candidates carry their own times, or with --shared-time all the request's time.

    python benchmarks/mfalcon.py --device cuda --out benchmarks/results/mfalcon.json
    python benchmarks/mfalcon.py --chart-from benchmarks/results/mfalcon.json   # redraw the PNG only
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from report import environment  # noqa: E402
from genrec.config import preset  # noqa: E402
from genrec.inference.mfalcon import MFalcon  # noqa: E402
from genrec.model import SequentialRetriever  # noqa: E402

NAIVE_SAMPLE = 8


def timed(fn, device: str, repeats: int = 5) -> float:
    """Median milliseconds of fn() after one warm-up."""
    fn()
    samples = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        samples.append((time.perf_counter() - started) * 1e3)
    return statistics.median(samples)


def write_chart(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    histories = sorted({row["history"] for row in result["rows"]})
    figure, axes = plt.subplots(1, len(histories), figsize=(5.5 * len(histories), 4.2), squeeze=False)
    for axis, history in zip(axes[0], histories):
        rows = [row for row in result["rows"] if row["history"] == history]
        counts = [row["candidates"] for row in rows]
        for key, label in VARIANTS:
            if rows[0].get(key) is not None:
                axis.plot(counts, [row[key] for row in rows], marker="o", label=label)
        axis.set(xscale="log", yscale="log", xlabel="candidates", ylabel="ms per request",
                 title=f"M-FALCON, history {history} ({result['device']})")
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


VARIANTS = [("cached_ms", "cached, CUDA graphs"), ("cached_eager_ms", "cached, eager (fused kernel)"),
            ("cached_reference_attention_ms", "cached, eager (reference attention)"),
            ("no_cache_ms", "no cache (full passes)")]


def set_backend(model, backend: str) -> None:
    for layer in model.encoder.layers:
        layer.backend = backend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--histories", default="512,4096")
    parser.add_argument("--candidates", default="1,64,1024,4096,16384")
    parser.add_argument("--micro-batch", type=int, default=1024)
    parser.add_argument("--shared-time", action="store_true", help="every candidate at the request's time")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/mfalcon.json"))
    parser.add_argument("--chart-from", type=Path, help="only draw the chart of this results file")
    args = parser.parse_args()
    if args.chart_from:
        write_chart(json.loads(args.chart_from.read_text()), args.chart_from.with_suffix(".png"))
        return
    config = preset("hstu")
    config.model.embedding_dim, config.model.num_layers, config.model.num_heads = 256, 4, 4
    config.model.qk_dim = config.model.v_dim = 64
    histories = [int(x) for x in args.histories.split(",")]
    num_items = 100_000
    torch.manual_seed(0)
    model = SequentialRetriever(config.model, num_items, max(histories) + 1, use_time=True).to(args.device)
    dtype = torch.bfloat16 if args.device == "cuda" else None
    on_gpu = args.device == "cuda"
    scorers = {"graphs": MFalcon(model, micro_batch_size=args.micro_batch),
               "eager": MFalcon(model, micro_batch_size=args.micro_batch, cuda_graphs=False)}
    rows = []
    print(f"{'L':>6}{'C':>6}{'graphs ms':>11}{'cand/s':>11}{'eager ms':>10}{'ref-attn ms':>13}{'no-cache ms':>13}"
          f"{'naive ms*':>11}{'x naive':>9}{'x no-cache':>11}")
    for history_len in histories:
        history = torch.randint(1, num_items + 1, (history_len,), device=args.device)
        stamps = torch.cumsum(torch.randint(1, 3600, (history_len,), device=args.device), 0)
        for count in (int(x) for x in args.candidates.split(",")):
            candidates = torch.randint(1, num_items + 1, (count,), device=args.device)
            later = torch.randint(0, 86400, (1 if args.shared_time else count,), device=args.device)
            cand_stamps = (stamps[-1] + later).expand(count).contiguous()
            with torch.autocast(args.device, dtype=dtype, enabled=dtype is not None):
                def cached(kind: str) -> float:
                    return timed(lambda: scorers[kind].encode_candidates(history, stamps, candidates, cand_stamps,
                                                                         user=0), args.device)
                set_backend(model, "torch")
                reference = cached("eager")
                set_backend(model, "auto")
                eager = cached("eager") if on_gpu else None
                graphs = cached("graphs") if on_gpu else reference
                uncached = timed(lambda: scorers["eager"].encode_candidates_uncached(history, stamps, candidates,
                                                                                     cand_stamps), args.device)
                sample = candidates[:NAIVE_SAMPLE]
                naive_one = MFalcon(model, micro_batch_size=1, cuda_graphs=False)
                naive = timed(lambda: naive_one.encode_candidates_uncached(history, stamps, sample,
                                                                           cand_stamps[:NAIVE_SAMPLE]),
                              args.device, repeats=3) * count / sample.numel()
            row = {"history": history_len, "candidates": count, "cached_ms": graphs, "cached_eager_ms": eager,
                   "cached_reference_attention_ms": reference, "no_cache_ms": uncached,
                   "naive_ms_extrapolated": naive, "candidates_per_s": count / graphs * 1e3}
            rows.append(row)
            print(f"{history_len:>6}{count:>6}{graphs:>11.2f}{row['candidates_per_s']:>11.0f}"
                  f"{eager if eager is not None else float('nan'):>10.2f}{reference:>13.2f}{uncached:>13.2f}"
                  f"{naive:>11.1f}{naive / graphs:>9.1f}{uncached / graphs:>11.2f}", flush=True)
    result = {**environment("cuda" if on_gpu else "cpu"),
              "model": "HSTU d=256, 4 layers, 4 heads x 64, rab on, bf16 autocast on a GPU; cache warm (same user)",
              "candidate_times": "the request's, shared" if args.shared_time else "each candidate its own",
              "cached_ms": "CUDA graphs on a GPU (the reference path on a CPU)", "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    write_chart(result, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
