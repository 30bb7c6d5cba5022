import numpy as np
import pytest

from genrec.data.batch import make_batch
from genrec.data.sequences import JaggedEvents
from genrec.data.synthetic_stream import DAY, START, StreamSpec, generate_stream
from genrec.data.user_series import UserChanges, UserSeries, read_user_changes

# source users 10 and 30 (20 has no changes; 40 is not in the sequences)
CHANGES = UserChanges(user_ids=np.array([30, 10, 10, 40, 10, 30]), timestamps=np.array([5, 100, 50, 1, 200, 5]),
                      codes=np.array([1, 2, 3, 1, 4, 2]), name="tier", values=("a", "b", "c", "d"))


def test_changes_are_grouped_by_user_in_time_order():
    series = UserSeries.of_users(CHANGES, np.array([10, 20, 30]), max_len=8)
    assert (series.ends - series.starts).tolist() == [3, 0, 2]
    user_10 = slice(series.starts[0], series.ends[0])
    assert series.timestamps[user_10].tolist() == [50, 100, 200] and series.codes[user_10].tolist() == [3, 2, 4]
    user_30 = slice(series.starts[2], series.ends[2])
    assert series.codes[user_30].tolist() == [1, 2]  # equal times keep the source's order
    with pytest.raises(ValueError, match="ascending"):
        UserSeries.of_users(CHANGES, np.array([30, 10]), max_len=8)


@pytest.mark.parametrize("first, last, max_len, codes", [
    (60, 150, 8, [3, 2]),  # the state at 60 (set at 50), then the change at 100
    (50, 150, 8, [3, 2]),  # a change at the first event's time is its state
    (10, 40, 8, [3]),  # nothing before the first event: the changes up to the last, none here but...
    (60, 250, 2, [2, 4]),  # the latest max_len
    (60, 200, 8, [3, 2, 4]),  # a change at the last time counts
])
def test_a_window_sees_its_starting_state_and_changes_up_to_its_last_time(first, last, max_len, codes):
    series = UserSeries.of_users(CHANGES, np.array([10]), max_len=max_len)
    window_codes, times, offsets = series.window(np.array([first]), np.array([last]))
    if first == 10:  # ...the first change comes after the last time: no token
        codes = []
    assert window_codes.tolist() == codes and offsets.tolist() == [0, len(codes)]
    assert np.all(np.diff(times) >= 0)


def test_windows_of_many_users_in_any_order_match_each_users_own():
    """A window over a selection of users (any order, some without changes) is each user's window alone."""
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(30), rng.integers(0, 6, 30))
    changes = UserChanges(user_ids=users, timestamps=rng.integers(0, 100, users.size),
                          codes=rng.integers(1, 5, users.size), name="tier", values=("a", "b", "c", "d"))
    series = UserSeries.of_users(changes, np.arange(30), max_len=3).select(rng.permutation(30)[:20])
    first = rng.integers(0, 100, 20)
    last = first + rng.integers(0, 50, 20)
    codes, _, offsets = series.window(first, last)
    for b in range(20):
        times = series.timestamps[series.starts[b]:series.ends[b]]
        own = series.codes[series.starts[b]:series.ends[b]]
        start = max(int((times <= first[b]).sum()) - 1, 0)  # the state at the first event, or the first change
        expected = own[start:int((times <= last[b]).sum())][-3:]
        assert codes[offsets[b]:offsets[b + 1]].tolist() == expected.tolist()


def test_batches_carry_each_users_changes_up_to_the_query_time():
    series = UserSeries.of_users(CHANGES, np.array([10, 20, 30]), max_len=8)
    events = JaggedEvents(item_ids=np.array([1, 2, 3, 4, 5]), offsets=np.array([0, 2, 3, 5]),
                          timestamps=np.array([60, 120, 7, 1, 6]), series=series)
    training = make_batch(events, np.array([0, 1, 2]), 10)
    assert training.series_codes.tolist() == [3, 2, 1, 2]  # user 10: 60..120; user 20: none; user 30: up to 6
    assert training.series_offsets.tolist() == [0, 2, 2, 4]
    histories = events.select(np.array([0, 2])).drop_last(1)  # users 10 and 30 of the series
    held_out = make_batch(histories, np.array([0, 1]), 10, query_times=np.array([250, 6]))
    assert held_out.series_codes.tolist() == [3, 2, 4, 1, 2]  # the change at 200 precedes the target at 250


def test_csv_changes_and_bad_rows(tmp_path):
    path = tmp_path / "tiers.csv"
    path.write_text("user_id,timestamp,tier\n1,10,gold\n2,5,silver\n1,20,silver\n")
    changes = read_user_changes(path)
    assert changes.name == "tier" and changes.values == ("gold", "silver")
    assert changes.codes.tolist() == [1, 2, 2]  # gold < silver
    path.write_text("user_id,timestamp,tier\n1,10,gold\n1,x,gold\n1,2\n")
    with pytest.raises(ValueError, match="tiers.csv:3: timestamp 'x' is not an integer"):
        read_user_changes(path)
    assert read_user_changes(path, skip_bad_rows=True).skipped_rows == 2
    path.write_text("user,time,tier\n")
    with pytest.raises(ValueError, match="expected the header user_id,timestamp,<feature>"):
        read_user_changes(path)
    path.write_text("user_id,timestamp,tier\n")
    with pytest.raises(ValueError, match="no changes"):
        read_user_changes(path)


def test_the_synthetic_stream_follows_topics_from_the_start_and_changes_them_at_day_starts():
    spec = StreamSpec(num_users=500, num_events=20_000, num_days=20, initial_items=200, num_topics=10,
                      drift_days=5.0)
    changes = generate_stream(spec).user_changes
    assert changes.name == "followed_topic" and changes.cardinality == 10
    assert changes.codes.min() >= 1 and changes.codes.max() <= 10
    at_start = changes.user_ids[changes.timestamps == START]
    assert set(at_start.tolist()) == set(range(1, 501))  # every user follows a topic from the start
    later = changes.timestamps[changes.timestamps > START]
    assert np.all((later - START) % DAY == 0) and later.max() < START + spec.num_days * DAY
    # each user's drifting mixture is redrawn on ~1 day in drift_days
    assert len(later) == pytest.approx(500 * (spec.num_days - 1) / spec.drift_days, rel=0.1)

