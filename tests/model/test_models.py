import pytest
import torch

from genrec.config import preset
from genrec.data.batch import SequenceBatch
from genrec.inference.mfalcon import MFalcon
from genrec.model import SequentialRetriever
from genrec.ops.jagged import offsets_from_lengths


def make_batch(lengths, num_items=30, max_seq_len=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    return SequenceBatch(item_ids=torch.randint(1, num_items + 1, (total,), generator=generator),
                         seq_offsets=offsets_from_lengths(torch.tensor(lengths)), max_seq_len=max_seq_len,
                         timestamps=torch.cumsum(torch.randint(1, 5000, (total,), generator=generator), 0))


def sub_batch(batch, index, lengths):
    start = sum(lengths[:index])
    end = start + lengths[index]
    return SequenceBatch(batch.item_ids[start:end], offsets_from_lengths(torch.tensor([lengths[index]])),
                         batch.max_seq_len, batch.timestamps[start:end])


@pytest.mark.parametrize("name", ["hstu", "hstu-large", "sasrec"])
def test_outputs_are_normalised_causal_and_per_sequence(name):
    config = preset(name)
    config.model.embedding_dim = 16
    if name != "sasrec":
        config.model.qk_dim = config.model.v_dim = 8
    torch.manual_seed(0)
    model = SequentialRetriever(config.model, num_items=30, max_seq_len=12, use_time=True).eval()
    lengths = [5, 1, 7]
    batch = make_batch(lengths)
    out = model(batch)
    assert out.shape == (13, 16)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(13))
    # jagged batching: a sequence's output does not depend on its neighbours
    torch.testing.assert_close(out[6:], model(sub_batch(batch, 2, lengths)), atol=1e-5, rtol=1e-5)
    # causality: changing the last item leaves earlier positions unchanged
    changed = make_batch(lengths)
    changed.item_ids[12] = (changed.item_ids[12] % 30) + 1
    torch.testing.assert_close(model(changed)[6:12], out[6:12], atol=1e-6, rtol=1e-6)
    assert model.item_embeddings().shape == (31, 16)


def test_hstu_time_bias_changes_outputs_only_when_on():
    config = preset("hstu")
    torch.manual_seed(0)
    with_time = SequentialRetriever(config.model, 30, 12, use_time=True).eval()
    batch = make_batch([6])
    shifted = make_batch([6])
    shifted.timestamps = shifted.timestamps * 50
    assert not torch.allclose(with_time(batch), with_time(shifted))
    without_time = SequentialRetriever(config.model, 30, 12, use_time=False).eval()
    torch.testing.assert_close(without_time(batch), without_time(shifted))


def test_token_query_times_set_each_rows_time_question():
    """Every token's query time given outright: the default ones give the default outputs; later questions from row 2
    on (kept in order) change row 2, and neither the rows before it nor the other sequence."""
    from genrec.ops.attention.rab import query_timestamps

    config = preset("hstu")
    torch.manual_seed(0)
    model = SequentialRetriever(config.model, 30, 12, use_time=True).eval()
    batch = make_batch([6, 4])
    out = model(batch)
    queries = query_timestamps(batch.timestamps, batch.seq_offsets)
    explicit = SequenceBatch(batch.item_ids, batch.seq_offsets, 12, batch.timestamps, token_query_times=queries)
    torch.testing.assert_close(model(explicit), out, atol=0, rtol=0)
    explicit.token_query_times = queries.clone()
    explicit.token_query_times[2:6] += 10 ** 7  # row 2 asks about an event far later (the rows after it too: sorted)
    changed = model(explicit)
    torch.testing.assert_close(changed[:2], out[:2], atol=0, rtol=0)
    torch.testing.assert_close(changed[6:], out[6:], atol=0, rtol=0)
    assert not torch.allclose(changed[2], out[2])
    with pytest.raises(ValueError, match="query_times must be None"):
        SequenceBatch(batch.item_ids, batch.seq_offsets, 12, batch.timestamps, query_times=torch.tensor([1, 2]),
                      token_query_times=queries)


@pytest.mark.parametrize("name", ["hstu", "sasrec"])
def test_given_positions_are_the_ones_embedded(name):
    """SequenceBatch.positions (a cut's tokens at their places in the whole history): their own indices give the
    usual outputs; later places change a sequence's rows from the first moved token on."""
    config = preset(name)
    torch.manual_seed(0)
    model = SequentialRetriever(config.model, 30, 12, use_time=True).eval()
    batch = make_batch([6, 4])
    out = model(batch)
    moved = SequenceBatch(batch.item_ids, batch.seq_offsets, 12, batch.timestamps,
                          positions=torch.tensor([0, 1, 2, 3, 4, 5, 0, 1, 2, 3]))
    torch.testing.assert_close(model(moved), out, atol=0, rtol=0)
    moved.positions = torch.tensor([0, 1, 2, 3, 4, 5, 0, 3, 7, 11])
    changed = model(moved)
    torch.testing.assert_close(changed[:7], out[:7], atol=0, rtol=0)
    assert not torch.allclose(changed[7:], out[7:])


def test_forward_flops_count_projections_and_causal_pairs():
    lengths = torch.tensor([1, 3])  # 4 tokens, 1 + 6 visible (query, key) pairs
    hstu = preset("hstu")
    hstu.model.embedding_dim, hstu.model.num_layers, hstu.model.qk_dim, hstu.model.v_dim = 4, 3, 2, 2
    encoder = SequentialRetriever(hstu.model, 10, 8, use_time=False).encoder
    per_token = 2 * 4 * 8 + 2 * 2 * 4  # f1: D -> 2 Dv + 2 Dqk, f2: Dv -> D
    assert encoder.forward_flops(lengths) == 3 * (4 * per_token + 7 * 2 * (2 + 2))
    sasrec = preset("sasrec")
    sasrec.model.embedding_dim, sasrec.model.num_heads = 4, 2
    encoder = SequentialRetriever(sasrec.model, 10, 8, use_time=False).encoder
    assert encoder.forward_flops(lengths) == 2 * (4 * 12 * 16 + 7 * 2 * 2 * (2 + 2))


def test_din_forward_flops_are_its_matrix_multiplies():
    """Counted by torch's FLOP counter on histories of one length, where padded and real events agree."""
    from torch.utils.flop_counter import FlopCounterMode

    from genrec.model.din import DIN

    din = DIN(num_items=20, dim=6, num_tasks=3, hidden=5)
    impressions, length = 4, 7
    ids = torch.randint(1, 21, (impressions, length))
    with FlopCounterMode(display=False) as counter:
        din(ids, torch.rand(impressions, length, 3), torch.ones(impressions, length, dtype=torch.bool), ids[:, 0])
    assert din.forward_flops(torch.full((impressions,), length)) == counter.get_total_flops()


def test_user_context_prefix_is_read_without_leaking_the_future():
    config = preset("hstu")
    config.model.embedding_dim, config.model.qk_dim, config.model.v_dim = 16, 8, 8
    torch.manual_seed(0)
    model = SequentialRetriever(config.model, 30, 12, use_time=True, context_cardinalities=(2, 5)).eval()
    lengths = [5, 1, 7]
    batch = make_batch(lengths)
    batch.context = torch.tensor([[1, 3], [2, 0], [1, 5]])
    out = model(batch)
    assert out.shape == (13, 16)
    # the context is read: another user's features change every position of the sequence
    other = make_batch(lengths)
    other.context = torch.tensor([[2, 3], [2, 0], [1, 5]])
    assert not torch.allclose(model(other)[:5], out[:5], atol=1e-4)
    torch.testing.assert_close(model(other)[5:], out[5:])
    # and it does not carry the future back: changing the last item leaves earlier positions alone
    changed = make_batch(lengths)
    changed.context = batch.context
    changed.item_ids[12] = (changed.item_ids[12] % 30) + 1
    torch.testing.assert_close(model(changed)[6:12], out[6:12], atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="batch has no context"):
        model(make_batch(lengths))
    with pytest.raises(ValueError, match="need the HSTU encoder"):
        SequentialRetriever(preset("sasrec").model, 30, 12, use_time=False, context_cardinalities=(2,))


@pytest.mark.parametrize("reverse", [False, True], ids=["time-ordered", "out-of-order"])
def test_attention_learns_whether_the_batch_is_in_time_order(monkeypatch, reverse):
    """The batch's host-side order check reaches every layer's bias (the kernel's fast key-range path)."""
    import genrec.model.hstu as hstu

    seen = []

    def spy(*args, rab=None, **kwargs):
        seen.append(rab.sorted_timestamps)
        return real(*args, rab=rab, **kwargs)

    real = hstu.hstu_attention
    monkeypatch.setattr(hstu, "hstu_attention", spy)
    config = preset("hstu")
    model = SequentialRetriever(config.model, num_items=30, max_seq_len=12, use_time=True)
    batch = make_batch([5, 1, 7])
    if reverse:
        batch = SequenceBatch(batch.item_ids, batch.seq_offsets, batch.max_seq_len, batch.timestamps.flip(0))
    model(batch)
    assert seen == [not reverse] * config.model.num_layers


@pytest.mark.parametrize("name", ["hstu-large", "sasrec"])
def test_recomputed_layers_give_the_same_outputs_and_gradients(name):
    """model.checkpoint_layers trades memory for compute only: with dropout on (its masks replayed in the
    recomputation), outputs and every gradient equal the stored-activation run under the same seed."""
    config = preset(name)
    config.model.embedding_dim = 16
    if name != "sasrec":
        config.model.qk_dim = config.model.v_dim = 8
    batch = make_batch([5, 1, 7])
    weights = torch.randn(13, 16, generator=torch.Generator().manual_seed(2))  # outputs are unit-norm: not square()
    runs = []
    for checkpoint_layers in (0, 3):
        config.model.checkpoint_layers = checkpoint_layers
        torch.manual_seed(0)
        model = SequentialRetriever(config.model, num_items=30, max_seq_len=12, use_time=True).train()
        torch.manual_seed(1)
        out = model(batch)
        (out * weights).sum().backward()
        runs.append((out.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (out_stored, grads_stored), (out_recomputed, grads_recomputed) = runs
    torch.testing.assert_close(out_recomputed, out_stored, rtol=0, atol=0)
    assert grads_recomputed.keys() == grads_stored.keys() and len(grads_stored) > 10
    for name_, grad in grads_stored.items():
        torch.testing.assert_close(grads_recomputed[name_], grad, rtol=1e-6, atol=1e-7)


def test_checkpoint_layers_beyond_the_stack_is_a_config_error():
    config = preset("hstu")
    config.model.checkpoint_layers = config.model.num_layers + 1
    with pytest.raises(ValueError, match="checkpoint_layers"):
        config.validate()


def test_softmax_hstu_is_causal_per_sequence_and_needs_no_bias():
    config = preset("hstu")
    config.model.attention = "softmax"
    with pytest.raises(ValueError, match="no relative bias"):
        config.validate()
    config.model.rab.position = config.model.rab.time = False
    config.validate()
    torch.manual_seed(0)
    model = SequentialRetriever(config.model, num_items=30, max_seq_len=12, use_time=True).eval()
    lengths = [5, 1, 7]
    batch = make_batch(lengths)
    out = model(batch)
    torch.testing.assert_close(out[6:], model(sub_batch(batch, 2, lengths)), atol=1e-5, rtol=1e-5)
    changed = make_batch(lengths)
    changed.item_ids[12] = (changed.item_ids[12] % 30) + 1
    torch.testing.assert_close(model(changed)[6:12], out[6:12], atol=1e-6, rtol=1e-6)
    pointwise = preset("hstu")
    pointwise.model.rab.position = pointwise.model.rab.time = False
    torch.manual_seed(0)
    same_weights = SequentialRetriever(pointwise.model, num_items=30, max_seq_len=12, use_time=True).eval()
    assert not torch.allclose(same_weights(batch), out)  # the attention really differs
    with pytest.raises(ValueError, match="pointwise"):
        MFalcon(model)


def test_hstu_feed_forward_ablation_adds_sasrecs_sublayer_after_each_layer():
    config = preset("hstu")
    config.model.embedding_dim, config.model.qk_dim, config.model.v_dim = 16, 8, 8
    torch.manual_seed(0)
    plain = SequentialRetriever(config.model, num_items=30, max_seq_len=12, use_time=True).eval()
    config.model.feed_forward = True
    with_ffn = SequentialRetriever(config.model, num_items=30, max_seq_len=12, use_time=True).eval()
    lengths = [5, 1, 7]
    batch = make_batch(lengths)
    # a sublayer whose last projection is zero adds nothing: the rest is exactly the plain HSTU
    missing, unexpected = with_ffn.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and {name.split(".")[3] for name in missing} == {"feed_forward", "feed_forward_norm"}
    for layer in with_ffn.encoder.layers:
        torch.nn.init.zeros_(layer.feed_forward[3].weight)
        torch.nn.init.zeros_(layer.feed_forward[3].bias)
    torch.testing.assert_close(with_ffn(batch), plain(batch))
    # a live one changes the outputs, stays causal and per sequence, and is counted in the FLOPs
    torch.nn.init.normal_(with_ffn.encoder.layers[0].feed_forward[3].weight)
    out = with_ffn(batch)
    assert not torch.allclose(out, plain(batch), atol=1e-3)
    torch.testing.assert_close(out[6:], with_ffn(sub_batch(batch, 2, lengths)), atol=1e-5, rtol=1e-5)
    changed = make_batch(lengths)
    changed.item_ids[12] = (changed.item_ids[12] % 30) + 1
    torch.testing.assert_close(with_ffn(changed)[6:12], out[6:12], atol=1e-6, rtol=1e-6)
    tokens = torch.tensor(lengths)
    extra = with_ffn.encoder.forward_flops(tokens) - plain.encoder.forward_flops(tokens)
    assert extra == config.model.num_layers * 13 * 2 * 2 * 16 * 16
    # M-FALCON's candidates pass through it too: cached scores equal full passes
    history, candidates = batch.item_ids[6:], torch.tensor([3, 9, 17])
    stamps = batch.timestamps[6:]
    candidate_stamps = stamps[-1] + torch.tensor([10, 20, 30])
    scorer = MFalcon(with_ffn, micro_batch_size=2)
    torch.testing.assert_close(scorer.encode_candidates(history, stamps, candidates, candidate_stamps),
                               scorer.encode_candidates_uncached(history, stamps, candidates, candidate_stamps),
                               atol=1e-5, rtol=1e-5)


def test_feed_forward_is_an_hstu_option():
    config = preset("sasrec")
    config.model.feed_forward = True
    with pytest.raises(ValueError, match="feed_forward is an HSTU option"):
        config.validate()
