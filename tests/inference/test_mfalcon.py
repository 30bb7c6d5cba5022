"""The properties M-FALCON's correctness rests on: a candidate's score is unaffected by the other
candidates, cached equals uncached, and the micro-batch size does not change scores."""

import pytest
import torch

from genrec.config import preset
from genrec.inference.mfalcon import MFalcon
from genrec.model import SequentialRetriever

NUM_ITEMS, MAX_LEN = 40, 32


CONTEXT_CARDINALITIES = (3, 5)  # models with a user-context prefix read two features
CONTEXT = torch.tensor([2, 4])


def make_model(use_time=True, seed=0, backend="auto", context=False, series=False):
    config = preset("hstu-large")
    config.model.embedding_dim, config.model.num_layers = 16, 3
    config.model.qk_dim = config.model.v_dim = 8
    config.model.attention_backend = backend
    torch.manual_seed(seed)
    return SequentialRetriever(config.model, NUM_ITEMS, MAX_LEN, use_time=use_time,
                               context_cardinalities=CONTEXT_CARDINALITIES if context else (),
                               series_cardinality=3 if series else 0, max_series_len=4).eval()


def changes_of(stamps, codes=(1, 2, 3)):
    """A user's feature changes: before the first event, at an event's time, and after the last event (before the
    candidates' times in inputs())."""
    return torch.tensor(codes), torch.stack([stamps[0] - 7, stamps[4], stamps[-1] + 1])


def inputs(num_history=9, num_candidates=7, seed=1):
    gen = torch.Generator().manual_seed(seed)
    history = torch.randint(1, NUM_ITEMS + 1, (num_history,), generator=gen)
    candidates = torch.randint(1, NUM_ITEMS + 1, (num_candidates,), generator=gen)
    stamps = torch.cumsum(torch.randint(1, 10_000, (num_history,), generator=gen), 0)
    candidate_stamps = stamps[-1] + torch.randint(2, 50_000, (num_candidates,), generator=gen)
    return history, stamps, candidates, candidate_stamps


@pytest.mark.parametrize("use_time,series", [(True, False), (False, False), (True, True)],
                         ids=["time", "no-time", "time-and-changes"])
@pytest.mark.parametrize("micro_batch", [1, 3, 7, 100])
@pytest.mark.parametrize("query_time", [None, 123_456_789], ids=["own-time", "query-time"])
@pytest.mark.parametrize("context", [None, CONTEXT], ids=["no-context", "context"])
def test_cached_equals_uncached_and_one_by_one(use_time, series, micro_batch, query_time, context):
    model = make_model(use_time, context=context is not None, series=series)
    history, stamps, candidates, candidate_stamps = inputs()
    changes = changes_of(stamps) if series else None
    if not use_time:
        stamps = candidate_stamps = None
    scorer = MFalcon(model, micro_batch_size=micro_batch)
    cached = scorer.encode_candidates(history, stamps, candidates, candidate_stamps, query_time=query_time,
                                      context=context, changes=changes)
    uncached = scorer.encode_candidates_uncached(history, stamps, candidates, candidate_stamps,
                                                 query_time=query_time, context=context, changes=changes)
    alone = MFalcon(model, micro_batch_size=1).encode_candidates_uncached(
        history, stamps, candidates, candidate_stamps, query_time=query_time, context=context, changes=changes)
    torch.testing.assert_close(cached, uncached, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(uncached, alone, atol=1e-5, rtol=1e-5)


def test_the_context_shapes_the_scores_and_keys_the_cache():
    scorer = MFalcon(make_model(context=True))
    history, stamps, candidates, candidate_stamps = inputs()
    first = scorer.encode_candidates(history, stamps, candidates, candidate_stamps, user="a", context=CONTEXT)
    other = scorer.encode_candidates(history, stamps, candidates, candidate_stamps, user="a",
                                     context=torch.tensor([1, 4]))
    assert not torch.allclose(first, other)  # a stale cache would have returned the first scores
    torch.testing.assert_close(other, scorer.encode_candidates(history, stamps, candidates, candidate_stamps,
                                                               context=torch.tensor([1, 4])))
    with pytest.raises(ValueError, match="the batch has no context"):
        scorer.encode_candidates(history, stamps, candidates, candidate_stamps)
    with pytest.raises(ValueError, match="reads no user context"):
        MFalcon(make_model()).encode_candidates(history, stamps, candidates, candidate_stamps, context=CONTEXT)


def test_changes_shape_the_scores_and_key_the_cache():
    """A change after the last history event reaches every candidate; a stale cache is never served for other
    changes; a model with change tokens needs them, and one without refuses them."""
    scorer = MFalcon(make_model(series=True))
    history, stamps, candidates, candidate_stamps = inputs()
    first = scorer.encode_candidates(history, stamps, candidates, candidate_stamps, user="a",
                                     changes=changes_of(stamps))
    other = scorer.encode_candidates(history, stamps, candidates, candidate_stamps, user="a",
                                     changes=changes_of(stamps, codes=(1, 2, 1)))  # only the last change differs
    assert all(not torch.allclose(first[c], other[c]) for c in range(len(candidates)))
    torch.testing.assert_close(other, scorer.encode_candidates(history, stamps, candidates, candidate_stamps,
                                                               changes=changes_of(stamps, codes=(1, 2, 1))))
    shown_earlier = torch.full_like(candidate_stamps, int(stamps[-1]))  # before the last change: it still leads them
    torch.testing.assert_close(scorer.encode_candidates(history, stamps, candidates, shown_earlier,
                                                        changes=changes_of(stamps)),
                               scorer.encode_candidates_uncached(history, stamps, candidates, shown_earlier,
                                                                 changes=changes_of(stamps)), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="none were given"):
        scorer.encode_candidates(history, stamps, candidates, candidate_stamps)
    with pytest.raises(ValueError, match="reads no user-feature changes"):
        MFalcon(make_model()).encode_candidates(history, stamps, candidates, candidate_stamps,
                                                changes=changes_of(stamps))


@pytest.mark.parametrize("query_time", [None, 123_456_789], ids=["own-time", "query-time"])
def test_fused_cached_attention_equals_full_passes(query_time):
    """The retriever's cached path through the fused candidate kernel (genrec::hstu_candidate_attention) equals
    the reference's full passes over [history; candidates], candidates with their own times."""
    pytest.importorskip("triton")
    history, stamps, candidates, candidate_stamps = inputs(num_candidates=20)
    fused = MFalcon(make_model(backend="triton"), micro_batch_size=16).encode_candidates(
        history, stamps, candidates, candidate_stamps, query_time=query_time)
    full = MFalcon(make_model(backend="torch"), micro_batch_size=7).encode_candidates_uncached(
        history, stamps, candidates, candidate_stamps, query_time=query_time)
    torch.testing.assert_close(fused, full, atol=1e-5, rtol=1e-5)


def test_candidate_unaffected_by_others_and_history_rows_unaffected_by_candidates():
    model = make_model()
    history, stamps, candidates, candidate_stamps = inputs()
    scorer = MFalcon(model, micro_batch_size=4)
    base = scorer.encode_candidates(history, stamps, candidates, candidate_stamps)
    swapped = candidates.clone()
    swapped[1:] = (swapped[1:] % NUM_ITEMS) + 1
    changed = scorer.encode_candidates(history, stamps, swapped, candidate_stamps)
    torch.testing.assert_close(base[0], changed[0])
    assert not torch.allclose(base[1:], changed[1:])


def test_lru_cache_reuse_invalidation_and_eviction():
    model = make_model()
    history, stamps, candidates, candidate_stamps = inputs()
    scorer = MFalcon(model, cache_capacity=2)
    first = scorer.encode_candidates(history, stamps, candidates, candidate_stamps, user="a")
    cache = scorer._caches["a"]
    again = scorer.encode_candidates(history, stamps, candidates, candidate_stamps, user="a")
    assert scorer._caches["a"] is cache and torch.equal(first, again)
    longer = torch.cat([history, candidates[:1]])
    longer_stamps = torch.cat([stamps, candidate_stamps[:1]])
    updated = scorer.encode_candidates(longer, longer_stamps, candidates, candidate_stamps, user="a")
    assert scorer._caches["a"] is not cache  # a changed history is never served from a stale cache
    torch.testing.assert_close(updated, scorer.encode_candidates(longer, longer_stamps, candidates, candidate_stamps))
    scorer.invalidate("a")
    assert "a" not in scorer._caches
    for user in ("b", "c", "d"):
        scorer.encode_candidates(history, stamps, candidates, candidate_stamps, user=user)
    assert list(scorer._caches) == ["c", "d"]


def test_the_query_time_shapes_the_scores_and_keys_the_cache():
    model = make_model()
    history, stamps, candidates, candidate_stamps = inputs()
    scorer = MFalcon(model)
    soon = scorer.encode_candidates(history, stamps, candidates, candidate_stamps, user="a",
                                    query_time=int(stamps[-1]) + 10)
    later = scorer.encode_candidates(history, stamps, candidates, candidate_stamps, user="a",
                                     query_time=int(stamps[-1]) + 10_000_000)
    assert not torch.allclose(soon, later)  # a stale cache would have returned the first scores
    torch.testing.assert_close(later, scorer.encode_candidates(history, stamps, candidates, candidate_stamps,
                                                               query_time=int(stamps[-1]) + 10_000_000))


def test_bad_requests():
    scorer = MFalcon(make_model())
    history, stamps, candidates, candidate_stamps = inputs()
    with pytest.raises(ValueError, match="empty history"):
        scorer.encode_candidates(history[:0], stamps[:0], candidates, candidate_stamps)
    with pytest.raises(ValueError, match="unknown candidate item id"):
        scorer.encode_candidates(history, stamps, torch.tensor([NUM_ITEMS + 1]), candidate_stamps[:1])
    with pytest.raises(ValueError, match="at most"):
        scorer.encode_candidates(torch.ones(MAX_LEN, dtype=torch.int64), torch.arange(MAX_LEN), candidates,
                                 candidate_stamps)


def _ranker(backend: str, context: bool = False, series: bool = False):
    from genrec.model.ranking import GenerativeRanker

    config = preset("hstu")
    config.model.embedding_dim, config.model.qk_dim, config.model.v_dim = 16, 8, 8
    config.model.attention_backend = backend
    torch.manual_seed(0)
    return GenerativeRanker(config.model, NUM_ITEMS, num_tasks=2, max_seq_len=MAX_LEN, use_time=True,
                            context_cardinalities=CONTEXT_CARDINALITIES if context else (),
                            series_cardinality=3 if series else 0, max_series_len=4).eval()


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("query_time", [None, 987_654_321], ids=["own-time", "query-time"])
@pytest.mark.parametrize("context", [None, CONTEXT], ids=["no-context", "context"])
@pytest.mark.parametrize("series", [False, True], ids=["no-changes", "changes"])
def test_ranker_candidates_cached_equal_full_passes(backend, query_time, context, series):
    """For the ranker, a candidate scored through the cache equals appending it as the next event, alone or
    with four other candidates in the same pass (one candidate-position rule on every path), and equals the
    training pass's prediction of that event (whose changes, all before it, merge in by time)."""
    from genrec.data.batch import SequenceBatch
    from genrec.ops.jagged import offsets_from_lengths

    if backend == "triton":
        pytest.importorskip("triton")
    ranker = _ranker(backend, context is not None, series)
    history, stamps, candidates, candidate_stamps = inputs(num_history=6, num_candidates=5)
    labels = torch.randint(0, 2, (6, 2), generator=torch.Generator().manual_seed(2)).float()
    changes = changes_of(stamps) if series else None
    batch_changes = {} if changes is None else {"series_codes": changes[0], "series_timestamps": changes[1],
                                                "series_offsets": torch.tensor([0, 3])}
    scores = MFalcon(ranker, micro_batch_size=2).encode_candidates(history, stamps, candidates, candidate_stamps,
                                                                    history_labels=labels, query_time=query_time,
                                                                    context=context, changes=changes)
    assert scores.shape == (5, 2) and ((scores > 0) & (scores < 1)).all()
    query_times = None if query_time is None else torch.tensor([query_time])
    batch_context = None if context is None else context.view(1, -1)
    for c in range(5):  # the full pass: the candidate appended as a target event (its action unseen)
        batch = SequenceBatch(torch.cat([history, candidates[c:c + 1]]), offsets_from_lengths(torch.tensor([7])),
                              MAX_LEN, torch.cat([stamps, candidate_stamps[c:c + 1]]),
                              labels=torch.cat([labels, torch.zeros(1, 2)]), query_times=query_times,
                              context=batch_context, **batch_changes)
        full = ranker(batch, num_targets=torch.tensor([1]))[-1]
        torch.testing.assert_close(torch.sigmoid(full), scores[c], atol=1e-5, rtol=1e-5)
        if query_time is None:  # training's pass predicts the last event the same way
            torch.testing.assert_close(ranker(batch)[-1], full, atol=1e-5, rtol=1e-5)
    together = SequenceBatch(torch.cat([history, candidates]), offsets_from_lengths(torch.tensor([11])), MAX_LEN,
                             torch.cat([stamps, candidate_stamps]), labels=torch.cat([labels, torch.zeros(5, 2)]),
                             query_times=query_times, context=batch_context, **batch_changes)
    torch.testing.assert_close(torch.sigmoid(ranker(together, num_targets=torch.tensor([5]))[6:]), scores,
                               atol=1e-5, rtol=1e-5)
    uncached = MFalcon(ranker, micro_batch_size=3).encode_candidates_uncached(
        history, stamps, candidates, candidate_stamps, history_labels=labels, query_time=query_time,
        context=context, changes=changes)
    torch.testing.assert_close(uncached, scores, atol=1e-5, rtol=1e-5)
