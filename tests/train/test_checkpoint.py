import math

import numpy as np

import pytest
import torch

from genrec.checkpoint import atomic_write_bytes, load_checkpoint
from genrec.data.stochastic_length import stochastic_length_successors
from genrec.train.epoch import set_learning_rate
from genrec.train.trainer import Trainer
from tests.tiny import tiny_config


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "x.bin"
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"new contents")
    assert target.read_bytes() == b"new contents"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]  # no temp files left behind


@pytest.mark.parametrize("stochastic_length_alpha, sampling, ema_decay",
                         [(0.0, "uniform", 0.0), (1.2, "uniform", 0.0), (1.2, "successors", 0.0), (0.0, "uniform", 0.9)],
                         ids=["full-length", "stochastic-length", "stochastic-length-successors", "weight-average"])
def test_resume_is_exact(tmp_path, deterministic, stochastic_length_alpha, sampling, ema_decay):
    def config(epochs):
        config = tiny_config(epochs=epochs)
        config.train.stochastic_length_alpha, config.train.ema_decay = stochastic_length_alpha, ema_decay
        config.train.stochastic_length_sampling = sampling
        return config

    straight = Trainer(config(3), tmp_path / "a", progress=False, log=lambda _: None).fit()
    Trainer(config(1), tmp_path / "b", progress=False, log=lambda _: None).fit()
    resumed = Trainer(config(3), tmp_path / "b", progress=False, log=lambda _: None).fit(resume=True)
    a = load_checkpoint(tmp_path / "a/last.safetensors")
    b = load_checkpoint(tmp_path / "b/last.safetensors")
    assert ("length" in a.rng) == (stochastic_length_alpha > 0)
    assert a.state["epoch"] == b.state["epoch"] == 3
    for name, tensor in a.model.items():
        assert torch.equal(tensor, b.model[name]), name
    assert (a.averaged is not None) == (b.averaged is not None) == (ema_decay > 0)
    for name, tensor in (a.averaged or {}).items():
        assert torch.equal(tensor, b.averaged[name]), name
    assert straight["metrics"] == resumed["metrics"]
    assert straight["best_epoch"] == resumed["best_epoch"]


def test_checkpoint_contents(tmp_path):
    Trainer(tiny_config(mode="paper", epochs=1), tmp_path, progress=False, log=lambda _: None).fit()
    checkpoint = load_checkpoint(tmp_path / "last.safetensors")
    assert checkpoint.config["data"]["max_seq_len"] == 24
    assert set(checkpoint.rng) == {"torch", "shuffle", "sample"}
    assert checkpoint.optimizer["state"] and not (tmp_path / "best.safetensors").exists()
    with pytest.raises(ValueError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_learning_rate_warms_up_then_decays_to_zero(tmp_path):
    config = tiny_config(mode="paper", epochs=4)
    config.train.lr_schedule, config.train.warmup_epochs = "cosine", 1
    trainer = Trainer(config, tmp_path, progress=False, log=lambda _: None)
    steps_per_epoch = -(-trainer.data.split.train.num_users // config.train.batch_size)
    rates = []
    for step in range(4 * steps_per_epoch):
        set_learning_rate(trainer.optimizer, config.train, step, steps_per_epoch)
        rates.append(trainer.optimizer.param_groups[0]["lr"])
    peak = steps_per_epoch - 1
    assert rates[peak] == pytest.approx(config.train.learning_rate)
    assert all(a < b for a, b in zip(rates[:peak], rates[1:peak + 1]))  # linear warm-up
    assert all(a >= b for a, b in zip(rates[peak:], rates[peak + 1:]))  # cosine decay
    assert rates[-1] < 0.05 * config.train.learning_rate


def test_early_stopping_on_validation(tmp_path, monkeypatch):
    config = tiny_config(epochs=10)
    config.train.patience = 2
    scores = iter([0.3, 0.5, 0.4, 0.45, 0.6, 0.1, 0.2, 0.3, 0.4, 0.5])
    monkeypatch.setattr(Trainer, "evaluate", lambda self, split: {"ndcg@10": next(scores, 0.0)})
    summary = Trainer(config, tmp_path, progress=False, log=lambda _: None).fit()
    # best at epoch 2, then two passes (epochs 3, 4) without a gain: no epoch 5
    assert summary["best_epoch"] == 2 and summary["epoch"] == 4


def test_full_softmax_training_learns(tmp_path):
    config = tiny_config(mode="paper", epochs=3)
    config.train.loss.negatives = "all"
    trainer = Trainer(config, tmp_path, progress=False, log=lambda _: None)
    first = trainer.train_epoch()["loss"]
    trainer.train_epoch()
    assert math.isfinite(first) and trainer.train_epoch()["loss"] < first


def test_mixture_of_logits_training_learns(tmp_path):
    config = tiny_config(mode="paper", epochs=3)
    config.model.similarity = "mol"
    trainer = Trainer(config, tmp_path, progress=False, log=lambda _: None)
    first = trainer.train_epoch()["loss"]
    trainer.train_epoch()
    assert math.isfinite(first) and trainer.train_epoch()["loss"] < first
    assert any(name.startswith("similarity.") for name in trainer.model.state_dict())


def test_epoch_reports_throughput(tmp_path):
    stats = Trainer(tiny_config(mode="paper", epochs=1), tmp_path, progress=False, log=lambda _: None).train_epoch()
    assert stats["tokens_per_s"] > 0 and stats["tflops"] > 0
    assert "mfu" not in stats  # no peak is known for a CPU


def test_a_full_disk_is_one_error_and_keeps_the_old_file(tmp_path, monkeypatch):
    import errno
    import os

    target = tmp_path / "last.safetensors"
    atomic_write_bytes(target, b"good")

    def no_space(_):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(ValueError, match="No space left on device"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"good" and [p.name for p in tmp_path.iterdir()] == ["last.safetensors"]


def test_the_trainer_draws_the_configured_cuts(tmp_path, monkeypatch):
    import genrec.train.trainer as trainer_module

    seen = []
    monkeypatch.setattr(trainer_module, "stochastic_length", lambda batch, alpha, generator, contiguous,
                        original_positions: seen.append((contiguous, original_positions)) or batch)
    for sampling, positions in (("uniform", "kept"), ("contiguous", "kept"), ("uniform", "original")):
        config = tiny_config(epochs=1)
        config.train.stochastic_length_alpha, config.train.stochastic_length_sampling = 1.2, sampling
        config.train.stochastic_length_positions = positions
        Trainer(config, tmp_path / f"{sampling}-{positions}", progress=False, log=lambda _: None).train_epoch()
        assert seen and set(seen) == {(sampling == "contiguous", positions == "original")}
        seen.clear()


def test_with_successors_the_trainer_trains_each_kept_event_on_its_true_successor(tmp_path):
    """train.stochastic_length_sampling = successors: the model sees the uniform cut with every kept event's query
    time its successor's, and the loss takes each kept event's successor in the whole history as its target."""
    config = tiny_config(epochs=1)
    config.train.stochastic_length_alpha, config.train.stochastic_length_sampling = 1.2, "successors"
    trainer = Trainer(config, tmp_path, progress=False, log=lambda _: None)
    seen = {}
    model, loss = trainer.train_model, trainer.next_item_loss
    trainer.train_model = lambda batch: model(seen.setdefault("batch", batch))
    trainer.next_item_loss = lambda embeddings, targets: loss(embeddings, seen.setdefault("targets", targets))
    batch = trainer.host_batch(np.arange(32))
    draws = torch.Generator().set_state(trainer.streams.length.get_state())
    assert trainer.batch_loss(batch) is not None
    cut, successors = stochastic_length_successors(batch, 1.2, draws)
    assert cut.lengths.max() < batch.lengths.max()  # some histories were cut
    assert torch.equal(seen["batch"].item_ids, cut.item_ids)
    assert torch.equal(seen["batch"].token_query_times, cut.token_query_times)
    assert torch.equal(seen["targets"], successors[successors > 0])
