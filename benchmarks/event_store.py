"""What does the on-disk event store cost and save? For synthetic event logs of growing size (CSV, user_id, item_id,
timestamp; lognormal history lengths, Zipf-like item popularity), in the same run:
- `genrec prepare` (bounded memory): wall time and peak RSS, against reading the log into memory the way a run
  without a store does (genrec.data.load_events + build_sequences), each in a fresh process;
- the training data path: batches/s of make_batch over epochs of random user batches (256 users, the last 200
  events each, as tensors), from the store's memory-mapped views and from in-memory arrays: the median of epochs
  2-4, and the first epoch alone (page faults on first touch; the page cache is warm, the files just written).
Prints a table, writes JSON and a PNG beside it.

    python benchmarks/event_store.py --events 1000000,4000000,16000000 --out benchmarks/results/event_store.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np

SRC = str(Path(__file__).resolve().parents[1] / "src")
BATCH_USERS, MAX_LEN = 256, 200


def write_log(path: Path, events: int, seed: int = 0) -> None:
    """A log of `events` rows in time order: users with lognormal activity, items by a Zipf-like law."""
    import pyarrow as pa
    import pyarrow.csv as csv

    rng = np.random.default_rng(seed)
    num_users = max(10, events // 100)
    activity = rng.lognormal(0.0, 1.2, num_users)
    writer = None
    chunk = 1 << 22
    for start in range(0, events, chunk):
        n = min(chunk, events - start)
        users = rng.choice(num_users, n, p=activity / activity.sum())
        items = (rng.pareto(1.1, n) * 50).astype(np.int64) % max(1000, events // 20)
        times = np.arange(start, start + n, dtype=np.int64) * 7
        table = pa.table({"user_id": users, "item_id": items, "timestamp": times})
        if writer is None:
            writer = csv.CSVWriter(str(path), table.schema)
        writer.write_table(table)
    writer.close()


def sized_logs(work: Path, sizes: str) -> Iterator[tuple[int, Path, Path]]:
    """For each of the comma-separated sizes: (events, a synthetic log of them written in `work`, where its store
    goes); both are removed when the caller moves on."""
    for events in (int(size) for size in sizes.split(",")):
        log, store = work / f"log-{events}.csv", work / f"store-{events}"
        write_log(log, events)
        yield events, log, store
        log.unlink(missing_ok=True)
        shutil.rmtree(store, ignore_errors=True)


FOOTER = """
import json, resource
result["peak_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps(result))
"""


def measured(code: str) -> tuple[dict, float, float]:
    """(the `result` dict the code builds, wall seconds, peak RSS in GB) of a fresh Python process running it."""
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", code + FOOTER], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": SRC})
    wall = time.perf_counter() - started
    if run.returncode != 0:
        raise RuntimeError(run.stderr[-2000:])
    result = json.loads(run.stdout.strip().splitlines()[-1])
    return result, wall, result.pop("peak_kb") / 2**20


PREPARE = """
from pathlib import Path; from genrec.data.event_store import prepare
m = prepare("events", Path({log!r}), Path({store!r}))
result = {{"partitions": m["partitions"], "users": m["users"], "items": m["items"]}}
"""
IN_MEMORY = """
from genrec.data import build_sequences, load_events
data = build_sequences(load_events("events", {log!r}), "stable", 2)
result = {{"users": data.sequences.num_users}}
"""
BATCHES = """
import time; import numpy as np
from genrec.data import make_batch
from genrec.data.event_store import EventStore
data = EventStore.open({store!r}).sequences(2).sequences.drop_last(1)
if {in_memory}:
    data = data.compact()
    data.item_ids, data.timestamps = np.array(data.item_ids), np.array(data.timestamps)
order = np.random.default_rng(0).permutation(data.num_users)
epochs = []
for epoch in range(4):
    started = time.perf_counter()
    for first in range(0, len(order), {batch}):
        make_batch(data, order[first:first + {batch}], {max_len})
    epochs.append(time.perf_counter() - started)
batches = -(-len(order) // {batch})
result = {{"batches_per_s": batches / float(np.median(epochs[1:])), "first_epoch_batches_per_s": batches / epochs[0]}}
"""


def write_chart(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    events = [row["events"] for row in rows]
    figure, (memory, speed) = plt.subplots(1, 2, figsize=(11, 4.2))
    memory.plot(events, [row["prepare_peak_rss_gb"] for row in rows], marker="o", label="genrec prepare")
    baseline = [row for row in rows if row["in_memory_peak_rss_gb"] is not None]
    memory.plot([row["events"] for row in baseline], [row["in_memory_peak_rss_gb"] for row in baseline], marker="o",
                label="read into memory")
    memory.plot(events, [row["log_gb"] for row in rows], "k--", label="CSV log size")
    memory.set(xscale="log", xlabel="events", ylabel="GB", title=f"peak RSS ({result['machine']})")
    memory.legend(fontsize=8)
    speed.plot(events, [row["store_batches_per_s"] for row in rows], marker="o", label="from the store (mmap)")
    speed.plot([row["events"] for row in baseline], [row["memory_batches_per_s"] for row in baseline], marker="o",
               label="in memory")
    speed.set(xscale="log", ylim=(0, None), xlabel="events", ylabel="batches / s",
              title=f"training batches ({BATCH_USERS} users x {MAX_LEN} events)")
    speed.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", default="1000000,4000000,16000000")
    parser.add_argument("--in-memory-up-to", type=int, default=64_000_000,
                        help="largest log also read into memory (the baseline needs ~170 bytes an event)")
    parser.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/event_store.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(dir=args.work))
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "python": platform.python_version(),
              "numpy": np.__version__, "command": " ".join(sys.argv), "date": datetime.date.today().isoformat(),
              "rows": []}
    print(f"{'events':>12}{'log GB':>8}{'prepare s':>11}{'prepare GB':>12}{'in-mem s':>10}{'in-mem GB':>11}"
          f"{'store b/s':>11}{'memory b/s':>12}{'ratio':>7}")
    try:
        for events, log, store in sized_logs(work, args.events):
            info, prepare_s, prepare_gb = measured(PREPARE.format(log=str(log), store=str(store)))
            baseline = events <= args.in_memory_up_to
            memory_s = memory_gb = None
            if baseline:
                _, memory_s, memory_gb = measured(IN_MEMORY.format(log=str(log)))
            batches = {kind: measured(BATCHES.format(store=str(store), in_memory=kind == "memory", batch=BATCH_USERS,
                                                     max_len=MAX_LEN))[0]
                       for kind in (("store", "memory") if baseline else ("store",))}
            batches.setdefault("memory", {"batches_per_s": None, "first_epoch_batches_per_s": None})
            row = {"events": events, "log_gb": log.stat().st_size / 2**30, **info, "prepare_s": prepare_s,
                   "prepare_peak_rss_gb": prepare_gb, "in_memory_s": memory_s, "in_memory_peak_rss_gb": memory_gb,
                   "store_batches_per_s": batches["store"]["batches_per_s"],
                   "memory_batches_per_s": batches["memory"]["batches_per_s"],
                   "store_first_epoch_batches_per_s": batches["store"]["first_epoch_batches_per_s"],
                   "memory_first_epoch_batches_per_s": batches["memory"]["first_epoch_batches_per_s"]}
            row["store_over_memory"] = (row["store_batches_per_s"] / row["memory_batches_per_s"] if baseline
                                        else None)
            result["rows"].append(row)
            dash = lambda value, width, digits: (f"{value:>{width}.{digits}f}" if value is not None  # noqa: E731
                                                 else f"{'-':>{width}}")
            print(f"{events:>12,}{row['log_gb']:>8.2f}{prepare_s:>11.1f}{prepare_gb:>12.2f}{dash(memory_s, 10, 1)}"
                  f"{dash(memory_gb, 11, 2)}{row['store_batches_per_s']:>11.1f}"
                  f"{dash(row['memory_batches_per_s'], 12, 1)}{dash(row['store_over_memory'], 7, 2)}", flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_chart(result, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
