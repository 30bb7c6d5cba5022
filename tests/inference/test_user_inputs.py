"""Serving a model trained with user features or change tokens: a request's raw values become the inputs training
built, so a served embedding equals the model's on the training path's batch."""

import numpy as np
import pytest
import torch

from genrec.data import make_batch
from genrec.inference.engine import RankingRun, RetrievalRun
from genrec.train.ranking import RankingTrainer
from genrec.train.trainer import Trainer
from tests.train.test_user_context import context_config, write_ml100k

OCCUPATIONS = ["artist", "doctor", "writer"]  # as write_ml100k


def features_of(user):
    """user's row of write_ml100k's u.user, as a request gives it."""
    return {"age": 20 + user % 30, "gender": "MF"[user % 2], "occupation": OCCUPATIONS[user % 3],
            "zip_region": str(user % 10)}


def changes_of(user):
    return [(1_000_000 + 3600 * 5 * step, "abc"[(user + step) % 3]) for step in range(3)]


def served_and_trained(trainer, run, users, **requests):
    """The served embeddings of these users' training histories (query time: their next event's) beside the
    served model's embeddings of make_batch's batch."""
    train = trainer.data.split.train
    query_times = np.array([int(train.timestamps[train.bounds()[1][u] - 1]) + 3600 for u in users])
    batch = make_batch(train, users, trainer.config.data.max_seq_len, query_times=query_times)
    with torch.no_grad():
        expected = run.model(batch)[batch.seq_offsets[1:] - 1]
    offsets = batch.seq_offsets.tolist()
    histories = [run.source_ids[batch.item_ids[a:b] - 1].tolist() for a, b in zip(offsets, offsets[1:])]
    stamps = [batch.timestamps[a:b].tolist() for a, b in zip(offsets, offsets[1:])]
    return run.embed_users(histories, stamps, query_times.tolist(), **requests), expected, batch


@pytest.fixture(scope="module")
def context_run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("context")
    write_ml100k(directory)
    trainer = Trainer(context_config(directory, epochs=1), directory / "run", progress=False, log=lambda _: None)
    trainer.fit()
    return trainer, RetrievalRun(directory / "run")


@pytest.fixture(scope="module")
def ranking_context_run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ranking")
    write_ml100k(directory)
    config = context_config(directory, epochs=1)
    config.train.task = "ranking"
    trainer = RankingTrainer(config, directory / "run", log=lambda _: None, progress=False)
    trainer.fit()
    return trainer, RankingRun(directory / "run")


def changes_run(directory, with_features):
    write_ml100k(directory)
    rows = [f"{user},{time},{value}" for user in range(1, 41) for time, value in changes_of(user)]
    (directory / "tiers.csv").write_text("user_id,timestamp,tier\n" + "\n".join(rows) + "\n")
    config = context_config(directory, epochs=1)
    config.data.user_series = str(directory / "tiers.csv")
    if not with_features:
        config.data.user_features = None
    trainer = Trainer(config, directory / "run", progress=False, log=lambda _: None)
    trainer.fit()
    return trainer, RetrievalRun(directory / "run")


@pytest.fixture(scope="module")
def series_run(tmp_path_factory):
    return changes_run(tmp_path_factory.mktemp("series"), with_features=False)


def test_served_user_features_are_the_trained_ones(context_run):
    trainer, run = context_run
    users = np.array([0, 7, 39])  # users 1, 8 and 40, whom the features file lacks
    requested = [features_of(1), features_of(8), None]
    served, expected, batch = served_and_trained(trainer, run, users, user_features=requested)
    assert batch.context[2].tolist() == [0, 0, 0, 0] and batch.context[0].min() > 0
    torch.testing.assert_close(served, expected)
    other, _, _ = served_and_trained(trainer, run, users, user_features=[features_of(2), features_of(8), None])
    assert not torch.allclose(other[0], expected[0])  # the features are read


def test_served_changes_are_the_trained_ones(series_run):
    trainer, run = series_run
    users = np.array([0, 5, 12])
    served, expected, batch = served_and_trained(trainer, run, users,
                                                 changes=[changes_of(1), changes_of(6)[::-1], changes_of(13)])
    assert batch.series_codes.numel() > len(users)  # changes after the first event take part
    torch.testing.assert_close(served, expected)
    other, _, _ = served_and_trained(trainer, run, users, changes=[changes_of(2), changes_of(6), changes_of(13)])
    assert not torch.allclose(other[0], expected[0])


def test_served_features_and_changes_together_are_the_trained_ones(tmp_path):
    trainer, run = changes_run(tmp_path, with_features=True)
    users = np.array([0, 5, 39])
    served, expected, batch = served_and_trained(trainer, run, users,
                                                 user_features=[features_of(1), features_of(6), None],
                                                 changes=[changes_of(1), changes_of(6), changes_of(40)])
    assert batch.context is not None and batch.series_codes is not None
    torch.testing.assert_close(served, expected)


@pytest.mark.parametrize("user", [0, 39], ids=["features", "unknown-user"])
def test_a_ranked_candidate_is_the_trained_prediction_of_that_event(ranking_context_run, user):
    trainer, run = ranking_context_run
    batch = make_batch(trainer.sequences, np.array([user]), trainer.config.data.max_seq_len, drop_last=2)
    with torch.no_grad():
        expected = torch.sigmoid(run.scorer.model(batch)[-1])  # training's pass: the last event, its actions unseen
    ids = run.source_ids[batch.item_ids - 1].tolist()
    stamps = batch.timestamps.tolist()
    actions = batch.labels[:-1].long().tolist()
    scores = run.rank(ids[:-1], actions, ids[-1:], stamps[:-1], query_time=stamps[-1],
                      user_features=None if user == 39 else features_of(user + 1))
    torch.testing.assert_close(torch.from_numpy(scores[0]), expected, atol=1e-5, rtol=1e-5)
    if user == 0:
        other = run.rank(ids[:-1], actions, ids[-1:], stamps[:-1], query_time=stamps[-1],
                         user_features=features_of(2))
        assert not np.allclose(other, scores)


@pytest.mark.parametrize("requests, message", [
    ({"user_features": [{"age": 21, "gender": "F", "occupation": "artist", "zip_region": "x"}]},
     r"user_features.zip_region: unknown value 'x' \(known: 0, 1,"),
    ({"user_features": [{"age": 21}]}, "must give exactly the model's features"),
    ({"user_features": [None, None]}, "user_features: 2 entries for 1 histories"),
    ({"changes": [[(1, "a")]]}, "this model takes no changes"),
])
def test_bad_user_features_are_refused(context_run, requests, message):
    _, run = context_run
    with pytest.raises(ValueError, match=message):
        run.recommend([[1, 2]], 3, [[1_000_000, 1_000_001]], query_times=[1_000_002], **requests)


@pytest.mark.parametrize("requests, message", [
    ({"changes": [[(1_000_000, "d")]]}, r"changes: unknown value 'd' \(known: a, b, c\)"),
    ({"changes": [[(1_000_003, "a")]]}, r"a change at 1000003 is after the query time \(1000002\)"),
    ({"user_features": [{"age": 21}]}, "this model takes no user_features"),
])
def test_bad_changes_are_refused(series_run, requests, message):
    _, run = series_run
    with pytest.raises(ValueError, match=message):
        run.recommend([[1, 2]], 3, [[1_000_000, 1_000_001]], query_times=[1_000_002], **requests)
    with pytest.raises(ValueError, match="send timestamps"):  # the changes are placed by time
        run.recommend([[1, 2]], 3)


def test_the_service_takes_user_features_and_changes(context_run, series_run, ranking_context_run):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from genrec.serve.http import create_app

    request = {"history": [1, 2], "timestamps": [1_000_000, 1_000_001], "query_time": 1_000_002, "k": 3}
    for (trainer, _), extra in ((context_run, {"user_features": features_of(3)}),
                                (series_run, {"changes": [{"timestamp": 1_000_000, "value": "b"}]})):
        client = TestClient(create_app(trainer.out_dir))
        answer = client.post("/v1/retrieve", json={**request, **extra})
        assert answer.status_code == 200 and len(answer.json()["items"]) == 3
        wrong = {key: ({"age": 21} if key == "user_features" else [{"timestamp": 1, "value": "z"}]) for key in extra}
        answer = client.post("/v1/retrieve", json={**request, **wrong})
        assert answer.status_code == 422 and ("user_features" in answer.text or "changes" in answer.text)
    ranking = TestClient(create_app(context_run[0].out_dir, ranker_dir=ranking_context_run[0].out_dir))
    request = {"history": [1, 2], "actions": [[1, 0], [0, 1]], "timestamps": [1_000_000, 1_000_001],
               "candidates": [3, 4], "query_time": 1_000_002}
    answer = ranking.post("/v1/rank", json={**request, "user_features": features_of(3)})
    assert answer.status_code == 200 and len(answer.json()["scores"]) == 2
    answer = ranking.post("/v1/rank", json={**request, "user_features": {"age": 21}})
    assert answer.status_code == 422 and "user_features" in answer.text
