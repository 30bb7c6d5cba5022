"""What does the query time change, with everything else fixed? One trained run's test split ranked twice
with the same weights: the last history position asking the time bias about the held-out event's time (the
corrected protocol, as training asks each position about the next event's time) and about its own time (the
evaluation before issue 21).

    python benchmarks/query_time.py --run runs/ml1m-3k-hstu --out benchmarks/results/query-time-cpu.json

Prints a table, writes the JSON and a PNG chart beside it (extra `viz`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from report import environment  # noqa: E402
from genrec.train.trainer import Trainer  # noqa: E402
from genrec.checkpoint import locate_checkpoint  # noqa: E402
from genrec.config import load_run_config  # noqa: E402

METRICS = ("hr@10", "ndcg@10", "hr@50", "mrr")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a run directory of genrec train (with timestamps)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/query-time-cpu.json"))
    args = parser.parse_args()
    run_dir, checkpoint = locate_checkpoint(args.run)
    config = load_run_config(run_dir)
    trainer = Trainer(config, run_dir, log=lambda _: None, progress=False)
    trainer.load(checkpoint)
    test = trainer.data.split.test
    if test.target_timestamps is None:
        sys.exit(f"{run_dir}: its data set has no timestamps, so the query time changes nothing")
    rows = {"target's time (corrected)": trainer.evaluate(test),
            "last event's own time (before)": trainer.evaluate(dataclasses.replace(test, target_timestamps=None))}
    print(f"{'query time':<32}" + "".join(f"{m:>9}" for m in METRICS))
    for name, metrics in rows.items():
        print(f"{name:<32}" + "".join(f"{metrics[m]:>9.4f}" for m in METRICS))
    corrected, before = rows.values()
    change = {m: round(corrected[m] / before[m] - 1, 4) for m in METRICS}
    print(f"{'change':<32}" + "".join(f"{change[m]:>+9.1%}" for m in METRICS))
    result = {**environment("cpu"), "run": str(run_dir),
              "checkpoint": checkpoint.name, "data": config.data.path, "model": dataclasses.asdict(config.model),
              "epochs": config.train.epochs, "rows": rows, "relative_change": change}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    chart(rows, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


def chart(rows: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 3))
    width = 0.38
    for offset, (name, metrics) in enumerate(rows.items()):
        bars = axis.bar([i + (offset - 0.5) * width for i in range(len(METRICS))], [metrics[m] for m in METRICS],
                        width, label=name, color=("#2b6cb0", "#bbbbbb")[offset])
        axis.bar_label(bars, fmt="%.4f", fontsize=7, padding=1)
    axis.set_xticks(range(len(METRICS)), METRICS)
    axis.set_title("one model's test split, the last position's query time two ways", fontsize=9)
    axis.legend(fontsize=8, loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
