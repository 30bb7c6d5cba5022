"""Item content features (the paper's Sec. 2.1: content joins the item's token): MovieLens' movie files, ML-1M
`movies.dat` (`MovieID::Title (Year)::Genre|Genre`) and ML-100K `u.item` (`id|title|release date|video release
date|URL|19 genre flags`), and S3-Rec's `*_item2attributes.json` (`{"item id": [attribute ids]}`).

Every feature is categorical and an item may hold several values of one (a movie's genres). All features share one
code space, feature f's values numbered after feature f - 1's, so one embedding table serves them; code 0 means no
value. An item's content is the mean of each feature's value rows, summed over features (genrec.model.embeddings).

Shapes: N items in the file, I items in the sequences (dense ids 1..I; row 0 is padding), S code slots per item.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from genrec.data.events import BadRows, find_data_file, parse_int, split_lines

ML_100K_GENRES = 19  # the last 19 fields of u.item: one 0/1 flag per genre of u.genre
_YEAR_IN_TITLE = re.compile(r"\((\d{4})\)\s*$")


@dataclass
class ItemFeatures:
    item_ids: np.ndarray  # [N] source item ids
    codes: np.ndarray  # [N, S] int64 in 0..num_codes (0: an empty slot)
    weights: np.ndarray  # [N, S] float32: 1 / (values the item has of that slot's feature); 0 on empty slots
    names: tuple[str, ...]  # the features
    num_codes: int  # codes run 1..num_codes, so a table needs num_codes + 1 rows

    @cached_property
    def _id_order(self) -> np.ndarray:
        """item_ids' sorting order, found once: a stream looks items up every window."""
        return np.argsort(self.item_ids)

    def lookup(self, source_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(codes [n, S], weights [n, S], known [n]) of these source item ids; ids the file lacks get empty rows."""
        order = self._id_order
        found = np.minimum(np.searchsorted(self.item_ids, source_ids, sorter=order), len(order) - 1)
        rows = order[found]
        known = self.item_ids[rows] == source_ids
        codes = np.zeros((len(source_ids), self.codes.shape[1]), np.int64)
        weights = np.zeros(codes.shape, np.float32)
        codes[known], weights[known] = self.codes[rows[known]], self.weights[rows[known]]
        return codes, weights, known

    def align(self, item_vocab: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """(codes [I + 1, S], weights [I + 1, S]) of the dense items whose source ids item_vocab lists (row 0 and
        the rows of items the file lacks stay empty), and how many items it lacks."""
        codes, weights, known = self.lookup(np.concatenate([[0], item_vocab]))
        codes[0], weights[0] = 0, 0.0  # padding
        return codes, weights, int((~known[1:]).sum())


def encode_features(item_ids: list[int], values: dict[str, list[list[str]]]) -> ItemFeatures:
    """values[feature][n]: item n's values of that feature (none, one or several). Each feature's distinct values
    get consecutive codes in sorted order; slots per feature: the most values one item holds."""
    num_items, offset = len(item_ids), 0
    code_blocks, weight_blocks = [], []
    for per_item in values.values():
        vocabulary = {value: offset + 1 + i for i, value in enumerate(sorted({v for vs in per_item for v in vs}))}
        offset += len(vocabulary)
        slots = max(1, max(len(vs) for vs in per_item))
        codes = np.zeros((num_items, slots), np.int64)
        weights = np.zeros((num_items, slots), np.float32)
        for n, item_values in enumerate(per_item):
            codes[n, :len(item_values)] = [vocabulary[v] for v in item_values]
            weights[n, :len(item_values)] = 1.0 / max(len(item_values), 1)
        code_blocks.append(codes)
        weight_blocks.append(weights)
    return ItemFeatures(np.asarray(item_ids, np.int64), np.concatenate(code_blocks, axis=1),
                        np.concatenate(weight_blocks, axis=1), tuple(values), offset)


def read_item_features(dataset: str, path: str | Path, skip_bad_rows: bool = False) -> ItemFeatures:
    """The content features of a data set's items (`path`: the file or its directory); a repeated item id, a row
    with the wrong number of fields or a non-integer id is an error (or skipped and counted)."""
    readers = {"ml-1m": _read_ml_1m, "ml-100k": _read_ml_100k, "s3rec": _read_item2attributes}
    if dataset not in readers:
        raise ValueError(f"item features are read for {', '.join(readers)}, not {dataset!r}")
    return readers[dataset](Path(path), skip_bad_rows)


class _Rows:
    """Item ids and per-feature values as a reader collects them; a repeated id is a bad row."""

    def __init__(self, names: tuple[str, ...], bad: BadRows) -> None:
        self.bad, self.item_ids, self.seen = bad, [], set()
        self.values: dict[str, list[list[str]]] = {name: [] for name in names}

    def add(self, line_number: int, text: str, values: list[list[str]]) -> None:
        item = parse_int(text, "item id", line_number, self.bad)
        if item is None:
            return
        if item in self.seen:
            self.bad.report(line_number, f"item id {item} is listed twice")
            return
        self.seen.add(item)
        self.item_ids.append(item)
        for per_item, item_values in zip(self.values.values(), values):
            per_item.append(item_values)

    def features(self) -> ItemFeatures:
        if not self.item_ids:
            raise ValueError(f"{self.bad.source}: no items")
        return encode_features(self.item_ids, self.values)


def _read_ml_1m(path: Path, skip_bad_rows: bool) -> ItemFeatures:
    movies = find_data_file(path, ("movies.dat", "movies.dat.gz"), "the item features of ml-1m")
    rows = _Rows(("genre", "year"), BadRows(str(movies), skip_bad_rows))
    for line_number, fields in split_lines(movies, "::", "latin-1"):
        if len(fields) != 3:
            rows.bad.report(line_number, f"expected 3 fields separated by '::', got {len(fields)}")
            continue
        year = _YEAR_IN_TITLE.search(fields[1])
        rows.add(line_number, fields[0], [[g for g in fields[2].strip().split("|") if g],
                                          [year.group(1)] if year else []])
    return rows.features()


def _read_ml_100k(path: Path, skip_bad_rows: bool) -> ItemFeatures:
    movies = find_data_file(path, ("u.item", "u.item.gz"), "the item features of ml-100k")
    rows = _Rows(("genre", "year"), BadRows(str(movies), skip_bad_rows))
    for line_number, fields in split_lines(movies, "|", "latin-1"):
        if len(fields) != 5 + ML_100K_GENRES:
            rows.bad.report(line_number, f"expected {5 + ML_100K_GENRES} fields separated by '|', got {len(fields)}")
            continue
        flags = [flag.strip() for flag in fields[5:]]
        if any(flag not in ("0", "1") for flag in flags):
            rows.bad.report(line_number, "a genre flag is not 0 or 1")
            continue
        release = fields[2].strip()  # dd-Mon-yyyy, or empty
        rows.add(line_number, fields[0], [[str(g) for g, flag in enumerate(flags) if flag == "1"],
                                          [release[-4:]] if release[-4:].isdigit() else []])
    return rows.features()


def _read_item2attributes(path: Path, skip_bad_rows: bool) -> ItemFeatures:
    """S3-Rec's JSON object; an entry that is not `"id": [integer, ...]` is a bad row, named by its position in the
    object where a text file names a line."""
    if path.is_dir():
        raise ValueError(f"{path}: s3rec item features need the *_item2attributes.json file, not a directory")
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read item attributes ({error})") from error
    if not isinstance(table, dict):
        raise ValueError(f"{path}: expected a JSON object of item id -> list of attribute ids")
    rows = _Rows(("attribute",), BadRows(str(path), skip_bad_rows))
    for entry, (item, attributes) in enumerate(table.items(), start=1):
        if not isinstance(attributes, list) or not all(type(a) is int for a in attributes):
            rows.bad.report(entry, f"item {item!r}: attributes must be a list of integers")
            continue
        rows.add(entry, item, [[str(a) for a in dict.fromkeys(attributes)]])
    return rows.features()
