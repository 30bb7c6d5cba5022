"""The on-disk event store: the sequences it gives equal build_sequences' over the same log (however it is cut
into chunks and partitions), it copies no event when split, bad input fails with the reason, and its checksum
catches a changed file."""

import json

import numpy as np
import pytest

from genrec.data import build_sequences, leave_one_out, load_events
from genrec.data.event_store import EventStore, prepare

pytest.importorskip("pyarrow")


def write_log(path, rows=3000, seed=0, extra_row=""):
    rng = np.random.default_rng(seed)
    users, items, times = rng.integers(0, 200, rows), rng.integers(0, 90, rows) * 7, rng.integers(0, 40, rows)
    lines = ["user_id,item_id,timestamp,click"]  # many equal times: ties keep the file order
    lines += [f"{u},{i},{t},{(u + i) % 2}" for u, i, t in zip(users, items, times)]
    lines += [f"{1000 + k},7,{k},1" for k in range(3)]  # users of one event, dropped below min_length
    path.write_text("\n".join(lines) + "\n" + extra_row)
    return path


@pytest.mark.parametrize("chunk_events,partition_events", [(1 << 20, 1 << 24), (700, 900), (1, 1)],
                         ids=["one-chunk", "several", "row-by-row"])
def test_store_sequences_equal_the_in_memory_ones(tmp_path, chunk_events, partition_events):
    log = write_log(tmp_path / "log.csv", rows=3000 if chunk_events > 1 else 300)
    manifest = prepare("events", log, tmp_path / "store", chunk_events=chunk_events,
                       partition_events=partition_events)
    store = EventStore.open(tmp_path / "store")
    assert manifest["partitions"] > 1 or partition_events > 3000
    expected = build_sequences(load_events("events", log), "stable", min_length=3)
    got = store.sequences(min_length=3)
    assert got.dropped_users == expected.dropped_users > 0
    for name in ("item_ids", "timestamps", "ratings", "offsets"):
        want = getattr(expected.sequences, name)
        have = getattr(got.sequences.compact(), name)
        assert (want is None and have is None) or np.array_equal(have, want), name
    assert np.array_equal(got.item_vocab, expected.item_vocab) and np.array_equal(got.user_vocab, expected.user_vocab)
    clicks = np.load(tmp_path / "store" / manifest["columns"]["click"])
    assert clicks.dtype == np.float32 and set(np.unique(clicks)) <= {0.0, 1.0}
    times = store.column("timestamp")  # the time order streams read: rows by time, ties in row order
    np.testing.assert_array_equal(np.load(tmp_path / "store/time_order.npy"), np.argsort(times, kind="stable"))
    assert "time_order.npy" in manifest["files"]


@pytest.mark.parametrize("form", ["tsv", "csv.gz", "parquet"])
def test_other_log_formats_give_the_same_store(tmp_path, form):
    import gzip

    import pyarrow.csv as csv
    import pyarrow.parquet as pq

    log = write_log(tmp_path / "log.csv", rows=500)
    other = tmp_path / f"log.{form}"
    if form == "parquet":
        pq.write_table(csv.read_csv(log), other, row_group_size=97)  # row groups: several chunks
    elif form == "tsv":
        other.write_text(log.read_text().replace(",", "\t"))
    else:
        other.write_bytes(gzip.compress(log.read_bytes()))
    prepare("events", log, tmp_path / "a")
    prepare("events", other, tmp_path / "b", chunk_events=100)
    for file in ("users.npy", "offsets.npy", "items.npy", "item_ids.npy", "timestamps.npy", "action.click.npy"):
        assert np.array_equal(np.load(tmp_path / "a" / file), np.load(tmp_path / "b" / file)), file


def test_split_of_a_store_copies_no_event(tmp_path):
    prepare("events", write_log(tmp_path / "log.csv"), tmp_path / "store")
    data = EventStore.open(tmp_path / "store").sequences(min_length=3)
    split = leave_one_out(data, "validated")
    assert isinstance(data.sequences.item_ids.base, np.memmap)  # mapped, not read
    assert split.train.item_ids is data.sequences.item_ids  # views over the mapped column
    assert split.test.histories.item_ids is data.sequences.item_ids
    assert split.train.num_events == data.sequences.num_events - 2 * data.sequences.num_users


def test_named_data_sets_without_times(tmp_path):
    lines = "".join(f"{u} {i}\n" for u in range(1, 30) for i in range(1, 8))
    (tmp_path / "seq.txt").write_text(lines)
    prepare("sasrec", tmp_path / "seq.txt", tmp_path / "store",
            read_events=lambda: load_events("sasrec", tmp_path / "seq.txt"))
    store = EventStore.open(tmp_path / "store")
    assert not store.has_timestamps and store.sequences(2).sequences.timestamps is None


def test_bad_input_fails_with_the_reason_or_is_counted(tmp_path):
    bad = write_log(tmp_path / "bad.csv", rows=50, extra_row="1,2\n")
    with pytest.raises(ValueError, match="bad.csv: .*Expected 4 columns, got 2"):
        prepare("events", bad, tmp_path / "a")
    manifest = prepare("events", bad, tmp_path / "b", skip_bad_rows=True)
    assert manifest["skipped_rows"] == 1 and manifest["events"] == 53
    (tmp_path / "words.csv").write_text("user_id,item_id,timestamp\n1,two,3\n")
    with pytest.raises(ValueError, match="words.csv: .*column #1.*invalid value 'two'"):
        prepare("events", tmp_path / "words.csv", tmp_path / "c")
    (tmp_path / "no_user.csv").write_text("item_id,timestamp\n1,3\n")
    with pytest.raises(ValueError, match="missing column.*user_id"):
        prepare("events", tmp_path / "no_user.csv", tmp_path / "d")
    with pytest.raises(ValueError, match="not empty"):
        prepare("events", bad, tmp_path / "b", skip_bad_rows=True)
    with pytest.raises(ValueError, match="not an event store"):
        EventStore.open(tmp_path)


def test_checksum_catches_a_changed_file(tmp_path):
    manifest = prepare("events", write_log(tmp_path / "log.csv"), tmp_path / "store")
    store = EventStore.open(tmp_path / "store")
    store.verify()
    items = np.load(tmp_path / "store/item_ids.npy", mmap_mode="r+")
    items[0] += 1
    items.flush()
    with pytest.raises(ValueError, match="item_ids.npy: checksum differs"):
        store.verify()
    assert json.loads((tmp_path / "store/manifest.json").read_text())["checksum"] == manifest["checksum"]
