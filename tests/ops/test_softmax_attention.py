import math

import pytest
import torch

from genrec.ops.jagged import offsets_from_lengths
from genrec.ops.softmax_attention import jagged_softmax_attention


def naive(q, k, v):
    """One sequence: [L, H, D] -> [L, H, Dv], causal softmax written out."""
    scores = torch.einsum("ihd,jhd->hij", q, k) / math.sqrt(q.shape[-1])
    length = q.shape[0]
    scores = scores.masked_fill(torch.ones(length, length, dtype=torch.bool).triu(1), float("-inf"))
    return torch.einsum("hij,jhd->ihd", scores.softmax(-1), v)


@pytest.mark.parametrize("lengths", [[1], [5, 1, 7], [3, 16, 2, 9]])
def test_jagged_softmax_attention_is_causal_softmax_per_sequence(lengths):
    generator = torch.Generator().manual_seed(sum(lengths))
    total = sum(lengths)
    q, k, v = (torch.randn(total, 2, 8, generator=generator, dtype=torch.float64, requires_grad=True)
               for _ in range(3))
    offsets = offsets_from_lengths(torch.tensor(lengths))
    out = jagged_softmax_attention(q, k, v, offsets)
    expected = torch.cat([naive(q[a:b], k[a:b], v[a:b]) for a, b in zip(offsets[:-1], offsets[1:])])
    torch.testing.assert_close(out, expected)
    weights = torch.randn(out.shape, generator=generator, dtype=torch.float64)
    grads = torch.autograd.grad((out * weights).sum(), (q, k, v))
    expected_grads = torch.autograd.grad((expected * weights).sum(), (q, k, v))
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want)
