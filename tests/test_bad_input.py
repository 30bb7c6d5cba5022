"""Every bad input is one line on stderr naming the file and line (or the field) and exit code 2, never a
traceback; --skip-bad-rows skips and counts the rows it can. The CLI runs in-process here (an uncaught
exception would fail the test as a traceback would); test_cli.py runs it as a subprocess."""

import gzip
import json

import numpy as np
import pytest

from genrec.cli import main
from tests.tiny import TINY

BIG = "99999999999999999999"  # past int64


def genrec(capsys, *args):
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    return code, err


def assert_one_line(code, err, *needles):
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


def train(data, dataset, *extra):
    return ("train", "--dataset", dataset, "--data-dir", data, "--config", TINY, "--out", data.parent / "run",
            "--no-progress", "--epochs", "1", *extra)


def ml1m_rows(count=40):
    return "".join(f"{u}::{i}::4::{1000 + u * 50 + i}\n" for u in range(1, count) for i in range(1, 8))


@pytest.mark.parametrize("dataset, name, bad_row, reason", [
    ("ml-1m", "ratings.dat", f"3::{BIG}::4::100\n", "item id"),
    ("ml-1m", "ratings.dat", f"3::5::4::{BIG}\n", "timestamp"),
    ("sasrec", "seq.txt", f"{BIG} 4\n", "user id"),
    ("s3rec", "seq.txt", f"3 4 {BIG}\n", "item id"),
    ("events", "log.csv", f"3,5,{BIG},1\n", "timestamp"),
    ("events", "log.csv", "3,5,100,1e39\n", "click"),  # an action signal past float32
])
def test_integers_outside_int64_fail_or_are_skipped(tmp_path, capsys, dataset, name, bad_row, reason):
    data = tmp_path / name
    if dataset == "ml-1m":
        good = ml1m_rows()
    elif dataset == "events":
        good = "user_id,item_id,timestamp,click\n" + "".join(
            f"{u},{i},{100 * i},{i % 2}\n" for u in range(1, 40) for i in range(1, 8))
    elif dataset == "s3rec":
        good = "".join(f"{u} " + " ".join(str(i) for i in range(1, 8)) + "\n" for u in range(1, 40))
    else:
        good = "".join(f"{u} {i}\n" for u in range(1, 40) for i in range(1, 8))
    data.write_text(good + bad_row)
    line = len(good.splitlines()) + 1
    assert_one_line(*genrec(capsys, *train(data, dataset)), f"{data}:{line}", reason)
    code, err = genrec(capsys, *train(data, dataset, "--skip-bad-rows"))
    assert code == 0, err
    assert json.loads((tmp_path / "run/summary.json").read_text())["data"]["skipped_rows"] == 1


@pytest.mark.parametrize("damage", ["truncated", "bad-crc", "plain-text"])
def test_damaged_gzip_names_the_file(tmp_path, capsys, damage):
    data = tmp_path / "ratings.dat.gz"
    packed = gzip.compress(ml1m_rows(400).encode())
    if damage == "truncated":
        packed = packed[:len(packed) // 2]
    elif damage == "bad-crc":
        packed = packed[:-8] + bytes([packed[-8] ^ 0xFF]) + packed[-7:]
    else:
        packed = ml1m_rows().encode()
    data.write_bytes(packed)
    assert_one_line(*genrec(capsys, *train(data, "ml-1m")), str(data), "damaged gzip")


@pytest.mark.parametrize("dataset, name, rows", [
    ("ml-1m", "ratings.dat", ml1m_rows()),
    ("sasrec", "seq.txt", "".join(f"{u} {i}\n" for u in range(1, 40) for i in range(1, 8))),
    ("events", "log.csv", "user_id,item_id,timestamp\n" + "".join(f"{u},{i},{i}\n" for u in range(1, 40)
                                                                   for i in range(1, 8))),
])
def test_a_utf8_byte_order_mark_is_accepted(tmp_path, capsys, dataset, name, rows):
    data = tmp_path / name
    data.write_bytes(b"\xef\xbb\xbf" + rows.encode())
    code, err = genrec(capsys, *train(data, dataset))
    assert code == 0, err
    summary = json.loads((tmp_path / "run/summary.json").read_text())["data"]
    assert summary["skipped_rows"] == 0 and summary["events"] == 39 * 7  # the first row is kept


def test_invalid_utf8_names_the_file_and_line(tmp_path, capsys):
    data = tmp_path / "seq.txt"
    data.write_bytes(b"1 2\n1 3\n\xff\xfe 4\n")
    assert_one_line(*genrec(capsys, *train(data, "sasrec")), f"{data}:3", "not valid utf-8")


@pytest.mark.parametrize("column, values, message", [
    ("item_id", np.arange(1, 281) + 0.5, "item_id must hold integers"),
    ("user_id", np.where(np.arange(280) == 3, np.nan, np.arange(280) // 7 + 1.0), "user_id must hold integers"),
    ("timestamp", np.array([str(i) for i in range(280)]), "timestamp must hold integers"),
    ("click", np.where(np.arange(280) == 5, np.nan, 1.0), "click holds NaN"),
])
def test_parquet_columns_of_the_wrong_type_are_rejected(tmp_path, capsys, column, values, message):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    columns = {"user_id": np.arange(280) // 7 + 1, "item_id": np.arange(280) % 7 + 1, "timestamp": np.arange(280),
               "click": np.ones(280), column: values}
    data = tmp_path / "log.parquet"
    pq.write_table(pa.table(columns), data)
    assert_one_line(*genrec(capsys, *train(data, "events")), str(data), message)


@pytest.mark.parametrize("args, message", [
    (["--set", 'train.betas=["a", "b"]'], "train.betas"),
    (["--set", "train.betas=[0.9, 0.99, 0.999]"], "exactly 2 values"),
    (["--set", "eval.ks=[10, 1.5]"], "eval.ks"),
    (["--set", "model.num_layers=[2]"], "model.num_layers"),
    (["--set", "train.learning_rate=inf"], "train.learning_rate"),
    (["--set", "train.learning_rate=nan"], "train.learning_rate"),
    (["--set", "train.learning_rate=-1e-3"], "train.learning_rate must be positive"),
    (["--set", "model.embedding_dim=100000000"], "GiB"),
    (["--set", "data.max_seq_len=3000000000"], "GiB"),
    (["--set", "data.train_user_fraction=0"], "data.train_user_fraction must be in (0, 1]"),
    (["--set", "data.train_user_fraction=0.5", "--task", "ranking"], "samples retrieval's training users"),
])
def test_bad_settings(tmp_path, capsys, args, message):
    assert_one_line(*genrec(capsys, "train", "--config", TINY, "--out", tmp_path / "run", "--no-progress", *args),
                    message)


def test_config_directory_and_out_file(tmp_path, capsys):
    assert_one_line(*genrec(capsys, "train", "--config", tmp_path), str(tmp_path), "directory")
    out = tmp_path / "a-file"
    out.write_text("x")
    assert_one_line(*genrec(capsys, "train", "--config", TINY, "--out", out, "--epochs", "1", "--no-progress"),
                    str(out), "must be a directory")


def test_triton_without_a_gpu(tmp_path, capsys, monkeypatch):
    pytest.importorskip("triton")
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert_one_line(*genrec(capsys, "train", "--config", TINY, "--out", tmp_path / "run", "--epochs", "1",
                            "--no-progress", "--attention-backend", "triton"), "runs on a CUDA GPU")


@pytest.mark.parametrize("args, message", [
    (["--port", "0"], "--port"),
    (["--port", "65536"], "--port"),
    (["--device", "cuda:7"], "cuda:7"),
    (["--device", "quantum"], "unknown device 'quantum'"),
    (["--max-body-bytes", "0"], "--max-body-bytes"),
])
def test_bad_serve_options(tmp_path, capsys, args, message):
    import torch
    if torch.cuda.is_available() and "cuda:7" in args and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    assert_one_line(*genrec(capsys, "serve", "--checkpoint", tmp_path, *args), message)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--config", str(TINY), "--out", str(out), "--epochs", "1", "--no-progress"]) == 0
    return out


@pytest.mark.parametrize("damage", ["empty", "truncated", "not-json", "wrong-type"])
def test_damaged_run_config_names_the_file(finished_run, tmp_path, capsys, damage):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    text = (run / "config.json").read_text()
    broken = {"empty": "", "truncated": text[:len(text) // 2], "not-json": "[1, 2",
              "wrong-type": text.replace('"epochs": 1', '"epochs": "many"')}[damage]
    (run / "config.json").write_text(broken)
    for command in (["eval", "--checkpoint", run], ["serve", "--checkpoint", run],
                    ["train", "--resume", "--out", run]):
        assert_one_line(*genrec(capsys, *command), str(run / "config.json"))


@pytest.mark.parametrize("damage", ["zero-length", "truncated", "bit-flip"])
def test_damaged_checkpoint_names_the_file(finished_run, tmp_path, capsys, damage):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    path = run / "last.safetensors"
    data = bytearray(path.read_bytes())
    data = {"zero-length": b"", "truncated": data[:100], "bit-flip": data[:-50] + bytes([data[-50] ^ 1]) + data[-49:]}[
        damage]
    path.write_bytes(bytes(data))
    for command in (["eval", "--checkpoint", run], ["train", "--resume", "--out", run]):
        assert_one_line(*genrec(capsys, *command), str(path), "damaged checkpoint")


def test_an_existing_run_is_never_overwritten_by_accident(finished_run, tmp_path, capsys):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    metrics = (run / "metrics.json").read_text()
    assert_one_line(*genrec(capsys, "train", "--config", TINY, "--out", run, "--epochs", "1", "--no-progress"),
                    str(run), "already holds a run")
    assert (run / "metrics.json").read_text() == metrics
    (run / "notes.txt").write_text("mine")
    code, err = genrec(capsys, "train", "--config", TINY, "--out", run, "--epochs", "1", "--no-progress",
                       "--overwrite", "--seed", "7")
    assert code == 0, err
    assert json.loads((run / "config.json").read_text())["train"]["seed"] == 7
    assert (run / "notes.txt").read_text() == "mine"  # only the run's own files are replaced


def test_resume_refuses_contradicting_options_listing_them(finished_run, tmp_path, capsys):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    assert_one_line(*genrec(capsys, "train", "--resume", "--out", run, "--model", "hstu-large",
                            "--set", "train.learning_rate=0.01"),
                    "model.num_layers is 2 in the run, 8 given", "train.learning_rate is 0.001 in the run, 0.01 given")
    assert_one_line(*genrec(capsys, "train", "--resume", "--out", tmp_path / "nothing"), "no config.json")
    assert_one_line(*genrec(capsys, "train", "--resume"), "--resume needs --out")
    code, err = genrec(capsys, "train", "--resume", "--out", run, "--epochs", "2", "--no-progress",
                       "--model", "hstu", "--config", TINY)  # agreeing options are fine
    assert code == 0, err
    assert json.loads((run / "summary.json").read_text())["epoch"] == 2


def test_the_default_out_is_a_new_directory_per_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = genrec(capsys, "train", "--config", TINY, "--epochs", "1", "--no-progress")
    assert code == 0, err
    (created,) = (tmp_path / "runs").iterdir()
    assert created.name.startswith("synthetic-hstu-") and (created / "metrics.json").is_file()


def test_a_file_that_is_not_s3rec_is_rejected(tmp_path, capsys, shared_data):
    """MovieLens' u.data (user, item, rating, time per line) read as S3-Rec would be users of three items."""
    data = shared_data / "ml-100k" / "u.data"
    assert_one_line(*genrec(capsys, "train", "--dataset", "s3rec", "--data-dir", data, "--out", tmp_path / "run"),
                    f"{data.resolve()}:", "one line per user")  # runs name their data by its resolved path


def test_eval_takes_a_checkpoint_file_and_a_moved_data_set(tmp_path, capsys):
    import shutil
    rows = "".join(f"{u} {i}\n" for u in range(1, 40) for i in range(1, 9))
    data = tmp_path / "seq.txt"
    data.write_text(rows)
    run = tmp_path / "run"
    code, err = genrec(capsys, "train", "--dataset", "sasrec", "--data-dir", data, "--config", TINY, "--out", run,
                       "--epochs", "1", "--no-progress")
    assert code == 0, err
    assert json.loads((run / "config.json").read_text())["data"]["path"] == str(data.resolve())  # absolute
    moved = tmp_path / "elsewhere.txt"
    shutil.move(data, moved)
    assert_one_line(*genrec(capsys, "eval", "--checkpoint", run), str(data))
    code, err = genrec(capsys, "eval", "--checkpoint", run / "last.safetensors", "--data-dir", moved)
    assert code == 0, err
    evaluated = json.loads((run / "metrics-test.json").read_text())
    assert evaluated["checkpoint"] == "last.safetensors"
    assert evaluated["metrics"] == json.loads((run / "metrics.json").read_text())
    from genrec.checkpoint import FILE_MODE
    assert (run / "metrics-test.json").stat().st_mode & 0o777 == FILE_MODE  # as the umask allows, not 0600


def test_config_show_reads_back_and_version(tmp_path, capsys):
    from genrec.config import Config, load_config_file, preset
    assert main(["config", "--show", "--model", "hstu-xl"]) == 0
    shown = tmp_path / "xl.toml"
    shown.write_text(capsys.readouterr().out)
    assert load_config_file(shown, Config()) == preset("hstu-xl")
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("genrec 0.1")
