"""Where does a training epoch's time go? Trains --warmup-epochs untimed epochs (compilation, autotuning, and under
train.compile = graphs the recording of a graph for each bucketed batch shape: on ml-1m-3k new shapes still turn up
as late as the sixteenth epoch), times --timed-epochs more and reports their median, then profiles one more and
prints the GPU kernels by total time next to the wall time, so a launch-bound step (GPU busy for a small part of the
wall time) shows at once, and the host operations and Python functions by their own time (one more epoch under
cProfile), which say where such a step's host time goes. The first model is the baseline of the others' speedups.
Runs on a CPU too (no kernel table there). JSON + PNG beside it.

    python benchmarks/train_step.py --data-root ../shared/data --dataset ml-1m-3k --warmup-epochs 20 \
        --timed-epochs 5 --models hstu-large,hstu-large:train.compile=step --out benchmarks/results/train-step-step.json
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from public import DATASETS, build_config  # noqa: E402
from report import bar_chart, environment  # noqa: E402

from genrec.train.trainer import Trainer  # noqa: E402

TOP_KERNELS = 8
CUDA = torch.cuda.is_available()


def measure(data_root: Path, dataset: str, model: str, common: list[str], warmup_epochs: int,
            timed_epochs: int) -> dict:
    config, _ = build_config(data_root, dataset, model, "paper", warmup_epochs + timed_epochs + 2, "stable", common)
    with tempfile.TemporaryDirectory() as out_dir:
        trainer = Trainer(config, Path(out_dir), log=lambda _: None, progress=False)
        for _ in range(warmup_epochs):
            trainer.train_epoch()
        epochs = []
        for _ in range(timed_epochs):
            _synchronize()
            started = time.perf_counter()
            stats = trainer.train_epoch()
            _synchronize()
            epochs.append(time.perf_counter() - started)
        with profile(activities=[ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * CUDA) as prof:
            trainer.train_epoch()
            _synchronize()
        python = cProfile.Profile()
        with python:
            trainer.train_epoch()
            _synchronize()
    busy, launches, kernels = gpu_kernels(prof)
    host = [(e.key, e.count, e.self_cpu_time_total) for e in prof.key_averages()
            if e.device_type == torch.autograd.DeviceType.CPU]
    return {"dataset": dataset, "model": model, "epoch_seconds": round(statistics.median(epochs), 3),
            "timed_epochs_seconds": [round(seconds, 3) for seconds in epochs], "warmup_epochs": warmup_epochs,
            "gpu_busy_seconds": round(busy, 3), "launches": launches, "tflops": round(stats["tflops"], 2),
            "top_kernels": largest(kernels), "top_host_ops": largest(host), "top_python": python_functions(python)}


def python_functions(python: cProfile.Profile) -> list[dict]:
    """The Python functions (and the C functions they call by name) with the most time of their own in one
    epoch, by cProfile: where a step bound by the host spends it. A method called through an operator (a tensor
    index, say) counts in its caller's own time."""
    stats = pstats.Stats(python).stats  # {(file, line, name): (primitive calls, calls, own s, cumulative s, callers)}
    own = [(f"{Path(file).name}:{line}({name})" if line else name, calls, seconds * 1e6)
           for (file, line, name), (_, calls, seconds, _, _) in stats.items()]
    return largest(own)


def gpu_kernels(prof) -> tuple[float, int, list[tuple[str, int, float]]]:
    """Seconds in which some kernel ran (the union of their intervals: overlapping kernels count once, the
    profiler's annotations such as Optimizer.step not at all), the number of kernels, and (name, count,
    microseconds) per kernel name."""
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA and not e.is_user_annotation]
    busy, end = 0.0, float("-inf")
    for event in sorted(events, key=lambda e: e.time_range.start):
        busy += max(0.0, event.time_range.end - max(event.time_range.start, end))
        end = max(end, event.time_range.end)
    totals: dict[str, tuple[int, float]] = {}
    for event in events:
        count, us = totals.get(event.name, (0, 0.0))
        totals[event.name] = count + 1, us + event.time_range.elapsed_us()
    return busy / 1e6, len(events), [(name, count, us) for name, (count, us) in totals.items()]


def largest(ops: list[tuple[str, int, float]]) -> list[dict]:
    """The TOP_KERNELS (name, count, microseconds) with the most time."""
    return [{"name": name[:80], "count": count, "seconds": round(us / 1e6, 4)}
            for name, count, us in sorted(ops, key=lambda op: op[2], reverse=True)[:TOP_KERNELS]]


def _synchronize() -> None:
    if CUDA:
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--dataset", default="ml-1m-sas", choices=sorted(DATASETS))
    parser.add_argument("--models", default="hstu-large", help="comma-separated model specs (see public.py)")
    parser.add_argument("--set", action="append", default=[], dest="common", metavar="KEY=VALUE",
                        help="config assignment applied to every run")
    parser.add_argument("--warmup-epochs", type=int, default=1, help="untimed epochs first")
    parser.add_argument("--timed-epochs", type=int, default=1, help="epochs timed (their median is reported)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train_step.json"))
    args = parser.parse_args()
    if args.warmup_epochs < 0 or args.timed_epochs < 1:
        parser.error("--warmup-epochs must be >= 0 and --timed-epochs >= 1")
    result = {**environment("cuda" if CUDA else "cpu"), "rows": []}
    for model in args.models.split(","):
        row = measure(args.data_root, args.dataset, model, args.common, args.warmup_epochs, args.timed_epochs)
        row["speedup"] = round(result["rows"][0]["epoch_seconds"] / row["epoch_seconds"], 2) if result["rows"] else 1.0
        result["rows"].append(row)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        print(f"\n{model}: epoch {row['epoch_seconds']:.2f} s wall ({row['speedup']:.2f}x the first), GPU busy "
              f"{row['gpu_busy_seconds']:.2f} s, {row['launches']} launches, {row['tflops']:.2f} TFLOP/s")
        for title in ("top_kernels", "top_host_ops", "top_python"):
            print(f"  {title.replace('_', ' ')}:")
            for op in row[title]:
                print(f"  {op['seconds']:8.4f} s {op['count']:>7}  {op['name']}")
    chart(result, args.out.with_suffix(".png"))


def chart(result: dict, path: Path) -> None:
    """Epoch wall time per model beside the time the GPU was busy."""
    rows = result["rows"]
    bars = {"epoch, wall": [row["epoch_seconds"] for row in rows]}
    if CUDA:
        bars["GPU busy"] = [row["gpu_busy_seconds"] for row in rows]
    bar_chart(path, f"{rows[0]['dataset']} training epoch, {result['device']}",
              [row["model"].replace(":", "\n") for row in rows], bars, "seconds per epoch")


if __name__ == "__main__":
    main()
