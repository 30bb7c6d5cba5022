import numpy as np
import pytest

from genrec.data.item_vocabulary import NO_ITEM, UNKNOWN_ROW, ItemVocabulary


def admit(vocabulary, ids, times):
    return vocabulary.admit(np.array(ids, dtype=np.int64), np.array(times, dtype=np.int64))


def test_new_ids_get_rows_and_unknown_ids_read_the_unknown_row():
    vocabulary = ItemVocabulary(capacity=4)
    rows = admit(vocabulary, [70, 50, 70], [1, 2, 3])
    assert sorted(rows.tolist()) == [2, 3]
    assert vocabulary.lookup(np.array([50, 70, 99])).tolist() == [vocabulary.row_of[50], vocabulary.row_of[70],
                                                                   UNKNOWN_ROW]
    assert admit(vocabulary, [50], [9]).size == 0  # known: no new row
    assert vocabulary.last_seen[vocabulary.row_of[50]] == 9 and vocabulary.last_seen[vocabulary.row_of[70]] == 3
    held = vocabulary.held_rows()
    assert held.tolist() == [False, False, True, True, False, False]


def test_rows_unseen_for_the_window_are_freed_and_reused():
    vocabulary = ItemVocabulary(capacity=2, evict_after=10)
    admit(vocabulary, [1, 2], [0, 5])
    old_row = vocabulary.row_of[1]
    rows = admit(vocabulary, [3], [12])  # item 1 (seen at 0) is older than 10 s; item 2 (at 5) is not
    assert rows.tolist() == [old_row] and 1 not in vocabulary.row_of and vocabulary.evicted == 1
    assert vocabulary.lookup(np.array([1, 2, 3])).tolist() == [UNKNOWN_ROW, vocabulary.row_of[2], old_row]


def test_a_full_table_evicts_the_least_recently_seen_but_never_this_calls_items():
    vocabulary = ItemVocabulary(capacity=3)
    admit(vocabulary, [1, 2, 3], [30, 10, 20])
    rows = admit(vocabulary, [1, 4], [40, 40])  # full: item 2 (last seen 10) goes, not item 1 (seen now)
    assert 2 not in vocabulary.row_of and set(vocabulary.row_of) == {1, 3, 4} and rows.size == 1
    with pytest.raises(ValueError, match="too small"):
        admit(vocabulary, [5, 6, 7, 8], [50] * 4)
    with pytest.raises(ValueError, match=">= 0"):
        admit(vocabulary, [-3], [1])


def test_state_round_trip():
    vocabulary = ItemVocabulary(capacity=5, evict_after=100)
    admit(vocabulary, [11, 12, 13], [1, 2, 3])
    admit(vocabulary, [14], [500])
    restored = ItemVocabulary.from_state(vocabulary.state(), evict_after=100)
    assert restored.row_of == vocabulary.row_of and restored.evicted == vocabulary.evicted == 3
    assert np.array_equal(restored.last_seen, vocabulary.last_seen)
    assert np.array_equal(admit(restored, [15, 11], [600, 600]), admit(vocabulary, [15, 11], [600, 600]))
    assert restored.sources[0] == restored.sources[1] == NO_ITEM
