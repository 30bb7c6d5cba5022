import pytest
import torch
from torch import nn

from genrec.train.averaging import WeightAverage
from genrec.checkpoint import load_checkpoint
from genrec.train.trainer import Trainer
from tests.tiny import tiny_config


def test_average_follows_the_ema_formula_and_swaps_back():
    module = nn.Linear(3, 2)
    start = {name: p.detach().clone() for name, p in module.named_parameters()}
    average = WeightAverage(module, decay=0.75)
    with torch.no_grad():
        module.weight.fill_(1.0)
        module.bias.fill_(-2.0)
    average.update()
    average.update()
    expected = {"weight": 0.75**2 * start["weight"] + (1 - 0.75**2) * 1.0,
                "bias": 0.75**2 * start["bias"] + (1 - 0.75**2) * -2.0}
    for name, value in average.state_dict().items():
        torch.testing.assert_close(value, expected[name])
    with average.swapped_in():
        torch.testing.assert_close(module.weight.detach(), expected["weight"])
    assert torch.equal(module.weight.detach(), torch.ones(2, 3))  # the training weights are back
    with pytest.raises(ValueError, match="missing \\['bias'\\]"):
        average.load_state_dict({"weight": torch.zeros(2, 3)})
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(module, decay=1.0)


def test_trainer_scores_and_stores_the_average(tmp_path):
    config = tiny_config(mode="paper", epochs=2)
    config.train.ema_decay = 0.5
    summary = Trainer(config, tmp_path / "run", progress=False, log=lambda _: None).fit()
    checkpoint = load_checkpoint(tmp_path / "run/last.safetensors")
    assert checkpoint.averaged.keys() and checkpoint.averaged.keys() <= checkpoint.model.keys()
    assert any(not torch.equal(value, checkpoint.model[name]) for name, value in checkpoint.averaged.items())
    # the run's test metrics are those of its averaged weights, scored by a run without an average
    config.train.ema_decay = 0.0
    plain = Trainer(config, tmp_path / "plain", progress=False, log=lambda _: None)
    plain.model.load_state_dict(checkpoint.inference_weights())
    assert plain.evaluate(plain.data.split.test) == summary["metrics"]


def test_resume_refuses_a_different_averaging(tmp_path):
    Trainer(tiny_config(mode="paper", epochs=1), tmp_path, progress=False, log=lambda _: None).fit()
    config = tiny_config(mode="paper", epochs=2)
    config.train.ema_decay = 0.9
    with pytest.raises(ValueError, match="did not keep a weight average"):
        Trainer(config, tmp_path, progress=False, log=lambda _: None).fit(resume=True)
