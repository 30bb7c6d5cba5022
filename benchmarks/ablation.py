"""What does one config option change? Groups the rows of a public-benchmark results file (benchmarks/public.py)
by the value the option was set to (a row without that override is the baseline; with several options, comma-separated,
by the values a row sets, joined by spaces), prints test NDCG@10 and HR@10
per value (mean over seeds, then each seed's) with seconds per epoch, and draws the chosen metric side by side.

    python benchmarks/ablation.py --results benchmarks/results/item-content.json \
        --option model.item_representation --baseline id
    python benchmarks/ablation.py --results benchmarks/results/stochastic-length-quality.json \
        --option train.stochastic_length_alpha --baseline off --values 1.9,1.8,1.7,1.6
    python benchmarks/ablation.py --results benchmarks/results/stochastic-length-contiguous.json --baseline off \
        --option train.stochastic_length_alpha,train.stochastic_length_sampling --values "1.7,1.7 contiguous"

Needs matplotlib (extra `viz`) for the chart, written beside the results file (.png).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from report import pyplot, save_chart


def by_value(runs: list[dict], options: list[str], baseline: str, values: list[str] | None) -> dict[str, list[dict]]:
    """The options' values, those a row sets joined by spaces (the baseline's name where it sets none) -> the rows
    trained with them: the baseline first, then `values` in their order (default: as the rows first show them)."""
    groups: dict[str, list[dict]] = {baseline: []}
    for row in runs:
        settings = dict(override.split("=", 1) for override in row["overrides"])
        set_to = [settings[option] for option in options if option in settings]
        groups.setdefault(" ".join(set_to) or baseline, []).append(row)
    order = [baseline, *(values if values is not None else [v for v in groups if v != baseline])]
    missing = [value for value in order if not groups.get(value)]
    if missing:
        raise SystemExit(f"no rows with {', '.join(options)} = {', '.join(missing)}")
    return {value: groups[value] for value in order}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, required=True, help="a results file of benchmarks/public.py")
    parser.add_argument("--option", required=True,
                        help="the config key compared, e.g. model.item_representation (or several, comma-separated)")
    parser.add_argument("--baseline", required=True, help="what rows that do not set the option are called")
    parser.add_argument("--values", default=None, help="comma-separated values to show, in order (default: all)")
    parser.add_argument("--metric", default="ndcg@10", help="the metric charted")
    args = parser.parse_args()
    results = json.loads(args.results.read_text())
    groups = by_value(results["runs"], args.option.split(","), args.baseline,
                      None if args.values is None else args.values.split(","))
    mean = {value: statistics.mean(row["metrics"][args.metric] for row in rows) for value, rows in groups.items()}
    print(f"{args.option:>30} {'seeds':>5} {'NDCG@10':>8} {'HR@10':>7} {f'{args.metric} vs ' + args.baseline:>20} "
          f"{'s/epoch':>8}  each seed's {args.metric}")
    for value, rows in groups.items():
        ndcg, hr = (statistics.mean(row["metrics"][m] for row in rows) for m in ("ndcg@10", "hr@10"))
        change = "" if value == args.baseline else f"{mean[value] / mean[args.baseline] - 1:+.1%}"
        print(f"{value:>30} {len(rows):>5} {ndcg:8.4f} {hr:7.4f} {change:>20} "
              f"{statistics.mean(row['seconds_per_epoch'] for row in rows):8.2f}  "
              + " ".join(f"{row['metrics'][args.metric]:.4f}" for row in rows))

    plt = pyplot()
    if plt is None:
        return
    figure, axis = plt.subplots(figsize=(6, 4))
    for index, (value, rows) in enumerate(groups.items()):
        points = [row["metrics"][args.metric] for row in rows]
        axis.bar(index, mean[value], color="tab:blue", alpha=0.6)
        axis.plot([index] * len(points), points, "k.", markersize=8)
    axis.set_xticks(range(len(groups)), list(groups))
    lowest = min(row["metrics"][args.metric] for rows in groups.values() for row in rows)
    axis.set(xlabel=args.option, ylabel=f"test {args.metric} (bar: mean; dots: seeds)", ylim=(0.9 * lowest, None))
    first = results["runs"][0]
    save_chart(figure, f"{first['dataset']}, {first['model'].split(':')[0]}, {first['epochs']} epochs "
                       f"({results['device']})", args.results.with_suffix(".png"))


if __name__ == "__main__":
    main()
