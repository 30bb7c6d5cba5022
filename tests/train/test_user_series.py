"""Sequentialized user features end to end: the synthetic stream's followed topics and a CSV of changes."""

import math

import numpy as np
import pytest

from genrec.checkpoint import load_checkpoint
from genrec.inference.engine import RetrievalRun
from genrec.train.trainer import Trainer, evaluate_checkpoint
from tests.tiny import tiny_config
from tests.train.test_user_context import write_ml100k


def stream_config(epochs=2):
    config = tiny_config(mode="validated", epochs=epochs)
    config.data.dataset, config.data.user_series = "synthetic-stream", "followed_topics"
    config.data.synthetic_users, config.data.synthetic_items = 60, 40
    return config


def test_followed_topics_train_evaluate_and_reload(tmp_path):
    trainer = Trainer(stream_config(), tmp_path / "run", progress=False, log=lambda _: None)
    assert trainer.data.summary["user_series"] == "followed_topic"
    assert trainer.data.summary["user_series_changes"] >= 60  # every user follows a topic from the start
    first = trainer.train_epoch()["loss"]
    assert math.isfinite(first) and trainer.train_epoch()["loss"] < first
    summary = Trainer(stream_config(), tmp_path / "run", progress=False, log=lambda _: None).fit()
    assert "series.table.weight" in load_checkpoint(tmp_path / "run/last.safetensors").model
    again = evaluate_checkpoint(tmp_path / "run", "test", log=lambda _: None)
    assert again["metrics"]["ndcg@10"] == pytest.approx(summary["metrics"]["ndcg@10"])
    served = RetrievalRun(tmp_path / "run")  # serving reads the values behind the codes off the checkpoint
    assert served.inputs.series_values == [str(topic) for topic in range(trainer.data.series_cardinality)]


def test_changes_from_a_csv(tmp_path):
    write_ml100k(tmp_path)  # events at 1,000,000 + 3600 k + user
    rows = [f"{user},{1_000_000 + 3600 * 5 * step},{'abc'[(user + step) % 3]}" for user in range(1, 41)
            for step in range(3)]
    (tmp_path / "tiers.csv").write_text("user_id,timestamp,tier\n" + "\n".join(rows) + "\n")
    config = tiny_config(mode="validated", epochs=1)
    config.data.dataset, config.data.path = "ml-100k", str(tmp_path)
    config.data.user_series = str(tmp_path / "tiers.csv")
    trainer = Trainer(config, tmp_path / "run", progress=False, log=lambda _: None)
    assert trainer.data.summary["user_series"] == "tier" and trainer.data.summary["user_series_changes"] == 120
    summary = trainer.fit()
    assert all(math.isfinite(value) for value in summary["metrics"].values())


def test_ranking_reads_changes_and_serves_them(tmp_path):
    """A ranker trained with change tokens evaluates again to the same metrics and serves through M-FALCON and
    POST /v1/rank: a change after the history reaches the candidates' scores."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from genrec.inference.engine import RankingRun
    from genrec.serve.http import create_app
    from genrec.train.ranking import RankingTrainer, evaluate_ranking_run

    write_ml100k(tmp_path)
    rows = [f"{user},{1_000_000 + 3600 * 5 * step},{'abc'[(user + step) % 3]}" for user in range(1, 41)
            for step in range(3)]
    (tmp_path / "tiers.csv").write_text("user_id,timestamp,tier\n" + "\n".join(rows) + "\n")
    config = tiny_config(mode="validated", epochs=2)
    config.data.dataset, config.data.path, config.train.task = "ml-100k", str(tmp_path), "ranking"
    config.data.user_series = str(tmp_path / "tiers.csv")
    summary = RankingTrainer(config, tmp_path / "run", log=lambda _: None).fit()
    assert all(math.isfinite(value) for value in summary["metrics"].values())
    assert "ranker.series.table.weight" in load_checkpoint(tmp_path / "run/last.safetensors").model
    assert evaluate_ranking_run(tmp_path / "run", "test")["metrics"] == pytest.approx(summary["metrics"])
    ranker = RankingRun(tmp_path / "run")
    request = {"history": [1, 2, 3], "actions": [[1, 0], [0, 0], [1, 1]], "candidates": [4, 5, 6],
               "timestamps": [1_000_000, 1_003_600, 1_007_200], "query_time": 1_010_000}
    history = [request[key] for key in ("history", "actions", "candidates", "timestamps", "query_time")]
    tiers = {tier: ranker.rank(*history, changes=[(990_000, "a"), (1_008_000, tier)]) for tier in "bc"}
    assert tiers["b"].shape == (3, 2) and not np.allclose(tiers["b"], tiers["c"])
    config.train.task, config.train.epochs = "retrieval", 1  # the service needs a retriever beside the ranker
    Trainer(config, tmp_path / "retriever", progress=False, log=lambda _: None).fit()
    client = TestClient(create_app(tmp_path / "retriever", ranker_dir=tmp_path / "run"))
    response = client.post("/v1/rank", json={
        **request, "changes": [{"timestamp": 990_000, "value": "a"}, {"timestamp": 1_008_000, "value": "c"}]})
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["scores"], tiers["c"], rtol=1e-6)


@pytest.mark.parametrize("change, message", [
    (lambda c: setattr(c.data, "dataset", "synthetic"), "followed_topics is the synthetic stream's"),
    (lambda c: setattr(c.model, "architecture", "sasrec"), "needs model.architecture = hstu"),
    (lambda c: setattr(c.data, "max_series_len", 0), "data.max_series_len must be positive"),
])
def test_bad_series_configs_are_refused(change, message):
    config = stream_config()
    change(config)
    with pytest.raises(ValueError, match=message):
        config.validate()
