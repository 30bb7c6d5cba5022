"""The reference attention against a naive per-sequence, per-pair loop written from the spec."""

import pytest
import torch
import torch.nn.functional as F

from genrec.ops import hstu_attention
from genrec.ops.attention import time_buckets
from genrec.ops.attention.rab import NEVER, time_buckets_by_formula, time_bucket_thresholds
from genrec.ops.jagged import offsets_from_lengths


def naive_valid(i: int, j: int, length: int, num_targets: int, max_attn_len: int, contextual: int) -> bool:
    history = length - num_targets
    if contextual and (j < contextual or (i < contextual and j < history)):
        return True
    if i == j:
        return True
    if i < history:  # history: causal
        ok = j < i
        anchor = i
    else:  # candidate: the whole history, never another candidate
        ok = j < history
        anchor = history
    if max_attn_len:
        ok = ok and anchor - j <= max_attn_len
    return ok


def naive_attention(q, k, v, lengths, max_seq_len, alpha, num_targets, rab, max_attn_len, contextual):
    out = torch.zeros(q.shape[0], q.shape[1], v.shape[2], dtype=torch.float64)
    start = 0
    for b, length in enumerate(lengths):
        m = 0 if num_targets is None else num_targets[b]
        for h in range(q.shape[1]):
            for i in range(length):
                for j in range(length):
                    if not naive_valid(i, j, length, m, max_attn_len, contextual):
                        continue
                    score = alpha * (q[start + i, h].double() @ k[start + j, h].double())
                    if rab is not None:
                        score = score + rab[b, h % rab.shape[1], i, j].double()
                    out[start + i, h] += F.silu(score) / max_seq_len * v[start + j, h].double()
        start += length
    return out


CASES = [
    dict(lengths=[1, 5, 3], num_targets=None, max_attn_len=0, contextual=0),
    dict(lengths=[6, 1, 4], num_targets=[2, 0, 1], max_attn_len=0, contextual=0),
    dict(lengths=[7, 5], num_targets=None, max_attn_len=2, contextual=0),
    dict(lengths=[7, 5], num_targets=None, max_attn_len=0, contextual=2),
    dict(lengths=[8, 6, 3], num_targets=[3, 2, 0], max_attn_len=3, contextual=1),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("with_rab", [False, True])
def test_reference_matches_naive_loop(case, with_rab):
    torch.manual_seed(0)
    lengths, heads, dqk, dv, max_seq_len = case["lengths"], 2, 5, 3, 9
    total = sum(lengths)
    q, k, v = torch.randn(total, heads, dqk), torch.randn(total, heads, dqk), torch.randn(total, heads, dv)
    rab = torch.randn(len(lengths), 1, max_seq_len, max_seq_len) if with_rab else None
    num_targets = None if case["num_targets"] is None else torch.tensor(case["num_targets"])
    got = hstu_attention(q.double(), k.double(), v.double(), offsets_from_lengths(torch.tensor(lengths)),
                         max_seq_len=max_seq_len, alpha=0.7, num_targets=num_targets,
                         rab=None if rab is None else rab.double(), max_attn_len=case["max_attn_len"],
                         contextual_seq_len=case["contextual"], backend="torch")
    expected = naive_attention(q, k, v, lengths, max_seq_len, 0.7, case["num_targets"], rab,
                               case["max_attn_len"], case["contextual"])
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def test_candidates_do_not_see_each_other():
    """Changing one candidate's inputs leaves the history and the other candidates untouched."""
    torch.manual_seed(1)
    offsets, targets = offsets_from_lengths(torch.tensor([6])), torch.tensor([3])
    q, k, v = torch.randn(6, 1, 4), torch.randn(6, 1, 4), torch.randn(6, 1, 4)
    base = hstu_attention(q, k, v, offsets, max_seq_len=6, alpha=1.0, num_targets=targets, backend="torch")
    k2, v2 = k.clone(), v.clone()
    k2[4], v2[4] = torch.randn(1, 4), torch.randn(1, 4)
    changed = hstu_attention(q, k2, v2, offsets, max_seq_len=6, alpha=1.0, num_targets=targets, backend="torch")
    assert torch.equal(base[[0, 1, 2, 3, 5]], changed[[0, 1, 2, 3, 5]])
    assert not torch.equal(base[4], changed[4])


def test_sequences_are_independent_and_empty_batch_works():
    torch.manual_seed(2)
    q, k, v = torch.randn(7, 2, 4), torch.randn(7, 2, 4), torch.randn(7, 2, 3)
    both = hstu_attention(q, k, v, offsets_from_lengths(torch.tensor([3, 4])), max_seq_len=8, alpha=1.0,
                          backend="torch")
    second = hstu_attention(q[3:], k[3:], v[3:], offsets_from_lengths(torch.tensor([4])), max_seq_len=8,
                            alpha=1.0, backend="torch")
    torch.testing.assert_close(both[3:], second)
    empty = hstu_attention(q[:0], k[:0], v[:0], torch.zeros(1, dtype=torch.int64), max_seq_len=8, alpha=1.0)
    assert empty.shape == (0, 2, 3)


def test_bad_arguments_are_value_errors():
    q = torch.randn(3, 1, 4)
    offsets = offsets_from_lengths(torch.tensor([3]))
    with pytest.raises(ValueError, match="backend"):
        hstu_attention(q, q, q, offsets, max_seq_len=4, alpha=1.0, backend="cuda-magic")
    with pytest.raises(ValueError, match="expected q, k"):
        hstu_attention(q, q[:, :, :2], q, offsets, max_seq_len=4, alpha=1.0)
    with pytest.raises(ValueError, match="int64"):
        hstu_attention(q, q, q, offsets.int(), max_seq_len=4, alpha=1.0)


@pytest.mark.parametrize("scale, num_buckets", [(0.301, 128), (0.7, 64), (1.0, 3)])
def test_time_bucket_thresholds_count_the_buckets(scale, num_buckets):
    """Counting the thresholds at or below |dt| gives the formula's bucket (float32 on the CPU) for every gap: small
    ones exhaustively, each threshold and its predecessor, and random large ones below NEVER (float32 rounds
    them); time_buckets, which counts them off the CPU, agrees."""
    thresholds = time_bucket_thresholds(scale, num_buckets)
    assert thresholds.shape == (num_buckets + 4,) and thresholds[0] < 0 and (thresholds[-3:] == NEVER).all()
    inner = thresholds[1:num_buckets + 1]
    assert (inner[1:] >= inner[:-1]).all()
    large = torch.randint(0, NEVER, (50_000,), generator=torch.Generator().manual_seed(0))
    gaps = torch.cat([torch.arange(-3000, 100_000), inner, inner - 1, large, -large])
    gaps = gaps[gaps.abs() < NEVER]  # the contract's range (NEVER marks buckets out of it)
    counted = (gaps.abs().unsqueeze(1) >= inner).sum(1)
    torch.testing.assert_close(counted, time_buckets_by_formula(gaps, scale, num_buckets), rtol=0, atol=0)
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):  # the formula, or the count
        torch.testing.assert_close(time_buckets(gaps.to(device), scale, num_buckets).cpu(), counted, rtol=0, atol=0)
