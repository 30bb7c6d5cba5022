"""Does pointwise attention win on a stream? The setting of the paper's Table 2 on genrec's synthetic stream:
one pass in time order, each day evaluated before it is trained on (data.mode = stream; HR@K over every
predicted event, the full held catalogue, cold items a miss), for SASRec (softmax Transformer), HSTU with
softmax attention and no relative bias, HSTU without its relative bias, and HSTU, with the popularity
baseline (the day before's counts) measured in the same runs.

    python benchmarks/stream_table2.py --users 5000 --seeds 42 --out benchmarks/results/stream-table2.json

The paper's numbers (its own synthetic data, HR@10 / HR@50): Transformers .0442 / .2025, HSTU without rab
and with softmax .0617 / .2496, HSTU without rab .0893 / .3170. genrec's stream is another generator
(genrec.data.synthetic_stream), so only the order of the rows compares. Writes a PNG beside the JSON
(needs matplotlib, extra `viz`). Runs side by side (one process per model, each with its own --out) join with
--merge A.json B.json --out BOTH.json, which checks that they ran the same stream and settings.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from report import environment, merged_results  # noqa: E402
from genrec.config import apply_overrides, parse_assignment, preset  # noqa: E402
from genrec.train.stream import StreamTrainer  # noqa: E402

NO_RAB = "model.rab.position=false:model.rab.time=false"
MODELS = {"Transformer (SASRec)": "sasrec", "HSTU softmax without rab": f"hstu:model.attention=softmax:{NO_RAB}",
          "HSTU without rab": f"hstu:{NO_RAB}", "HSTU": "hstu",
          # beyond Table 2: HSTU reading the stream's followed topics as change tokens (genrec.data.user_series),
          # and its items' topics as content (genrec.data.item_features)
          "HSTU + followed topics": "hstu:data.user_series=followed_topics",
          "HSTU + item topics": "hstu:data.item_features=topics:model.item_representation=id+content",
          # and Stochastic Length (paper Sec. 3.3) on long histories (with --set data.max_seq_len=1024)
          "HSTU + Stochastic Length 1.7": "hstu:train.stochastic_length_alpha=1.7",
          # and a block ablation: where does the Transformer's lead come from? SASRec's feed-forward sublayer
          # added to HSTU (model.feed_forward), against twice as many plain HSTU layers
          "HSTU without rab + FFN": f"hstu:model.feed_forward=true:{NO_RAB}",
          "HSTU softmax without rab + FFN": f"hstu:model.attention=softmax:model.feed_forward=true:{NO_RAB}",
          "HSTU + FFN": "hstu:model.feed_forward=true",
          "HSTU without rab (4 layers)": f"hstu:model.num_layers=4:{NO_RAB}"}
PAPER = {"Transformer (SASRec)": (0.0442, 0.2025), "HSTU softmax without rab": (0.0617, 0.2496),
         "HSTU without rab": (0.0893, 0.3170)}
METRICS = ("hr@10", "hr@50", "ndcg@10")


def run(spec: str, users: int, seed: int, device: str, common: list[str]) -> dict:
    name, *assignments = spec.split(":")
    config = preset(name)
    config.data.dataset, config.data.mode, config.data.synthetic_users = "synthetic-stream", "stream", users
    config.train.seed, config.train.device = seed, device
    for assignment in [*common, *assignments]:
        apply_overrides(config, parse_assignment(assignment))
    with tempfile.TemporaryDirectory() as out:
        summary = StreamTrainer(config, Path(out), log=lambda _: None, progress=False).fit()
    overall = summary["overall"]
    return {"seed": seed, "events": overall["events"], "cold_targets": overall["cold_targets"],
            "windows": summary["num_windows"], "train_seconds": round(summary["train_seconds"], 1),
            "train_tokens_per_s": round(summary["throughput"]["tokens_per_s"]),
            "mfu": summary["throughput"]["mfu"] and round(summary["throughput"]["mfu"], 4),
            **{key: round(overall[key], 4) for key in METRICS},
            **{f"popularity_{key}": round(overall[f"popularity_{key}"], 4) for key in METRICS}}


def write_chart(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    names = list(dict.fromkeys(row["model"] for row in rows)) + ["popularity"]
    figure, axes = plt.subplots(1, 2, figsize=(max(10, 1.6 * len(names)), 4.5))
    for axis, key in zip(axes, ("hr@10", "hr@50")):
        for index, name in enumerate(names):
            values = [row[f"popularity_{key}"] if name == "popularity" else row[key]
                      for row in rows if name == "popularity" or row["model"] == name]
            axis.bar(index, sum(values) / len(values), color="tab:grey" if name == "popularity" else "tab:blue",
                     alpha=0.7)
            axis.plot([index] * len(values), values, "k.")
        axis.set_xticks(range(len(names)), names, rotation=15 if len(names) <= 5 else 35, ha="right", fontsize=8)
        axis.set(ylabel=f"prequential {key.upper()}", title=f"{key.upper()}, one pass ({result['events']} events)")
    figure.suptitle(f"synthetic stream, {result['users']} users ({result['device']})")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=5000, help="users of the stream (40 events each)")
    parser.add_argument("--seeds", default="42", help="comma-separated training seeds (the stream's is fixed)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--models", default=",".join(list(MODELS)[:4]),
                        help="comma-separated names of MODELS to run (default: Table 2's)")
    parser.add_argument("--set", action="append", default=[], dest="common", metavar="KEY=VALUE",
                        help="config assignment applied to every run (e.g. train.learning_rate=0.003)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/stream-table2.json"))
    parser.add_argument("--merge", type=Path, nargs="+", help="results of one setting to join into --out (no runs)")
    args = parser.parse_args()
    if args.merge:
        result = merged_results([json.loads(path.read_text()) for path in args.merge],
                                ("device", "users", "common", "events"), lambda row: (row["model"], row["seed"]))
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        write_chart(result, args.out.with_suffix(".png"))
        print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
        return
    unknown = [name for name in args.models.split(",") if name not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    result = {**environment(args.device), "users": args.users, "common": args.common, "events": None, "paper_hr10_hr50": PAPER, "rows": []}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for seed in [int(seed) for seed in args.seeds.split(",")]:
        for name in args.models.split(","):
            spec = MODELS[name]
            row = {"model": name, "spec": spec, **run(spec, args.users, seed, args.device, args.common)}
            result["rows"].append(row)
            result["events"] = row["events"]
            args.out.write_text(json.dumps(result, indent=2) + "\n")  # each row kept as it finishes
            print(f"{name:<22} seed {seed}: " + "  ".join(f"{key} {row[key]:.4f}" for key in METRICS)
                  + f"  (popularity {row['popularity_hr@10']:.4f} / {row['popularity_hr@50']:.4f}),"
                  f" {row['train_seconds']} s, {row['train_tokens_per_s']:,} training tokens/s", flush=True)
    write_chart(result, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
