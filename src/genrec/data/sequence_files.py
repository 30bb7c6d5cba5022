"""Preprocessed sequence files: SASRec (`user item` per line) and S3-Rec (`user item item ...`).

Both list each user's items in time order and carry no timestamps, so the time bias is off.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from genrec.data.arrow_text import INT, read_delimited
from genrec.data.events import BadRows, Events, parse_int, split_lines


def read_sasrec(path: Path, skip_bad_rows: bool = False) -> Events:
    fast = read_delimited(path, " ", [("user", INT), ("item", INT)])  # through pyarrow when every row is clean
    if fast is not None:
        return Events(fast["user"], fast["item"], source=str(path))
    bad = BadRows(str(path), skip_bad_rows)
    users, items = [], []
    for line_number, fields in split_lines(path, None):
        if len(fields) != 2:
            bad.report(line_number, f"expected 2 fields 'user item', got {len(fields)}")
            continue
        user = parse_int(fields[0], "user id", line_number, bad)
        item = parse_int(fields[1], "item id", line_number, bad) if user is not None else None
        if item is not None:
            users.append(user)
            items.append(item)
    return Events(np.asarray(users, np.int64), np.asarray(items, np.int64), source=str(path),
                  skipped_rows=bad.count)


def read_s3rec(path: Path, skip_bad_rows: bool = False) -> Events:
    """One line per user, listing all of that user's items: a user on a second line means the file is not
    S3-Rec's (MovieLens' u.data, say, would read as users with three items each) and is an error."""
    bad = BadRows(str(path), skip_bad_rows)
    users, items = [], []
    first_line: dict[int, int] = {}
    for line_number, fields in split_lines(path, None):
        if len(fields) < 2:
            bad.report(line_number, "expected 'user item [item ...]', got fewer than 2 fields")
            continue
        values = []
        for position, text in enumerate(fields):
            value = parse_int(text, "user id" if position == 0 else "item id", line_number, bad)
            if value is None:  # one bad field makes one bad row
                break
            values.append(value)
        if len(values) < len(fields):
            continue
        if values[0] in first_line:
            bad.report(line_number, f"user {values[0]} was listed on line {first_line[values[0]]} already: an S3-Rec "
                                    "file has one line per user (is this another format?)")
            continue
        first_line[values[0]] = line_number
        users.extend([values[0]] * (len(values) - 1))
        items.extend(values[1:])
    return Events(np.asarray(users, np.int64), np.asarray(items, np.int64), source=str(path),
                  skipped_rows=bad.count)
