"""What a run tells its user: plain lines off a terminal, TensorBoard scalars, one line on Ctrl-C."""

import signal
import subprocess
import sys

import torch

from genrec.train.run_log import RunLog
from tests.tiny import TINY


def test_plain_lines_per_interval_and_the_step_loss_in_tensorboard(tmp_path):
    lines = []
    run_log = RunLog(tmp_path, lines.append, progress=True, every=2, interval_s=0.0)  # not a TTY here: lines
    run_log.start_epoch(1, 3, num_steps=4)
    for step in range(1, 5):
        run_log.step(step, step, torch.tensor(1.0 / step), tokens=100)
    run_log.end_epoch("epoch 1/3: done")
    run_log.close()
    assert [line.split(":")[0] for line in lines] == ["epoch 1 step 1/4", "epoch 1 step 2/4", "epoch 1 step 3/4",
                                                      "epoch 1/3"]
    assert "loss 0.5000" in lines[1]
    events = list((tmp_path / "tensorboard").glob("events.*"))
    assert events and events[0].stat().st_size > 0


def test_ctrl_c_is_one_line_and_resume_continues(tmp_path):
    command = [sys.executable, "-m", "genrec", "train", "--config", str(TINY), "--out", str(tmp_path),
               "--epochs", "200", "--no-progress"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:  # interrupt once an epoch's checkpoint exists
        if line.startswith("epoch 2/"):
            process.send_signal(signal.SIGINT)
            break
    _, err = process.communicate(timeout=300)
    assert process.returncode == 130, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "interrupted in epoch" in err and f"--resume --out {tmp_path}" in err
    resumed = subprocess.run(command[:-3] + ["--epochs", "4", "--no-progress", "--resume"], capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "epoch 4/4" in resumed.stdout and "epoch 1/4" not in resumed.stdout


def test_on_a_terminal_steps_and_evaluation_batches_get_bars(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    lines = []
    run_log = RunLog(None, lines.append, progress=True, interval_s=0.0)
    assert run_log.bar_class is not None
    run_log.start_epoch(1, 1, num_steps=20)
    for step in range(1, 21):
        run_log.step(step, step, torch.tensor(2.0), tokens=10)
    run_log.end_epoch("epoch 1/1: done")
    assert list(run_log.batches("evaluate")(range(0, 10, 3))) == [0, 3, 6, 9]
    run_log.close()
    assert lines == ["epoch 1/1: done"]  # the bar, not plain lines, showed the steps
    assert "epoch 1/1" in capsys.readouterr().err
