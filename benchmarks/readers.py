"""How much faster are the readers through pyarrow? Each data set read through the fast path
(genrec.data.arrow_text) and through the line-by-line reader, in the same run; median of several reads,
after one warm-up read (which also imports pyarrow).

    python benchmarks/readers.py --data-root ../shared/data --out benchmarks/results/readers.json

Prints a table, writes the JSON and a PNG chart beside it (the chart needs matplotlib, extra `viz`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from genrec.data import event_log, load_events, movielens, sequence_files  # noqa: E402

CASES = {  # name: (reader, path under --data-root)
    "ml-1m-3k (ratings.dat.gz)": ("ml-1m", "ml-1m/partial/ratings-users-1-2999/ratings.dat.gz"),
    "ml-100k (u.data)": ("ml-100k", "ml-100k"),
    "ml-1m-sas (ml-1m.txt)": ("sasrec", "sasrec/ml-1m.txt"),
}


def timed(read, repeats: int) -> tuple[float, object]:
    read()  # warm-up
    seconds, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = read()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), result


def line_by_line() -> list:
    """Patches under which the fast path answers None, as without pyarrow."""
    return [mock.patch.object(module, "read_delimited", lambda *a, **k: None)
            for module in (movielens, sequence_files, event_log)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/readers.json"))
    args = parser.parse_args()
    import pyarrow

    rows = []
    print(f"{'data set':<28}{'events':>10}{'pyarrow s':>11}{'lines s':>9}{'speed-up':>9}  same")
    for name, (dataset, relative) in CASES.items():
        path = args.data_root / relative
        fast_s, fast = timed(lambda: load_events(dataset, path), args.repeats)
        patches = line_by_line()
        for patch in patches:
            patch.start()
        try:
            slow_s, slow = timed(lambda: load_events(dataset, path), args.repeats)
        finally:
            for patch in patches:
                patch.stop()
        same = all(_same(getattr(fast, c), getattr(slow, c)) for c in ("user_ids", "item_ids", "timestamps", "ratings"))
        rows.append({"data": name, "events": len(fast), "pyarrow_s": round(fast_s, 4),
                     "line_by_line_s": round(slow_s, 4), "speedup": round(slow_s / fast_s, 1), "same_rows": same})
        print(f"{name:<28}{len(fast):>10}{fast_s:>11.3f}{slow_s:>9.3f}{slow_s / fast_s:>8.1f}x  {same}")
    result = {"device": f"cpu ({platform.processor() or platform.machine()})", "python": platform.python_version(),
              "pyarrow": pyarrow.__version__, "numpy": np.__version__, "command": " ".join(sys.argv),
              "date": datetime.date.today().isoformat(), "repeats": args.repeats, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    chart(rows, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))


def chart(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 3))
    names = [row["data"] for row in rows]
    positions = np.arange(len(rows))
    axis.barh(positions + 0.2, [row["line_by_line_s"] for row in rows], 0.4, label="line by line", color="#bbbbbb")
    axis.barh(positions - 0.2, [row["pyarrow_s"] for row in rows], 0.4, label="pyarrow", color="#2b6cb0")
    for position, row in zip(positions, rows):
        axis.text(row["line_by_line_s"], position + 0.2, f"  {row['speedup']}x", va="center", fontsize=8)
    axis.set_yticks(positions, names)
    axis.set_xlabel("seconds to read (median)")
    axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
