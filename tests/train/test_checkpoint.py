from pathlib import Path

import pytest
import torch

from genrec.config import Config, load_config_file
from genrec.train.checkpoint import atomic_write_bytes, load_checkpoint
from genrec.train.trainer import Trainer

TINY = Path(__file__).resolve().parents[1] / "tiny.toml"


def tiny_config(mode="validated", epochs=2) -> Config:
    config = load_config_file(TINY, Config())
    config.data.mode = mode
    config.train.epochs = epochs
    config.train.device = "cpu"
    return config


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "x.bin"
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"new contents")
    assert target.read_bytes() == b"new contents"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]  # no temp files left behind


def test_resume_is_exact(tmp_path):
    straight = Trainer(tiny_config(epochs=3), tmp_path / "a", progress=False, log=lambda _: None).fit()
    Trainer(tiny_config(epochs=1), tmp_path / "b", progress=False, log=lambda _: None).fit()
    resumed = Trainer(tiny_config(epochs=3), tmp_path / "b", progress=False, log=lambda _: None).fit(resume=True)
    a = load_checkpoint(tmp_path / "a/last.safetensors")
    b = load_checkpoint(tmp_path / "b/last.safetensors")
    assert a.state["epoch"] == b.state["epoch"] == 3
    for name, tensor in a.model.items():
        assert torch.equal(tensor, b.model[name]), name
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
