"""How cheap is M-FALCON? Latency of scoring C candidates against an L-token history with the
cached, micro-batched path (its attention through the fused candidate kernel, and through the PyTorch
reference), against no-cache micro-batching and the naive one-pass-per-candidate loop, measured in the
same run. The naive loop is timed on a sample of candidates and scaled to C (it is linear by
construction); the table says so. The cache is warm (the same user each time).

    python benchmarks/mfalcon.py --device cuda --out benchmarks/results/mfalcon.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--histories", default="512,4096")
    parser.add_argument("--candidates", default="1,64,1024,4096")
    parser.add_argument("--micro-batch", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/mfalcon.json"))
    args = parser.parse_args()
    config = preset("hstu")
    config.model.embedding_dim, config.model.num_layers, config.model.num_heads = 256, 4, 4
    config.model.qk_dim = config.model.v_dim = 64
    histories = [int(x) for x in args.histories.split(",")]
    num_items = 100_000
    torch.manual_seed(0)
    model = SequentialRetriever(config.model, num_items, max(histories) + 1, use_time=True).to(args.device)
    dtype = torch.bfloat16 if args.device == "cuda" else None
    scorer = MFalcon(model, micro_batch_size=args.micro_batch)
    rows = []
    fused_backend = "triton" if args.device == "cuda" else "torch"
    print(f"{'L':>6}{'C':>6}{'cached ms':>11}{'cand/s':>11}{'ref-attn ms':>13}{'no-cache ms':>13}{'naive ms*':>11}"
          f"{'x naive':>9}{'x no-cache':>11}")
    for history_len in histories:
        history = torch.randint(1, num_items + 1, (history_len,), device=args.device)
        stamps = torch.cumsum(torch.randint(1, 3600, (history_len,), device=args.device), 0)
        for count in (int(x) for x in args.candidates.split(",")):
            candidates = torch.randint(1, num_items + 1, (count,), device=args.device)
            cand_stamps = stamps[-1] + torch.randint(0, 86400, (count,), device=args.device)
            with torch.autocast(args.device, dtype=dtype, enabled=dtype is not None):
                cached_by_backend = {}
                for backend in ("torch", fused_backend):
                    for layer in model.encoder.layers:
                        layer.backend = backend
                    cached_by_backend[backend] = timed(
                        lambda: scorer.encode_candidates(history, stamps, candidates, cand_stamps, user=0),
                        args.device)
                cached = cached_by_backend[fused_backend]
                uncached = timed(lambda: scorer.encode_candidates_uncached(history, stamps, candidates, cand_stamps),
                                 args.device)
                sample = candidates[:NAIVE_SAMPLE]
                naive_one = MFalcon(model, micro_batch_size=1)
                naive = timed(lambda: naive_one.encode_candidates_uncached(history, stamps, sample,
                                                                           cand_stamps[:NAIVE_SAMPLE]),
                              args.device, repeats=3) * count / sample.numel()
            row = {"history": history_len, "candidates": count, "cached_ms": cached,
                   "cached_reference_attention_ms": cached_by_backend["torch"], "no_cache_ms": uncached,
                   "naive_ms_extrapolated": naive, "candidates_per_s": count / cached * 1e3}
            rows.append(row)
            print(f"{history_len:>6}{count:>6}{cached:>11.2f}{row['candidates_per_s']:>11.0f}"
                  f"{cached_by_backend['torch']:>13.2f}{uncached:>13.2f}"
                  f"{naive:>11.1f}{naive / cached:>9.1f}{uncached / cached:>11.2f}", flush=True)
    result = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
              "torch": torch.__version__, "command": " ".join(sys.argv), "date": datetime.date.today().isoformat(),
              "model": "HSTU d=256, 4 layers, 4 heads x 64, rab on; cache warm (same user)",
              "cached_attention": f"{fused_backend} (cached_ms); torch reference (cached_reference_attention_ms)",
              "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
