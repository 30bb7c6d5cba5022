import pytest

from genrec.config import Config, apply_overrides, config_from_dict, config_to_dict, load_config_file, preset


def test_presets_carry_paper_settings():
    hstu, large, sas = preset("hstu"), preset("hstu-large"), preset("sasrec")
    assert (hstu.model.num_layers, hstu.model.num_heads, hstu.model.qk_dim) == (2, 1, 50)
    assert (large.model.num_layers, large.model.num_heads, large.model.qk_dim, large.model.v_dim) == (8, 2, 25, 25)
    assert sas.model.architecture == "sasrec"
    xl = preset("hstu-xl")
    assert (xl.model.num_layers, xl.model.num_heads, xl.model.qk_dim) == (8, 2, 25)
    assert (xl.data.max_seq_len, xl.train.loss.num_negatives) == (400, 2048)
    for config in (hstu, large, sas):
        assert config.data.max_seq_len == 200 and config.model.dropout == 0.2
        assert config.train.loss.num_negatives == 128 and config.train.loss.temperature == 0.05
        assert config.train.learning_rate == 1e-3 and config.train.betas == (0.9, 0.98)


def test_round_trip():
    config = preset("hstu-large")
    assert config_to_dict(config_from_dict(config_to_dict(config))) == config_to_dict(config)


@pytest.mark.parametrize("overrides, message", [
    ({"model": {"layers": 3}}, "unknown key 'model.layers'"),
    ({"train": {"epochs": "many"}}, "train.epochs = 'many' has the wrong type"),
    ({"data": 3}, "data must be a table"),
    ({"train": {"loss": {"temperature": True}}}, "wrong type"),
])
def test_bad_overrides(overrides, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(Config(), overrides)


def test_validation_and_files(tmp_path):
    config = Config()
    config.model.dropout = 1.5
    with pytest.raises(ValueError, match="dropout"):
        config.validate()
    config = Config()
    config.train.ema_decay = 1.0
    with pytest.raises(ValueError, match="ema_decay must be in"):
        config.validate()
    config = Config()
    config.train.loader_workers = -1
    with pytest.raises(ValueError, match="loader_workers must be >= 0"):
        config.validate()
    config = Config()
    config.train.baseline_impressions = 0
    with pytest.raises(ValueError, match="baseline_impressions must be >= 1"):
        config.validate()
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_config_file(bad, Config())
    with pytest.raises(ValueError, match="no such config file"):
        load_config_file(tmp_path / "none.toml", Config())


def test_parse_assignment_reads_toml_values():
    from genrec.config import parse_assignment

    assert parse_assignment("train.loss.num_negatives=512") == {"train": {"loss": {"num_negatives": 512}}}
    assert parse_assignment("model.dropout = 0.3") == {"model": {"dropout": 0.3}}
    assert parse_assignment("train.lr_schedule=cosine") == {"train": {"lr_schedule": "cosine"}}
    assert parse_assignment("model.rab.time=false") == {"model": {"rab": {"time": False}}}
    for bad in ("novalue", "=3", "model..dropout=1"):
        with pytest.raises(ValueError, match="bad config assignment"):
            parse_assignment(bad)


@pytest.mark.parametrize("name", ["ml-1m-hstu", "ml-1m-hstu-large", "ml-1m-hstu-xl", "ml-1m-sasrec"])
def test_frozen_configs_load_and_match_their_preset(name):
    """configs/*.toml freeze the published runs; they must stay loadable and equal to the preset."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "configs" / f"{name}.toml"
    config = load_config_file(path, Config()).validate()
    model = name.removeprefix("ml-1m-")
    assert config_to_dict(config) == config_to_dict(preset(model))


@pytest.mark.parametrize("overrides, message", [
    ({"train": {"task": "ranking"}}, "retrieval trainer's step"),
    ({"model": {"architecture": "sasrec"}}, "pointwise attention through its fused kernel"),
    ({"model": {"attention_backend": "torch"}}, "pointwise attention through its fused kernel"),
    ({"train": {"embedding_optimizer": "rowwise_adagrad"}}, "embedding_optimizer = adamw"),
    ({"train": {"loss": {"in_batch_negatives": 4}}}, "in_batch_negatives = 0"),
])
def test_the_whole_step_mode_refuses_what_it_cannot_capture(overrides, message):
    config = Config()
    config.train.compile = "step"
    config.validate()  # the default retrieval HSTU is captured
    apply_overrides(config, overrides)
    with pytest.raises(ValueError, match=message):
        config.validate()


@pytest.mark.parametrize("overrides, message", [
    ({"train": {"stochastic_length_sampling": "random"}}, "uniform, contiguous or successors"),
    ({"train": {"stochastic_length_sampling": "contiguous"}, "data": {"mode": "stream"}}, "not for stream mode"),
    ({"train": {"stochastic_length_sampling": "successors"}, "data": {"mode": "stream"}}, "not for stream mode"),
    ({"train": {"stochastic_length_sampling": "successors", "task": "ranking"}}, "event tokens alone"),
    ({"train": {"stochastic_length_sampling": "successors", "compile": "step"}}, "event tokens alone"),
    ({"train": {"stochastic_length_sampling": "successors"}, "data": {"user_features": "gender", "dataset": "ml-1m"}},
     "event tokens"),
    ({"train": {"stochastic_length_sampling": "successors"}, "data": {"user_series": "followed_topics",
                                                                       "dataset": "synthetic-stream"}}, "event tokens"),
    ({"train": {"stochastic_length_positions": "shifted"}}, "kept or original"),
    ({"train": {"stochastic_length_positions": "original", "task": "ranking"}}, "for the retrieval trainer"),
    ({"train": {"stochastic_length_positions": "original", "compile": "step"}}, "for the retrieval trainer"),
    ({"train": {"stochastic_length_positions": "original"}, "data": {"mode": "stream"}}, "retrieval trainer"),
])
def test_bad_stochastic_length_options(overrides, message):
    config = Config()
    for sampling in ("contiguous", "successors"):
        config.train.stochastic_length_sampling = sampling
        config.validate()
    config.train.stochastic_length_sampling, config.train.stochastic_length_positions = "uniform", "original"
    config.validate()
    config.train.stochastic_length_positions = "kept"
    apply_overrides(config, overrides)
    with pytest.raises(ValueError, match=message):
        config.validate()
