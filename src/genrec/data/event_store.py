"""An on-disk event store: a log of any size, sorted by user and time, in memory-mapped columns.

`genrec prepare` writes it; a run reads it with data.dataset = "store" and data.path = the directory. Training and
evaluation then read each batch's events from the mapped files (genrec.data.sequences.JaggedEvents views): the
protocol split copies per-user bounds, never events, so the events never have to fit in memory.

A store directory:
    manifest.json       format, counts, columns, the source, and a checksum of every column file
    users.npy           [U] int64 source user ids, ascending (every user, however short)
    offsets.npy         [U + 1] int64: user u's events are rows offsets[u]:offsets[u + 1]
    items.npy           [I] int64 source item ids, ascending (dense item id k is items[k - 1])
    item_ids.npy        [E] int64 dense item ids, each user's events by time (ties in file order)
    timestamps.npy      [E] int64, when the source has times
    time_order.npy      [E] int64, with times: the rows by time, ties in row order (what streams read)
    ratings.npy         [E] float32, when the source has a `rating` column
    action.<name>.npy   [E] float32 per further numeric column

Preparation holds at most one input chunk, one partition of users and the id vocabularies in memory: pass 1 counts
each user's events and collects the items; pass 2 re-reads the input and appends each chunk's rows, mapped to dense
ids, to the temporary file of their partition (contiguous ranges of users of about `partition_events` events); then
each partition is sorted on its own and written at its users' offsets in the columns. Event-log files (CSV or TSV
with a header, Parquet; the columns of genrec.data.event_log) are streamed through pyarrow (extra `data`); the
other named data sets are small and are read whole by their readers.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from genrec.data.actions import labels_from
from genrec.data.event_log import REQUIRED_COLUMNS
from genrec.data.events import Events, open_binary
from genrec.data.sequences import JaggedEvents, SequenceData

FORMAT = "genrec-event-store-1"
Chunk = dict[str, np.ndarray]  # user_id, item_id, timestamp (int64), further columns (float32)


def _new_column(path: Path, rows: int, dtype) -> np.memmap:
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(rows,))


def _log_chunks(path: Path, chunk_events: int, skip_bad_rows: bool, skipped: list[int]) -> Iterator[Chunk]:
    """An event log's rows in chunks of about chunk_events, through pyarrow's streaming readers."""
    try:
        import pyarrow as pa
    except ImportError as error:
        raise ValueError("genrec prepare streams event logs through pyarrow: pip install 'genrec[data]'") from error
    try:
        yield from _checked_chunks(path, _batches(path, chunk_events, skip_bad_rows, skipped, pa), pa)
    except pa.ArrowInvalid as error:  # a row pyarrow could not parse or convert: its words, and the file's name
        raise ValueError(f"{path}: {error}") from error


def _batches(path: Path, chunk_events: int, skip_bad_rows: bool, skipped: list[int], pa):
    import pyarrow.csv as csv
    import pyarrow.parquet as pq

    if path.suffix == ".parquet":
        return pq.ParquetFile(path).iter_batches(batch_size=chunk_events)
    delimiter = "\t" if ".tsv" in path.suffixes else ","
    with open_binary(path) as handle:
        header = handle.readline().decode("utf-8-sig").strip().split(delimiter)
    types = {name: pa.int64() if name in REQUIRED_COLUMNS else pa.float64() for name in header}

    def invalid_row(row) -> str:
        if not skip_bad_rows:
            return "error"
        skipped[0] += 1
        return "skip"

    return csv.open_csv(str(path), read_options=csv.ReadOptions(block_size=max(1 << 20, chunk_events * 24)),
                        parse_options=csv.ParseOptions(delimiter=delimiter, invalid_row_handler=invalid_row),
                        convert_options=csv.ConvertOptions(column_types=types))


def _checked_chunks(path: Path, batches, pa) -> Iterator[Chunk]:
    for batch in batches:
        names = batch.schema.names
        missing = [c for c in REQUIRED_COLUMNS if c not in names]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(names)}")
        chunk = {}
        for name in names:
            column = batch.column(name)
            if column.null_count:
                raise ValueError(f"{path}: empty values in column {name!r}")
            if name in REQUIRED_COLUMNS:
                if not pa.types.is_integer(column.type):
                    raise ValueError(f"{path}: column {name!r} must hold integers, found {column.type}")
                chunk[name] = column.to_numpy(zero_copy_only=False).astype(np.int64)
            else:
                values = column.to_numpy(zero_copy_only=False).astype(np.float32)
                if not np.isfinite(values).all():
                    raise ValueError(f"{path}: non-finite value in column {name!r}")
                chunk[name] = values
        yield chunk


def _events_chunks(events: Events) -> Iterator[Chunk]:
    chunk = {"user_id": events.user_ids, "item_id": events.item_ids}
    if events.timestamps is not None:
        chunk["timestamp"] = events.timestamps
    if events.ratings is not None:
        chunk["rating"] = events.ratings.astype(np.float32)
    chunk.update({name: values.astype(np.float32) for name, values in events.actions.items()})
    yield chunk


def _merge_counts(values: np.ndarray, counts: np.ndarray, more: np.ndarray, more_counts: np.ndarray):
    merged, inverse = np.unique(np.concatenate([values, more]), return_inverse=True)
    return merged, np.bincount(inverse, weights=np.concatenate([counts, more_counts]), minlength=merged.size
                               ).astype(np.int64)


INTEGER_COLUMNS = ("item_id", "timestamp")


def _column_files(columns: list[str]) -> dict[str, str]:
    """Input column -> store file of the per-event columns (all but user_id)."""
    named = {"item_id": "item_ids.npy", "timestamp": "timestamps.npy", "rating": "ratings.npy"}
    return {name: named.get(name, f"action.{name}.npy") for name in columns if name != "user_id"}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def prepare_store(chunks: Callable[[], Iterator[Chunk]], out: Path, source: str, partition_events: int = 1 << 24,
                  skipped_rows: Callable[[], int] = lambda: 0, log: Callable[[str], None] = lambda _: None) -> dict:
    """Writes the store of the events `chunks()` yields (called twice: it must give the same rows each time) into
    `out`, which must not exist or be empty. Every chunk holds user_id and item_id (int64), optionally timestamp
    (int64) and further float32 columns, the same in every chunk. `log` gets a line per pass and partition.
    Returns the manifest."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out}: exists and is not empty; genrec prepare writes a new store")
    out.mkdir(parents=True, exist_ok=True)
    users = user_counts = items = np.zeros(0, np.int64)
    columns: list[str] | None = None
    events = 0
    for chunk in chunks():  # pass 1: the users with their event counts, the items
        if columns is None:
            columns = list(chunk)
        elif list(chunk) != columns:
            raise ValueError(f"{source}: columns changed between chunks ({columns} -> {list(chunk)})")
        chunk_users, counts = np.unique(chunk["user_id"], return_counts=True)
        users, user_counts = _merge_counts(users, user_counts, chunk_users, counts)
        items = np.union1d(items, chunk["item_id"])
        events += len(chunk["user_id"])
    if events == 0:
        raise ValueError(f"{source}: no events (empty data set)")
    log(f"pass 1 of 3: {events:,} events, {users.size:,} users, {items.size:,} items")
    offsets = np.zeros(users.size + 1, np.int64)
    np.cumsum(user_counts, out=offsets[1:])
    # partitions: contiguous user ranges of about partition_events events (a user is never split)
    cuts = np.unique(np.searchsorted(offsets, np.arange(0, events, partition_events), side="right") - 1)
    bounds = np.append(cuts, users.size)
    scratch = out / "partitions.tmp"
    scratch.mkdir()
    files = _column_files(columns)
    has_time = "timestamp" in files
    parts = [{name: open(scratch / f"{p}.{name}", "wb") for name in ("user", *files)}
             for p in range(len(cuts))]
    row = 0
    try:
        for chunk in chunks():  # pass 2: rows to their partition's files, with dense ids
            user = np.searchsorted(users, chunk["user_id"])
            columns = {"user": user, "item_id": np.searchsorted(items, chunk["item_id"]).astype(np.int64) + 1,
                       **{name: chunk[name] for name in files if name != "item_id"}}
            row += user.size
            part = np.searchsorted(bounds, user, side="right") - 1
            order = np.argsort(part, kind="stable")
            splits = np.searchsorted(part[order], np.arange(len(cuts) + 1))
            for p in range(len(cuts)):
                take = order[splits[p]:splits[p + 1]]
                if take.size:
                    for name, values in columns.items():
                        parts[p][name].write(values[take].tobytes())
    finally:
        for handles in parts:
            for handle in handles.values():
                handle.close()
    if row != events:
        raise ValueError(f"{source}: the second read gave {row} events, the first {events}")
    log(f"pass 2 of 3: rows written to {len(cuts)} partition(s)")
    outputs = {name: _new_column(out / file, events, np.int64 if name in INTEGER_COLUMNS else np.float32)
               for name, file in files.items()}
    for p in range(len(cuts)):  # pass 3: each partition sorted by user and time, into place
        read = lambda name, dtype: np.fromfile(scratch / f"{p}.{name}", dtype)  # noqa: E731
        # rows reach a partition's files in file order, and lexsort is stable: ties in time keep it
        user = read("user", np.int64)
        order = np.lexsort((read("timestamp", np.int64), user)) if has_time else np.argsort(user, kind="stable")
        start = offsets[bounds[p]]
        for name, output in outputs.items():
            output[start:start + order.size] = read(name, output.dtype)[order]
        log(f"pass 3 of 3: partition {p + 1}/{len(cuts)} sorted ({order.size:,} events)")
    for output in outputs.values():
        output.flush()
    del outputs
    shutil.rmtree(scratch)
    np.save(out / "users.npy", users)
    np.save(out / "offsets.npy", offsets)
    np.save(out / "items.npy", items)
    written = ["users.npy", "offsets.npy", "items.npy", *files.values()]
    if has_time:
        _write_time_order(out, events, partition_events, log)
        written.append("time_order.npy")
    checksums = {file: _sha256(out / file) for file in written}
    manifest = {"format": FORMAT, "source": source, "events": int(events), "users": int(users.size),
                "partitions": len(cuts),
                "items": int(items.size), "skipped_rows": int(skipped_rows()), "columns": files,
                "files": checksums,
                "checksum": hashlib.sha256(json.dumps(checksums, sort_keys=True).encode()).hexdigest()}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _write_time_order(out: Path, events: int, partition_events: int, log: Callable[[str], None]) -> None:
    """time_order.npy: the rows by time, ties in row order (what a stream reads; genrec.data.stream_events), with
    bounded memory: each row goes to the part of its time range (cut at quantiles of a sample of the times), then
    each part is sorted alone and written after the parts before it. Many events at one time make one large part."""
    times = np.load(out / "timestamps.npy", mmap_mode="r")
    sample = np.sort(times[::max(1, events // 100_000)])
    parts = -(-events // partition_events)
    cuts = np.unique(sample[np.arange(1, parts) * sample.size // parts])  # part p holds times in [cuts[p-1], cuts[p])
    scratch = out / "time_order.tmp"
    scratch.mkdir()
    handles = [open(scratch / str(p), "wb") for p in range(cuts.size + 1)]
    try:
        for start in range(0, events, partition_events):
            part = np.searchsorted(cuts, times[start:start + partition_events], side="right")
            order = np.argsort(part, kind="stable")  # rows stay ascending within a part
            splits = np.searchsorted(part[order], np.arange(cuts.size + 2))
            for p, handle in enumerate(handles):
                handle.write((start + order[splits[p]:splits[p + 1]]).astype(np.int64).tobytes())
    finally:
        for handle in handles:
            handle.close()
    output, at = _new_column(out / "time_order.npy", events, np.int64), 0
    for p in range(cuts.size + 1):
        rows = np.fromfile(scratch / str(p), np.int64)
        output[at:at + rows.size] = rows[np.argsort(times[rows], kind="stable")]
        at += rows.size
    output.flush()
    del output
    shutil.rmtree(scratch)
    log(f"time order: {cuts.size + 1} part(s) sorted")


def prepare(dataset: str, path: Path, out: Path, skip_bad_rows: bool = False, chunk_events: int = 1 << 22,
            partition_events: int = 1 << 24, read_events: Callable[[], Events] | None = None,
            log: Callable[[str], None] = lambda _: None) -> dict:
    """The store of a data set: an event log ("events") streamed in chunks, any other named one read whole
    through `read_events`; log: see prepare_store."""
    if dataset == "events":
        skipped = [0]

        def chunks() -> Iterator[Chunk]:
            skipped[0] = 0  # counted again by the second pass
            return _log_chunks(Path(path), chunk_events, skip_bad_rows, skipped)

        return prepare_store(chunks, out, str(path), partition_events, lambda: skipped[0], log)
    events = read_events()
    return prepare_store(lambda: _events_chunks(events), out, events.source, partition_events,
                         lambda: events.skipped_rows, log)


@dataclass
class EventStore:
    path: Path
    manifest: dict

    @classmethod
    def open(cls, path: str | Path) -> "EventStore":
        path = Path(path)
        manifest_path = path / "manifest.json"
        if not manifest_path.is_file():
            raise ValueError(f"{path}: not an event store (no manifest.json; write one with genrec prepare)")
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{path}: store format {manifest.get('format')!r}, this genrec reads {FORMAT!r}")
        return cls(path, manifest)

    def column(self, name: str) -> np.ndarray:
        """A per-event column, memory-mapped (read only); a plain ndarray over the mapping, since np.memmap's
        subclass costs time on every indexing of a batch."""
        return np.asarray(np.load(self.path / self.manifest["columns"][name], mmap_mode="r"))

    @property
    def has_timestamps(self) -> bool:
        return "timestamp" in self.manifest["columns"]

    def sequences(self, min_length: int) -> SequenceData:
        """Every user with at least min_length events as memory-mapped sequences (views: no event is copied)."""
        offsets = np.load(self.path / "offsets.npy")
        users = np.load(self.path / "users.npy")
        columns = self.manifest["columns"]
        jagged = JaggedEvents(self.column("item_id"), offsets,
                              self.column("timestamp") if "timestamp" in columns else None,
                              self.column("rating") if "rating" in columns else None)
        keep = np.diff(offsets) >= min_length
        if not keep.any():
            raise ValueError(f"{self.path}: no user has at least {min_length} events")
        if not keep.all():
            jagged = jagged.select(np.flatnonzero(keep))
        return SequenceData(jagged, np.load(self.path / "items.npy"), users[keep], int((~keep).sum()),
                            str(self.path))

    def events(self) -> Events:
        """The store as a log (source user and item ids, its time and rating columns), ordered by user and time:
        for readers that order events themselves, as streams do (by time). Holds two per-event id columns in
        memory; time and rating stay mapped."""
        offsets = np.load(self.path / "offsets.npy")
        columns = self.manifest["columns"]
        users = np.repeat(np.load(self.path / "users.npy"), np.diff(offsets))
        items = np.load(self.path / "items.npy")[self.column("item_id") - 1]
        return Events(users, items, self.column("timestamp") if "timestamp" in columns else None,
                      self.column("rating") if "rating" in columns else None, source=str(self.path),
                      skipped_rows=self.manifest["skipped_rows"])

    def action_labels(self) -> "StoreLabels":
        """The ranking tasks' labels (genrec.data.actions) of the store's events, computed for the rows a batch
        reads."""
        return StoreLabels(self)

    def verify(self) -> None:
        """Recomputes every file's checksum; a ValueError names the first that differs."""
        for file, expected in self.manifest["files"].items():
            if _sha256(self.path / file) != expected:
                raise ValueError(f"{self.path / file}: checksum differs from the manifest (damaged or changed)")


class StoreLabels:
    """labels [E, A] (genrec.data.actions) of a store's events, computed from its mapped columns for the rows
    asked (labels[index]), never for the whole store at once."""

    def __init__(self, store: EventStore) -> None:
        columns = store.manifest["columns"]
        self.ratings = store.column("rating") if "rating" in columns else None
        self.actions = {name: store.column(name) for name in columns if name not in ("item_id", "timestamp", "rating")}
        self.source, self.rows = str(store.path), store.manifest["events"]
        self.names = labels_from(None if self.ratings is None else self.ratings[:1],
                                 {name: column[:1] for name, column in self.actions.items()}, self.source)[0]

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, len(self.names))

    def __getitem__(self, index) -> np.ndarray:
        return labels_from(None if self.ratings is None else self.ratings[index],
                           {name: column[index] for name, column in self.actions.items()}, self.source)[1]
