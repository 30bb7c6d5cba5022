"""Does quality grow as a power law of training compute? (paper Fig. 1 / Sec. 4.3)

A sweep of model sizes, each trained the way `genrec train` trains (genrec.train.trainer.Trainer's epoch of steps)
for --epochs passes over one data set, then evaluated on the test split's full catalogue for a seeded sample of
users (eval.max_users). The sweep covers HSTU (pointwise attention, relative bias) and a softmax Transformer of
the same widths and depths (SASRec). Training compute is the matrix-multiply FLOPs the trainer counts, from the
formulas beside the ops: forward + backward of the encoder and of the sampled-softmax logits. For each
architecture the script fits NDCG@10 = a * C^b, the held-out negative log-likelihood (nll: the test items' cross-entropy
under the model's softmax over the whole catalogue, genrec.eval.protocol.TargetLikelihood) = a * C^(-b) and the training
loss = a * C^(-b) by least squares in log-log space, and each also as a power law to a limit (a ceiling or an
irreducible floor: y = limit -+ a * C^b, one parameter more). It reports the exponents and R^2, and the
compute-optimal frontier: at each compute, the best NDCG@10 reached by any size at or below that compute.

--task ranking sweeps the generative ranker instead (the same widths and depths; genrec.train.ranking), with the
DLRM-style DIN baseline that the ranking trainer trains beside it on the same batches: one run per size writes a row
for each (DIN's embedding width is the size's; its MLPs keep 64 hidden units; --set train.baseline_impressions=K
gives it K impressions per user and epoch instead of one). Quality is then the test split's
normalised entropy, the mean over the tasks (lower is better; mean AUC and each task's metrics are in the row), and
the loss the binary cross-entropy. DIN's FLOPs are counted by its own formula (DIN.forward_flops) over the
impressions it learns from; the ranker's as the trainer counts them.

Resumable: every (architecture, size) is one row, saved as it finishes; a second run of the same command skips the
rows in --out, so a sweep spreads over several GPU calls and its JSON merges itself. The fit and the chart are
redrawn from all rows at the end of each run. Sweeps run side by side (one process per architecture, each with its
own --out) join with --merge A.json B.json --out BOTH.json, which checks that their settings agree and trains nothing.

    python benchmarks/scaling_law.py --out benchmarks/results/scaling_law.json                      # a GPU
    python benchmarks/scaling_law.py --out /tmp/law.json --sizes 8x1,16x1 --users 300 --epochs 2 --device cpu
    python benchmarks/scaling_law.py --out /tmp/rank.json --task ranking --sizes 8x1,16x1 --users 300 --device cpu

--data-fractions F1,F2,... (retrieval) lets the data grow with the model: size i trains on the share Fi of the users
(data.train_user_fraction: nested seeded shares), and every row is evaluated on the same held-out events of every
user, so quality is compared on one test set while training compute grows with both parameters and events:

    python benchmarks/scaling_law.py --out /tmp/grows.json --store STORE --sizes 32x2,64x3,128x4 \
        --data-fractions 0.25,0.5,1 --epochs 30 --batch-size 128

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from genrec.config import apply_overrides, parse_assignment  # noqa: E402
from report import environment, invocation, merged_results, pyplot, save_chart  # noqa: E402

# width x layers: over two decades of training compute at a fixed number of epochs
SIZES = "32x2,48x2,64x3,96x4,128x4,192x6,256x8"


@dataclass(frozen=True)
class Task:
    quality: str  # the test metric fitted against compute
    higher_is_better: bool
    architectures: tuple[str, ...]
    held_out_loss: str | None = None  # a test log-likelihood metric fitted too (ranking's quality is one already)


# ranking: the generative ranker (hstu) and the DIN baseline trained beside it on the same batches, one run per size
# (genrec.train.ranking) writing a row for each; quality is the mean normalised entropy of the tasks
TASKS = {"retrieval": Task("ndcg@10", True, ("hstu", "sasrec"), "nll"), "ranking": Task("ne", False, ("hstu", "din"))}


def run_config(architecture: str, width: int, layers: int, fraction: float, args):
    from genrec.config import preset

    config = preset("sasrec" if architecture == "sasrec" else "hstu")
    if args.store is None:
        config.data.dataset, config.data.synthetic_users = "synthetic-stream", args.users
        config.data.synthetic_items = args.items
    else:
        config.data.dataset, config.data.path = "store", str(args.store)
    config.data.max_seq_len, config.data.train_user_fraction = 200, fraction
    model = config.model
    heads = max(1, width // 64)
    model.embedding_dim, model.num_layers, model.num_heads = width, layers, heads
    model.qk_dim = model.v_dim = width // heads
    train = config.train
    train.epochs, train.batch_size, train.device = args.epochs, args.batch_size, args.device
    if args.task == "ranking":  # evaluated on every user's held-out event
        train.task = "ranking"
    else:
        config.eval.max_users, config.eval.ks = args.eval_users, (10, 50)
    for assignment in args.overrides:
        apply_overrides(config, parse_assignment(assignment))
    return config.validate()


def measure_rows(architecture: str, width: int, layers: int, fraction: float, args) -> list[dict]:
    """The rows of one training run: its architecture's, or under ranking the ranker's and DIN's."""
    config = run_config(architecture, width, layers, fraction, args)
    on_gpu = torch.cuda.is_available() and args.device != "cpu"
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        measure = ranking_rows if args.task == "ranking" else retrieval_row
        rows = measure(config, Path(out), architecture, args.epochs)
    for row in rows:
        row.update({"width": width, "layers": layers, "wall_seconds": round(time.perf_counter() - started)})
        if config.data.train_user_fraction < 1.0:  # --data-fractions, or a --set for every row
            row["train_user_fraction"] = config.data.train_user_fraction
        if on_gpu:  # a ranking run's peak holds both models
            row["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    if on_gpu:  # sweeps side by side share the GPU: what this run's allocator cached goes back before the next
        gc.collect()
        torch.cuda.empty_cache()
    return rows


def retrieval_row(config, out: Path, architecture: str, epochs: int) -> list[dict]:
    from genrec.train.trainer import Trainer

    trainer = Trainer(config, out, log=lambda _: None, progress=False)
    stats = [trainer.train_epoch() for _ in range(epochs)]
    metrics = trainer.evaluate(trainer.data.split.test)
    return [{"architecture": architecture, "parameters": sum(p.numel() for p in trainer.model.encoder.parameters()),
             **training(stats, "loss"), "ndcg@10": round(metrics["ndcg@10"], 5), "hr@10": round(metrics["hr@10"], 5),
             "nll": round(metrics["nll"], 5),
             "events": trainer.data.summary["events"], "train_events": trainer.data.split.train.num_events,
             "items": trainer.data.num_items}]


def ranking_rows(config, out: Path, architecture: str, epochs: int) -> list[dict]:
    """The ranker's row (its FLOPs as the trainer counts them) and DIN's. DIN learns from train.baseline_impressions
    impressions per user and epoch, each with a history uniform in 1 .. n - 1 of the user's n training events: its
    FLOPs are those of histories of n / 2 events, the expectation (the matrix multiplies are linear in the history's
    length)."""
    from genrec.train.ranking import RankingTrainer

    trainer = RankingTrainer(config, out, log=lambda _: None, progress=False)
    stats = [trainer.train_epoch() for _ in range(epochs)]
    test = trainer.evaluate(drop_last=0)
    events = np.minimum(trainer.sequences.lengths - trainer.held_out, config.data.max_seq_len)
    impressions = torch.from_numpy(np.repeat(events / 2, config.train.baseline_impressions))
    din_flops = 3 * epochs * trainer.baseline.forward_flops(impressions)  # forward + 2x for backward
    data = {"events": trainer.summary["events"], "items": trainer.num_items}
    ranker = {"architecture": architecture, "parameters": sum(p.numel() for p in trainer.model.encoder.parameters()),
              **training(stats, "loss"), **task_means(test["model"]), **data}
    din = {"architecture": "din", "parameters": sum(p.numel() for name, p in trainer.baseline.named_parameters()
                                                    if not name.startswith("item.")),
           **training(stats, "baseline_loss"), "train_flops": din_flops, **task_means(test["din"]), **data}
    return [ranker, din]


def training(stats: list[dict], loss: str) -> dict:
    """The epochs' compute (the trainer's counted FLOPs), seconds and losses."""
    losses = [round(epoch[loss], 4) for epoch in stats]
    return {"train_flops": sum(epoch["tflops"] * 1e12 * epoch["seconds"] for epoch in stats),
            "train_seconds": round(sum(epoch["seconds"] for epoch in stats), 1), "losses": losses, "loss": losses[-1]}


def task_means(metrics: dict[str, float]) -> dict:
    """Mean AUC (over the tasks where it is defined) and NE of the ranking tasks, and each task's."""
    aucs = [value for key, value in metrics.items() if key.endswith("/auc") and np.isfinite(value)]
    entropies = [value for key, value in metrics.items() if key.endswith("/ne")]
    return {"auc": round(float(np.mean(aucs)), 5) if aucs else None, "ne": round(float(np.mean(entropies)), 5),
            "tasks": {key: round(value, 5) for key, value in metrics.items()}}


def power_law(xs: list[float], ys: list[float]) -> dict | None:
    """y = a x^b by least squares on logs: {"a", "b", "r2"}; None with fewer than 3 points or a non-positive y."""
    if len(xs) < 3 or min(ys) <= 0:
        return None
    log_x, log_y = np.log(xs), np.log(ys)
    b, log_a = np.polyfit(log_x, log_y, 1)
    residual = log_y - (log_a + b * log_x)
    r2 = 1.0 - float(residual @ residual) / float(((log_y - log_y.mean()) ** 2).sum())
    return {"a": float(np.exp(log_a)), "b": float(b), "r2": r2}


def power_law_to_limit(xs: list[float], ys: list[float], higher_is_better: bool) -> dict | None:
    """y = limit - a x^b (quality rising to a ceiling) or y = limit + a x^b (a loss falling to a floor), b < 0: the
    usual form with an irreducible term, a power law of what is left to gain. The limit is searched on a grid
    between the best value measured and the metric's bound (1 for a ceiling, 0 for a floor); R^2 is taken on log y,
    as power_law's, so the two compare (with one parameter more here). {"limit", "kind" (ceiling or floor), "a", "b",
    "r2"}; None with fewer than 4 points."""
    if len(xs) < 4 or min(ys) <= 0:
        return None
    log_x, log_y = np.log(xs), np.log(ys)
    total = float(((log_y - log_y.mean()) ** 2).sum())
    best, bound = (max(ys), 1.0) if higher_is_better else (min(ys), 0.0)
    sign = -1.0 if higher_is_better else 1.0
    fit = None
    for fraction in np.geomspace(1e-4, 1.0, 400):  # the limit's distance past the best value, as a share of the room
        limit = best + (bound - best) * fraction
        if limit == best or (not higher_is_better and limit <= 0):
            continue
        gap = sign * (np.asarray(ys) - limit)  # what is left to gain, > 0
        b, log_a = np.polyfit(log_x, np.log(gap), 1)
        predicted = limit + sign * np.exp(log_a) * np.asarray(xs) ** b
        if (predicted <= 0).any():
            continue
        residual = log_y - np.log(predicted)
        r2 = 1.0 - float(residual @ residual) / total
        if fit is None or r2 > fit["r2"]:
            fit = {"limit": float(limit), "kind": "ceiling" if higher_is_better else "floor",
                   "a": float(np.exp(log_a)), "b": float(b), "r2": r2}
    return fit


def fits(rows: list[dict], task: Task) -> dict:
    """Per architecture: the quality, the held-out loss and the training loss against compute, each as a power law
    and as one to a limit (power_law_to_limit), and the compute-optimal frontier (at each compute, the best quality
    of any size at or below it)."""
    out = {}
    better = max if task.higher_is_better else min
    metrics = [(task.quality, task.higher_is_better), ("loss", False)]
    if task.held_out_loss is not None:
        metrics.append((task.held_out_loss, False))
    for architecture in task.architectures:
        own = sorted((r for r in rows if r["architecture"] == architecture), key=lambda r: r["train_flops"])
        if not own:
            continue
        compute = [r["train_flops"] for r in own]
        frontier, best = [], own[0][task.quality]
        for row in own:
            best = better(best, row[task.quality])
            frontier.append({"train_flops": row["train_flops"], task.quality: best})
        out[architecture] = {"frontier": frontier, "with_limit": {},
                             "decades_of_compute": round(float(np.log10(compute[-1] / compute[0])), 2)}
        for key, higher_is_better in metrics:
            measured = [r for r in own if key in r]  # rows written before the held-out loss existed lack it
            xs, ys = [r["train_flops"] for r in measured], [r[key] for r in measured]
            out[architecture][key] = power_law(xs, ys)
            out[architecture]["with_limit"][key] = power_law_to_limit(xs, ys, higher_is_better)
    return out


def write_chart(result: dict, task: Task, path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return

    titles = {"ndcg@10": "test NDCG@10", "ne": "test normalised entropy (mean of the tasks)",
              "nll": "test negative log-likelihood (nats, whole catalogue)"}
    training_loss = {"ndcg@10": "training loss (sampled softmax)", "ne": "training loss (binary cross-entropy)"}
    panels = [(task.quality, titles[task.quality])]
    if task.held_out_loss is not None and any(task.held_out_loss in r for r in result["rows"]):
        panels.append((task.held_out_loss, titles[task.held_out_loss]))
    panels.append(("loss", training_loss[task.quality]))
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4))
    for architecture, color in zip(task.architectures, ("tab:blue", "tab:orange")):
        own = sorted((r for r in result["rows"] if r["architecture"] == architecture), key=lambda r: r["train_flops"])
        for axis, (key, _) in zip(axes, panels):
            measured = [r for r in own if key in r]
            if not measured:
                continue
            xs = np.array([r["train_flops"] for r in measured])
            axis.scatter(xs, [r[key] for r in measured], color=color, label=architecture)
            fit, limited = result["fits"][architecture][key], result["fits"][architecture]["with_limit"][key]
            grid = np.geomspace(xs.min(), xs.max(), 50)
            if fit is not None:
                axis.plot(grid, fit["a"] * grid ** fit["b"], "--", color=color,
                          label=f"{architecture}: {fit['a']:.3g} C^{fit['b']:.3f} (R^2 {fit['r2']:.2f})")
            if limited is not None:
                sign = -1.0 if limited["kind"] == "ceiling" else 1.0
                axis.plot(grid, limited["limit"] + sign * limited["a"] * grid ** limited["b"], ":", color=color,
                          label=f"{architecture}: to a limit of {limited['limit']:.3g} (R^2 {limited['r2']:.2f})")
    for axis, (_, title) in zip(axes, panels):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("training compute (FLOPs)")
        axis.set_ylabel(title)
        axis.legend(fontsize=8)
    save_chart(figure, f"quality against compute, {result['device']}", path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sizes", default=SIZES, help="width x layers, comma-separated")
    parser.add_argument("--task", choices=sorted(TASKS), default="retrieval",
                        help="ranking: the generative ranker against the DIN baseline, by normalised entropy")
    parser.add_argument("--architectures",
                        help="comma-separated; default: hstu,sasrec (retrieval), hstu (ranking: DIN comes with it)")
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
    parser.add_argument("--data-fractions", help="retrieval: the share of the users each size trains on, one per size "
                        "(data.train_user_fraction; evaluation keeps every user): data that grows with the model")
    args = parser.parse_args()
    sizes = args.sizes.split(",")
    fractions = [float(f) for f in args.data_fractions.split(",")] if args.data_fractions else [1.0] * len(sizes)
    if len(fractions) != len(sizes):
        parser.error(f"--data-fractions takes one share per size: {len(sizes)} sizes, {len(fractions)} shares")
    if args.data_fractions and args.task == "ranking":
        parser.error("--data-fractions samples retrieval's training users")
    architectures = (args.architectures or ("hstu" if args.task == "ranking" else "hstu,sasrec")).split(",")
    if args.task == "ranking" and architectures != ["hstu"]:
        parser.error("--task ranking sweeps the generative ranker (hstu), with DIN trained beside it")
    if args.merge:
        result = merged_results([json.loads(path.read_text()) for path in args.merge], ("setting",),
                                lambda row: (row["architecture"], row["width"], row["layers"]))
        finish(result, args.out)
        return
    data = ({"users": args.users, "items": args.items} if args.store is None
            else {"store": json.loads((args.store / "manifest.json").read_text())["checksum"]})
    # a retrieval sweep's setting has no task, as those written before ranking sweeps existed
    setting = {**data, "epochs": args.epochs, "batch_size": args.batch_size, "eval_users": args.eval_users,
               "overrides": args.overrides, **({"task": "ranking"} if args.task == "ranking" else {}),
               **({"data": "grows with the model (rows' train_user_fraction)"} if args.data_fractions else {})}
    if args.out.exists():
        result = json.loads(args.out.read_text())
        if result["setting"] != setting:
            raise SystemExit(f"{args.out} holds a sweep with {result['setting']}, not {setting}: choose another --out")
    else:
        result = {**{k: v for k, v in environment(args.device).items() if k not in invocation()},
                  "setting": setting, "rows": [], "runs": []}
    result["runs"].append(invocation())
    done = {(r["architecture"], r["width"], r["layers"]) for r in result["rows"]}
    for architecture in architectures:
        for size, fraction in zip(sizes, fractions):
            width, layers = (int(part) for part in size.split("x"))
            if (architecture, width, layers) in done:
                continue
            rows = measure_rows(architecture, width, layers, fraction, args)
            result["rows"] += rows
            result["fits"] = fits(result["rows"], TASKS[args.task])
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2) + "\n")
            for row in rows:
                print(json.dumps(row))
    finish(result, args.out)


def finish(result: dict, out: Path) -> None:
    task = TASKS[result["setting"].get("task", "retrieval")]
    result["fits"] = fits(result["rows"], task)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["fits"], indent=2))
    write_chart(result, task, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
