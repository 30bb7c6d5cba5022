"""A run whose loss goes non-finite stops with the reason, keeps its last good checkpoint and says so
in failure.json; evaluation refuses a model whose scores are not finite."""

import json
import subprocess
import sys

import pytest
import torch

from genrec.checkpoint import load_checkpoint, save_checkpoint
from genrec.train.trainer import Trainer, evaluate_checkpoint
from tests.tiny import TINY, tiny_config


def _quiet(config, out):
    return Trainer(config, out, progress=False, log=lambda _: None)


def test_a_diverging_learning_rate_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    good = tiny_config(mode="paper", epochs=1)
    _quiet(good, tmp_path).fit()
    before = load_checkpoint(tmp_path / "last.safetensors")
    diverging = tiny_config(mode="paper", epochs=3)
    diverging.train.learning_rate = 1e30
    with pytest.raises(ValueError, match="non-finite at step"):
        _quiet(diverging, tmp_path).fit(resume=True)
    after = load_checkpoint(tmp_path / "last.safetensors")
    assert after.state["epoch"] == 1
    assert all(torch.equal(tensor, after.model[name]) for name, tensor in before.model.items())
    failure = json.loads((tmp_path / "failure.json").read_text())
    assert failure["kind"] == "TrainingDiverged" and "non-finite" in failure["error"]


def test_the_cli_reports_divergence_in_one_line(tmp_path):
    run = subprocess.run([sys.executable, "-m", "genrec", "train", "--config", str(TINY), "--out", str(tmp_path),
                          "--no-progress", "--epochs", "2", "--set", "train.learning_rate=1e30"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert str(tmp_path) in run.stderr and "non-finite" in run.stderr
    assert not (tmp_path / "metrics.json").exists()


def test_evaluation_refuses_nan_weights_naming_the_run(tmp_path):
    _quiet(tiny_config(mode="paper", epochs=1), tmp_path).fit()
    checkpoint = load_checkpoint(tmp_path / "last.safetensors")
    weights = dict(checkpoint.model)
    weights["embedding.item.weight"] = weights["embedding.item.weight"].clone()
    weights["embedding.item.weight"][3, :2] = float("nan")  # as a diverged or corrupted model would hold
    save_checkpoint(tmp_path / "last.safetensors", weights, None, checkpoint.rng, checkpoint.config,
                    checkpoint.state, checkpoint.item_vocab)
    with pytest.raises(ValueError, match="non-finite scores") as error:
        evaluate_checkpoint(tmp_path, "test", log=lambda _: None)
    assert str(tmp_path) in str(error.value)


@pytest.mark.parametrize("damage", ["truncated", "empty", "header", "bit-flip"])
def test_damaged_checkpoints_are_named(tmp_path, damage):
    _quiet(tiny_config(mode="paper", epochs=1), tmp_path).fit()
    path = tmp_path / "last.safetensors"
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[:len(data) // 2]
    elif damage == "empty":
        data = bytearray()
    elif damage == "header":
        data[8:16] = b"\xff" * 8
    else:
        data[-100] ^= 0x10  # inside the tensor data: only the checksum can tell
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged checkpoint") as error:
        load_checkpoint(path)
    assert str(path) in str(error.value)


def test_stale_temporary_files_are_removed_on_the_next_start(tmp_path):
    (tmp_path / ".genrec-tmp.last.safetensors.abc123").write_bytes(b"half a checkpoint")
    _quiet(tiny_config(mode="paper", epochs=1), tmp_path).fit()
    assert not list(tmp_path.glob(".genrec-tmp.*"))
