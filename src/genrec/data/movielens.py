"""MovieLens readers: ML-1M (`ratings.dat`, `::`), ML-100K (`u.data`, tab), ML-20M (`ratings.csv`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from genrec.data.arrow_text import EMPTY, FLOAT, INT, read_delimited
from genrec.data.events import BadRows, Events, find_data_file, parse_int, parse_number, split_lines

# file names tried, in order, inside a --data-dir; separator; header line; encoding
_LAYOUTS = {
    "ml-1m": (("ratings.dat", "ratings.dat.gz"), "::", False, "latin-1"),
    "ml-100k": (("u.data", "u.data.gz"), "\t", False, "latin-1"),
    "ml-20m": (("ratings.csv", "ratings.csv.gz"), ",", True, "utf-8"),
}


def read_movielens(dataset: str, path: Path, skip_bad_rows: bool = False) -> Events:
    """Reads `user item rating timestamp` rows; ratings and timestamps are kept."""
    if dataset not in _LAYOUTS:
        raise ValueError(f"unknown MovieLens dataset {dataset!r}; expected one of {sorted(_LAYOUTS)}")
    names, separator, header, encoding = _LAYOUTS[dataset]
    ratings_file = find_data_file(path, names, f"dataset {dataset}")
    fast = _read_fast(ratings_file, separator, header, encoding)
    if fast is not None:
        return Events(fast["user"], fast["item"], timestamps=fast["timestamp"], ratings=fast["rating"],
                      source=str(ratings_file))
    bad = BadRows(str(ratings_file), skip_bad_rows)
    users, items, ratings, times = [], [], [], []
    for line_number, fields in split_lines(ratings_file, separator, encoding, skip_header=header):
        if len(fields) != 4:
            bad.report(line_number, f"expected 4 fields separated by {separator!r}, got {len(fields)}")
            continue
        user = parse_int(fields[0], "user id", line_number, bad)
        item = parse_int(fields[1], "item id", line_number, bad) if user is not None else None
        rating = parse_number(fields[2], "rating", line_number, bad) if item is not None else None
        stamp = parse_int(fields[3], "timestamp", line_number, bad) if rating is not None else None
        if stamp is None:
            continue
        users.append(user)
        items.append(item)
        ratings.append(rating)
        times.append(stamp)
    return Events(np.asarray(users, np.int64), np.asarray(items, np.int64),
                  timestamps=np.asarray(times, np.int64), ratings=np.asarray(ratings, np.float32),
                  source=str(ratings_file), skipped_rows=bad.count)


def _read_fast(path: Path, separator: str, header: bool, encoding: str) -> dict[str, np.ndarray] | None:
    """Through pyarrow when every row is well formed (genrec.data.arrow_text); `::` as ':' with empty fields
    between."""
    fields = [("user", INT), ("item", INT), ("rating", FLOAT), ("timestamp", INT)]
    delimiter = separator
    if separator == "::":
        delimiter = ":"
        fields = [fields[0], ("gap1", EMPTY), fields[1], ("gap2", EMPTY), fields[2], ("gap3", EMPTY), fields[3]]
    return read_delimited(path, delimiter, fields, skip_rows=int(header), encoding=encoding)
