"""What does a fractal expansion (genrec.data.fractal, `genrec prepare --expand`) cost, and does it keep the source's
shape? For each expansion, in a fresh process: writing its store (wall time, peak RSS), then, read from the store, its
item popularity and user activity beside the source's own store (the baseline, prepared the same way in the run):
events per item (median, 99th percentile, max), the share of events on the top 1% of items, the Gini coefficient
and the log-log slope of rank-frequency between ranks 10 and items / 10; events per user likewise. Prints a table,
writes JSON and a PNG (rank-frequency and activity curves, normalised, source against expansions).

    python benchmarks/fractal_expansion.py --dataset sasrec --data-dir ../shared/data/sasrec/ml-1m.txt \
        --expand 10x3416,100x3416 --out benchmarks/results/fractal-ml-1m-sas.json
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from event_store import measured
from report import invocation, pyplot, save_chart, write_results

PREPARE = """
from pathlib import Path
from genrec.data import load_events
from genrec.data.event_store import prepare, prepare_store
from genrec.data.fractal import FractalSpec, expansion_chunks
events = load_events({dataset!r}, {data_dir!r})
if {expand!r}:
    manifest = prepare_store(expansion_chunks(events, FractalSpec.parse({expand!r}, {seed})), Path({store!r}), "")
else:  # the source's own store
    manifest = prepare({dataset!r}, Path({data_dir!r}), Path({store!r}), read_events=lambda: events)
result = {{"events": manifest["events"], "users": manifest["users"], "items": manifest["items"]}}
"""


def shape(counts: np.ndarray) -> dict:
    """How concentrated `counts` (events per item, or per user) are."""
    ranked = np.sort(counts)[::-1].astype(np.float64)
    total, n = ranked.sum(), ranked.size
    gini = 1 - 2 * np.sum(np.cumsum(ranked[::-1]) / total) / n + 1 / n
    ranks = np.arange(10, max(11, n // 10))
    slope = np.polyfit(np.log(ranks + 1), np.log(ranked[ranks]), 1)[0] if ranks.size > 1 else None
    return {"count": int(n), "median": float(np.median(ranked)), "p99": float(np.percentile(ranked, 99)),
            "max": int(ranked[0]), "top_1pct_share": float(ranked[:max(1, n // 100)].sum() / total),
            "gini": float(gini), "rank_frequency_slope": None if slope is None else float(slope)}


def store_shape(store: Path) -> tuple[dict, np.ndarray, np.ndarray]:
    from genrec.data.event_store import EventStore

    opened = EventStore.open(store)
    items = np.bincount(opened.column("item_id"))[1:]  # dense ids start at 1
    users = np.diff(np.load(store / "offsets.npy"))
    return {"items": shape(items), "users": shape(users)}, items, users


def write_chart(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, source: str) -> None:
    plt = pyplot()
    if plt is None:
        return
    figure, (popularity, activity) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, (items, users) in curves.items():
        ranked = np.sort(items[items > 0])[::-1]
        popularity.plot(np.arange(1, ranked.size + 1) / ranked.size, ranked / ranked.sum(), label=label)
        lengths = np.sort(users)
        activity.plot(lengths, 1 - np.arange(lengths.size) / lengths.size, label=label)
    popularity.set(xscale="log", yscale="log", xlabel="item rank / items", ylabel="share of events",
                   title="item popularity")
    activity.set(xscale="log", yscale="log", xlabel="events of a user", ylabel="share of users with at least that",
                 title="user activity")
    popularity.legend(fontsize=8)
    save_chart(figure, f"fractal expansion of {source}", path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="sasrec")
    parser.add_argument("--data-dir", default="../shared/data/sasrec/ml-1m.txt")
    parser.add_argument("--expand", default="10x3416,100x3416", help="comma-separated USERSxITEMS")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/fractal-ml-1m-sas.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(dir=args.work))
    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
              "python": platform.python_version(), "numpy": np.__version__, **invocation(),
              "source": f"{args.dataset} {args.data_dir}", "seed": args.seed, "rows": []}
    curves = {}
    print(f"{'expansion':>10}{'events':>14}{'users':>10}{'items':>11}{'s':>8}{'peak GB':>9}{'items/ev':>9}"
          f"{'top1% items':>12}{'item gini':>10}{'slope':>7}")
    try:
        for expand in ["", *args.expand.split(",")]:  # "": the source's own store, the baseline
            store = work / (expand or "source")
            info, wall, peak = measured(PREPARE.format(dataset=args.dataset, data_dir=args.data_dir, expand=expand,
                                                       seed=args.seed, store=str(store)))
            shapes, items, users = store_shape(store)
            label = expand or "source"
            curves[label] = (items, users)
            row = {"expansion": label, **info, "prepare_s": wall, "prepare_peak_rss_gb": peak, **shapes}
            result["rows"].append(row)
            print(f"{label:>10}{info['events']:>14,}{info['users']:>10,}{info['items']:>11,}{wall:>8.1f}{peak:>9.2f}"
                  f"{info['items'] / info['events']:>9.3f}{shapes['items']['top_1pct_share']:>12.3f}"
                  f"{shapes['items']['gini']:>10.3f}{shapes['items']['rank_frequency_slope']:>7.2f}", flush=True)
            shutil.rmtree(store)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_results(result, args.out, lambda png: write_chart(curves, png, result["source"]))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    main()
