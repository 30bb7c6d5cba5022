"""Generic event logs: CSV (with a header) or Parquet with user_id, item_id, timestamp columns.

Optional columns: `rating`, and any further numeric columns, kept as per-event action signals
(click, like, long_view, ...). Parquet needs the `data` extra (pyarrow).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from genrec.data.events import BadRows, Events, open_text, parse_int, parse_number

REQUIRED_COLUMNS = ("user_id", "item_id", "timestamp")


def _check_header(path: Path, columns: list[str]) -> list[str]:
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(columns)}")
    return [c for c in columns if c not in REQUIRED_COLUMNS]


def _read_csv(path: Path, skip_bad_rows: bool) -> Events:
    bad = BadRows(str(path), skip_bad_rows)
    with open_text(path) as handle:
        reader = csv.reader(handle)
        header = [c.strip() for c in next(reader, [])]
        extra = _check_header(path, header)
        index = {c: i for i, c in enumerate(header)}
        ints = {c: [] for c in REQUIRED_COLUMNS}
        floats = {c: [] for c in extra}
        for row in reader:
            line_number = reader.line_num
            if not row:
                continue
            if len(row) != len(header):
                bad.report(line_number, f"expected {len(header)} fields, got {len(row)}")
                continue
            parsed_ints = [parse_int(row[index[c]].strip(), c, line_number, bad) for c in REQUIRED_COLUMNS]
            if any(v is None for v in parsed_ints):
                continue
            parsed_floats = [parse_number(row[index[c]].strip(), c, line_number, bad) for c in extra]
            if any(v is None for v in parsed_floats):
                continue
            for c, value in zip(REQUIRED_COLUMNS, parsed_ints):
                ints[c].append(value)
            for c, value in zip(extra, parsed_floats):
                floats[c].append(value)
    columns = {c: np.asarray(v, np.int64) for c, v in ints.items()}
    columns.update({c: np.asarray(v, np.float32) for c, v in floats.items()})
    return _events(path, columns, bad.count)


def _read_parquet(path: Path) -> Events:
    try:
        import pyarrow.parquet as pq
    except ImportError as error:
        raise ValueError(f"{path}: reading Parquet needs pyarrow (pip install 'genrec[data]')") from error
    table = pq.read_table(path)
    extra = _check_header(path, table.column_names)
    columns = {}
    for name in (*REQUIRED_COLUMNS, *extra):
        column = table.column(name)
        if column.null_count:
            raise ValueError(f"{path}: column {name} has {column.null_count} null value(s)")
        dtype = np.int64 if name in REQUIRED_COLUMNS else np.float32
        try:
            columns[name] = column.to_numpy().astype(dtype)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: column {name} is not numeric ({column.type})") from error
    return _events(path, columns, 0)


def _events(path: Path, columns: dict[str, np.ndarray], skipped: int) -> Events:
    actions = {c: v for c, v in columns.items() if c not in (*REQUIRED_COLUMNS, "rating")}
    return Events(columns["user_id"], columns["item_id"], timestamps=columns["timestamp"],
                  ratings=columns.get("rating"), actions=actions, source=str(path),
                  skipped_rows=skipped)


def read_event_log(path: Path, skip_bad_rows: bool = False) -> Events:
    """Reads `*.csv[.gz]` or `*.parquet`."""
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    if path.suffix == ".parquet":
        return _read_parquet(path)
    return _read_csv(path, skip_bad_rows)
