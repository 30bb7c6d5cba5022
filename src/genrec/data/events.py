"""Interaction events in file order, and the row-level error policy shared by every reader."""

from __future__ import annotations

import gzip
import io
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

if TYPE_CHECKING:
    from genrec.data.item_features import ItemFeatures
    from genrec.data.user_series import UserChanges


@dataclass
class Events:
    """One row per interaction, in the order the source lists them.

    timestamps is None for sources without time (the time bias is then off); ratings holds the
    explicit rating where the source has one; actions holds extra per-event signal columns; user_changes, a
    slow-changing user feature's changes, and item_features, the items' content, where the source generates them
    (genrec.data.user_series, genrec.data.item_features).
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    timestamps: np.ndarray | None = None
    ratings: np.ndarray | None = None
    actions: dict[str, np.ndarray] = field(default_factory=dict)
    source: str = ""
    skipped_rows: int = 0
    user_changes: UserChanges | None = None
    item_features: ItemFeatures | None = None

    def __post_init__(self) -> None:
        n = len(self.user_ids)
        columns = {"item_ids": self.item_ids, "timestamps": self.timestamps, "ratings": self.ratings}
        columns.update({f"actions[{k}]": a for k, a in self.actions.items()})
        for name, column in columns.items():
            if column is not None and len(column) != n:
                raise ValueError(f"{self.source}: column {name} has {len(column)} rows, expected {n}")
        if n == 0:
            raise ValueError(f"{self.source}: no events (empty data set)")

    def __len__(self) -> int:
        return len(self.user_ids)


class BadRows:
    """Raises on the first malformed row, or (skip=True) skips and counts them."""

    def __init__(self, source: str, skip: bool) -> None:
        self.source = source
        self.skip = skip
        self.count = 0

    def report(self, line_number: int, reason: str) -> None:
        if not self.skip:
            raise ValueError(f"{self.source}:{line_number}: {reason} (use --skip-bad-rows to skip such rows)")
        self.count += 1


def find_data_file(path: Path, names: tuple[str, ...], what: str) -> Path:
    """`path` itself when it is a file, else the first of `names` inside the directory `path`."""
    if path.is_file():
        return path
    for name in names:
        if (path / name).is_file():
            return path / name
    raise ValueError(f"{path}: no {' or '.join(names)} found for {what}")


INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
FLOAT32_MAX = float(np.finfo(np.float32).max)
UTF8_BOM = b"\xef\xbb\xbf"


def open_binary(path: Path) -> io.BufferedIOBase:
    """Opens a file for reading bytes, transparently gunzipping `*.gz`; a missing file is a clear error."""
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def numbered_lines(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """Yields (1-based line number, line) with a leading UTF-8 byte-order mark dropped. Lines are decoded one
    by one, so undecodable text is an error naming its line; so is a damaged gzip stream."""
    line_number = 0
    try:
        with open_binary(path) as handle:
            for line_number, raw in enumerate(handle, start=1):
                if line_number == 1 and raw.startswith(UTF8_BOM):
                    raw = raw[len(UTF8_BOM):]
                try:
                    yield line_number, raw.decode(encoding)
                except UnicodeDecodeError as error:
                    raise ValueError(f"{path}:{line_number}: not valid {encoding} text ({error.reason} at byte "
                                     f"{error.start})") from error
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise ValueError(f"{path}:{line_number + 1}: damaged gzip file ({error or 'truncated'})") from error


def split_lines(path: Path, separator: str | None, encoding: str = "utf-8",
                skip_header: bool = False) -> Iterator[tuple[int, list[str]]]:
    """Yields (1-based line number, fields) for every non-blank line."""
    for line_number, line in numbered_lines(path, encoding):
        if skip_header and line_number == 1:
            continue
        line = line.strip()
        if line:
            yield line_number, line.split(separator)


def parse_int(text: str, what: str, line_number: int, bad: BadRows) -> int | None:
    """An int64 value; anything else (not an integer, or outside int64) is a bad row."""
    try:
        value = int(text)
    except ValueError:
        bad.report(line_number, f"{what} {text!r} is not an integer")
        return None
    if not INT64_MIN <= value <= INT64_MAX:
        bad.report(line_number, f"{what} {text} is outside the 64-bit integer range")
        return None
    return value


def parse_all(texts: list[tuple[str, str]], parse, line_number: int, bad: BadRows) -> list | None:
    """Each (text, what) through `parse` (parse_int or parse_number); None, reported once, at the first bad one."""
    values = []
    for text, what in texts:
        value = parse(text, what, line_number, bad)
        if value is None:
            return None
        values.append(value)
    return values


def parse_number(text: str, what: str, line_number: int, bad: BadRows) -> float | None:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not np.isfinite(value) or abs(value) > FLOAT32_MAX:  # kept as float32
        bad.report(line_number, f"{what} {text!r} is not a finite number within float32's range")
        return None
    return value
