import math
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from genrec.config import ModelConfig
from genrec.data.batch import SequenceBatch
from genrec.data.sequences import JaggedEvents
from genrec.data.splits import EvalSplit, sample_users
from genrec.eval.metrics import summarize
import genrec.eval.protocol as protocol
from genrec.eval.protocol import (ItemChunks, chunked_target_ranks, model_scorer, popularity_scorer, rank_split,
                                  target_ranks, whole_matrix)
from genrec.model.retrieval import SequentialRetriever
from genrec.ops.jagged import offsets_from_lengths


def test_ranks_exclude_padding_and_history():
    #            pad  1    2    3    4    5
    scores = torch.tensor([[9.0, 5.0, 4.0, 3.0, 2.0, 1.0]])
    batch = SequenceBatch(torch.tensor([1, 2]), offsets_from_lengths(torch.tensor([2])), max_seq_len=3)
    target = torch.tensor([3])
    assert target_ranks(scores, target, batch, exclude_history=True).tolist() == [1]
    assert target_ranks(scores, target, batch, exclude_history=False).tolist() == [3]
    assert target_ranks(scores, torch.tensor([5]), batch, exclude_history=True).tolist() == [3]
    # a target that repeats a history item is excluded with it: it ranks last among the 3 eligible items
    assert target_ranks(scores, torch.tensor([2]), batch, exclude_history=True).tolist() == [4]


def test_ties_rank_the_target_below_the_items_it_ties_with():
    batch = SequenceBatch(torch.tensor([1]), offsets_from_lengths(torch.tensor([1])), max_seq_len=2)
    #                       pad  1    2    3    4    5
    scores = torch.tensor([[0.0, 9.0, 2.0, 2.0, 2.0, 1.0]])
    assert target_ranks(scores, torch.tensor([3]), batch, exclude_history=True).tolist() == [3]
    assert target_ranks(scores, torch.tensor([5]), batch, exclude_history=True).tolist() == [4]


def _split(num_users: int = 20, num_items: int = 30) -> EvalSplit:
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 6, num_users)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return EvalSplit(JaggedEvents(rng.integers(1, num_items + 1, offsets[-1]), offsets),
                     rng.integers(1, num_items + 1, num_users))


def test_a_constant_model_ranks_every_target_last():
    split, num_items = _split(), 30
    constant = lambda batch: torch.zeros(batch.num_sequences, num_items + 1)  # noqa: E731
    ranks = rank_split(constant, split, max_seq_len=8, batch_size=7, device=torch.device("cpu")).ranks
    metrics = summarize(ranks, ks=(10,))
    assert metrics["hr@10"] == 0.0 and metrics["ndcg@10"] == 0.0
    # last among the items outside the history, or past all of them when the target repeats a history item
    histories = split.histories.compact()
    for user, rank in enumerate(ranks.tolist()):
        history = set(histories.item_ids[histories.offsets[user]:histories.offsets[user + 1]])
        repeat = int(split.target_items[user]) in history
        assert rank == num_items - len(history) + repeat


@pytest.mark.parametrize("chunk, temperature", [(7, 0.05), (100, 1.0), (1, 0.5)])
def test_nll_is_the_cross_entropy_over_the_real_items_range_by_range(chunk, temperature):
    generator = torch.Generator().manual_seed(chunk)
    scores = torch.randn(9, 51, generator=generator)
    scores[:, 0] = 100.0  # padding: never part of the softmax
    targets = torch.randint(1, 51, (9,), generator=generator)
    nll = chunked_target_ranks(whole_matrix(scores), targets, None, False, chunk_columns=chunk,
                               temperature=temperature).nll
    expected = F.cross_entropy(scores[:, 1:] / temperature, targets - 1, reduction="none")
    torch.testing.assert_close(nll, expected, rtol=1e-5, atol=1e-5)


def test_a_constant_model_has_the_likelihood_of_a_uniform_guess():
    split, num_items = _split(), 30
    constant = lambda batch: torch.full((batch.num_sequences, num_items + 1), 0.3)  # noqa: E731
    result = rank_split(constant, split, max_seq_len=8, batch_size=7, device=torch.device("cpu"), temperature=0.05)
    torch.testing.assert_close(result.nll, torch.full((split.histories.num_users,), math.log(num_items)))
    assert summarize(result.ranks, (10,), result.nll)["nll"] == pytest.approx(math.log(num_items))


def test_ranks_and_likelihood_score_a_one_range_catalogue_once():
    split, num_items, calls = _split(), 30, []
    table = torch.randn(num_items + 1, 4)

    def scorer(batch):
        users = torch.randn(batch.num_sequences, 4)

        def items(lo, hi):
            calls.append((lo, hi))
            return users @ table[lo:hi].T
        return ItemChunks(items, num_items + 1)
    result = rank_split(scorer, split, max_seq_len=8, batch_size=7, device=torch.device("cpu"), temperature=0.05)
    assert calls == [(0, num_items + 1)] * 3 and result.nll.shape == result.ranks.shape == (20,)


def test_ranks_and_likelihood_score_each_range_of_a_larger_catalogue_twice(monkeypatch):
    """Several ranges: every range is scored once for the targets' scores and the likelihood, once to count, and the
    results equal the whole matrix's."""
    monkeypatch.setattr(protocol, "EVAL_ITEM_CHUNK", 8)
    split, num_items, calls = _split(), 30, []
    table = torch.randn(num_items + 1, 4)
    users = {}

    def scorer(batch):
        users["rows"] = torch.randn(batch.num_sequences, 4)

        def items(lo, hi):
            calls.append((lo, hi))
            return users["rows"] @ table[lo:hi].T
        return ItemChunks(items, num_items + 1)
    chunked = rank_split(scorer, split, max_seq_len=8, batch_size=20, device=torch.device("cpu"), temperature=0.05)
    ranges = [(0, 8), (8, 16), (16, 24), (24, 31)]
    assert calls == ranges * 2
    whole = rank_split(lambda batch: users["rows"] @ table.T, split, max_seq_len=8, batch_size=20,
                       device=torch.device("cpu"), temperature=0.05)
    assert torch.equal(chunked.ranks, whole.ranks)
    torch.testing.assert_close(chunked.nll, whole.nll)


def test_popularity_ties_do_not_flatter_the_baseline():
    """Every item seen once: the popularity scorer is a constant model and must not score a hit."""
    split, num_items = _split(), 30
    scorer = popularity_scorer(np.bincount(np.arange(1, num_items + 1), minlength=num_items + 1), torch.device("cpu"))
    ranks = rank_split(scorer, split, max_seq_len=8, batch_size=64, device=torch.device("cpu")).ranks
    assert summarize(ranks, ks=(10,))["hr@10"] == 0.0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_scores_are_refused(bad):
    split, num_items = _split(), 30

    def broken(batch):
        scores = torch.randn(batch.num_sequences, num_items + 1)
        scores[0, 7] = bad
        return scores
    with pytest.raises(ValueError, match="non-finite scores"):
        rank_split(broken, split, max_seq_len=8, batch_size=64, device=torch.device("cpu"))


def test_huge_finite_scores_are_ranked_not_refused():
    """Finite scores whose row sum overflows to infinity (the cheap finiteness check's false alarm) are ranked."""
    scores = torch.zeros(2, 6)
    scores[:, 1:3] = 3e38  # items 1 and 2 tie at the top; their sum is inf in fp32
    scores[1, 4] = float("nan")
    with pytest.raises(ValueError, match="non-finite scores for 1 of 2 users"):
        target_ranks(scores, torch.tensor([2, 2]), None, exclude_history=False)
    assert target_ranks(scores[:1], torch.tensor([2]), None, exclude_history=False).tolist() == [2]


def test_ranks_count_exactly_past_float32s_integers():
    """2^24 + 1 items tie with the target: float32 cannot hold that count, so it is counted in ranges."""
    scores = torch.ones(1, (1 << 24) + 3)
    assert target_ranks(scores, torch.tensor([1]), None, exclude_history=False).tolist() == [(1 << 24) + 2]


@pytest.mark.parametrize("chunk", [1, 7, 50, 51, 1000])
@pytest.mark.parametrize("exclude_history", [True, False])
def test_ranks_item_range_by_item_range_equal_the_whole_matrix(chunk, exclude_history):
    """Catalogues too large for one score matrix: ranking over item ranges gives the whole matrix's ranks,
    ties included (scores rounded to a coarse grid so that many tie), history and candidate exclusions included;
    and a non-finite score in any range is an error."""
    generator = torch.Generator().manual_seed(chunk)
    num_users, num_columns = 9, 51
    scores = (torch.randn(num_users, num_columns, generator=generator) * 3).round()
    targets = torch.randint(1, num_columns, (num_users,), generator=generator)
    targets[0] = 5  # a repeat of a history item (ranks last when histories are excluded)
    histories = [torch.randint(1, num_columns, (int(n),), generator=generator)
                 for n in torch.randint(1, 6, (num_users,), generator=generator)]
    histories[0][0] = 5
    batch = SequenceBatch(torch.cat(histories), offsets_from_lengths(torch.tensor([len(h) for h in histories])),
                          max_seq_len=8)
    candidates = torch.rand(num_columns, generator=generator) < 0.8
    for held in (None, candidates):
        whole = target_ranks(scores, targets, batch, exclude_history, held)
        chunked = chunked_target_ranks(whole_matrix(scores), targets, batch, exclude_history, held,
                                       chunk_columns=chunk)
        assert torch.equal(whole, chunked.ranks) and chunked.nll is None
    broken = scores.clone()
    broken[3, 40] = float("nan")
    with pytest.raises(ValueError, match="non-finite scores for 1 of 9 users"):
        chunked_target_ranks(whole_matrix(broken), targets, batch, exclude_history, chunk_columns=chunk)


class ThreadRanks:
    """Ranks simulated by threads: combine(values, op) all-reduces in place across them, as torch.distributed's
    all_reduce does across processes."""

    def __init__(self, world_size: int) -> None:
        self.barrier, self.slots = threading.Barrier(world_size, timeout=10), [None] * world_size

    def combine_for(self, rank: int):
        def combine(values: torch.Tensor, op: str) -> None:
            self.slots[rank] = values.clone()
            self.barrier.wait()
            stacked = torch.stack(self.slots)
            reduced = stacked.sum(0) if op == "sum" else stacked.max(0).values
            self.barrier.wait()  # everyone has read the slots before any is overwritten
            values.copy_(reduced)
        return combine

    @classmethod
    def run(cls, world_size: int, work) -> list:
        """work(rank, combine) on each rank's thread: what each returned, or the error it raised."""
        ranks, results = cls(world_size), [None] * world_size

        def one(rank: int) -> None:
            try:
                results[rank] = work(rank, ranks.combine_for(rank))
            except (ValueError, threading.BrokenBarrierError) as error:  # a rank left alone times out
                results[rank] = error

        threads = [threading.Thread(target=one, args=(rank,)) for rank in range(world_size)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return results


@pytest.mark.parametrize("world_size, chunk", [(2, 7), (3, 4), (4, 100)])
@pytest.mark.parametrize("exclude_history", [True, False])
def test_ranks_counted_where_the_rows_live_equal_the_whole_matrix(world_size, chunk, exclude_history):
    """A table sharded by rows: each rank ranks against its own ids (ItemChunks.own_columns, shards of unequal
    sizes, one holding padding id 0), the counts are summed across ranks, and the ranks equal the whole matrix's,
    ties and exclusions included; a non-finite score on any rank is an error on every rank."""
    generator = torch.Generator().manual_seed(world_size * 100 + chunk)
    num_users, num_columns = 9, 51
    scores = (torch.randn(num_users, num_columns, generator=generator) * 3).round()
    targets = torch.randint(1, num_columns, (num_users,), generator=generator)
    histories = [torch.randint(1, num_columns, (int(n),), generator=generator)
                 for n in torch.randint(1, 6, (num_users,), generator=generator)]
    histories[0][0] = targets[0]
    batch = SequenceBatch(torch.cat(histories), offsets_from_lengths(torch.tensor([len(h) for h in histories])),
                          max_seq_len=8)
    bounds = torch.linspace(0, num_columns, world_size + 1).long().tolist()

    def run_ranks(table: torch.Tensor) -> list:
        def work(rank, combine):
            chunks = ItemChunks(lambda lo, hi: table[:, lo:hi], num_columns, (bounds[rank], bounds[rank + 1]), combine)
            return chunked_target_ranks(chunks, targets, batch, exclude_history, chunk_columns=chunk).ranks
        return ThreadRanks.run(world_size, work)

    whole = target_ranks(scores, targets, batch, exclude_history)
    for result in run_ranks(scores):
        assert torch.equal(result, whole)
    broken = scores.clone()
    broken[3, bounds[-2]] = float("inf")  # in the last rank's rows only
    assert all(isinstance(result, ValueError) and "1 of 9 users" in str(result) for result in run_ranks(broken))


@pytest.mark.parametrize("world_size, chunk", [(2, 7), (3, 4), (4, 100)])
def test_nll_summed_where_the_rows_live_equals_the_whole_matrix(world_size, chunk):
    """Each rank's log-sum-exp over its own ids (one rank holding padding id 0, the last none at 4 ranks of 3
    columns) combined across ranks equals the whole catalogue's, the target's logit taken from the rank that holds
    it."""
    generator = torch.Generator().manual_seed(world_size)
    num_columns = 51 if world_size < 4 else 3
    scores = torch.randn(9, num_columns, generator=generator) * 5
    targets = torch.randint(1, num_columns, (9,), generator=generator)
    bounds = torch.linspace(0, num_columns, world_size + 1).long().tolist() if world_size < 4 else [0, 1, 2, 3, 3]

    def work(rank, combine):
        chunks = ItemChunks(lambda lo, hi: scores[:, lo:hi], num_columns, (bounds[rank], bounds[rank + 1]), combine)
        return chunked_target_ranks(chunks, targets, None, False, chunk_columns=chunk, temperature=0.1).nll
    whole = chunked_target_ranks(whole_matrix(scores), targets, None, False, temperature=0.1).nll
    for result in ThreadRanks.run(world_size, work):
        torch.testing.assert_close(result, whole)


def test_model_scores_stay_fp32_under_autocast():
    """Scores rounded to bf16 tie, and ties rank the target too high: only the encoder may autocast."""
    torch.manual_seed(0)
    model = SequentialRetriever(ModelConfig(embedding_dim=16, qk_dim=8, v_dim=8), num_items=50, max_seq_len=8,
                                use_time=False).eval()
    batch = SequenceBatch(torch.tensor([3, 7, 9, 4, 2]), offsets_from_lengths(torch.tensor([3, 2])), max_seq_len=8)
    with torch.no_grad():
        chunks = model_scorer(model, torch.bfloat16)(batch)
        scores = chunks.items(0, chunks.num_columns)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            users = model(batch)[torch.tensor([2, 4])]
        expected = users.float() @ model.item_embeddings().T
    assert scores.dtype == torch.float32 and chunks.num_columns == 51
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-6)


def test_a_run_with_max_users_ranks_the_same_seeded_sample_of_users(tmp_path):
    from genrec.train.trainer import Trainer
    from tests.tiny import tiny_config

    config = tiny_config(mode="paper", epochs=1)
    config.eval.max_users = 7
    trainer = Trainer(config, tmp_path, progress=False, log=lambda _: None)
    summary = trainer.fit()
    assert summary["eval_users"] == 7 < trainer.data.split.test.histories.num_users
    sample = sample_users(trainer.data.split.test, 7, config.train.seed)
    result = rank_split(model_scorer(trainer.model), sample, config.data.max_seq_len, 64, trainer.device,
                        temperature=config.train.loss.temperature)
    assert summarize(result.ranks, config.eval.ks, result.nll) == summary["metrics"]
