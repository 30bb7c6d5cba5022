"""The synthetic stream: seeded, and with the dynamics its docstring promises."""

import numpy as np
import pytest

from genrec.data import load_events
from genrec.data.synthetic import SyntheticSpec
from genrec.data.synthetic_stream import DAY, START, StreamSpec, generate_stream

SPEC = StreamSpec(num_users=3000, num_events=200_000, num_days=30, initial_items=500, new_items_per_day=100,
                  num_topics=20)


@pytest.fixture(scope="module")
def stream():
    return generate_stream(SPEC)


def in_time_order(events):
    order = np.argsort(events.timestamps, kind="stable")
    return events.user_ids[order], events.item_ids[order], (events.timestamps[order] - START) // DAY


def test_seeded_and_shaped(stream):
    again = generate_stream(SPEC)
    for column in ("user_ids", "item_ids", "timestamps"):
        assert np.array_equal(getattr(stream, column), getattr(again, column))
    other = generate_stream(StreamSpec(**{**SPEC.__dict__, "seed": 1}))
    assert not np.array_equal(stream.item_ids, other.item_ids)
    assert len(stream) == SPEC.num_events and set(stream.actions) == {"like", "long_view"}
    days = (stream.timestamps - START) // DAY
    assert days.min() >= 0 and days.max() < SPEC.num_days
    # by user, then time: the layout the readers produce
    assert np.all(np.diff(stream.user_ids) >= 0)
    same_user = np.diff(stream.user_ids) == 0
    assert np.all(np.diff(stream.timestamps)[same_user] >= 0)


def test_the_catalogue_grows_and_items_fade(stream):
    _, items, days = in_time_order(stream)
    # item ids follow arrival: ids past the initial catalogue are items born later, consumed only after birth
    first_day = np.full(items.max() + 1, SPEC.num_days)
    np.minimum.at(first_day, items, days)
    late = np.arange(items.max() + 1) > SPEC.initial_items
    assert late.sum() > 0.5 * SPEC.new_items_per_day * SPEC.num_days  # about 100 a day arrived and were seen
    assert (first_day[late] > 0).mean() > 0.9
    # fading: in the last week most consumption is of items born in the last two weeks
    last_week = days >= SPEC.num_days - 7
    age = days[last_week] - first_day[items[last_week]]
    assert np.mean(age <= 14) > 0.6
    # and the initial catalogue's share of the stream falls day by day
    initial_share = [np.mean(items[days == d] <= SPEC.initial_items) for d in (0, 10, 29)]
    assert initial_share[0] > 0.5 and initial_share[0] > initial_share[1] > initial_share[2] and initial_share[2] < 0.1


def test_users_keep_interests(stream):
    # the items' topics, drawn first from the seed, as the generator draws them
    rng = np.random.default_rng(SPEC.seed)
    arrivals = rng.poisson(SPEC.new_items_per_day, SPEC.num_days)
    topics = rng.integers(0, SPEC.num_topics, SPEC.initial_items + int(arrivals.sum()))
    consecutive = stream.user_ids[1:] == stream.user_ids[:-1]  # one user's successive events
    same_topic = topics[stream.item_ids[1:] - 1] == topics[stream.item_ids[:-1] - 1]
    assert same_topic[consecutive].mean() > 3 / SPEC.num_topics  # far above chance


def test_likes_follow_interest(stream):
    like, long_view = stream.actions["like"], stream.actions["long_view"]
    assert 0.2 < like.mean() < 0.8
    assert long_view[like == 1].mean() > 2 * long_view[like == 0].mean()


def test_as_a_data_set():
    events = load_events("synthetic-stream", None, synthetic=SyntheticSpec(num_users=300, num_items=100, seed=3))
    assert len(events) == 40 * 300 and events.source.startswith("synthetic-stream(seed=3")


def test_bad_specs_are_value_errors():
    with pytest.raises(ValueError, match="persistence"):
        StreamSpec(persistence=1.5)
    with pytest.raises(ValueError, match="num_days"):
        StreamSpec(num_days=0)
