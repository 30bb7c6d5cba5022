"""Row-wise AdaGrad for item tables (sparse and dense gradients, bf16 storage with stochastic rounding), the
combined optimiser's state dict, and trainers that use them."""

import pytest
import torch

from genrec.checkpoint import load_checkpoint
from genrec.model import SequentialRetriever
from genrec.train.epoch import set_learning_rate
from genrec.train.optimizers import CombinedOptimizer, RowWiseAdagrad, _stochastic_bf16, build_optimizer
from genrec.train.trainer import Trainer
from tests.tiny import tiny_config


def rowwise_config(epochs=2, table_dtype="float32"):
    config = tiny_config(mode="paper", epochs=epochs)
    config.train.embedding_optimizer, config.model.item_table_dtype = "rowwise_adagrad", table_dtype
    return config


def test_row_wise_adagrad_by_hand():
    weight = torch.nn.Parameter(torch.ones(3, 2))
    weight.grad = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, -1.0]])
    optimizer = RowWiseAdagrad([weight], lr=1.0, eps=0.0)
    optimizer.step()
    # row 0: s = (9 + 16) / 2 = 12.5; row 2: s = 1; row 1 untouched
    expected = torch.tensor([[1 - 3 / 12.5 ** 0.5, 1 - 4 / 12.5 ** 0.5], [1.0, 1.0], [0.0, 2.0]])
    torch.testing.assert_close(weight.detach(), expected)
    assert optimizer.state[weight]["sum"].tolist() == [12.5, 0.0, 1.0]


def test_a_sparse_gradient_steps_as_its_dense_twin():
    """Repeated ids in a sparse gradient add up, as in the dense gradient of the same lookups."""
    torch.manual_seed(0)
    start = torch.randn(50, 4)
    ids = torch.tensor([3, 7, 3, 49, 0, 7, 7])
    weights = []
    for sparse in (True, False):
        table = torch.nn.Embedding.from_pretrained(start.clone(), freeze=False, sparse=sparse)
        optimizer = RowWiseAdagrad(table.parameters(), lr=0.3)
        for step in range(3):
            (table(ids) * torch.arange(28.0).view(7, 4) * (step + 1)).sum().backward()
            assert table.weight.grad.is_sparse == sparse
            optimizer.step()
            optimizer.zero_grad()
        weights.append(table.weight.detach())
    torch.testing.assert_close(weights[0], weights[1], rtol=0, atol=1e-6)
    assert torch.equal(weights[0][[1, 2, 4]], start[[1, 2, 4]])  # rows never looked up stay
    assert not torch.equal(weights[0][[3, 7, 49]], start[[3, 7, 49]])


def test_stochastic_rounding_is_unbiased_and_reproducible():
    value = 1.0 + 2.0 ** -10  # bf16 holds 1 and 1 + 2^-7: 1/8 of the way up
    values = torch.full((200_000,), value)
    rounded = _stochastic_bf16(values, seed=3, step=1)
    assert set(rounded.float().unique().tolist()) == {1.0, 1.0 + 2.0 ** -7}
    assert abs(rounded.float().mean().item() - value) < 2e-5  # round to nearest would give 1.0 exactly
    negative = _stochastic_bf16(-values, seed=3, step=1)
    assert abs(negative.float().mean().item() + value) < 2e-5
    assert torch.equal(rounded, _stochastic_bf16(values, seed=3, step=1))
    assert not torch.equal(rounded, _stochastic_bf16(values, seed=3, step=2))
    exact = torch.tensor([0.5, -3.0, 0.0])
    assert torch.equal(_stochastic_bf16(exact, seed=0, step=5).float(), exact)  # representable: unchanged


def test_a_bf16_table_learns_updates_smaller_than_its_rounding_step():
    """Many updates each below half a bf16 step: nearest rounding would lose every one."""
    weight = torch.nn.Parameter(torch.ones(1, 1000, dtype=torch.bfloat16))
    optimizer = RowWiseAdagrad([weight], lr=1e-4, eps=0.0)
    for _ in range(100):
        weight.grad = torch.ones_like(weight)  # s grows by 1 a step: the update is 1e-4 / sqrt(step)
        optimizer.step()
    moved = 1.0 - weight.float().mean().item()
    expected = sum(1e-4 / (step ** 0.5) for step in range(1, 101))
    assert abs(moved - expected) < 0.1 * expected
    assert optimizer.state[weight]["sum"].dtype == torch.float32


def build(config):
    torch.manual_seed(0)
    model = SequentialRetriever(config.model, 30, 8, use_time=False)
    return model, build_optimizer(config.train, model, sparse_tables=True)


def test_the_combined_state_dict_resumes_both_optimizers_exactly():
    config = rowwise_config(table_dtype="bfloat16")
    ids = torch.tensor([[1, 5, 5, 9], [2, 30, 4, 1]])

    def step(model, optimizer):
        loss = (model.embedding.items(ids).sum(-1) * model.embedding.position.weight[:4, 0]).square().sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    straight, straight_optimizer = build(config)
    for _ in range(3):
        step(straight, straight_optimizer)
    resumed, resumed_optimizer = build(config)
    for _ in range(2):
        step(resumed, resumed_optimizer)
    state = resumed_optimizer.state_dict()
    assert isinstance(resumed_optimizer, CombinedOptimizer) and len(state["param_groups"]) == 2
    fresh, fresh_optimizer = build(config)
    fresh.load_state_dict(resumed.state_dict())
    fresh_optimizer.load_state_dict(state)
    table = fresh.embedding.item.weight
    assert table.dtype == torch.bfloat16 and fresh_optimizer.state[table]["sum"].dtype == torch.float32
    step(fresh, fresh_optimizer)
    for name, tensor in straight.state_dict().items():
        assert torch.equal(tensor, fresh.state_dict()[name]), name


def test_the_table_keeps_its_own_learning_rate_under_the_schedule():
    config = rowwise_config(epochs=4)
    config.train.lr_schedule, config.train.embedding_learning_rate = "cosine", 0.2
    _, optimizer = build(config)
    set_learning_rate(optimizer, config.train, step=2, steps_per_epoch=1)  # half-way down the cosine
    dense, table = optimizer.param_groups
    assert dense["lr"] == pytest.approx(0.5 * config.train.learning_rate) and table["lr"] == pytest.approx(0.1)


def test_rowwise_runs_train_with_sparse_gradients_and_resume_exactly(tmp_path, deterministic):
    def quiet(config, out):
        return Trainer(config, out, progress=False, log=lambda _: None)

    straight_trainer = quiet(rowwise_config(epochs=3, table_dtype="bfloat16"), tmp_path / "a")
    straight = straight_trainer.fit()
    table = straight_trainer.model.embedding.item
    assert table.sparse and table.weight.dtype == torch.bfloat16
    quiet(rowwise_config(epochs=1, table_dtype="bfloat16"), tmp_path / "b").fit()
    resumed = quiet(rowwise_config(epochs=3, table_dtype="bfloat16"), tmp_path / "b").fit(resume=True)
    a, b = load_checkpoint(tmp_path / "a/last.safetensors"), load_checkpoint(tmp_path / "b/last.safetensors")
    assert a.model["embedding.item.weight"].dtype == torch.bfloat16
    for name, tensor in a.model.items():
        assert torch.equal(tensor, b.model[name]), name
    assert straight["metrics"] == resumed["metrics"]
    # the table's optimiser state is one number per row, not two moments per weight
    table_state = [state for state in a.optimizer["state"].values() if "sum" in state]
    assert len(table_state) == 1 and table_state[0]["sum"].shape == (a.model["embedding.item.weight"].shape[0],)
    assert straight["metrics"]["hr@10"] > straight["popularity"]["hr@10"]


@pytest.mark.parametrize("key, value, message", [
    ("model.item_table_dtype", "bfloat16", "needs train.embedding_optimizer = rowwise_adagrad"),
    ("model.item_table_dtype", "float16", "must be float32 or bfloat16"),
    ("train.embedding_optimizer", "sgd", "must be adamw or rowwise_adagrad"),
    ("train.item_table_sharding", "rows", "needs train.embedding_optimizer = rowwise_adagrad"),
    ("train.item_table_sharding", "columns", "must be replicated or rows"),
])
def test_bad_table_settings_are_refused(key, value, message):
    config = tiny_config()
    section, name = key.split(".")
    setattr(getattr(config, section), name, value)
    with pytest.raises(ValueError, match=message):
        config.validate()


def test_rowwise_under_fsdp_and_sharded_rows_with_a_weight_average_are_refused():
    config = rowwise_config()
    config.train.data_parallel = "fsdp"
    with pytest.raises(ValueError, match="under train.data_parallel = fsdp needs train.item_table_sharding = rows"):
        config.validate()
    config.train.item_table_sharding = "rows"
    config.validate()  # FSDP2 takes the dense part and leaves the row-sharded table alone
    config = rowwise_config()
    config.train.item_table_sharding, config.train.ema_decay = "rows", 0.9
    with pytest.raises(ValueError, match="cannot keep a weight average"):
        config.validate()
