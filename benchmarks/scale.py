"""How do training and evaluation cost grow as the events grow x10 and as the catalogue grows x10?

Each row builds a run the way `genrec train` does (genrec.train.trainer.Trainer) on the synthetic stream
(genrec.data.synthetic_stream: U users x 40 events, I items at the start and 200 new a day for 60 days), then
- times reading it: generating the events, building the sequences and the leave-one-out split;
- trains one epoch, after one untimed step that lets the kernels autotune (sampled softmax with 512 uniform
  negatives, bf16 autocast on a GPU), with the item table stored in bf16 and trained by row-wise AdaGrad
  (train.embedding_optimizer), so the table costs 2 bytes a weight;
- evaluates the epoch's model on a seeded sample of users against the whole catalogue (eval.max_users), with the
  popularity baseline on the same users.
The table holds the items that occur in the events (about half of those generated at these sizes). Model: HSTU,
d = 64, 4 layers, 2 heads of 32, histories of up to 200 events, 1,024 users a step.
Reported: events, table rows, seconds (data, epoch, evaluation), tokens/s, TFLOP/s, MFU, peak GPU memory, the
process's peak host memory, HR@10 / NDCG@10 against popularity.

Each row runs in its own process (its peak memory is its own) and is saved as it finishes; a second run of the
same command skips the rows already in --out, so a sweep resumes across calls; --rows picks rows by name.

    python benchmarks/scale.py --out benchmarks/results/scale.json                              # a GPU
    python benchmarks/scale.py --out /tmp/scale.json --rows tiny --device cpu                   # smoke run

Writes a PNG chart beside the JSON (needs matplotlib, extra `viz`).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from report import environment, invocation, pyplot, save_chart  # noqa: E402

EVENTS_PER_USER = 40  # what --dataset synthetic-stream generates per user
EVAL_USERS = 20_000
# name: (users, initial items); "catalogue" rows hold the events, "events" rows the catalogue
ROWS = {
    "catalogue-0.3M": (1_000_000, 300_000), "catalogue-3M": (1_000_000, 3_000_000),
    "catalogue-30M": (1_000_000, 30_000_000),
    "events-1M": (25_000, 3_000_000), "events-10M": (250_000, 3_000_000), "events-100M": (2_500_000, 3_000_000),
    "tiny": (500, 2_000),
}


def row_config(users: int, items: int, device: str):
    from genrec.config import preset

    config = preset("hstu")
    config.data.dataset, config.data.synthetic_users, config.data.synthetic_items = "synthetic-stream", users, items
    model = config.model
    model.embedding_dim, model.num_layers, model.num_heads, model.qk_dim, model.v_dim = 64, 4, 2, 32, 32
    model.item_table_dtype = "bfloat16"
    train = config.train
    train.embedding_optimizer, train.epochs, train.batch_size, train.device = "rowwise_adagrad", 1, 1024, device
    train.loss.num_negatives = 512
    config.eval.max_users, config.eval.ks = EVAL_USERS, (10, 50)
    return config.validate()


def measure_row(name: str, device: str) -> dict:
    """One row, in this process."""
    import torch

    from genrec.train.trainer import Trainer

    users, items = ROWS[name]
    config = row_config(users, items, device)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(config, Path(out), log=lambda _: None, progress=False)
        data_seconds = time.perf_counter() - started
        warm_up(trainer)
        if trainer.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        stats = trainer.train_epoch()
        split = trainer.data.split.test
        started = time.perf_counter()
        metrics = trainer.evaluate(split)
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        eval_seconds = time.perf_counter() - started
        popularity = trainer.popularity_baseline(split)
    evaluated = min(EVAL_USERS, split.histories.num_users)
    return {
        "row": name, "users": trainer.data.split.train.num_users, "events": int(trainer.data.summary["events"]),
        "generated_items": items + 200 * 60, "table_rows": trainer.data.num_items + 1,
        "data_seconds": round(data_seconds, 2), "epoch_seconds": round(stats["seconds"], 2),
        "epoch_tokens": round(stats["tokens_per_s"] * stats["seconds"]), "tokens_per_s": round(stats["tokens_per_s"]),
        "tflops": round(stats["tflops"], 2),
        "mfu": round(stats["mfu"], 4) if "mfu" in stats else None, "loss": round(stats["loss"], 4),
        "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if trainer.device.type == "cuda" else None,
        "peak_host_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "eval_users": evaluated, "eval_seconds": round(eval_seconds, 2),
        "eval_user_items_per_s": round(evaluated * (trainer.data.num_items + 1) / eval_seconds),
        "hr@10": round(metrics["hr@10"], 4), "ndcg@10": round(metrics["ndcg@10"], 4),
        "popularity_hr@10": round(popularity["hr@10"], 4),
    }


def warm_up(trainer) -> None:
    """One forward and backward of the first batch, untimed and not applied: each row is a fresh process, and
    the attention kernels' autotuning (seconds) would otherwise be timed as part of its epoch."""
    import numpy as np
    import torch

    users = np.arange(min(trainer.config.train.batch_size, trainer.data.split.train.num_users))
    with torch.autocast(trainer.device.type, dtype=trainer.autocast_dtype, enabled=trainer.autocast_dtype is not None):
        step = trainer.batch_loss(users)
    step.loss.backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()


def print_table(rows: list[dict]) -> None:
    columns = ("row", "events", "epoch_tokens", "table_rows", "data_seconds", "epoch_seconds", "tokens_per_s", "mfu",
               "peak_gpu_gb", "peak_host_gb", "eval_seconds", "hr@10", "popularity_hr@10")
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(str(row.get(column)) for column in columns))


def write_chart(result: dict, path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return

    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, prefix, x_key, x_label in ((axes[0], "events-", "epoch_tokens", "training tokens an epoch"),
                                         (axes[1], "catalogue-", "table_rows", "item table rows")):
        rows = sorted((r for r in result["rows"] if r["row"].startswith(prefix)), key=lambda r: r[x_key])
        if not rows:
            continue
        xs = [r[x_key] for r in rows]
        axis.plot(xs, [r["epoch_seconds"] for r in rows], "o-", label="epoch seconds")
        axis.plot(xs, [r["eval_seconds"] for r in rows], "s-", label=f"eval seconds ({EVAL_USERS:,} users)")
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel(x_label)
        twin = axis.twinx()
        twin.plot(xs, [r["tokens_per_s"] / 1e6 for r in rows], "^--", color="tab:green", label="M tokens/s")
        twin.set_ylabel("training M tokens/s")
        twin.set_ylim(bottom=0)
        lines = axis.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
        axis.legend(lines, [line.get_label() for line in lines], fontsize=8, loc="upper left")
    axes[0].set_ylabel("seconds")
    save_chart(figure, f"genrec at scale, {result['device']} (HSTU d=64, 4 layers, bf16 table, row-wise AdaGrad)", path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rows", default=",".join(name for name in ROWS if name != "tiny"),
                        help=f"comma-separated, of {', '.join(ROWS)}")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: measure this row, print JSON
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(measure_row(args.one, args.device)))
        return
    names = args.rows.split(",")
    unknown = [name for name in names if name not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; expected some of {list(ROWS)}")
    result = json.loads(args.out.read_text()) if args.out.exists() else {**environment(args.device), "rows": []}
    done = {row["row"] for row in result["rows"]}
    for name in names:
        if name in done:
            print(f"{name}: already in {args.out}")
            continue
        run = subprocess.run([sys.executable, __file__, "--out", str(args.out), "--device", args.device, "--one", name],
                             capture_output=True, text=True)
        if run.returncode != 0:
            raise SystemExit(f"{name} failed:\n{run.stderr[-4000:]}")
        row = json.loads(run.stdout.strip().splitlines()[-1])
        result["rows"].append({**row, "date": invocation()["date"]})
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print_table(result["rows"])
    write_chart(result, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
