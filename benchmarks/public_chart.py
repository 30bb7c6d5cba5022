"""The README's headline chart: NDCG@10 of each preset on a data set with timestamps, the rows measured
under the old evaluation rules beside the re-runs under the corrected ones (issue 21), read from
benchmarks/results/public.json. Not a controlled comparison: the re-runs are new training runs with the
code of their day (benchmarks/query_time.py holds one model's weights fixed).

    python benchmarks/public_chart.py --dataset ml-1m-3k --out benchmarks/results/public.png

Prints the table it draws. Rows of the corrected rules carry `ties` and `query_time`; the old rows drawn
are the plain presets' (101 epochs, seed 42), hstu-xl's as the preset is now (with the weight average,
which those rows set by hand). Needs matplotlib (extra `viz`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

MODELS = ("sasrec", "hstu", "hstu-large", "hstu-xl")
MODES = ("paper", "validated")
# the preset as it is now, in the old rows: hstu-xl gained its weight average after them
OLD_SPECS = {"hstu-xl": ("hstu-xl:train.ema_decay=0.99", ["train.ema_decay=0.99"])}


def pick(runs: list[dict], dataset: str, corrected: bool) -> dict[tuple[str, str], float]:
    """(model, mode) -> NDCG@10 of the preset's row (101 epochs, default seed) under one set of rules."""
    found = {}
    for model in MODELS:
        spec, overrides = (model, []) if corrected else OLD_SPECS.get(model, (model, []))
        for row in runs:
            if (row["dataset"] == dataset and row["model"] == spec and row["overrides"] == overrides
                    and row["mode"] in MODES and row["epochs"] == 101 and ("query_time" in row) == corrected):
                found[model, row["mode"]] = row["metrics"]["ndcg@10"]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/public.json"))
    parser.add_argument("--dataset", default="ml-1m-3k")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/public.png"))
    args = parser.parse_args()
    results = json.loads(args.results.read_text())
    old, new = pick(results["runs"], args.dataset, False), pick(results["runs"], args.dataset, True)
    print(f"{'model':<12}{'mode':<11}{'old rows':>10}{'re-run':>10}")
    for mode in MODES:
        for model in MODELS:
            print(f"{model:<12}{mode:<11}{old.get((model, mode), float('nan')):>10.4f}"
                  f"{new.get((model, mode), float('nan')):>10.4f}")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(MODES), figsize=(10, 3.6), sharey=True)
    width = 0.38
    for axis, mode in zip(axes, MODES):
        positions = range(len(MODELS))
        for offset, (label, values, color) in enumerate((("old rows (old rules and code)", old, "#bbbbbb"),
                                                          ("re-run (corrected rules, code of 2026-12-04)", new,
                                                           "#2b6cb0"))):
            heights = [values.get((model, mode), 0.0) for model in MODELS]
            bars = axis.bar([p + (offset - 0.5) * width for p in positions], heights, width, label=label, color=color)
            axis.bar_label(bars, fmt="%.3f", fontsize=7, padding=1)
        axis.set_xticks(list(positions), MODELS)
        axis.set_title(f"{args.dataset}, {mode} mode")
    axes[0].set_ylabel("NDCG@10 (full ranking)")
    axes[-1].legend(loc="lower right", fontsize=7)
    figure.suptitle("Leave-one-out NDCG@10, full ranking; re-run: pessimistic ties, the held-out event's query time")
    figure.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=130)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
