import numpy as np
import pytest

from genrec.data.user_features import read_user_features


def test_real_movielens_user_files(shared_data):
    ml1m = read_user_features("ml-1m", shared_data / "ml-1m")
    assert ml1m.codes.shape == (6040, 4) and ml1m.names == ("gender", "age", "occupation", "zip_region")
    assert ml1m.cardinalities[:3] == (2, 7, 21)  # F/M, the 7 age groups, the 21 occupations
    ml100k = read_user_features("ml-100k", shared_data / "ml-100k/u.user")
    assert ml100k.codes.shape == (943, 4) and ml100k.cardinalities[2] == 21
    assert ml100k.codes.min() == 1


def test_codes_alignment_and_unknown_users(tmp_path):
    path = tmp_path / "u.user"
    path.write_text("1|24|M|technician|85711\n2|53|F|other|94043\n3|24|M|writer|02067\n")
    features = read_user_features("ml-100k", path)
    assert features.cardinalities == (2, 2, 3, 3)
    assert features.values[2] == ("other", "technician", "writer")
    # ages 24 < 53, genders F < M, occupations other < technician < writer, zip regions 0 < 8 < 9
    np.testing.assert_array_equal(features.codes, [[1, 2, 2, 2], [2, 1, 1, 3], [1, 2, 3, 1]])
    context, missing = features.align(np.array([3, 7, 1]))
    np.testing.assert_array_equal(context, [[1, 2, 3, 1], [0, 0, 0, 0], [1, 2, 2, 2]])
    assert missing == 1


@pytest.mark.parametrize("text, where, kept", [
    ("1::F::1::10\n", "2: expected 5 fields", 1),
    ("x::F::1::10::48067\n", "2: user id 'x' is not an integer", 1),
    ("1::F::1::10::48067\n1::M::1::10::48067\n", "3: user id 1 is listed twice", 2),
])
def test_bad_rows_fail_loudly_or_are_skipped(tmp_path, text, where, kept):
    path = tmp_path / "users.dat"
    path.write_text("2::M::56::16::70072\n" + text)
    with pytest.raises(ValueError, match=f"users.dat:{where}"):
        read_user_features("ml-1m", tmp_path)
    assert len(read_user_features("ml-1m", tmp_path, skip_bad_rows=True).user_ids) == kept


def test_unsupported_dataset_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="not 'sasrec'"):
        read_user_features("sasrec", tmp_path)
    with pytest.raises(ValueError, match="no users.dat"):
        read_user_features("ml-1m", tmp_path)
