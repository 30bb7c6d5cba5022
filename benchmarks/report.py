"""What the benchmarks' results files and charts share: where and how a run happened, and pyplot when it is
installed (the `viz` extra). Imported by the scripts beside it, which run with this folder on sys.path."""

from __future__ import annotations

import datetime
import json
import platform
import sys
from pathlib import Path
from typing import Callable


def environment(device: str) -> dict:
    """The device's name ("cpu": the processor's), torch and Python versions, the command line and the UTC date."""
    import torch

    on_gpu = device != "cpu" and torch.cuda.is_available()
    return {"device": torch.cuda.get_device_name() if on_gpu else platform.processor() or platform.machine(),
            "torch": torch.__version__, "python": platform.python_version(), **invocation()}


def invocation() -> dict:
    """The command line and the UTC date of this run."""
    return {"command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def merged_results(results: list[dict], same: tuple[str, ...], row_key: Callable[[dict], tuple]) -> dict:
    """One results file of runs of one script side by side (one process per model on one GPU): the first run's
    fields, every run's rows, and each run's command line under "runs", this merge's last. The fields in `same`
    must agree, and no row (by row_key) may come twice."""
    first = results[0]
    for other in results[1:]:
        differing = [key for key in same if other.get(key) != first.get(key)]
        if differing:
            raise SystemExit(f"cannot merge runs that differ in {', '.join(differing)}")
    rows, seen = [], set()
    for result in results:
        for row in result["rows"]:
            if row_key(row) in seen:
                raise SystemExit(f"{row_key(row)} is in more than one of the runs")
            seen.add(row_key(row))
            rows.append(row)
    runs = [run for result in results
            for run in (result["runs"] if "runs" in result else [{key: result[key] for key in invocation()}])]
    return {**{key: value for key, value in first.items() if key not in invocation()}, "rows": rows,
            "runs": runs + [invocation()]}


def write_results(result: dict, out: Path, chart: Callable[[Path], None]) -> None:
    """Writes the results JSON at `out` and, through `chart(path)`, its PNG beside it; says where."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    chart(out.with_suffix(".png"))
    print(f"results: {out}")


def pyplot():
    """matplotlib.pyplot drawing to files, or None (saying so) when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        print("no chart: matplotlib is not installed (pip install 'genrec[viz]')")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_chart(figure, title: str, path: Path) -> None:
    """Titles, lays out and writes a chart (PNG at 120 dpi), saying where."""
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    print(f"chart: {path}")


def bar_chart(path: Path, title: str, ticks: list[str], bars: dict[str, list[float]], ylabel: str) -> None:
    """Side-by-side bars, one series per entry of `bars` (label -> a value per tick), as a PNG at `path`."""
    plt = pyplot()
    if plt is None:
        return
    figure, axis = plt.subplots(figsize=(max(5.0, 1.6 * len(ticks)), 3.8))
    width = 0.8 / len(bars)
    for index, (label, values) in enumerate(bars.items()):
        axis.bar([place + width * (index - (len(bars) - 1) / 2) for place in range(len(ticks))], values, width,
                 label=label)
    axis.set_xticks(range(len(ticks)), ticks, fontsize=7)
    axis.set_ylabel(ylabel)
    axis.legend(fontsize=8)
    save_chart(figure, title, path)
