"""Fractal expansion: every user copy replays its source user's sequence with each item moved to one of the copy's
item copies (the reduced matrix's row, drawn uniformly), the reduced matrix is the source's own interactions, the
chunks are the same on every call, and `genrec prepare --expand` writes the store of exactly those events."""

import subprocess
import sys

import numpy as np
import pytest

from genrec.data.event_store import EventStore, prepare_store
from genrec.data.events import Events
from genrec.data.fractal import FractalSpec, expansion_chunks, reduced_matrix


def source(rows=4000, seed=0):
    rng = np.random.default_rng(seed)
    users = rng.zipf(1.6, rows) % 150 + 1  # fat-tailed activity
    items = rng.zipf(1.4, rows) % 90 * 3 + 2  # fat-tailed popularity, ids with gaps
    return Events(users, items, timestamps=rng.integers(0, 10**6, rows), ratings=rng.integers(1, 6, rows).astype(
        np.float32), actions={"click": rng.random(rows).astype(np.float32)}, source="test log")


def test_each_copy_replays_its_source_user_with_items_from_its_row():
    events, spec = source(), FractalSpec(7, 40, seed=3)
    matrix, _, _ = reduced_matrix(events, spec)
    user_stride, item_stride = events.user_ids.max() + 1, events.item_ids.max() + 1
    chunks = list(expansion_chunks(events, spec)())
    assert len(chunks) == 7
    for copy, chunk in enumerate(chunks):
        assert (chunk["user_id"] // user_stride == copy).all()
        np.testing.assert_array_equal(chunk["user_id"] % user_stride, events.user_ids)
        np.testing.assert_array_equal(chunk["item_id"] % item_stride, events.item_ids)
        for name, values in (("timestamp", events.timestamps), ("rating", events.ratings),
                             ("click", events.actions["click"])):
            np.testing.assert_array_equal(chunk[name], values)
        assert set(np.unique(chunk["item_id"] // item_stride)) <= set(np.flatnonzero(matrix[copy]))


def test_the_reduced_matrix_is_the_sources_interactions_at_the_chosen_users_and_items():
    events = source()
    matrix, users, items = reduced_matrix(events, FractalSpec(9, 30, seed=1))
    pairs = set(zip(events.user_ids.tolist(), events.item_ids.tolist()))
    expected = [[(user, item) in pairs for item in items] for user in users]
    np.testing.assert_array_equal(matrix, expected)
    assert matrix.any(axis=1).all() and len(set(users)) == 9 and len(set(items)) == 30
    again, _, _ = reduced_matrix(events, FractalSpec(9, 30, seed=2))
    assert not np.array_equal(again, matrix)  # the seed chooses


def test_item_copies_are_drawn_uniformly_from_the_row():
    events = source(rows=60_000)
    spec = FractalSpec(3, 60, seed=0)
    matrix, _, _ = reduced_matrix(events, spec)
    chunk = next(iter(expansion_chunks(events, spec)()))
    support = np.flatnonzero(matrix[0])
    counts = np.bincount(chunk["item_id"] // (events.item_ids.max() + 1), minlength=60)
    assert counts[support].sum() == counts.sum() == 60_000
    expected = 60_000 / support.size
    assert support.size > 2 and np.abs(counts[support] - expected).max() < 5 * np.sqrt(expected)


def test_chunks_are_the_same_on_every_call_and_the_seed_changes_them():
    events = source()
    spec = FractalSpec(4, 25, seed=5)
    first, second = list(expansion_chunks(events, spec)()), list(expansion_chunks(events, spec)())
    for a, b in zip(first, second):
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])
    other = next(iter(expansion_chunks(events, FractalSpec(4, 25, seed=6))()))
    assert not np.array_equal(other["item_id"], first[0]["item_id"])


def test_the_store_of_an_expansion_holds_every_copy(tmp_path):
    events, spec = source(), FractalSpec(5, 20)
    manifest = prepare_store(expansion_chunks(events, spec), tmp_path / "store", "expanded", partition_events=3000)
    store = EventStore.open(tmp_path / "store")
    assert manifest["events"] == 5 * len(events.user_ids) and manifest["partitions"] > 1
    assert manifest["users"] == 5 * np.unique(events.user_ids).size
    chunks = list(expansion_chunks(events, spec)())
    expected = {name: np.concatenate([chunk[name] for chunk in chunks]) for name in ("user_id", "item_id", "timestamp")}
    order = np.lexsort((expected["timestamp"], expected["user_id"]))  # the store's: by user, then time, stable
    stored = store.events()
    np.testing.assert_array_equal(stored.user_ids, expected["user_id"][order])
    np.testing.assert_array_equal(stored.item_ids, expected["item_id"][order])
    np.testing.assert_array_equal(stored.timestamps, expected["timestamp"][order])


@pytest.mark.parametrize("expand,reason", [("0x5", "user copies must be 1.."), ("3x999", "item copies must be 1.."),
                                           ("3by5", "USER_COPIESxITEM_COPIES")])
def test_bad_expansions_are_refused_with_the_reason(tmp_path, expand, reason):
    path = tmp_path / "log.csv"
    events = source(rows=300)
    path.write_text("user_id,item_id,timestamp\n" + "".join(
        f"{u},{i},{t}\n" for u, i, t in zip(events.user_ids, events.item_ids, events.timestamps)))
    result = subprocess.run([sys.executable, "-m", "genrec", "prepare", "--data-dir", str(path), "--out",
                             str(tmp_path / "store"), "--expand", expand], capture_output=True, text=True)
    assert result.returncode != 0 and reason in result.stderr
