import numpy as np
import pytest

from genrec.data.item_vocabulary import NO_ITEM, UNKNOWN_ROW, ItemVocabulary


def admit(vocabulary, ids, times):
    return vocabulary.admit(np.array(ids, dtype=np.int64), np.array(times, dtype=np.int64))


def held(vocabulary) -> dict[int, int]:
    """source id -> row of the items the table holds"""
    rows = np.flatnonzero(vocabulary.sources >= 0)
    return dict(zip(vocabulary.sources[rows].tolist(), rows.tolist()))


def test_new_ids_get_rows_and_unknown_ids_read_the_unknown_row():
    vocabulary = ItemVocabulary(capacity=4)
    rows = admit(vocabulary, [70, 50, 70], [1, 2, 3])
    assert sorted(rows.tolist()) == [2, 3]
    assert vocabulary.lookup(np.array([50, 70, 99])).tolist() == [held(vocabulary)[50], held(vocabulary)[70],
                                                                   UNKNOWN_ROW]
    assert admit(vocabulary, [50], [9]).size == 0  # known: no new row
    assert vocabulary.last_seen[held(vocabulary)[50]] == 9 and vocabulary.last_seen[held(vocabulary)[70]] == 3
    assert vocabulary.held_rows().tolist() == [False, False, True, True, False, False]


def test_rows_unseen_for_the_window_are_freed_and_reused():
    vocabulary = ItemVocabulary(capacity=2, evict_after=10)
    admit(vocabulary, [1, 2], [0, 5])
    old_row = held(vocabulary)[1]
    rows = admit(vocabulary, [3], [12])  # item 1 (seen at 0) is older than 10 s; item 2 (at 5) is not
    assert rows.tolist() == [old_row] and 1 not in held(vocabulary) and vocabulary.evicted == 1
    assert vocabulary.lookup(np.array([1, 2, 3])).tolist() == [UNKNOWN_ROW, held(vocabulary)[2], old_row]


def test_a_full_table_evicts_the_least_recently_seen_but_never_this_calls_items():
    vocabulary = ItemVocabulary(capacity=3)
    admit(vocabulary, [1, 2, 3], [30, 10, 20])
    rows = admit(vocabulary, [1, 4], [40, 40])  # full: item 2 (last seen 10) goes, not item 1 (seen now)
    assert 2 not in held(vocabulary) and set(held(vocabulary)) == {1, 3, 4} and rows.size == 1
    with pytest.raises(ValueError, match="too small"):
        admit(vocabulary, [5, 6, 7, 8], [50] * 4)
    with pytest.raises(ValueError, match=">= 0"):
        admit(vocabulary, [-3], [1])


def test_state_round_trip():
    vocabulary = ItemVocabulary(capacity=5, evict_after=100)
    admit(vocabulary, [11, 12, 13], [1, 2, 3])
    admit(vocabulary, [14], [500])
    restored = ItemVocabulary.from_state(vocabulary.state(), evict_after=100)
    assert held(restored) == held(vocabulary) and restored.evicted == vocabulary.evicted == 3
    assert np.array_equal(restored.last_seen, vocabulary.last_seen)
    assert np.array_equal(admit(restored, [15, 11], [600, 600]), admit(vocabulary, [15, 11], [600, 600]))
    assert restored.sources[0] == restored.sources[1] == NO_ITEM


def test_lookups_follow_admissions_and_evictions():
    """After every admission (new rows, rows pushed out, rows expired) a lookup of any ids, held or not, in any
    shape, reads the rows the table holds them in."""
    rng = np.random.default_rng(0)
    vocabulary = ItemVocabulary(capacity=300, evict_after=30)  # room for all: rows go by expiry
    for now in range(0, 400, 10):
        ids = rng.integers(0, 200, 40)
        admit(vocabulary, ids, np.full(40, now))
        queries = rng.integers(-2, 250, (7, 9))
        rows = held(vocabulary)
        assert set(ids.tolist()) <= set(rows)  # an item just seen is held, also one whose row had expired
        assert vocabulary.lookup(queries).tolist() == [[rows.get(q, UNKNOWN_ROW) for q in line] for line in
                                                       queries.tolist()]
    assert vocabulary.evicted > 0
