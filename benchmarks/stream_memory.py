"""What does a stream over an event store hold in memory? For synthetic logs of growing size (the event-store
benchmark's: lognormal user activity, Zipf-like items, one event every 7 s), each prepared into a store, a fresh
process opens the stream (genrec.data.stream_events.StreamEvents) and makes the sequences and rows of its first
three day windows, two ways: over the store's mapped columns (`of_store`, what `--mode stream --dataset store`
does), and from the store read into memory as a log (`of_events(store.events())`, the way before). Reported: peak
RSS (which counts the mapped files' pages the process touched: clean page cache the kernel can drop), the
anonymous memory at the end (what the process itself holds; Linux's RssAnon) and seconds of each; the events and
windows. Prints a table, writes JSON and a PNG beside it.

    python benchmarks/stream_memory.py --events 4000000,16000000,64000000 --out benchmarks/results/stream-memory.json
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

from event_store import PREPARE, measured, sized_logs
from report import invocation, pyplot, save_chart, write_results

OPEN = """
from genrec.data.event_store import EventStore
from genrec.data.stream_events import StreamEvents
store = EventStore.open({store!r})
stream = StreamEvents.of_store(store, 1.0) if {mapped} else StreamEvents.of_events(store.events(), 1.0)
rows = 0
for window in range(min(3, stream.num_windows)):
    users, ends = stream.window_sequences(window, 200)
    events, lengths = stream.histories(users, ends, 200)
    rows += int(stream.items[events].size)
anonymous = [line for line in open("/proc/self/status") if line.startswith("RssAnon")]  # Linux: not file pages
result = {{"windows": stream.num_windows, "rows_read": rows,
           "anonymous_gb": int(anonymous[0].split()[1]) / 2**20 if anonymous else None}}
"""


def write_chart(result: dict, path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    figure, axis = plt.subplots(figsize=(6, 4))
    events = [row["events"] for row in result["rows"]]
    for way, label in (("mapped", "over the store (mapped)"), ("memory", "read into memory")):
        line, = axis.plot(events, [row[f"{way}_peak_rss_gb"] for row in result["rows"]], marker="o",
                          label=f"{label}: peak RSS")
        axis.plot(events, [row[f"{way}_anonymous_gb"] for row in result["rows"]], marker="s", linestyle="--",
                  color=line.get_color(), label=f"{label}: anonymous at the end")
    axis.set(xscale="log", xlabel="events", ylabel="GB", title="opening a stream, first 3 windows")
    axis.legend(fontsize=8)
    save_chart(figure, f"stream memory ({result['machine']})", path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", default="4000000,16000000")
    parser.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/stream-memory.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(dir=args.work))
    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs", **invocation(),
              "rows": []}
    print(f"{'events':>12}{'windows':>9}{'mapped GB':>11}{'anon GB':>11}{'mapped s':>10}{'memory GB':>11}"
          f"{'anon GB':>11}{'memory s':>10}")
    try:
        for events, log, store in sized_logs(work, args.events):
            measured(PREPARE.format(log=str(log), store=str(store)))
            log.unlink()  # not needed past here: disk for the next size
            mapped, mapped_s, mapped_gb = measured(OPEN.format(store=str(store), mapped=True))
            memory, memory_s, memory_gb = measured(OPEN.format(store=str(store), mapped=False))
            mapped_anonymous, memory_anonymous = mapped.pop("anonymous_gb"), memory.pop("anonymous_gb")
            assert mapped == memory, (mapped, memory)  # the same stream either way
            row = {"events": events, **mapped, "mapped_s": mapped_s, "mapped_peak_rss_gb": mapped_gb,
                   "mapped_anonymous_gb": mapped_anonymous, "memory_s": memory_s, "memory_peak_rss_gb": memory_gb,
                   "memory_anonymous_gb": memory_anonymous}
            result["rows"].append(row)
            print(f"{events:>12,}{row['windows']:>9}{mapped_gb:>11.2f}{mapped_anonymous:>11.2f}{mapped_s:>10.1f}"
                  f"{memory_gb:>11.2f}{memory_anonymous:>11.2f}{memory_s:>10.1f}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_results(result, args.out, lambda png: write_chart(result, png))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    main()
