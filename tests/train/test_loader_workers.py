"""Batches made by loader processes give the run made without them, for every trainer."""

import pytest
import torch

from genrec.checkpoint import load_checkpoint
from genrec.train.ranking import RankingTrainer
from genrec.train.stream import StreamTrainer
from genrec.train.trainer import Trainer
from tests.tiny import tiny_config
from tests.train.test_ranking_trainer import ranking_config
from tests.train.test_stream import stream_config


def with_stochastic_length(config):
    config.train.stochastic_length_alpha = 1.5  # drawn in the training process, after the batch is made
    return config


@pytest.mark.parametrize("make_trainer, make_config, results", [
    (Trainer, lambda: with_stochastic_length(tiny_config(epochs=2)), "metrics"),
    (RankingTrainer, lambda: with_stochastic_length(ranking_config()), "metrics"),
    (StreamTrainer, lambda: with_stochastic_length(stream_config(max_windows=3)), "windows"),
], ids=["retrieval", "ranking", "stream"])
def test_loader_workers_change_nothing(tmp_path, deterministic, make_trainer, make_config, results):
    runs = {}
    for workers in (0, 2):
        config = make_config()
        config.train.loader_workers = workers
        runs[workers] = make_trainer(config, tmp_path / str(workers), log=lambda _: None, progress=False).fit()
    assert runs[0][results] == runs[2][results]
    a, b = (load_checkpoint(tmp_path / f"{workers}/last.safetensors") for workers in (0, 2))
    assert a.model.keys() == b.model.keys()
    for name, tensor in a.model.items():
        assert torch.equal(tensor, b.model[name]), name
