"""train.compile: training through torch.compile gives eager's run, and the path GPUs take (the Triton attention,
here under the interpreter) compiles into one graph."""

import shutil

import pytest
import torch
import torch._dynamo.utils
import torch._inductor.config

from genrec.train.experiment import TunedBeforeGraphs
from genrec.train.trainer import Trainer
from tests.tiny import tiny_config

pytestmark = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                reason="torch.compile on the CPU needs a C++ compiler")


@pytest.mark.parametrize("mode", ["kernels", "graphs"])
def test_compiled_training_gives_the_eager_run(tmp_path, monkeypatch, mode):
    """graphs pads every batch to a bucketed shape (on the CPU nothing is captured): the real rows' losses are
    eager's."""
    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)  # dropout draws as eager's
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    trainers, losses = {}, {}
    for compile in ("off", mode):
        config = tiny_config()
        config.data.synthetic_users, config.train.batch_size = 12, 8  # 8 and 4 users: the interpreter is slow
        config.model.attention_backend = "triton"
        if mode == "graphs":  # dropout over the padded rows draws other numbers for the real ones
            config.model.dropout = 0.0
        config.train.compile = compile
        trainers[compile] = Trainer(config, tmp_path / str(compile), log=lambda _: None, progress=False)
        losses[compile] = [trainers[compile].train_epoch()["loss"] for _ in range(2)]
    assert not torch._dynamo.utils.counters["graph_break"]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1  # batches of other lengths: no recompile
    assert losses[mode] == pytest.approx(losses["off"], rel=1e-5)
    eager = dict(trainers["off"].model.named_parameters())
    for name, weight in trainers[mode].model.named_parameters():
        torch.testing.assert_close(weight, eager[name], rtol=1e-4, atol=1e-5, msg=name)


def test_the_whole_step_mode_gives_the_eager_run(tmp_path):
    """train.compile = step predicts at every row of the padded batch, weighting last tokens and padding out: with
    the full softmax (no random negatives, which differ by the rows drawn for) and no dropout, eager's run. On the
    CPU nothing is captured; tests/train/test_step_graphs.py replays the graphs on a GPU."""
    torch._dynamo.reset()
    trainers, losses = {}, {}
    for compile in ("off", "step"):
        config = tiny_config()
        config.data.synthetic_users, config.train.batch_size = 12, 8
        config.model.dropout, config.train.loss.negatives = 0.0, "all"
        config.train.compile = compile
        trainers[compile] = Trainer(config, tmp_path / compile, log=lambda _: None, progress=False)
        losses[compile] = [trainers[compile].train_epoch()["loss"] for _ in range(2)]
    assert losses["step"] == pytest.approx(losses["off"], rel=1e-5)
    assert not trainers["step"].whole_step.graphs
    eager = dict(trainers["off"].model.named_parameters())
    for name, weight in trainers["step"].model.named_parameters():
        torch.testing.assert_close(weight, eager[name], rtol=1e-4, atol=1e-5, msg=name)


def test_the_tuning_pass_before_the_graphs_leaves_no_trace():
    """The eager pass that autotunes the kernels before graph capture draws no random numbers of the run's and
    leaves no gradient behind."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5))
    inputs = torch.randn(8, 4)
    torch.manual_seed(0)
    expected = model(inputs)
    torch.manual_seed(0)
    tuned = TunedBeforeGraphs(model, model)
    torch.testing.assert_close(tuned(inputs), expected)
    assert tuned.tuned and all(p.grad is None for p in model.parameters())
