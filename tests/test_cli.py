"""The CLI as a user runs it (subprocess)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

TINY = Path(__file__).resolve().parent / "tiny.toml"
KEYS = {"hr@10", "hr@50", "hr@200", "ndcg@10", "ndcg@50", "ndcg@200", "mrr"}


def genrec(*args):
    return subprocess.run([sys.executable, "-m", "genrec", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_train_then_eval(tmp_path):
    run = genrec("train", "--config", str(TINY), "--out", str(tmp_path), "--mode", "validated", "--no-progress",
                 "--device", "cpu")
    assert run.returncode == 0, run.stderr
    assert "popularity" in run.stdout
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics) == KEYS and all(isinstance(v, float) for v in metrics.values())
    assert (tmp_path / "best.safetensors").is_file() and (tmp_path / "config.json").is_file()
    again = genrec("eval", "--checkpoint", str(tmp_path), "--split", "test", "--out", str(tmp_path / "e"))
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "e/metrics.json").read_text()) == metrics  # same model, same numbers
    valid = genrec("eval", "--checkpoint", str(tmp_path), "--split", "valid", "--out", str(tmp_path / "v"))
    assert valid.returncode == 0 and set(json.loads((tmp_path / "v/metrics.json").read_text())) == KEYS


@pytest.mark.slow
def test_learns_more_than_popularity(tmp_path):
    """The embedded default's promise at a smaller size: the model beats popularity clearly."""
    run = genrec("train", "--config", str(TINY), "--out", str(tmp_path), "--no-progress", "--epochs", "80")
    assert run.returncode == 0, run.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["metrics"]["hr@10"] > 2 * summary["popularity"]["hr@10"]


@pytest.mark.parametrize("args, message", [
    (["train", "--dataset", "ml-1m", "--data-dir", "/nonexistent"], "no such file or directory"),
    (["train", "--config", "/nonexistent.toml"], "no such config file"),
    (["train", "--dataset", "sasrec"], "needs --data-dir"),
    (["eval", "--checkpoint", "/nonexistent"], "no config.json"),
])
def test_user_errors_are_one_line(args, message):
    run = genrec(*args)
    assert run.returncode == 2
    assert message in run.stderr and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_malformed_rows_with_and_without_skip(tmp_path):
    data = tmp_path / "seq.txt"
    data.write_text("".join(f"{u} {i}\n" for u in range(1, 30) for i in range(1, 8)) + "oops\n")
    run = genrec("train", "--dataset", "sasrec", "--data-dir", str(data), "--config", str(TINY), "--out",
                 str(tmp_path / "r"), "--no-progress")
    assert run.returncode == 2 and f"{data}:204: expected 2 fields" in run.stderr
    run = genrec("train", "--dataset", "sasrec", "--data-dir", str(data), "--config", str(TINY), "--out",
                 str(tmp_path / "r"), "--no-progress", "--skip-bad-rows", "--epochs", "1")
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "r/summary.json").read_text())["data"]["skipped_rows"] == 1
