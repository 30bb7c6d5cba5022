import gzip

import numpy as np
import pytest

from genrec.data import build_sequences, load_events


def write(path, text, gz=False):
    if gz:
        with gzip.open(path, "wt", encoding="latin-1") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="latin-1")
    return path


def test_ml1m_real_partial_file(shared_data):
    events = load_events("ml-1m", shared_data / "ml-1m/partial/ratings-users-1-2999")
    assert len(events) == 487_650
    assert events.timestamps.min() == 970_620_734 and events.timestamps.max() == 1_046_388_675
    assert np.bincount(events.ratings.astype(int))[1:].tolist() == [27_472, 53_838, 127_216, 170_579, 108_545]
    data = build_sequences(events)
    assert data.sequences.num_users == 2999 and data.num_items == 3615
    for user in range(0, 2999, 97):  # time-ordered within every user
        lo, hi = data.sequences.offsets[user], data.sequences.offsets[user + 1]
        assert np.all(np.diff(data.sequences.timestamps[lo:hi]) >= 0)


def test_ml100k_and_sequence_files(shared_data):
    ml100k = load_events("ml-100k", shared_data / "ml-100k")
    assert len(ml100k) == 100_000 and len(np.unique(ml100k.user_ids)) == 943
    sas = load_events("sasrec", shared_data / "sasrec/ml-1m.txt")
    assert len(sas) == 999_611 and sas.timestamps is None
    assert len(np.unique(sas.item_ids)) == 3416
    beauty = load_events("s3rec", shared_data / "s3rec/Beauty.txt")
    assert len(beauty) == 198_502 and len(np.unique(beauty.user_ids)) == 22_363


def test_movielens_formats_and_gzip(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    write(tmp_path / "a/ratings.dat.gz", "1::10::5::100\n1::11::3::50\n", gz=True)
    write(tmp_path / "b/u.data", "1\t10\t5\t100\n2\t11\t3\t50\n")
    write(tmp_path / "c/ratings.csv", "userId,movieId,rating,timestamp\n1,10,4.5,100\n")
    assert load_events("ml-1m", tmp_path / "a").item_ids.tolist() == [10, 11]
    assert load_events("ml-100k", tmp_path / "b").user_ids.tolist() == [1, 2]
    assert load_events("ml-20m", tmp_path / "c").ratings.tolist() == [4.5]


@pytest.mark.parametrize("line, reason", [
    ("1::10::5\n", "expected 4 fields"),
    ("x::10::5::100\n", "user id 'x' is not an integer"),
    ("1::10::5::yesterday\n", "timestamp 'yesterday' is not an integer"),
    ("1::10::nan::100\n", "rating 'nan' is not a finite number"),
])
def test_bad_rows_name_file_and_line(tmp_path, line, reason):
    path = write(tmp_path / "ratings.dat", "1::10::5::100\n" + line)
    with pytest.raises(ValueError, match=f"ratings.dat:2: {reason}"):
        load_events("ml-1m", path)
    events = load_events("ml-1m", path, skip_bad_rows=True)
    assert len(events) == 1 and events.skipped_rows == 1


def test_missing_and_empty_inputs(tmp_path):
    with pytest.raises(ValueError, match="no such file or directory"):
        load_events("ml-1m", tmp_path / "nope")
    with pytest.raises(ValueError, match="no ratings.dat"):
        load_events("ml-1m", tmp_path)
    with pytest.raises(ValueError, match="needs --data-dir"):
        load_events("sasrec", None)
    with pytest.raises(ValueError, match="empty data set"):
        load_events("sasrec", write(tmp_path / "empty.txt", "\n"))
    with pytest.raises(ValueError, match="unknown dataset"):
        load_events("netflix", tmp_path)


def test_sequence_file_errors(tmp_path):
    with pytest.raises(ValueError, match="s.txt:2: expected 2 fields"):
        load_events("sasrec", write(tmp_path / "s.txt", "1 2\n1 2 3\n"))
    with pytest.raises(ValueError, match="3r.txt:1: item id .x. is not an integer"):
        load_events("s3rec", write(tmp_path / "3r.txt", "1 2 x\n"))
    assert load_events("s3rec", write(tmp_path / "ok.txt", "1 5 6 7\n2 8 9\n")).item_ids.tolist() == [5, 6, 7, 8, 9]


def test_event_log_csv_and_parquet(tmp_path):
    csv_path = write(tmp_path / "log.csv", "user_id,item_id,timestamp,click,like\n1,5,10,1,0\n1,6,11,1,1\n")
    events = load_events("events", csv_path)
    assert events.item_ids.tolist() == [5, 6] and sorted(events.actions) == ["click", "like"]
    assert events.actions["like"].tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="missing column"):
        load_events("events", write(tmp_path / "bad.csv", "user,item_id,timestamp\n1,2,3\n"))
    with pytest.raises(ValueError, match="bad2.csv:2: expected 3 fields"):
        load_events("events", write(tmp_path / "bad2.csv", "user_id,item_id,timestamp\n1,2\n"))
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    table = pa.table({"user_id": [1, 1], "item_id": [5, 6], "timestamp": [10, 11], "rating": [4.0, 2.0]})
    pq.write_table(table, tmp_path / "log.parquet")
    parquet = load_events("events", tmp_path / "log.parquet")
    assert parquet.ratings.tolist() == [4.0, 2.0] and parquet.actions == {}


def test_kuairand_shaped_log_gives_one_task_per_signal(tmp_path):
    """A generated log shaped like KuaiRand (several signals per event) feeds ranking labels."""
    from genrec.data.actions import action_labels
    rows = ["user_id,item_id,timestamp,is_click,is_like,long_view,is_share"]
    rows += [f"{u},{(u * 7 + i) % 50 + 1},{1000 + i},{i % 2},{int(i % 5 == 0)},{i % 3 % 2},0" for u in range(1, 6)
             for i in range(12)]
    path = write(tmp_path / "kuai.csv", "\n".join(rows) + "\n")
    names, labels = action_labels(load_events("events", path))
    assert names == ["is_click", "is_like", "is_share", "long_view"]
    assert labels.shape == (60, 4) and labels[:, 0].sum() == 30 and labels[:, 2].sum() == 0
    with pytest.raises(ValueError, match="needs ratings or action columns"):
        action_labels(load_events("sasrec", write(tmp_path / "s.txt", "1 2\n1 3\n")))
