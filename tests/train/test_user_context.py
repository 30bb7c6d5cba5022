"""User-context prefix tokens end to end: MovieLens-100K-format files -> training -> evaluation."""

import math

import numpy as np
import pytest

from genrec.checkpoint import load_checkpoint
from genrec.inference.engine import RankingRun
from genrec.train.ranking import RankingTrainer, evaluate_ranking_run
from genrec.train.trainer import Trainer, evaluate_checkpoint
from tests.tiny import tiny_config


def write_ml100k(directory, num_users=40, num_items=30, events_per_user=12, seed=0):
    rng = np.random.default_rng(seed)
    ratings = [f"{user}\t{rng.integers(1, num_items + 1)}\t{rng.integers(1, 6)}\t{1_000_000 + 3600 * event + user}"
               for user in range(1, num_users + 1) for event in range(events_per_user)]
    (directory / "u.data").write_text("\n".join(ratings) + "\n")
    occupations = ["artist", "doctor", "writer"]
    users = [f"{user}|{20 + user % 30}|{'MF'[user % 2]}|{occupations[user % 3]}|{user % 10}0000"
             for user in range(1, num_users)]  # the last user has no row: its features are unknown
    (directory / "u.user").write_text("\n".join(users) + "\n")


def context_config(directory, epochs=2):
    config = tiny_config(mode="validated", epochs=epochs)
    config.data.dataset, config.data.path = "ml-100k", str(directory)
    config.data.user_features = str(directory)
    return config


def test_training_reads_user_features_and_evaluation_reloads_them(tmp_path):
    write_ml100k(tmp_path)
    trainer = Trainer(context_config(tmp_path), tmp_path / "run", progress=False, log=lambda _: None)
    assert trainer.data.summary["user_features"] == "age,gender,occupation,zip_region"
    assert trainer.data.summary["users_without_features"] == 1
    assert trainer.data.split.train.context.shape == (40, 4)
    first = trainer.train_epoch()["loss"]
    assert math.isfinite(first) and trainer.train_epoch()["loss"] < first
    summary = Trainer(context_config(tmp_path), tmp_path / "run", progress=False, log=lambda _: None).fit()
    checkpoint = load_checkpoint(tmp_path / "run/last.safetensors")
    assert sum(name.startswith("context.tables.") for name in checkpoint.model) == 4
    again = evaluate_checkpoint(tmp_path / "run", "test", log=lambda _: None)
    assert again["metrics"]["ndcg@10"] == pytest.approx(summary["metrics"]["ndcg@10"])


def test_ranking_reads_user_features_too(tmp_path):
    write_ml100k(tmp_path)
    config = context_config(tmp_path)
    config.train.task = "ranking"
    summary = RankingTrainer(config, tmp_path / "run", log=lambda _: None).fit()
    assert all(math.isfinite(value) for value in summary["metrics"].values())
    again = evaluate_ranking_run(tmp_path / "run", "test")
    assert again["metrics"] == pytest.approx(summary["metrics"])
    checkpoint = load_checkpoint(tmp_path / "run/last.safetensors")
    assert sum(name.startswith("ranker.context.tables.") for name in checkpoint.model) == 4
    assert RankingRun(tmp_path / "run").inputs.context_cardinalities == (30, 2, 3, 10)


def test_user_features_need_hstu_and_movielens(tmp_path):
    write_ml100k(tmp_path)
    for key, value in (("architecture", "sasrec"), ("dataset", "events")):
        config = context_config(tmp_path)
        setattr(config.model if key == "architecture" else config.data, key, value)
        with pytest.raises(ValueError, match="needs model.architecture = hstu and data.dataset = ml-1m or"):
            config.validate()
