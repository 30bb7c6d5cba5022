import pytest
import torch

from genrec.checkpoint import load_checkpoint, ranker_weights
from genrec.train.ranking import RankingTrainer, evaluate_ranking_run
from tests.tiny import tiny_config


def ranking_config(mode="validated", epochs=2):
    config = tiny_config(mode=mode, epochs=epochs)
    config.train.task = "ranking"
    return config


def quiet(config, out):
    return RankingTrainer(config, out, log=lambda _: None)


@pytest.mark.parametrize("ema_decay, embedding_optimizer", [(0.0, "adamw"), (0.9, "adamw"), (0.0, "rowwise_adagrad")],
                         ids=["weights", "weight-average", "rowwise-bf16-table"])
def test_resume_is_exact(tmp_path, deterministic, ema_decay, embedding_optimizer):
    def config(epochs):
        config = ranking_config(epochs=epochs)
        config.train.stochastic_length_alpha = 1.5  # its stream must resume too
        config.train.ema_decay = ema_decay
        config.train.embedding_optimizer = embedding_optimizer
        if embedding_optimizer == "rowwise_adagrad":
            config.model.item_table_dtype = "bfloat16"
        return config

    straight = quiet(config(3), tmp_path / "a").fit()
    quiet(config(1), tmp_path / "b").fit()
    resumed = quiet(config(3), tmp_path / "b").fit(resume=True)
    a, b = load_checkpoint(tmp_path / "a/last.safetensors"), load_checkpoint(tmp_path / "b/last.safetensors")
    assert a.state["epoch"] == b.state["epoch"] == 3
    assert set(a.model) == set(b.model) and any(k.startswith("din.") for k in a.model)
    for name, tensor in a.model.items():
        assert torch.equal(tensor, b.model[name]), name
    assert straight["metrics"] == resumed["metrics"] and straight["din"] == resumed["din"]
    assert straight["best_epoch"] == resumed["best_epoch"]
    assert (a.averaged is not None) == (b.averaged is not None) == (ema_decay > 0)
    for name, tensor in (a.averaged or {}).items():
        assert torch.equal(tensor, b.averaged[name]), name


def test_a_weight_average_is_what_ranking_runs_evaluate_and_serve(tmp_path):
    import genrec

    config = ranking_config(mode="paper", epochs=2)
    config.train.ema_decay = 0.5
    trainer = quiet(config, tmp_path)
    summary = trainer.fit()
    with_average = trainer.evaluate(drop_last=0)["model"]
    trainer.average = None  # the training weights alone
    assert trainer.evaluate(drop_last=0)["model"] != with_average == summary["metrics"]
    assert evaluate_ranking_run(tmp_path, "test", log=lambda _: None)["metrics"] == summary["metrics"]
    averaged = load_checkpoint(tmp_path / "last.safetensors").averaged
    served = genrec.load(tmp_path)
    for name, tensor in ranker_weights(averaged).items():
        assert torch.equal(served.scorer.model.state_dict()[name].cpu(), tensor), name


def test_validated_mode_tests_the_selected_epoch(tmp_path):
    summary = quiet(ranking_config(epochs=3), tmp_path).fit()
    valid_aucs = [sum(v for k, v in e["valid"].items() if k.endswith("/auc")) for e in summary["epochs"]]
    assert summary["best_epoch"] == 1 + max(range(3), key=valid_aucs.__getitem__)
    best = load_checkpoint(tmp_path / "best.safetensors")
    assert best.state["epoch"] == summary["best_epoch"]
    assert evaluate_ranking_run(tmp_path, "test", log=lambda _: None)["metrics"] == summary["metrics"]
    assert set(ranker_weights(best.model)) and not any(k.startswith("din.") for k in ranker_weights(best.model))
    assert list((tmp_path / "tensorboard").glob("events.*"))  # ranking runs log scalars as retrieval runs do


def test_epoch_reports_throughput(tmp_path):
    stats = quiet(ranking_config(mode="paper", epochs=1), tmp_path).train_epoch()
    assert stats["tokens_per_s"] > 0 and stats["tflops"] > 0 and "mfu" not in stats


def test_ranking_runs_follow_the_learning_rate_schedule(tmp_path):
    """One epoch loop for both tasks: the ranker's steps set the scheduled rate too (it once stayed constant)."""
    config = ranking_config(mode="paper", epochs=2)
    config.train.lr_schedule = "cosine"
    trainer = quiet(config, tmp_path)
    trainer.fit()
    assert 0 < trainer.optimizer.param_groups[0]["lr"] < 0.2 * config.train.learning_rate


def test_epochs_are_selected_on_the_tasks_whose_validation_auc_is_defined(tmp_path):
    """A task whose held-out labels are all one class has no AUC (NaN); the mean over tasks must skip it, or every
    epoch compares as no better than NaN and selection keeps the first (and patience stops the run)."""
    import math

    generator = torch.Generator().manual_seed(0)
    rows = ["user_id,item_id,timestamp,click,first"]
    for user in range(1, 61):
        for i in range(8):
            item = int(torch.randint(1, 30, (1,), generator=generator))
            click = int(torch.rand(1, generator=generator) < 0.5)
            rows.append(f"{user},{item},{i * 60},{click},{int(i == 0)}")  # `first`: 0 on every held-out event
    log = tmp_path / "log.csv"
    log.write_text("\n".join(rows) + "\n")
    config = ranking_config(mode="validated", epochs=3)
    config.data.dataset, config.data.path = "events", str(log)
    summary = quiet(config, tmp_path / "run").fit()
    valid = [epoch["valid"] for epoch in summary["epochs"]]
    assert all(math.isnan(v["first/auc"]) and math.isfinite(v["click/auc"]) for v in valid)
    assert math.isfinite(summary["best_metric"])
    best = max(range(len(valid)), key=lambda e: valid[e]["click/auc"]) + 1
    assert summary["best_epoch"] == best
    import json

    def refuse(constant):
        raise AssertionError(f"{constant} is no JSON value")

    for name in ("metrics.json", "summary.json"):  # strict JSON: an undefined metric is null, not NaN
        written = json.loads((tmp_path / "run" / name).read_text(), parse_constant=refuse)
    assert written["epochs"][0]["valid"]["first/auc"] is None


def test_several_baseline_impressions_per_user_are_each_users_rows_in_turn():
    """K impressions per sequence are rows b * K + k, each the single impression at that position."""
    from genrec.data.batch import SequenceBatch
    from genrec.ops.jagged import offsets_from_lengths
    from genrec.train.ranking import _din_inputs

    lengths = torch.tensor([4, 2, 3])
    batch = SequenceBatch(torch.arange(1, 10), offsets_from_lengths(lengths), 4,
                          labels=torch.rand(9, 2, generator=torch.Generator().manual_seed(0)))
    targets = torch.tensor([[3, 1], [1, 1], [2, 1]])
    together = _din_inputs(batch, targets)
    for k in range(2):
        alone = _din_inputs(batch, targets[:, k])
        for part, expected in zip(together, alone):
            torch.testing.assert_close(part[k::2], expected)


def test_more_baseline_impressions_change_only_the_baseline(tmp_path):
    """train.baseline_impressions trains DIN on more impressions a step; the ranker's run is the same."""
    runs = {}
    for impressions in (1, 4):
        config = ranking_config(mode="paper", epochs=1)
        config.train.baseline_impressions = impressions
        runs[impressions] = quiet(config, tmp_path / str(impressions)).fit()
    assert runs[4]["metrics"] == runs[1]["metrics"]
    assert runs[4]["din"] != runs[1]["din"]
