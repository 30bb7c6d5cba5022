"""The pyarrow fast path reads exactly what the line-by-line readers read, and leaves every bad row to them
(so the errors, file:line, and the skipped counts are the same)."""

import gzip

import numpy as np
import pytest

pytest.importorskip("pyarrow")

from genrec.data import event_log, load_events, movielens, sequence_files  # noqa: E402

READERS = (movielens, sequence_files, event_log)


def read_both(monkeypatch, dataset, path, skip=False):
    """(fast-path result or error, line-by-line result or error)."""
    results = []
    for fast in (True, False):
        with monkeypatch.context() as patch:
            if not fast:
                for module in READERS:
                    patch.setattr(module, "read_delimited", lambda *args, **kwargs: None)
            try:
                results.append(load_events(dataset, path, skip))
            except ValueError as error:
                results.append(str(error))
    return results


def assert_same(fast, slow):
    if isinstance(slow, str):
        assert fast == slow
        return
    assert not isinstance(fast, str), fast
    for column in ("user_ids", "item_ids", "timestamps", "ratings"):
        a, b = getattr(fast, column), getattr(slow, column)
        assert (a is None) == (b is None) and (a is None or (a.dtype == b.dtype and np.array_equal(a, b))), column
    assert fast.actions.keys() == slow.actions.keys()
    assert all(np.array_equal(fast.actions[k], slow.actions[k]) for k in fast.actions)
    assert fast.skipped_rows == slow.skipped_rows and fast.source == slow.source


ML1M = "".join(f"{u}::{i}::{(u + i) % 5 + 1}::{978300000 + 7 * i}\n" for u in range(1, 30) for i in range(1, 9))
ML100K = ML1M.replace("::", "\t")
SASREC = "".join(f"{u} {i}\n" for u in range(1, 30) for i in range(1, 9))
EVENTS = "user_id,item_id,timestamp,click,watch\n" + "".join(
    f"{u},{i},{100 * i},{i % 2},{0.5 * i}\n" for u in range(1, 30) for i in range(1, 9))


@pytest.mark.parametrize("dataset, name, text", [
    ("ml-1m", "ratings.dat", ML1M), ("ml-100k", "u.data", ML100K), ("sasrec", "s.txt", SASREC),
    ("events", "log.csv", EVENTS), ("ml-1m", "ratings.dat.gz", ML1M)])
@pytest.mark.parametrize("damage", ["none", "bad-int", "overflow", "nan", "fields", "colon-field", "blank-lines",
                                    "crlf", "bom", "trailing-space"])
@pytest.mark.parametrize("skip", [False, True])
def test_fast_path_parity(tmp_path, monkeypatch, dataset, name, text, damage, skip):
    lines = text.splitlines(keepends=True)
    first = 1 if dataset == "events" else 0
    row = lines[first + 5]
    separator = {"ml-1m": "::", "ml-100k": "\t", "sasrec": " ", "events": ","}[dataset]
    fields = row.rstrip("\n").split(separator)
    if damage == "bad-int":
        fields[1] = "x1"
    elif damage == "overflow":
        fields[-1 if dataset != "sasrec" else 1] = "99999999999999999999"
    elif damage == "nan":
        fields[2 if dataset != "sasrec" else 1] = "nan"
    elif damage == "fields":
        fields.append("7")
    elif damage == "colon-field":
        fields[0] = "1:2"
    if damage != "none":
        lines[first + 5] = separator.join(fields) + "\n"
    if damage == "blank-lines":
        lines.insert(first + 3, "\n")
    elif damage == "crlf":
        lines = [line.replace("\n", "\r\n") for line in lines]
    elif damage == "trailing-space":
        lines[first + 2] = lines[first + 2].rstrip("\n") + " \n"
    data = "".join(lines).encode()
    if damage == "bom":
        data = b"\xef\xbb\xbf" + data
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    fast, slow = read_both(monkeypatch, dataset, path, skip)
    assert_same(fast, slow)
    if damage == "none":  # the clean file went through pyarrow (it would fall back on any doubt)
        calls = []
        for module in READERS:
            original = module.read_delimited
            monkeypatch.setattr(module, "read_delimited",
                                lambda *a, original=original, **k: calls.append(original(*a, **k)) or calls[-1])
        load_events(dataset, path, skip)
        assert calls and calls[0] is not None
