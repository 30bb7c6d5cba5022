"""Do the paper's public-benchmark findings hold? Trains and evaluates SASRec, HSTU and HSTU-large
on the leave-one-out protocol and writes benchmarks/results/public.json (merged run by run, so a
run cut off by a time limit keeps what finished).

    python benchmarks/public.py --data-root ../shared/data --datasets ml-1m-sas,ml-1m-3k \
        --models sasrec,hstu,hstu-large --modes paper --epochs 101

A model is a preset, optionally followed by config assignments for one-at-a-time ablations:
`hstu-large:train.loss.num_negatives=512:model.dropout=0.3`. A model whose items read content
(`hstu:model.item_representation=content`) gets the data set's item features (ITEM_FEATURES).
--jobs N trains N runs at once on the same GPU; each row records how many ran beside it, since seconds
per epoch are only comparable between rows with the same count. Keep N small (2-4): HSTU-large on ML-1M
keeps an H100 busy enough that 12 jobs at once finished none within 9.5 minutes (the same runs take ~2
minutes alone).

    python benchmarks/public.py --merge PART.json [PART.json ...] --out benchmarks/results/public.json

merges results files written elsewhere (a device call's) into --out, row by row as a run would.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from report import environment  # noqa: E402
from genrec.config import Config, apply_overrides, parse_assignment, preset  # noqa: E402
from genrec.train.trainer import Trainer  # noqa: E402

DATASETS = {  # name: (reader, path under --data-root)
    "ml-1m-sas": ("sasrec", "sasrec/ml-1m.txt"),
    "ml-1m-3k": ("ml-1m", "ml-1m/partial/ratings-users-1-2999/ratings.dat.gz"),
    "ml-1m": ("ml-1m", "ml-1m"),
    "ml-100k": ("ml-100k", "ml-100k"),
    "beauty": ("s3rec", "s3rec/Beauty.txt"),
    "sports": ("s3rec", "s3rec/Sports_and_Outdoors.txt"),
    "toys": ("s3rec", "s3rec/Toys_and_Games.txt"),
    "games": ("sasrec", "sasrec/Video.txt"),
    "synthetic-stream": ("synthetic-stream", ""),  # generated (2,000 users, 80,000 events), not read
}
# name: item content features under --data-root (genrec.data.item_features), for model.item_representation != id;
# the synthetic stream generates its own
ITEM_FEATURES = {"ml-1m-3k": "ml-1m", "ml-1m": "ml-1m", "ml-100k": "ml-100k", "synthetic-stream": "topics",
                 "beauty": "s3rec/Beauty_item2attributes.json", "toys": "s3rec/Toys_and_Games_item2attributes.json",
                 "sports": "s3rec/Sports_and_Outdoors_item2attributes.json"}
METRICS = ("hr@10", "ndcg@10", "hr@50", "hr@200", "ndcg@200", "mrr", "nll")  # nll: rows since 2026-12-06


def build_config(data_root: Path, dataset: str, model: str, mode: str, epochs: int, tie_order: str,
                 common: list[str]) -> tuple[Config, list[str]]:
    """The config of one run (model spec `preset:key=value:...`) and the overrides applied to it."""
    reader, relative = DATASETS[dataset]
    name, *assignments = model.split(":")
    config = preset(name)
    config.data.dataset, config.data.path = reader, str(data_root / relative)
    config.data.mode, config.data.tie_order = mode, tie_order
    config.train.epochs = epochs
    overrides = [*common, *assignments]
    for assignment in overrides:
        apply_overrides(config, parse_assignment(assignment))
    if config.model.item_representation != "id":
        if dataset not in ITEM_FEATURES:
            raise ValueError(f"{dataset} has no item features: {model} cannot run on it")
        features = ITEM_FEATURES[dataset]
        config.data.item_features = features if reader == "synthetic-stream" else str(data_root / features)
    return config, overrides


def run_one(data_root: Path, dataset: str, model: str, mode: str, epochs: int, tie_order: str,
            common: list[str], jobs: int, sharing: int) -> dict:
    if "OMP_NUM_THREADS" not in os.environ:  # set by hand when several processes share the machine
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        # every run on the machine shares its cores: this process's jobs, or all the runs sharing the GPU
        torch.set_num_threads(max(1, cores // max(jobs, sharing)))
    config, overrides = build_config(data_root, dataset, model, mode, epochs, tie_order, common)
    with tempfile.TemporaryDirectory() as out_dir:
        started = time.perf_counter()
        summary = Trainer(config, Path(out_dir), log=lambda _: None, progress=False).fit()
        seconds = time.perf_counter() - started
    device = environment("cuda")["device"]
    return {"dataset": dataset, "model": model, "mode": mode, "tie_order": tie_order, "epochs": epochs,
            "device": device, "torch": torch.__version__, "overrides": overrides, "concurrent_jobs": jobs,
            "runs_sharing_gpu": sharing, "epochs_run": summary["epoch"], "eval_scores": "fp32",
            # rows without these two fields were evaluated before issue 21: ties ranked the target first and the
            # last history position asked about its own time instead of the held-out event's
            "ties": "pessimistic", "query_time": "target",
            "selected_epoch": summary["best_epoch"], "seconds": round(seconds, 1),
            # median: the first epoch also pays for kernel compilation and autotuning
            "seconds_per_epoch": round(statistics.median(summary["epoch_seconds"] or [0.0]), 3),
            "metrics": {k: round(summary["metrics"][k], 4) for k in METRICS}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, help="where the data sets live (needed unless --merge)")
    parser.add_argument("--datasets", default="ml-1m-sas,ml-1m-3k")
    parser.add_argument("--models", default="sasrec,hstu,hstu-large", help="comma-separated model specs")
    parser.add_argument("--modes", default="paper")
    parser.add_argument("--epochs", type=int, default=101)
    parser.add_argument("--tie-order", default="stable", choices=("stable", "paper"))
    parser.add_argument("--set", action="append", default=[], dest="common", metavar="KEY=VALUE",
                        help="config assignment applied to every run (e.g. train.patience=10)")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once on the one device")
    parser.add_argument("--runs-sharing-gpu", type=int, default=0,
                        help="processes training on the device in all, when others share it (e.g. through MPS); "
                             "recorded with each row, default: this process's runs at once")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/public.json"))
    parser.add_argument("--merge", type=Path, nargs="+", default=None, metavar="PART",
                        help="merge these results files into --out instead of training")
    parser.add_argument("--merged-command", default=None,
                        help="with --merge: the command to record (default: each part's own)")
    args = parser.parse_args()
    if args.merge is not None:
        merge_files(args.out, args.merge, args.merged_command)
        return
    if args.data_root is None:
        parser.error("--data-root is needed to train")
    result = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": []}
    result.update({**environment("cuda"), "triton": _triton_version()})
    runs = [(dataset, model, mode) for dataset in args.datasets.split(",") for mode in args.modes.split(",")
            for model in args.models.split(",")]
    print(f"{'dataset':<11}{'mode':<10}{'s':>7}{'s/ep':>7}" + "".join(f"{m:>9}" for m in METRICS) + "  model")
    failed = []
    with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(run_one, args.data_root, dataset, model, mode, args.epochs, args.tie_order,
                               args.common, min(args.jobs, len(runs)),
                               args.runs_sharing_gpu or min(args.jobs, len(runs))): (dataset, model, mode)
                   for dataset, model, mode in runs}
        for future in concurrent.futures.as_completed(futures):
            try:
                row = future.result()
            except Exception as error:  # one failed run must not take the others' results with it
                failed.append(futures[future])
                print(f"FAILED {' '.join(futures[future])}: {error!r}"[:500], flush=True)
                continue
            _merge(result, row)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2))
            print(f"{row['dataset']:<11}{row['mode']:<10}{row['seconds']:>7.0f}{row['seconds_per_epoch']:>7.2f}"
                  + "".join(f"{row['metrics'][m]:>9.4f}" for m in METRICS) + f"  {row['model']}", flush=True)
    if failed:
        sys.exit(f"{len(failed)} of {len(runs)} runs failed: {failed}")


def merge_files(out: Path, parts: list[Path], command: str | None = None) -> None:
    """Each part's rows merged into `out` (created if absent); the header (device, versions, command, date)
    becomes the last part's."""
    merged = json.loads(out.read_text()) if out.is_file() else {"runs": []}
    for path in parts:
        part = json.loads(path.read_text())
        for row in part.pop("runs"):
            _merge(merged, row)
        merged.update(part, **({"command": command} if command else {}))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(merged, indent=2))
    print(f"merged {len(parts)} file(s) into {out}: {len(merged['runs'])} rows")


def _merge(result: dict, row: dict) -> None:
    """A rerun of the same (dataset, model spec, mode, tie order, epochs, overrides, evaluation rules) replaces
    the old row; the overrides count because --set (e.g. train.patience=5) changes the run without changing the
    spec, and rows of the old evaluation rules stay beside the new ones."""
    fields = ("dataset", "model", "mode", "tie_order", "epochs", "overrides", "ties", "query_time")
    result["runs"] = [r for r in result["runs"] if any(r.get(f) != row.get(f) for f in fields)] + [row]


def _triton_version() -> str | None:
    try:
        import triton
        return triton.__version__
    except ImportError:
        return None


if __name__ == "__main__":
    main()
