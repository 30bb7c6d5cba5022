"""train.compile: training through torch.compile gives eager's run, and the path GPUs take (the Triton attention,
here under the interpreter) compiles into one graph."""

import shutil

import pytest
import torch
import torch._dynamo.utils
import torch._inductor.config

from genrec.train.trainer import Trainer
from tests.tiny import tiny_config

pytestmark = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                reason="torch.compile on the CPU needs a C++ compiler")


def test_compiled_training_gives_the_eager_run(tmp_path, monkeypatch):
    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)  # dropout draws as eager's
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    trainers, losses = {}, {}
    for compile in (False, True):
        config = tiny_config()
        config.data.synthetic_users, config.train.batch_size = 12, 8  # batches of 8 and 4 users: the interpreter is slow
        config.model.attention_backend = "triton"
        config.train.compile = compile
        trainers[compile] = Trainer(config, tmp_path / str(compile), log=lambda _: None, progress=False)
        losses[compile] = [trainers[compile].train_epoch()["loss"] for _ in range(2)]
    assert not torch._dynamo.utils.counters["graph_break"]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1  # batches of other lengths: no recompile
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
    eager = dict(trainers[False].model.named_parameters())
    for name, weight in trainers[True].model.named_parameters():
        torch.testing.assert_close(weight, eager[name], rtol=1e-4, atol=1e-5, msg=name)
