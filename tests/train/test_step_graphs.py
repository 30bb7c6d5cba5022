"""train.compile = step on a GPU: the captured whole step replays as the eager step would run (learning rates,
random draws, gradients), and a run trained that way resumes exactly. CPU-only machines skip this file (its CPU
half, the padded weighted step itself, is tests/train/test_compile.py's); run it on a device with
`PYTHONPATH=src:. python3 -m pytest tests/train/test_step_graphs.py`."""

import shutil

import pytest
import torch

from genrec.train.step_graphs import StepGraphs
from genrec.train.trainer import Trainer
from tests.tiny import tiny_config

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU"),
              pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                 reason="torch.compile needs a C++ compiler")]


def toy_run(graphed: bool, rates: list[float]) -> tuple[list[float], torch.nn.Module]:
    """Steps of a dropout model whose loss draws from its own generator, at a new learning rate each step."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Dropout(0.5), torch.nn.Linear(16, 1)).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1.0, fused=True, capturable=True)
    noise = torch.Generator("cuda").manual_seed(1)

    def step(inputs: torch.Tensor) -> torch.Tensor:
        loss = (model(inputs).squeeze(1) * torch.rand(inputs.shape[0], device="cuda", generator=noise)).square().mean()
        loss.backward()
        optimizer.step()
        return loss.detach()

    graphs = StepGraphs(step, optimizer, torch.device("cuda"), [noise])
    inputs = torch.randn(len(rates), 32, 16, generator=torch.Generator().manual_seed(2))
    losses = []
    for batch, rate in zip(inputs, rates):
        optimizer.param_groups[0]["lr"] = rate
        if graphed:
            losses.append(float(graphs(batch)))
        else:
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(step(batch.cuda())))
    if graphed:
        assert len(graphs.graphs) == 1
    return losses, model


def test_replays_draw_fresh_numbers_and_follow_the_learning_rate():
    rates = [1e-2, 5e-3, 2e-3, 1e-3, 0.0, 1e-2]
    eager_losses, eager = toy_run(False, rates)
    graphed_losses, graphed = toy_run(True, rates)
    assert len(set(graphed_losses)) == len(rates)  # fresh dropout and noise at every replay
    assert graphed_losses == pytest.approx(eager_losses, rel=1e-5)
    for (name, weight), expected in zip(graphed.named_parameters(), eager.parameters()):
        torch.testing.assert_close(weight, expected, msg=name)


def gpu_config(compile: str, negatives: str = "sampled", epochs: int = 3):
    config = tiny_config(epochs=epochs)
    config.train.device, config.train.compile, config.train.loss.negatives = "cuda", compile, negatives
    config.model.attention_backend = "triton"
    return config


def test_the_replayed_run_is_the_compiled_eager_run(tmp_path):
    """Without random draws (full softmax, no dropout) the captured steps train as the compiled model trains
    eagerly, to bf16 rounding; most steps are replays."""
    losses, trainers = {}, {}
    for compile in ("kernels", "step"):
        config = gpu_config(compile, "all")
        config.model.dropout = 0.0
        trainers[compile] = Trainer(config, tmp_path / compile, log=lambda _: None, progress=False)
        losses[compile] = [trainers[compile].train_epoch()["loss"] for _ in range(3)]
    graphs = trainers["step"].whole_step.graphs
    assert 1 <= len(graphs) < 3 * trainers["step"].steps_per_epoch()
    assert losses["step"] == pytest.approx(losses["kernels"], rel=2e-3)


def test_a_run_of_replayed_steps_resumes_exactly(tmp_path):
    """Negatives and dropout drawn inside the graphs continue from the checkpoint's random state."""
    straight = Trainer(gpu_config("step", epochs=3), tmp_path / "straight", log=lambda _: None, progress=False)
    straight.fit()
    first = Trainer(gpu_config("step", epochs=2), tmp_path / "resumed", log=lambda _: None, progress=False)
    first.fit()
    resumed = Trainer(gpu_config("step", epochs=3), tmp_path / "resumed", log=lambda _: None, progress=False)
    resumed.fit(resume=True)
    assert [loss for _, loss in resumed.state["losses"]] == pytest.approx(
        [loss for _, loss in straight.state["losses"]], rel=1e-5)
    expected = dict(straight.model.named_parameters())
    for name, weight in resumed.model.named_parameters():
        torch.testing.assert_close(weight, expected[name], rtol=1e-4, atol=1e-5, msg=name)
