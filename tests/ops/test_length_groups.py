"""The CPU's paths by groups of like lengths equal the same math padded to the batch's longest, values and every
gradient: the PyTorch backend's HSTU attention with each option the reference has, the softmax attention, and the
SASRec stack."""

import pytest
import torch

from genrec.config import ModelConfig
from genrec.model.sasrec import SASRecEncoder
from genrec.ops.attention import BucketedBias, hstu_attention_reference
from genrec.ops.attention.length_groups import hstu_attention_grouped, length_groups
from genrec.ops.jagged import offsets_from_lengths
from genrec.ops.softmax_attention import _padded_attention, jagged_softmax_attention

LENGTHS = [1, 37, 0, 5, 64, 2, 17, 1, 33, 9, 64, 3]  # lengths up to 1, 2, 4, ... 64; an empty one among them
OPTIONS = [{}, {"targets": True}, {"window": 4, "context": 2}, {"position": True, "time": True},
           {"position": True, "time": True, "targets": True, "query_times": True}, {"time": True}, {"dense": True}]


def test_groups_are_powers_of_two_of_the_lengths():
    groups = length_groups(torch.tensor(LENGTHS))
    assert [sorted(LENGTHS[i] for i in group.tolist()) for group in groups] == [
        [0, 1, 1], [2], [3], [5], [9], [17], [33, 37, 64, 64]]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(o) or "plain")
def test_grouped_equals_the_reference(options):
    generator = torch.Generator().manual_seed(0)
    lengths = torch.tensor(LENGTHS)
    offsets = offsets_from_lengths(lengths)
    tokens, heads, max_seq_len = int(offsets[-1]), 2, 64

    def leaf(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).requires_grad_()

    q, k, v = leaf(tokens, heads, 8), leaf(tokens, heads, 8), leaf(tokens, heads, 6)
    num_targets = torch.minimum(lengths, torch.tensor(2)) if options.get("targets") else None
    weights = [leaf(2 * max_seq_len - 1) if options.get("position") else None, leaf(33) if options.get("time") else None]
    stamps = torch.randint(0, 10**6, (tokens,), generator=generator)  # unsorted: the reference must not care
    rab = None
    if options.get("position") or options.get("time"):
        queries = stamps + 500 if options.get("query_times") else None
        rab = BucketedBias(weights[0], weights[1], stamps, time_bucket_scale=0.4, query_timestamps=queries)
    if options.get("dense"):
        rab = leaf(len(LENGTHS), 1, max_seq_len, max_seq_len)
        weights = [rab]
    arguments = dict(max_seq_len=max_seq_len, alpha=0.7, num_targets=num_targets, rab=rab,
                     max_attn_len=options.get("window", 0), contextual_seq_len=options.get("context", 0))
    grad = torch.randn(tokens, heads, 6, generator=generator, dtype=torch.float64)
    results = []
    for attention in (hstu_attention_reference, hstu_attention_grouped):
        out = attention(q, k, v, offsets, **arguments)
        leaves = [t for t in (q, k, v, *weights) if t is not None]
        results.append((out, torch.autograd.grad(out, leaves, grad)))
    (expected, expected_grads), (grouped, grouped_grads) = results
    torch.testing.assert_close(grouped, expected, rtol=1e-12, atol=1e-12)
    for got, want in zip(grouped_grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def _grouped_and_padded(grouped, padded, inputs: list[torch.Tensor], parameters: list[torch.Tensor]) -> None:
    """grouped() and padded() give the same output and the same gradients of inputs and parameters (fp64)."""
    results = []
    for run in (padded, grouped):
        out = run()
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
        results.append((out, torch.autograd.grad(out, [*inputs, *parameters], grad)))
    (expected, expected_grads), (got, got_grads) = results
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    for got_grad, want in zip(got_grads, expected_grads):
        torch.testing.assert_close(got_grad, want, rtol=1e-12, atol=1e-12)


ONE_GROUP = [5, 8, 7, 6]  # all round up to 8: one call, no regrouping


@pytest.mark.parametrize("lengths", [LENGTHS, ONE_GROUP], ids=["groups", "one-group"])
def test_grouped_softmax_attention_equals_the_padded_one(lengths):
    generator = torch.Generator().manual_seed(0)
    offsets = offsets_from_lengths(torch.tensor(lengths))
    q, k, v = (torch.randn(int(offsets[-1]), 2, 8, generator=generator, dtype=torch.float64).requires_grad_()
               for _ in range(3))
    _grouped_and_padded(lambda: jagged_softmax_attention(q, k, v, offsets), lambda: _padded_attention(q, k, v, offsets),
                        [q, k, v], [])


@pytest.mark.parametrize("lengths", [LENGTHS, ONE_GROUP], ids=["groups", "one-group"])
def test_grouped_sasrec_stack_equals_the_padded_one(lengths):
    torch.manual_seed(0)
    encoder = SASRecEncoder(ModelConfig(architecture="sasrec", embedding_dim=16, num_layers=2, num_heads=2),
                            max_seq_len=64).double().eval()
    offsets = offsets_from_lengths(torch.tensor(lengths))
    x = torch.randn(int(offsets[-1]), 16, dtype=torch.float64, requires_grad=True)
    _grouped_and_padded(lambda: encoder(x, offsets, None), lambda: encoder._padded_stack(x, offsets), [x],
                        list(encoder.parameters()))
