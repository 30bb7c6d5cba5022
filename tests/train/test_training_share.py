"""data.train_user_fraction: a run trains on its share of the users and still evaluates every user."""

import math

from genrec.train.trainer import Trainer
from tests.tiny import tiny_config


def test_a_run_trains_on_its_share_and_ranks_every_users_held_out_event(tmp_path):
    runs = {}
    for fraction in (1.0, 0.25):
        config = tiny_config(mode="paper", epochs=1)
        config.data.train_user_fraction = fraction
        runs[fraction] = trainer = Trainer(config, tmp_path / str(fraction), progress=False, log=lambda _: None)
        trainer.train_epoch()
    whole, share = runs[1.0], runs[0.25]
    users = whole.data.split.train.num_users
    assert share.data.split.train.num_users == share.data.summary["train_users"] == math.ceil(users / 4)
    assert share.data.summary["train_events"] == share.data.split.train.num_events < whole.data.split.train.num_events
    assert "train_users" not in whole.data.summary
    batch = whole.config.train.batch_size
    assert (whole.state["step"], share.state["step"]) == (math.ceil(users / batch), math.ceil(users / 4 / batch))
    assert share.data.split.test.histories.num_users == users  # evaluation keeps every user
