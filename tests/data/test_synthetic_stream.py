"""The synthetic stream: seeded, and with the dynamics its docstring promises."""

import numpy as np
import pytest

from genrec.data import load_events
from genrec.data.synthetic import SyntheticSpec
from genrec.data.synthetic_stream import DAY, START, StreamSpec, _excited, generate_stream, stream_spec

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


def recent_topic_repeats(events):
    """Per event after a user's first day: did its topic occur among the user's events of the day before, and how
    many events the user had that day."""
    topics = events.item_features.codes[events.item_ids - 1, 0]
    days = (events.timestamps - START) // DAY
    yesterday = {}
    for user, day, topic in zip(events.user_ids, days, topics):
        yesterday.setdefault((user, day), []).append(topic)
    repeats, counts = [], []
    for user, day, topic in zip(events.user_ids, days, topics):
        before = yesterday.get((user, day - 1))
        if before:
            repeats.append(topic in before)
            counts.append(len(before))
    return np.array(repeats), np.array(counts)


def test_self_excitation_repeats_recent_topics():
    spec = StreamSpec(num_users=500, num_events=60_000, num_days=20, initial_items=2000, num_topics=200,
                      interest_concentration=10.0)  # near-uniform interests: repeats are rarer without excitation
    plain, _ = recent_topic_repeats(generate_stream(spec))
    excited, _ = recent_topic_repeats(generate_stream(StreamSpec(**{**spec.__dict__, "excitation": 1.0})))
    assert excited.mean() > plain.mean() + 0.2


@pytest.mark.parametrize("total", [0.5, 2.0, 8.0])
def test_an_event_is_excited_with_the_probability_its_recent_intensity_gives(total):
    """An event follows its user's recent topic counts with probability e R / (1 + e R), R their total (an
    intensity: the same proportions at another total give another probability)."""
    rows, topics, excitation = 20_000, 4, 0.5
    base = np.tile(np.cumsum(np.full(topics, 1 / topics)), (rows, 1))
    counts = np.zeros((rows, topics))
    counts[:, 2] = total  # every recent event in topic 2
    tables = _excited(np.random.default_rng(0), base, counts, excitation)
    followed = (tables[:, 1] == 0.0).mean()  # a followed row has no mass before topic 2
    expected = excitation * total / (1 + excitation * total)
    assert abs(followed - expected) < 4 * np.sqrt(expected * (1 - expected) / rows)
    np.testing.assert_array_equal(tables[tables[:, 1] > 0], base[tables[:, 1] > 0])  # the others keep their table


def test_likes_follow_interest(stream):
    like, long_view = stream.actions["like"], stream.actions["long_view"]
    assert 0.2 < like.mean() < 0.8
    assert long_view[like == 1].mean() > 2 * long_view[like == 0].mean()


def test_as_a_data_set():
    events = load_events("synthetic-stream", None, synthetic=SyntheticSpec(num_users=300, num_items=100, seed=3))
    assert len(events) == 40 * 300 and events.source.startswith("synthetic-stream(seed=3")
    excited = load_events("synthetic-stream", None, synthetic=SyntheticSpec(num_users=300, num_items=100, seed=3),
                          stream_overrides="excitation=1.5, num_topics=7")
    assert len(excited) == len(events) and excited.item_features.codes.max() == 7
    assert not np.array_equal(excited.item_ids, events.item_ids)


@pytest.mark.parametrize("overrides, message", [
    ("excitation=lots", "excitation = 'lots' is not a valid float"), ("topics=3", "'topics' is not a setting"),
    ("num_users=5", "come from data.synthetic_users")])
def test_bad_stream_settings_name_the_reason(overrides, message):
    with pytest.raises(ValueError, match=message):
        stream_spec(100, 50, 0, overrides)


def test_stream_settings_belong_to_the_stream():
    from genrec.config import Config

    config = Config()
    config.data.synthetic_stream = "excitation=1"
    with pytest.raises(ValueError, match="needs data.dataset = synthetic-stream"):
        config.validate()
    assert stream_spec(100, 50, 0, "excitation=1,half_life_days=3") == StreamSpec(
        num_users=100, num_events=4000, initial_items=50, excitation=1.0, half_life_days=3.0)


def test_bad_specs_are_value_errors():
    with pytest.raises(ValueError, match="persistence"):
        StreamSpec(persistence=1.5)
    with pytest.raises(ValueError, match="num_days"):
        StreamSpec(num_days=0)
    with pytest.raises(ValueError, match="excitation"):
        StreamSpec(excitation=-1.0)
