"""How good and how fast is approximate retrieval at growing catalogues? FAISS HNSW and IVF against exact chunked
top-K on the same l2-normalised item table (clustered, so neighbourhoods are realistic rather than uniform noise),
at each catalogue size; each index is built once and searched at several breadths (HNSW's efSearch, IVF's
nprobe). Recall@K is against the exact top-K.

    python benchmarks/retrieval.py --items 200000,1000000,4000000 --out benchmarks/results/retrieval-millions.json

Prints a table, writes the JSON and a PNG chart beside it (recall against queries per second, per size).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from report import environment, pyplot, save_chart  # noqa: E402

from genrec.inference.retrieval import FaissIndex, recall_at_k, top_k_exact  # noqa: E402

CLUSTERS = 256
BREADTHS = {"hnsw": (64, 128, 256), "ivf": (8, 32, 128)}


def timed_ms(fn):
    started = time.perf_counter()
    result = fn()
    return result, (time.perf_counter() - started) * 1e3


def clustered(count: int, dim: int, centres: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    assignment = torch.randint(0, CLUSTERS, (count,), generator=gen)
    return F.normalize(centres[assignment] + 0.5 * torch.randn(count, dim, generator=gen), dim=-1)


def measure(num_items: int, dim: int, num_queries: int, k: int) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(CLUSTERS, dim, generator=gen)
    items, queries = clustered(num_items + 1, dim, centres, gen), clustered(num_queries, dim, centres, gen)
    (_, exact_ids), exact_ms = timed_ms(lambda: top_k_exact(queries, items, k))
    rows = [{"items": num_items, "method": "exact (chunked torch)", "build_s": 0.0, "search_ms": exact_ms,
             "recall": 1.0}]
    for kind, breadths in BREADTHS.items():
        index, build_ms = timed_ms(lambda: FaissIndex(items, kind=kind, breadth=breadths[0]))
        for breadth in breadths:
            index.breadth = breadth
            (_, ids), search_ms = timed_ms(lambda: index.search(queries, k))
            name = f"faiss hnsw M=32 ef={breadth}" if kind == "hnsw" else f"faiss ivf nprobe={breadth}"
            rows.append({"items": num_items, "method": name, "build_s": build_ms / 1e3, "search_ms": search_ms,
                         "recall": recall_at_k(ids, exact_ids)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", default="200000", help="comma-separated catalogue sizes")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=512)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/retrieval.json"))
    args = parser.parse_args()
    result = {**environment("cpu"), "threads": torch.get_num_threads(), "dim": args.dim, "queries": args.queries,
              "k": args.k, "rows": []}
    print(f"{'items':>10} {'method':<26}{'build s':>9}{'search ms':>11}{'qps':>9}{'recall@' + str(args.k):>12}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for size in [int(size) for size in args.items.split(",")]:
        for row in measure(size, args.dim, args.queries, args.k):
            result["rows"].append(row)
            print(f"{size:>10} {row['method']:<26}{row['build_s']:>9.1f}{row['search_ms']:>11.1f}"
                  f"{args.queries / row['search_ms'] * 1e3:>9.0f}{row['recall']:>12.4f}", flush=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")  # each size kept as it finishes
    chart(result, args.out.with_suffix(".png"))


def chart(result: dict, path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    sizes = sorted({row["items"] for row in result["rows"]})
    figure, axes = plt.subplots(1, len(sizes), figsize=(4.2 * len(sizes), 3.8), squeeze=False)
    for axis, size in zip(axes[0], sizes):
        rows = [row for row in result["rows"] if row["items"] == size]
        for family, marker in (("exact", "s"), ("faiss hnsw", "o"), ("faiss ivf", "^")):
            chosen = [row for row in rows if row["method"].startswith(family)]
            axis.plot([result["queries"] / row["search_ms"] * 1e3 for row in chosen], [row["recall"] for row in chosen],
                      marker=marker, label=family)
        axis.set(xscale="log", xlabel="queries per second", ylabel=f"recall@{result['k']}", title=f"{size:,} items")
        axis.legend(fontsize=8)
    save_chart(figure, f"top-{result['k']} retrieval, d = {result['dim']}, {result['device']}", path)


if __name__ == "__main__":
    main()
