"""The CLI as a user runs it (subprocess)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

TINY = Path(__file__).resolve().parent / "tiny.toml"
KEYS = {"hr@10", "hr@50", "hr@200", "ndcg@10", "ndcg@50", "ndcg@200", "mrr", "nll"}


def genrec(*args):
    return subprocess.run([sys.executable, "-m", "genrec", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_train_then_eval(tmp_path):
    run = genrec("train", "--config", str(TINY), "--out", str(tmp_path), "--mode", "validated", "--no-progress",
                 "--device", "cpu", "--set", "train.loss.num_negatives=8", "--set", "train.lr_schedule=cosine",
                 "--set", "model.similarity=mol")
    assert run.returncode == 0, run.stderr
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["train"]["loss"]["num_negatives"] == 8 and config["train"]["lr_schedule"] == "cosine"
    assert config["model"]["similarity"] == "mol"  # the learned similarity survives checkpoint and eval
    assert "popularity" in run.stdout
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics) == KEYS and all(isinstance(v, float) for v in metrics.values())
    assert (tmp_path / "best.safetensors").is_file() and (tmp_path / "config.json").is_file()
    assert (tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG")
    again = genrec("eval", "--checkpoint", str(tmp_path), "--split", "test", "--out", str(tmp_path / "e"))
    assert again.returncode == 0, again.stderr
    evaluated = json.loads((tmp_path / "e/metrics-test.json").read_text())
    assert evaluated["metrics"] == metrics and evaluated["split"] == "test"  # same model, same numbers
    valid = genrec("eval", "--checkpoint", str(tmp_path), "--split", "valid")
    assert valid.returncode == 0, valid.stderr
    assert json.loads((tmp_path / "metrics-valid.json").read_text())["split"] == "valid"
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics  # the run's test result untouched


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
    (["train", "--set", "model.layers=3"], "unknown key 'model.layers'"),
    (["train", "--set", "train.lr_schedule=linear"], "train.lr_schedule must be constant or cosine"),
    (["train", "--set", "model.similarity=mol", "--set", "train.loss.negatives=all"], "needs train.loss.negatives"),
    (["train", "--user-features", "users.dat"], "needs model.architecture = hstu and data.dataset = ml-1m"),
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


@pytest.mark.slow
def test_ranking_end_to_end_on_a_multi_signal_log(tmp_path):
    rows = ["user_id,item_id,timestamp,click,like"]
    rows += [f"{u},{(u * 3 + i) % 40 + 1},{i * 60},{int(i % 3 > 0)},{int((u + i) % 4 == 0)}"
             for u in range(1, 80) for i in range(10)]
    log = tmp_path / "log.csv"
    log.write_text("\n".join(rows) + "\n")
    run = genrec("train", "--task", "ranking", "--dataset", "events", "--data-dir", str(log), "--config", str(TINY),
                 "--out", str(tmp_path / "r"), "--epochs", "2")
    assert run.returncode == 0, run.stderr
    metrics = json.loads((tmp_path / "r/metrics.json").read_text())
    assert set(metrics) == {"click/auc", "click/ne", "like/auc", "like/ne"}
    summary = json.loads((tmp_path / "r/summary.json").read_text())
    assert set(summary["din"]) == set(metrics) and "din" in run.stdout
    assert (tmp_path / "r/curves.png").read_bytes().startswith(b"\x89PNG")
    again = genrec("eval", "--checkpoint", str(tmp_path / "r"), "--out", str(tmp_path / "e"))
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "e/metrics-test.json").read_text())["metrics"] == metrics  # same weights


@pytest.mark.slow
def test_training_from_an_event_store_equals_training_from_its_log(tmp_path):
    pytest.importorskip("pyarrow")
    rows = ["user_id,item_id,timestamp"] + [f"{u},{(u * 7 + i * i) % 60 + 1},{i * 60 + u % 3}"
                                            for u in range(1, 90) for i in range(u % 9 + 2)]
    log = tmp_path / "log.csv"
    log.write_text("\n".join(rows) + "\n")
    prepared = genrec("prepare", "--data-dir", str(log), "--out", str(tmp_path / "store"))
    assert prepared.returncode == 0, prepared.stderr
    assert f"{len(rows) - 1:,} events" in prepared.stdout and "pass 3 of 3: partition 1/1 sorted" in prepared.stdout
    common = ("--config", str(TINY), "--epochs", "1", "--no-progress", "--device", "cpu")
    from_log = genrec("train", "--dataset", "events", "--data-dir", str(log), "--out", str(tmp_path / "a"), *common)
    from_store = genrec("train", "--dataset", "store", "--data-dir", str(tmp_path / "store"), "--out",
                        str(tmp_path / "b"), *common)
    assert from_log.returncode == 0 and from_store.returncode == 0, from_log.stderr + from_store.stderr
    metrics = [json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("a", "b")]
    assert metrics[0] == metrics[1]  # the same sequences, batches and model
    manifest = json.loads((tmp_path / "store/manifest.json").read_text())
    assert json.loads((tmp_path / "b/summary.json").read_text())["data"]["store_checksum"] == manifest["checksum"]
    again = genrec("prepare", "--data-dir", str(log), "--out", str(tmp_path / "store"))
    assert again.returncode == 2 and "not empty" in again.stderr


@pytest.mark.slow
def test_ranking_from_an_event_store_equals_ranking_from_its_log(tmp_path):
    pytest.importorskip("pyarrow")
    rows = ["user_id,item_id,timestamp,rating,click"]
    rows += [f"{u},{(u * 3 + i) % 40 + 1},{i * 60},{(u + i) % 5 + 1},{int(i % 3 > 0)}" for u in range(1, 80)
             for i in range(10)]
    log = tmp_path / "log.csv"
    log.write_text("\n".join(rows) + "\n")
    assert genrec("prepare", "--data-dir", str(log), "--out", str(tmp_path / "store")).returncode == 0
    common = ("--task", "ranking", "--config", str(TINY), "--epochs", "1", "--no-progress", "--device", "cpu")
    from_log = genrec("train", "--dataset", "events", "--data-dir", str(log), "--out", str(tmp_path / "a"), *common)
    from_store = genrec("train", "--dataset", "store", "--data-dir", str(tmp_path / "store"), "--out",
                        str(tmp_path / "b"), *common)
    assert from_log.returncode == 0 and from_store.returncode == 0, from_log.stderr + from_store.stderr
    metrics = [json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("a", "b")]
    assert set(metrics[0]) == {"liked/auc", "liked/ne", "loved/auc", "loved/ne", "click/auc", "click/ne"}
    assert metrics[0] == metrics[1]
