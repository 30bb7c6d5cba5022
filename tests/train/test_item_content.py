"""Item content end to end: MovieLens-100K-format files -> training -> evaluation -> serving, both tasks."""

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from genrec.checkpoint import load_checkpoint
from genrec.inference.engine import RankingRun, RetrievalRun
from genrec.train.ranking import RankingTrainer, evaluate_ranking_run
from genrec.train.trainer import Trainer, evaluate_checkpoint
from tests.tiny import tiny_config
from tests.train.test_user_context import write_ml100k

NUM_ITEMS = 30


def write_movies(directory):
    """u.item for items 1..NUM_ITEMS - 1 (the last has no row): two genres and a release year per item, all three
    alike for items 19 apart."""
    rows = []
    for item in range(1, NUM_ITEMS):
        flags = ["0"] * 19
        flags[item % 19] = flags[(3 * item) % 19] = "1"
        rows.append(f"{item}|Movie {item}|01-Jan-{1990 + item % 19 % 5}||url|{'|'.join(flags)}")
    (directory / "u.item").write_text("\n".join(rows) + "\n")


def content_config(directory, representation="id+content", epochs=2):
    config = tiny_config(mode="validated", epochs=epochs)
    config.data.dataset, config.data.path = "ml-100k", str(directory)
    config.data.item_features, config.model.item_representation = str(directory), representation
    return config


@pytest.fixture
def data_dir(tmp_path):
    write_ml100k(tmp_path, num_items=NUM_ITEMS)
    write_movies(tmp_path)
    return tmp_path


@pytest.mark.parametrize("representation", ["id+content", "content"])
def test_retrieval_trains_evaluates_and_serves_with_content(data_dir, representation):
    trainer = Trainer(content_config(data_dir, representation), data_dir / "run", progress=False, log=lambda _: None)
    assert trainer.data.summary["item_features"] == "genre,year"
    assert trainer.data.summary["items_without_features"] == int(NUM_ITEMS in trainer.data.item_vocab)
    first = trainer.train_epoch()["loss"]
    assert math.isfinite(first) and trainer.train_epoch()["loss"] < first
    summary = Trainer(content_config(data_dir, representation), data_dir / "run", progress=False,
                      log=lambda _: None).fit()
    weights = load_checkpoint(data_dir / "run/last.safetensors").model
    assert "embedding.content.codes" in weights
    assert ("embedding.item.weight" in weights) == (representation == "id+content")
    again = evaluate_checkpoint(data_dir / "run", "test", log=lambda _: None)
    assert again["metrics"]["ndcg@10"] == pytest.approx(summary["metrics"]["ndcg@10"])
    served = RetrievalRun(data_dir / "run")
    source_ids, embeddings = served.item_embeddings()
    trainer.model.load_state_dict(served.checkpoint.inference_weights())  # the same data: the same dense ids
    dense = torch.from_numpy(np.searchsorted(trainer.data.item_vocab, source_ids.numpy()) + 1)
    torch.testing.assert_close(embeddings, trainer.model.eval().item_embeddings(dense))
    ids, scores = served.recommend([[1, 2, 3]], k=5, timestamps=[[1, 2, 3]])
    assert len(ids[0]) == 5 and all(math.isfinite(s) for s in scores[0])


def test_items_that_share_their_content_score_alike_without_ids(data_dir):
    Trainer(content_config(data_dir, "content", epochs=1), data_dir / "run", progress=False, log=lambda _: None).fit()
    source_ids, embeddings = RetrievalRun(data_dir / "run").item_embeddings()
    by_id = dict(zip(source_ids.tolist(), embeddings))
    # items 1 and 20 have genres {1, 3} and the year 1991
    torch.testing.assert_close(by_id[1], by_id[20])
    assert not torch.equal(by_id[1], by_id[2])


def test_ranking_reads_item_content_too(data_dir):
    config = content_config(data_dir)
    config.train.task = "ranking"
    summary = RankingTrainer(config, data_dir / "run", log=lambda _: None).fit()
    assert all(math.isfinite(value) for value in summary["metrics"].values())
    assert evaluate_ranking_run(data_dir / "run", "test")["metrics"] == pytest.approx(summary["metrics"])
    assert "ranker.embedding.content.codes" in load_checkpoint(data_dir / "run/last.safetensors").model
    served = RankingRun(data_dir / "run")
    probabilities = served.rank([1, 2], [[1] * len(served.tasks)] * 2, [3, 4], timestamps=[1, 2])
    assert probabilities.shape == (2, len(served.tasks)) and np.isfinite(probabilities).all()


def test_the_synthetic_streams_topics_are_its_items_content(tmp_path):
    config = tiny_config(mode="paper", epochs=1)
    config.data.dataset, config.data.synthetic_users, config.data.synthetic_items = "synthetic-stream", 60, 40
    config.data.item_features, config.model.item_representation = "topics", "content"
    trainer = Trainer(config, tmp_path / "run", progress=False, log=lambda _: None)
    assert trainer.data.summary["item_features"] == "topic" and trainer.data.summary["items_without_features"] == 0
    assert all(math.isfinite(value) for value in trainer.fit()["metrics"].values())


def test_the_cli_flag_adds_content_to_ids(data_dir):
    out = data_dir / "cli-run"
    result = subprocess.run([sys.executable, "-m", "genrec", "train", "--dataset", "ml-100k", "--data-dir",
                             str(data_dir), "--item-features", str(data_dir / "u.item"), "--epochs", "1",
                             "--device", "cpu", "--out", str(out), "--set", "model.num_layers=1"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert '"item_features": "genre,year"' in result.stdout
    assert '"item_representation": "id+content"' in (out / "config.json").read_text()


@pytest.mark.parametrize("change, message", [
    (lambda c: setattr(c.model, "item_representation", "id"), "set both or neither"),
    (lambda c: setattr(c.data, "item_features", None), "set both or neither"),
    (lambda c: setattr(c.data, "dataset", "events"), "needs data.dataset = ml-1m, ml-100k, s3rec or synthetic-stream"),
    (lambda c: setattr(c.data, "item_features", "topics"), "topics is the synthetic stream's"),
    (lambda c: (setattr(c.model, "item_representation", "content"),
                setattr(c.train, "embedding_optimizer", "rowwise_adagrad")), "has no item table"),
    (lambda c: (setattr(c.train, "embedding_optimizer", "rowwise_adagrad"),
                setattr(c.train, "item_table_sharding", "rows")), "shards the item table alone"),
])
def test_bad_content_configs_are_refused(data_dir, change, message):
    config = content_config(data_dir)
    change(config)
    with pytest.raises(ValueError, match=message):
        config.validate()
