"""Does quality grow as a power law of training compute? (paper Fig. 1 / Sec. 4.3)

A sweep of model sizes, each trained the way `genrec train` trains (genrec.train.trainer.Trainer's epoch of steps)
for --epochs passes over one data set, then evaluated on the test split's full catalogue for a seeded sample of
users (eval.max_users). The sweep covers HSTU (pointwise attention, relative bias) and a softmax Transformer of
the same widths and depths (SASRec). Training compute is the matrix-multiply FLOPs the trainer counts, from the
formulas beside the ops: forward + backward of the encoder and of the sampled-softmax logits. For each
architecture the script fits NDCG@10 = a * C^b and loss = a * C^(-b) by least squares in log-log space. It reports
the exponents and R^2, and the compute-optimal frontier: at each compute, the best NDCG@10 reached by any size at
or below that compute.

Resumable: every (architecture, size) is one row, saved as it finishes; a second run of the same command skips the
rows in --out, so a sweep spreads over several GPU calls and its JSON merges itself. The fit and the chart are
redrawn from all rows at the end of each run. Sweeps run side by side (one process per architecture, each with its
own --out) join with --merge A.json B.json --out BOTH.json, which checks that their settings agree and trains nothing.

    python benchmarks/scaling_law.py --out benchmarks/results/scaling_law.json                      # a GPU
    python benchmarks/scaling_law.py --out /tmp/law.json --sizes 8x1,16x1 --users 300 --epochs 2 --device cpu

--store DIR sweeps an event store instead of the synthetic stream, e.g. the fractal expansion of ml-1m-sas (100M
events, 5.9M items: `genrec prepare --dataset sasrec --data-dir ml-1m.txt --out DIR --expand 100x3416`); the
sweep's setting then records the store's checksum. --set KEY=VALUE applies to every row (for a large catalogue:
model.item_table_dtype=bfloat16, train.embedding_optimizer=rowwise_adagrad).

Each size is a new shape for the fused attention, which autotunes anew: a 32 x 2 row over 800,000 events, one epoch,
took 64 s on an H200, tuning included; GENREC_AUTOTUNE=0 launches fixed tiles instead. Writes a PNG chart beside
the JSON (needs matplotlib, extra `viz`).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from genrec.config import apply_overrides, parse_assignment  # noqa: E402
from report import environment, invocation, merged_results, pyplot, save_chart  # noqa: E402

# width x layers: over two decades of training compute at a fixed number of epochs
SIZES = "32x2,48x2,64x3,96x4,128x4,192x6,256x8"
ARCHITECTURES = ("hstu", "sasrec")


def run_config(architecture: str, width: int, layers: int, args):
    from genrec.config import preset

    config = preset("hstu" if architecture == "hstu" else "sasrec")
    if args.store is None:
        config.data.dataset, config.data.synthetic_users = "synthetic-stream", args.users
        config.data.synthetic_items = args.items
    else:
        config.data.dataset, config.data.path = "store", str(args.store)
    config.data.max_seq_len = 200
    model = config.model
    heads = max(1, width // 64)
    model.embedding_dim, model.num_layers, model.num_heads = width, layers, heads
    model.qk_dim = model.v_dim = width // heads
    train = config.train
    train.epochs, train.batch_size, train.device = args.epochs, args.batch_size, args.device
    config.eval.max_users, config.eval.ks = args.eval_users, (10, 50)
    for assignment in args.overrides:
        apply_overrides(config, parse_assignment(assignment))
    return config.validate()


def measure_row(architecture: str, width: int, layers: int, args) -> dict:
    from genrec.train.trainer import Trainer

    config = run_config(architecture, width, layers, args)
    on_gpu = torch.cuda.is_available() and args.device != "cpu"
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(config, Path(out), log=lambda _: None, progress=False)
        flops, seconds, losses = 0.0, 0.0, []
        started = time.perf_counter()
        for _ in range(args.epochs):
            stats = trainer.train_epoch()
            flops += stats["tflops"] * 1e12 * stats["seconds"]
            seconds += stats["seconds"]
            losses.append(round(stats["loss"], 4))
        metrics = trainer.evaluate(trainer.data.split.test)
    row = {"architecture": architecture, "width": width, "layers": layers,
           "parameters": sum(p.numel() for p in trainer.model.encoder.parameters()),
           "train_flops": flops, "train_seconds": round(seconds, 1),
           "wall_seconds": round(time.perf_counter() - started),
           "losses": losses, "loss": losses[-1], "ndcg@10": round(metrics["ndcg@10"], 5),
           "hr@10": round(metrics["hr@10"], 5), "events": trainer.data.summary["events"],
           "items": trainer.data.num_items}
    if on_gpu:
        row["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        # sweeps side by side share the GPU: what this row's allocator cached goes back before the next row
        del trainer
        gc.collect()
        torch.cuda.empty_cache()
    return row


def power_law(xs: list[float], ys: list[float]) -> dict | None:
    """y = a x^b by least squares on logs: {"a", "b", "r2"}; None with fewer than 3 points or a non-positive y."""
    if len(xs) < 3 or min(ys) <= 0:
        return None
    log_x, log_y = np.log(xs), np.log(ys)
    b, log_a = np.polyfit(log_x, log_y, 1)
    residual = log_y - (log_a + b * log_x)
    r2 = 1.0 - float(residual @ residual) / float(((log_y - log_y.mean()) ** 2).sum())
    return {"a": float(np.exp(log_a)), "b": float(b), "r2": r2}


def fits(rows: list[dict]) -> dict:
    """Per architecture: NDCG@10 and loss against compute, and the compute-optimal frontier."""
    out = {}
    for architecture in ARCHITECTURES:
        own = sorted((r for r in rows if r["architecture"] == architecture), key=lambda r: r["train_flops"])
        if not own:
            continue
        compute = [r["train_flops"] for r in own]
        frontier, best = [], -1.0
        for row in own:
            best = max(best, row["ndcg@10"])
            frontier.append({"train_flops": row["train_flops"], "ndcg@10": best})
        out[architecture] = {"ndcg@10": power_law(compute, [r["ndcg@10"] for r in own]),
                             "loss": power_law(compute, [r["loss"] for r in own]), "frontier": frontier,
                             "decades_of_compute": round(float(np.log10(compute[-1] / compute[0])), 2)}
    return out


def write_chart(result: dict, path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return

    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for architecture, color in zip(ARCHITECTURES, ("tab:blue", "tab:orange")):
        own = sorted((r for r in result["rows"] if r["architecture"] == architecture), key=lambda r: r["train_flops"])
        if not own:
            continue
        xs = np.array([r["train_flops"] for r in own])
        for axis, key in zip(axes, ("ndcg@10", "loss")):
            axis.scatter(xs, [r[key] for r in own], color=color, label=architecture)
            fit = result["fits"][architecture][key]
            if fit is not None:
                axis.plot(xs, fit["a"] * xs ** fit["b"], "--", color=color,
                          label=f"{architecture}: {fit['a']:.3g} C^{fit['b']:.3f} (R^2 {fit['r2']:.2f})")
    for axis, key in zip(axes, ("test NDCG@10", "training loss (sampled softmax)")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("training compute (FLOPs)")
        axis.set_ylabel(key)
        axis.legend(fontsize=8)
    save_chart(figure, f"quality against compute, {result['device']}", path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sizes", default=SIZES, help="width x layers, comma-separated")
    parser.add_argument("--architectures", default=",".join(ARCHITECTURES))
    parser.add_argument("--users", type=int, default=100_000, help="synthetic stream users (40 events each)")
    parser.add_argument("--items", type=int, default=100_000, help="synthetic stream items at the start")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--eval-users", type=int, default=20_000)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--store", type=Path, help="an event store to sweep instead of the synthetic stream")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                        help="a config override for every row (repeatable)")
    parser.add_argument("--merge", type=Path, nargs="+", help="sweeps of one setting to join into --out (no training)")
    args = parser.parse_args()
    if args.merge:
        result = merged_results([json.loads(path.read_text()) for path in args.merge], ("setting",),
                                lambda row: (row["architecture"], row["width"], row["layers"]))
        finish(result, args.out)
        return
    data = ({"users": args.users, "items": args.items} if args.store is None
            else {"store": json.loads((args.store / "manifest.json").read_text())["checksum"]})
    setting = {**data, "epochs": args.epochs, "batch_size": args.batch_size, "eval_users": args.eval_users,
               "overrides": args.overrides}
    if args.out.exists():
        result = json.loads(args.out.read_text())
        if result["setting"] != setting:
            raise SystemExit(f"{args.out} holds a sweep with {result['setting']}, not {setting}: choose another --out")
    else:
        result = {**{k: v for k, v in environment(args.device).items() if k not in invocation()},
                  "setting": setting, "rows": [], "runs": []}
    result["runs"].append(invocation())
    done = {(r["architecture"], r["width"], r["layers"]) for r in result["rows"]}
    for architecture in args.architectures.split(","):
        for size in args.sizes.split(","):
            width, layers = (int(part) for part in size.split("x"))
            if (architecture, width, layers) in done:
                continue
            row = measure_row(architecture, width, layers, args)
            result["rows"].append(row)
            result["fits"] = fits(result["rows"])
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2) + "\n")
            print(json.dumps(row))
    finish(result, args.out)


def finish(result: dict, out: Path) -> None:
    result["fits"] = fits(result["rows"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["fits"], indent=2))
    write_chart(result, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
