"""How good and how fast is approximate retrieval? FAISS HNSW against exact chunked top-K on the
same l2-normalised item table (clustered, so neighbourhoods are realistic rather than uniform noise).

    python benchmarks/retrieval.py --items 200000 --out benchmarks/results/retrieval.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from genrec.inference.retrieval import FaissIndex, recall_at_k, top_k_exact  # noqa: E402


def timed_ms(fn):
    started = time.perf_counter()
    result = fn()
    return result, (time.perf_counter() - started) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=512)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/retrieval.json"))
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(256, args.dim, generator=gen)
    assignment = torch.randint(0, 256, (args.items + 1,), generator=gen)
    items = F.normalize(centres[assignment] + 0.5 * torch.randn(args.items + 1, args.dim, generator=gen), dim=-1)
    queries = F.normalize(centres[torch.randint(0, 256, (args.queries,), generator=gen)]
                          + 0.5 * torch.randn(args.queries, args.dim, generator=gen), dim=-1)
    (_, exact_ids), exact_ms = timed_ms(lambda: top_k_exact(queries, items, args.k))
    rows = [{"method": "exact (chunked torch)", "build_s": 0.0, "search_ms": exact_ms, "recall": 1.0}]
    for ef in (64, 128, 256):
        index, build_ms = timed_ms(lambda: FaissIndex(items, kind="hnsw", ef_search=ef))
        (_, ids), search_ms = timed_ms(lambda: index.search(queries, args.k))
        rows.append({"method": f"faiss hnsw M=32 ef={ef}", "build_s": build_ms / 1e3, "search_ms": search_ms,
                     "recall": recall_at_k(ids, exact_ids)})
    print(f"{'method':<26}{'build s':>9}{'search ms':>11}{'qps':>9}{'recall@' + str(args.k):>12}")
    for row in rows:
        print(f"{row['method']:<26}{row['build_s']:>9.1f}{row['search_ms']:>11.1f}"
              f"{args.queries / row['search_ms'] * 1e3:>9.0f}{row['recall']:>12.4f}")
    result = {"device": "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__,
              "command": " ".join(sys.argv), "date": datetime.date.today().isoformat(),
              "items": args.items, "dim": args.dim, "queries": args.queries, "k": args.k, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
