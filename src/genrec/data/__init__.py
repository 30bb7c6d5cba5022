"""Readers, protocol splits and the jagged SequenceBatch. Stands alone: imports no other genrec layer."""

from __future__ import annotations

from pathlib import Path

from genrec.data.batch import SequenceBatch, make_batch
from genrec.data.event_log import read_event_log
from genrec.data.events import Events
from genrec.data.movielens import read_movielens
from genrec.data.sequence_files import read_s3rec, read_sasrec
from genrec.data.sequences import JaggedEvents, SequenceData, build_sequences
from genrec.data.splits import EvalSplit, ProtocolSplit, leave_one_out, min_length_for
from genrec.data.synthetic import SyntheticSpec, generate_events
from genrec.data.synthetic_stream import StreamSpec, generate_stream, stream_spec

DATASETS = ("synthetic", "synthetic-stream", "ml-1m", "ml-100k", "ml-20m", "sasrec", "s3rec", "events", "store")


def load_events(dataset: str, path: str | Path | None, skip_bad_rows: bool = False,
                synthetic: SyntheticSpec = SyntheticSpec(), stream_overrides: str = "") -> Events:
    """Reads a data set by name; `path` is a directory or file (unused for synthetic); stream_overrides: settings of
    the synthetic stream (genrec.data.synthetic_stream.stream_spec)."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    if dataset == "store":
        raise ValueError("an event store (genrec prepare) is opened with genrec.data.event_store.EventStore, not "
                         "read as a log")
    if dataset == "synthetic":
        return generate_events(synthetic)
    if dataset == "synthetic-stream":  # sized like the static default: its users, 40 events each, its items
        return generate_stream(stream_spec(synthetic.num_users, synthetic.num_items, synthetic.seed,
                                           stream_overrides))
    if path is None:
        raise ValueError(f"dataset {dataset!r} needs --data-dir (a directory or file)")
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file or directory")
    if dataset.startswith("ml-"):
        return read_movielens(dataset, path, skip_bad_rows)
    if path.is_dir():
        raise ValueError(f"{path}: dataset {dataset!r} needs a file, not a directory")
    readers = {"sasrec": read_sasrec, "s3rec": read_s3rec, "events": read_event_log}
    return readers[dataset](path, skip_bad_rows)


__all__ = ["DATASETS", "EvalSplit", "Events", "JaggedEvents", "ProtocolSplit", "SequenceBatch",
           "SequenceData", "StreamSpec", "SyntheticSpec", "build_sequences", "generate_events", "generate_stream",
           "leave_one_out", "load_events", "make_batch", "min_length_for"]
