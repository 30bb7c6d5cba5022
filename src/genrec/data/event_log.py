"""Generic event logs: CSV (with a header) or Parquet with user_id, item_id, timestamp columns.

Optional columns: `rating`, and any further numeric columns, kept as per-event action signals
(click, like, long_view, ...). Parquet needs the `data` extra (pyarrow).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from genrec.data.arrow_text import FLOAT, INT, read_delimited
from genrec.data.events import INT64_MAX, BadRows, Events, numbered_lines, parse_all, parse_int, parse_number

REQUIRED_COLUMNS = ("user_id", "item_id", "timestamp")


def _check_header(path: Path, columns: list[str]) -> list[str]:
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(columns)}")
    return [c for c in columns if c not in REQUIRED_COLUMNS]


def _read_csv(path: Path, skip_bad_rows: bool) -> Events:
    bad = BadRows(str(path), skip_bad_rows)
    reader = csv.reader(line for _, line in numbered_lines(path))
    header = [c.strip() for c in next(reader, [])]
    extra = _check_header(path, header)
    fast = read_delimited(path, ",", [(c, INT if c in REQUIRED_COLUMNS else FLOAT) for c in header], header=True)
    if fast is not None and len(set(header)) == len(header):  # pyarrow when every row is clean
        return _events(path, fast, 0)
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
        parsed_ints = parse_all([(row[index[c]].strip(), c) for c in REQUIRED_COLUMNS], parse_int, line_number, bad)
        parsed_floats = (None if parsed_ints is None else
                         parse_all([(row[index[c]].strip(), c) for c in extra], parse_number, line_number, bad))
        if parsed_floats is None:
            continue
        for c, value in zip(REQUIRED_COLUMNS, parsed_ints):
            ints[c].append(value)
        for c, value in zip(extra, parsed_floats):
            floats[c].append(value)
    columns = {c: np.asarray(v, np.int64) for c, v in ints.items()}
    columns.update({c: np.asarray(v, np.float32) for c, v in floats.items()})
    return _events(path, columns, bad.count)


def _read_parquet(path: Path) -> Events:
    """Ids and timestamps must be integer columns (a float column would be truncated, NaN would become an
    arbitrary id) within int64; the other columns numeric and finite. Parquet has no per-row recovery, so
    --skip-bad-rows does not apply: a bad column is an error."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as error:
        raise ValueError(f"{path}: reading Parquet needs pyarrow (pip install 'genrec[data]')") from error
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as error:
        raise ValueError(f"{path}: not a readable Parquet file ({error})") from error
    extra = _check_header(path, table.column_names)
    columns = {}
    for name in (*REQUIRED_COLUMNS, *extra):
        column = table.column(name)
        if column.null_count:
            raise ValueError(f"{path}: column {name} has {column.null_count} null value(s)")
        kind = column.type
        if name in REQUIRED_COLUMNS:
            if not pa.types.is_integer(kind):
                raise ValueError(f"{path}: column {name} must hold integers, not {kind}")
            values = column.to_numpy()
            if pa.types.is_uint64(kind) and values.size and int(values.max()) > INT64_MAX:
                raise ValueError(f"{path}: column {name} holds values outside the 64-bit integer range")
            columns[name] = values.astype(np.int64)
        else:
            if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
                raise ValueError(f"{path}: column {name} must be numeric, not {kind}")
            values = column.to_numpy().astype(np.float64)
            if not np.isfinite(values).all():
                raise ValueError(f"{path}: column {name} holds NaN or infinite values")
            columns[name] = values.astype(np.float32)
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
