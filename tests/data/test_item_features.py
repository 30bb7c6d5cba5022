import json

import numpy as np
import pytest

from genrec.data.item_features import read_item_features
from genrec.data.synthetic_stream import StreamSpec, generate_stream


def test_real_item_files(shared_data):
    ml1m = read_item_features("ml-1m", shared_data / "ml-1m")
    assert ml1m.names == ("genre", "year") and len(ml1m.item_ids) == 3883
    genre_codes = np.unique(ml1m.codes[:, :-1])
    assert len(genre_codes[genre_codes > 0]) == 18  # the README's 18 genres
    assert (ml1m.codes[:, -1] > 0).all()  # every title ends in its year
    ml100k = read_item_features("ml-100k", shared_data / "ml-100k")
    assert len(ml100k.item_ids) == 1682
    assert (ml100k.codes[:, -1] == 0).sum() == 1  # one movie has no release date
    beauty = read_item_features("s3rec", shared_data / "s3rec/Beauty_item2attributes.json")
    assert beauty.names == ("attribute",) and len(beauty.item_ids) == 12101


def test_ml_1m_codes_weights_and_alignment(tmp_path):
    (tmp_path / "movies.dat").write_text("1::Toy Story (1995)::Animation|Children's|Comedy\n"
                                         "2::Heat (1995)::Action\n"
                                         "5::No Year::Comedy|Action\n", encoding="latin-1")
    features = read_item_features("ml-1m", tmp_path)
    # genres Action < Animation < Children's < Comedy take codes 1-4, then the one year 5
    assert features.num_codes == 5
    np.testing.assert_array_equal(features.codes, [[2, 3, 4, 5], [1, 0, 0, 5], [4, 1, 0, 0]])
    np.testing.assert_allclose(features.weights, [[1 / 3, 1 / 3, 1 / 3, 1], [1, 0, 0, 1], [0.5, 0.5, 0, 0]])
    codes, weights, missing = features.align(np.array([5, 7, 1]))  # dense ids 1, 2, 3
    np.testing.assert_array_equal(codes, [[0, 0, 0, 0], [4, 1, 0, 0], [0, 0, 0, 0], [2, 3, 4, 5]])
    assert weights[2].sum() == 0 and missing == 1


def test_ml_100k_flags_and_release_dates(tmp_path):
    flags = ["0"] * 19
    flags[1] = flags[7] = "1"
    rows = [f"1|A (1995)|01-Jan-1995||url|{'|'.join(flags)}", f"2|B|||url|{'|'.join(['0'] * 19)}"]
    (tmp_path / "u.item").write_text("\n".join(rows) + "\n")
    features = read_item_features("ml-100k", tmp_path / "u.item")
    assert features.num_codes == 3  # genres "1" and "7", the year 1995
    np.testing.assert_array_equal(features.codes, [[1, 2, 3], [0, 0, 0]])


def test_s3rec_attributes(tmp_path):
    path = tmp_path / "Beauty_item2attributes.json"
    path.write_text(json.dumps({"4": [1, 2, 2], "9": [2]}))
    features = read_item_features("s3rec", path)
    np.testing.assert_array_equal(features.item_ids, [4, 9])
    np.testing.assert_array_equal(features.codes, [[1, 2], [2, 0]])  # a repeated attribute counts once
    np.testing.assert_allclose(features.weights, [[0.5, 0.5], [1, 0]])
    path.write_text(json.dumps({"4": [1], "9": "x"}))
    with pytest.raises(ValueError, match="json:2: item '9': attributes must be a list of integers"):
        read_item_features("s3rec", path)
    assert len(read_item_features("s3rec", path, skip_bad_rows=True).item_ids) == 1
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        read_item_features("s3rec", path)


@pytest.mark.parametrize("text, where, kept", [
    ("3::Only a title\n", "2: expected 3 fields", 1),
    ("x::Heat (1995)::Action\n", "2: item id 'x' is not an integer", 1),
    ("1::Heat (1995)::Action\n", "2: item id 1 is listed twice", 1),
])
def test_bad_rows_fail_loudly_or_are_skipped(tmp_path, text, where, kept):
    (tmp_path / "movies.dat").write_text("1::Toy Story (1995)::Comedy\n" + text)
    with pytest.raises(ValueError, match=f"movies.dat:{where}"):
        read_item_features("ml-1m", tmp_path)
    assert len(read_item_features("ml-1m", tmp_path, skip_bad_rows=True).item_ids) == kept


def test_unsupported_dataset_missing_file_and_empty_file(tmp_path):
    with pytest.raises(ValueError, match="not 'sasrec'"):
        read_item_features("sasrec", tmp_path)
    with pytest.raises(ValueError, match="no movies.dat"):
        read_item_features("ml-1m", tmp_path)
    (tmp_path / "u.item").write_text("\n")
    with pytest.raises(ValueError, match="u.item: no items"):
        read_item_features("ml-100k", tmp_path)
    bad_flag = "1|A|||url|" + "|".join(["2"] + ["0"] * 18)
    (tmp_path / "u.item").write_text(bad_flag + "\n")
    with pytest.raises(ValueError, match="u.item:1: a genre flag is not 0 or 1"):
        read_item_features("ml-100k", tmp_path)


def test_the_synthetic_streams_item_content_is_each_items_topic():
    events = generate_stream(StreamSpec(num_users=100, num_events=2_000, num_days=5, initial_items=50, num_topics=7))
    features = events.item_features
    assert features.names == ("topic",) and features.num_codes == 7
    assert features.item_ids.tolist() == list(range(1, len(features.item_ids) + 1))
    assert set(np.unique(features.codes).tolist()) <= set(range(1, 8)) and np.all(features.weights == 1)
    assert events.item_ids.max() <= len(features.item_ids)
