"""What does Stochastic Length cost in quality? Reads the public-benchmark rows of one data set and base
model trained with SL off and on (train.stochastic_length_alpha overrides), prints NDCG@10 per alpha
(mean over seeds, each seed's value) with seconds per epoch, and draws them beside each other.

    python benchmarks/stochastic_length_quality.py --results benchmarks/results/stochastic-length-quality.json

Needs matplotlib (extra `viz`); writes the PNG beside the results file.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

ALPHA_KEY = "train.stochastic_length_alpha="


def by_alpha(runs: list[dict]) -> dict[float, list[dict]]:
    """alpha (2.0 = off) -> the rows trained with it."""
    groups = defaultdict(list)
    for row in runs:
        alphas = [float(o[len(ALPHA_KEY):]) for o in row["overrides"] if o.startswith(ALPHA_KEY)]
        groups[alphas[0] if alphas else 2.0].append(row)
    return dict(sorted(groups.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, required=True)
    args = parser.parse_args()
    results = json.loads(args.results.read_text())
    groups = by_alpha(results["runs"])
    off = statistics.mean(row["metrics"]["ndcg@10"] for row in groups[2.0])
    print(f"{'alpha':>6} {'seeds':>5} {'NDCG@10':>8} {'vs off':>7} {'s/epoch':>8}  each seed")
    for alpha, rows in groups.items():
        ndcg = [row["metrics"]["ndcg@10"] for row in rows]
        mean = statistics.mean(ndcg)
        print(f"{'off' if alpha == 2.0 else alpha:>6} {len(rows):>5} {mean:8.4f} {mean / off - 1:+7.1%} "
              f"{statistics.mean(row['seconds_per_epoch'] for row in rows):8.2f}  "
              + " ".join(f"{value:.4f}" for value in ndcg))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    labels = ["off" if alpha == 2.0 else str(alpha) for alpha in groups]
    for index, rows in enumerate(groups.values()):
        ndcg = [row["metrics"]["ndcg@10"] for row in rows]
        axis.bar(index, statistics.mean(ndcg), color="tab:blue", alpha=0.6)
        axis.plot([index] * len(ndcg), ndcg, "k.", markersize=8)
    axis.set_xticks(range(len(labels)), labels)
    first = results["runs"][0]
    axis.set(xlabel="Stochastic Length alpha", ylabel="test NDCG@10 (bar: mean; dots: seeds)",
             ylim=(0.9 * min(r["metrics"]["ndcg@10"] for r in results["runs"]), None),
             title=f"{first['dataset']}, {first['model'].split(':')[0]}, {first['epochs']} epochs "
                   f"({results['device']})")
    figure.tight_layout()
    figure.savefig(args.results.with_suffix(".png"), dpi=120)
    print(f"wrote {args.results.with_suffix('.png')}")


if __name__ == "__main__":
    main()
