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


def _default_sigint() -> None:
    """In the child before exec: Ctrl-C's default action, unblocked, as a terminal's foreground job has it. A
    non-interactive shell starts background commands (`pytest &`) with SIGINT ignored, children inherit that, and
    Python then keeps ignoring it (as genrec does, rightly, under nohup): this test is about the Ctrl-C a user
    types, whatever started the test run."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])


def test_ctrl_c_is_one_line_and_resume_continues(tmp_path):
    command = [sys.executable, "-m", "genrec", "train", "--config", str(TINY), "--out", str(tmp_path),
               "--epochs", "200", "--no-progress"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=_default_sigint)
    seen = []
    for line in process.stdout:  # interrupt once an epoch's checkpoint exists
        seen.append(line)
        if line.startswith("epoch 2/"):
            process.send_signal(signal.SIGINT)
            break
    out, err = process.communicate(timeout=300)
    assert process.returncode == 130, f"stdout: {''.join(seen[-3:])}{out[-1500:]}\nstderr: {err}"
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


def test_an_undefined_metric_is_left_out_of_tensorboard_and_printed_as_not_available(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from genrec.cli import _print_table

    run_log = RunLog(tmp_path, lambda _: None, progress=False)
    run_log.scalars("valid", {"clicked/auc": float("nan"), "clicked/ne": 0.93}, step=1)
    run_log.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert events.Tags()["scalars"] == ["valid/clicked/ne"]
    _print_table("test metrics", {"hstu": {"clicked/auc": float("nan"), "clicked/ne": 0.93}})
    rows = capsys.readouterr().out.splitlines()[-2:]
    assert rows[0].split() == ["clicked/auc", "n/a"] and rows[1].split() == ["clicked/ne", "0.9300"]
