"""Stream mode: one pass in time order, each window evaluated before it is trained on."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from genrec.checkpoint import load_checkpoint
from genrec.data import StreamSpec, generate_stream
from genrec.data.stochastic_length import keep_tokens, stochastic_length_keep
from genrec.data.stream_events import StreamEvents
from genrec.train.stream import StreamTrainer, predicted_tokens
from tests.tiny import tiny_config


def stream_config(path=None, max_windows=0):
    config = tiny_config()
    config.data.mode = "stream"
    if path is None:
        config.data.dataset, config.data.synthetic_users = "synthetic-stream", 60
    else:
        config.data.dataset, config.data.path = "events", str(path)
    config.data.max_seq_len = 16
    config.stream.window_days, config.stream.item_capacity, config.stream.max_windows = 10.0, 3000, max_windows
    return config


def run(config, out, resume=False):
    return StreamTrainer(config, out, log=lambda _: None, progress=False).fit(resume=resume)


def write_log(path, events, keep=None):
    keep = slice(None) if keep is None else keep
    rows = zip(events.user_ids[keep], events.item_ids[keep], events.timestamps[keep])
    path.write_text("user_id,item_id,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows))


def test_a_windows_sequences_predict_every_event_but_a_users_first_once():
    """Heavy users (Zipf activity) outnumber a sequence's room in a window: they get more sequences, and every
    window event but a user's very first is the target of exactly one (a sequence's events after its first)."""
    events = generate_stream(StreamSpec(num_users=30, num_events=600, num_days=6, initial_items=50, seed=3))
    stream = StreamEvents.of_events(events, window_days=1.0)
    user = stream.user_of(stream.time_order)  # each event's user, in time order
    max_len, chunked = 7, 0
    for window in range(stream.num_windows):
        start, end = stream.window_bounds(window)
        users, ends = stream.window_sequences(window, max_len)
        rows, lengths = stream.histories(users, ends, max_len)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        targets = []
        for b, (owner, sequence_end) in enumerate(zip(users, ends)):
            own = [int(stream.time_order[e]) for e in range(end) if user[e] == owner]  # its rows up to the window end
            assert rows[offsets[b]:offsets[b + 1]].tolist() == own[:sequence_end][-max_len:]
            targets += rows[offsets[b] + 1:offsets[b + 1]].tolist()
        window_rows = stream.time_order[start:end].tolist()
        targets = [row for row in targets if row in window_rows]
        first_ever = set(stream.user_offsets[:-1].tolist())
        assert sorted(targets) == sorted(row for row in window_rows if row not in first_ever)
        chunked += len(users) - len(np.unique(users))
    assert chunked > 0  # some user did need several sequences
    with pytest.raises(ValueError, match="max_seq_len >= 2"):
        stream.window_sequences(0, 1)


def test_the_by_user_layout_keeps_each_users_events_in_time_order_and_the_time_order_global():
    events = generate_stream(StreamSpec(num_users=30, num_events=600, num_days=6, initial_items=50, seed=3))
    stream = StreamEvents.of_events(events, window_days=1.0)
    order = np.argsort(events.timestamps, kind="stable")  # the log's events by time, ties in log order
    np.testing.assert_array_equal(stream.items[stream.time_order], events.item_ids[order])
    np.testing.assert_array_equal(stream.user_vocab[stream.user_of(stream.time_order)], events.user_ids[order])
    day = ((events.timestamps[order] - events.timestamps[order][0]) // 86_400)  # the windows by each event's day
    np.testing.assert_array_equal(stream.window_starts, np.searchsorted(day, np.arange(day[-1] + 2)))
    for u in range(len(stream.user_vocab)):
        mine = order[events.user_ids[order] == stream.user_vocab[u]]
        np.testing.assert_array_equal(stream.items[stream.user_offsets[u]:stream.user_offsets[u + 1]],
                                      events.item_ids[mine])


def test_every_window_event_is_scored_or_counted_as_a_first(tmp_path):
    config = stream_config(max_windows=3)
    config.data.max_seq_len = 4  # heavy users need several sequences a window
    trainer = StreamTrainer(config, tmp_path / "run", log=lambda _: None, progress=False)
    summary = trainer.fit()
    for window, row in enumerate(summary["windows"]):
        start, end = trainer.stream.window_bounds(window)
        assert row["events"] + row["first_events"] == end - start
    users_so_far = trainer.stream.user_of(trainer.stream.time_order[:end])
    assert sum(row["first_events"] for row in summary["windows"]) == len(np.unique(users_so_far))


def test_the_first_window_holds_no_item_and_scores_nothing(tmp_path):
    summary = run(stream_config(max_windows=2), tmp_path / "run")
    first, second = summary["windows"]
    assert first["held_items"] == 0 and first["cold_targets"] == first["events"] > 0
    assert first["hr@50"] == first["popularity_hr@50"] == 0.0  # cold targets never count as found
    assert second["held_items"] == first["new_items"] > 0
    assert 0.0 <= second["hr@10"] <= second["hr@50"] <= 1.0
    stored = json.loads((tmp_path / "run/metrics.json").read_text())
    assert stored["windows"] == summary["windows"] and stored["overall"]["events"] == first["events"] + \
        second["events"]
    # the steps' tokens: both windows' histories, at least window 2's events (its prediction targets)
    speed = stored["throughput"]
    assert speed["train_tokens"] > second["events"] and speed["tokens_per_s"] > 0 and speed["mfu"] is None


def test_later_events_change_nothing_in_earlier_windows(tmp_path):
    """Prequential: window w's metrics and training see no event after it."""
    events = generate_stream(StreamSpec(num_users=60, num_events=2400, num_days=60, initial_items=300, seed=1))
    cut = int(np.searchsorted(np.sort(events.timestamps), events.timestamps.min() + 30 * 86_400))
    order = np.argsort(events.timestamps, kind="stable")
    write_log(tmp_path / "all.csv", events)
    write_log(tmp_path / "head.csv", events, keep=order[:cut])
    whole = run(stream_config(tmp_path / "all.csv"), tmp_path / "a")
    head = run(stream_config(tmp_path / "head.csv"), tmp_path / "b")
    assert len(head["windows"]) == 3 < len(whole["windows"])
    assert head["windows"] == whole["windows"][:3]


def rowwise(config):
    config.train.embedding_optimizer, config.model.item_table_dtype = "rowwise_adagrad", "bfloat16"
    return config


def test_a_stream_from_an_event_store_equals_the_stream_from_its_log(tmp_path):
    pytest.importorskip("pyarrow")
    from genrec.data.event_store import prepare

    events = generate_stream(StreamSpec(num_users=60, num_events=2400, num_days=40, initial_items=300, seed=2))
    write_log(tmp_path / "log.csv", events)
    prepare("events", tmp_path / "log.csv", tmp_path / "store", partition_events=700)
    from_log = run(stream_config(tmp_path / "log.csv"), tmp_path / "a")
    config = stream_config()
    config.data.dataset, config.data.path = "store", str(tmp_path / "store")
    from_store = run(config, tmp_path / "b")
    assert len(from_log["windows"]) == 4 and from_store["windows"] == from_log["windows"]
    a, b = load_checkpoint(tmp_path / "a/last.safetensors"), load_checkpoint(tmp_path / "b/last.safetensors")
    assert torch.equal(a.item_vocab, b.item_vocab)  # rows hold the same source ids


def followed_topics(config):
    config.data.user_series = "followed_topics"
    return config


def topics_as_content(config):
    config.data.item_features, config.model.item_representation = "topics", "id+content"
    return config


def stochastic_length(config):
    config.train.stochastic_length_alpha = 1.2  # histories of 16: longer than 5 events, most are cut
    return config


@pytest.mark.parametrize("table", [lambda config: config, rowwise, followed_topics, topics_as_content,
                                   stochastic_length],
                         ids=["adamw", "rowwise-bf16-table", "followed-topic-tokens", "topics-as-item-content",
                              "stochastic-length"])
def test_resume_is_exact(tmp_path, deterministic, table):
    straight = run(table(stream_config()), tmp_path / "a")
    run(table(stream_config(max_windows=2)), tmp_path / "b")
    resumed = run(table(stream_config()), tmp_path / "b", resume=True)
    assert resumed["windows"] == straight["windows"] and len(straight["windows"]) > 2
    a, b = load_checkpoint(tmp_path / "a/last.safetensors"), load_checkpoint(tmp_path / "b/last.safetensors")
    assert torch.equal(a.item_vocab, b.item_vocab) and torch.equal(a.extra["vocab_last_seen"],
                                                                   b.extra["vocab_last_seen"])
    for name, tensor in a.model.items():
        assert torch.equal(tensor, b.model[name]), name
    assert ("series.table.weight" in a.model) == (table is followed_topics)


def test_stochastic_length_predicts_each_kept_window_event_from_the_kept_events_before_it(tmp_path):
    config = stochastic_length(stream_config(max_windows=3))
    trainer = StreamTrainer(config, tmp_path, log=lambda _: None, progress=False)
    trainer.fit()  # trains with it; the state after three windows gives long histories
    users, ends = trainer.stream.window_sequences(3, config.data.max_seq_len)
    host = trainer._batch(3, users, ends)
    keep = torch.rand(host.batch.item_ids.numel(), generator=torch.Generator().manual_seed(0)) < 0.5
    kept = keep_tokens(host.batch, keep)
    positions, targets = predicted_tokens(kept.seq_offsets, host.in_window[keep], kept.item_ids)
    expected_positions, expected_targets = [], []
    for start, stop in zip(kept.seq_offsets[:-1].tolist(), kept.seq_offsets[1:].tolist()):
        in_window = host.in_window[keep][start:stop]
        for token in range(start + 1, stop):
            if in_window[token - start]:
                expected_positions.append(token - 1)
                expected_targets.append(int(kept.item_ids[token]))
    assert positions.tolist() == expected_positions and targets.tolist() == expected_targets
    assert 0 < len(expected_positions) < host.positions.numel()
    state = trainer.streams.length.get_state()  # the step draws its own cut: the same one, from the same state
    drawn = stochastic_length_keep(host.batch, config.train.stochastic_length_alpha,
                                   torch.Generator().set_state(state), host.in_window)
    cut_with_history = 0
    for start, stop in zip(host.batch.seq_offsets[:-1].tolist(), host.batch.seq_offsets[1:].tolist()):
        window_events, kept = host.in_window[start:stop], drawn[start:stop]
        if not kept.all() and (kept & ~window_events).any():  # a cut keeps history only after every window event
            assert kept[window_events].all()
            cut_with_history += 1
    assert cut_with_history > 0
    trainer.streams.length.set_state(state)
    step = trainer.batch_loss(host)
    cut = keep_tokens(host.batch, drawn)
    assert step.tokens == cut.item_ids.numel() < host.batch.item_ids.numel()  # long sequences were cut
    assert step.weight == predicted_tokens(cut.seq_offsets, host.in_window[drawn], cut.item_ids)[0].numel()


class Killed(Exception):
    """A process stopped mid-run."""


@pytest.mark.parametrize("table", [lambda config: config, rowwise], ids=["adamw", "rowwise-bf16-table"])
def test_a_run_stopped_inside_a_window_resumes_exactly(tmp_path, deterministic, monkeypatch, table):
    """Checkpoints every 2 batches; the process dies at its 7th batch (inside the second window): the resumed run
    neither evaluates nor admits that window again, skips its batches done, and equals one that never stopped."""
    config = table(stream_config())
    config.train.batch_size = 16
    straight = run(config, tmp_path / "a")
    config.stream.checkpoint_every_steps = 2
    batch_loss, calls = StreamTrainer.batch_loss, []

    def dies_at_the_seventh(trainer, batch):
        calls.append(trainer._window)
        if len(calls) == 7:
            raise Killed
        return batch_loss(trainer, batch)

    monkeypatch.setattr(StreamTrainer, "batch_loss", dies_at_the_seventh)
    with pytest.raises(Killed):
        run(config, tmp_path / "b")
    monkeypatch.setattr(StreamTrainer, "batch_loss", batch_loss)
    stopped = load_checkpoint(tmp_path / "b/last.safetensors").state
    assert calls[-1] == stopped["epoch"] == 1 and stopped["in_window"]["batches"] == 2  # 4 batches per window
    resumed = run(config, tmp_path / "b", resume=True)
    assert resumed["windows"] == straight["windows"] and len(straight["windows"]) > 2
    a, b = load_checkpoint(tmp_path / "a/last.safetensors"), load_checkpoint(tmp_path / "b/last.safetensors")
    assert torch.equal(a.extra["vocab_last_seen"], b.extra["vocab_last_seen"]) and "in_window" not in b.state
    for name, tensor in a.model.items():
        assert torch.equal(tensor, b.model[name]), name


@pytest.mark.parametrize("representation", ["id+content", "content"])
def test_rows_take_the_content_of_the_items_they_are_handed_to(tmp_path, representation):
    config = topics_as_content(stream_config(max_windows=3))
    config.model.item_representation = representation
    config.stream.item_capacity, config.stream.evict_after_days = 600, 5.0  # rows change owners
    trainer = StreamTrainer(config, tmp_path, log=lambda _: None, progress=False)
    trainer.fit()
    assert trainer.vocabulary.evicted > 0
    held = np.flatnonzero(trainer.vocabulary.sources >= 0)
    codes, _, known = trainer.item_features.lookup(trainer.vocabulary.sources[held])
    assert known.all()
    assert torch.equal(trainer.model.embedding.content.codes[torch.from_numpy(held)], torch.from_numpy(codes))


def test_new_owners_of_rows_start_without_row_wise_history(tmp_path):
    trainer = StreamTrainer(rowwise(stream_config(max_windows=2)), tmp_path, log=lambda _: None, progress=False)
    trainer.fit()
    weight = trainer.model.embedding.item.weight
    row_sums = trainer.optimizer.state[weight]["sum"]
    row_sums.fill_(1.0)
    before = weight.detach().clone()
    trainer._reset_rows(np.array([2, 5]))
    assert row_sums[[2, 5]].tolist() == [0.0, 0.0] and row_sums.sum() == row_sums.numel() - 2
    assert not torch.equal(weight[[2, 5]], before[[2, 5]]) and torch.equal(weight[3], before[3])


def test_a_data_set_without_timestamps_is_refused(tmp_path):
    (tmp_path / "seq.txt").write_text("1 5\n1 6\n2 5\n")
    config = stream_config()
    config.data.dataset, config.data.path = "sasrec", str(tmp_path / "seq.txt")
    with pytest.raises(ValueError, match="needs timestamps"):
        StreamTrainer(config, tmp_path / "run", progress=False)


@pytest.mark.slow
def test_cli_stream_run_writes_metrics_and_chart(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "genrec", "train", "--dataset", "synthetic-stream", "--mode",
                             "stream", "--out", str(out), "--no-progress", "--set", "data.synthetic_users=80",
                             "--set", "stream.window_days=15", "--set", "model.embedding_dim=16",
                             "--set", "model.qk_dim=8", "--set", "model.v_dim=8"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "prequential metrics" in result.stdout and "popularity" in result.stdout and "tokens/s" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["windows_done"] == metrics["num_windows"] == 4
    assert (out / "stream.png").stat().st_size > 0


def test_a_stream_run_serves_new_ids_through_its_unknown_row_and_never_recommends_empty_rows(tmp_path):
    import genrec

    run(stream_config(max_windows=3), tmp_path / "run")
    served = genrec.load(tmp_path / "run")
    held = served.source_ids[served.is_item]
    assert 0 < served.num_items == held.numel() < len(served.source_ids)  # free rows exist (capacity 3,000)
    history = [int(held[0]), 10**9]  # the second id never arrived
    ids, scores = served.recommend([history], k=served.num_items, timestamps=[[1_600_000_000, 1_600_000_060]],
                                   exclude_seen=False)
    assert sorted(ids[0]) == sorted(held.tolist())  # every held item once, nothing else
    assert scores[0] == sorted(scores[0], reverse=True)
    sources, embeddings = served.item_embeddings()
    assert torch.equal(sources, held) and embeddings.shape[0] == held.numel()


def test_options_a_stream_run_would_ignore_are_refused(tmp_path):
    config = stream_config()
    config.train.ema_decay, config.train.lr_schedule = 0.9, "cosine"
    with pytest.raises(ValueError, match=r"does not support train.ema_decay = 0.9, train.lr_schedule = 'cosine'"):
        StreamTrainer(config, tmp_path / "run", progress=False)


def test_user_features_read_in_a_stream_and_served(tmp_path, deterministic):
    """ML-100K-format data in 3-hour windows with its users file: every batch carries each user's features, a
    stopped run resumes exactly, and the run serves with them."""
    from genrec.inference.engine import RetrievalRun
    from tests.train.test_user_context import write_ml100k

    write_ml100k(tmp_path)  # 40 users x 12 hourly events; the last user has no features

    def config(max_windows=0):
        config = stream_config(max_windows=max_windows)
        config.data.dataset, config.data.path, config.data.user_features = "ml-100k", str(tmp_path), str(tmp_path)
        config.stream.window_days = 3 / 24
        return config

    trainer = StreamTrainer(config(), tmp_path / "a", log=lambda _: None, progress=False)
    users, ends = trainer.stream.window_sequences(1, trainer.config.data.max_seq_len)
    batch = trainer._batch(1, users, ends)[0]
    np.testing.assert_array_equal(batch.context.numpy(), trainer.context[users])
    assert batch.context[trainer.stream.user_vocab[users] == 40].sum() == 0
    straight = trainer.fit()
    run(config(max_windows=2), tmp_path / "b")
    resumed = run(config(), tmp_path / "b", resume=True)
    assert resumed["windows"] == straight["windows"] and len(straight["windows"]) == 4
    served = RetrievalRun(tmp_path / "b")
    assert served.model.context is not None and list(served.inputs.feature_values) == [
        "age", "gender", "occupation", "zip_region"]
