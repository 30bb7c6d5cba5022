"""M-FALCON through captured CUDA graphs equals the eager candidate pass: users whose histories fall in one
capacity and in another, a user switch and back (the graph's buffers reloaded), candidate counts that are not a
multiple of the micro-batch, with and without times, with user-feature change tokens, fp32 and bf16 autocast,
retriever and ranker. GPU only
(benchmarks/gpu_parity.sh candidates runs it); on a CPU the graphs stay off."""

import pytest
import torch

from genrec.config import preset
from genrec.inference.mfalcon import MFalcon
from genrec.model import SequentialRetriever
from genrec.model.ranking import GenerativeRanker

NUM_ITEMS, MAX_LEN = 500, 300


def make_model(kind: str, use_time: bool, device: str, series: bool = False):
    config = preset("hstu")
    config.model.embedding_dim, config.model.num_layers, config.model.num_heads = 64, 3, 2
    config.model.qk_dim = config.model.v_dim = 32
    torch.manual_seed(0)
    user_tokens = {"series_cardinality": 3 if series else 0, "max_series_len": 4}
    if kind == "ranker":
        return GenerativeRanker(config.model, NUM_ITEMS, num_tasks=2, max_seq_len=MAX_LEN, use_time=use_time,
                                **user_tokens).to(device)
    return SequentialRetriever(config.model, NUM_ITEMS, MAX_LEN, use_time=use_time, **user_tokens).to(device)


def request(length: int, count: int, seed: int, device: str, ranker: bool):
    gen = torch.Generator().manual_seed(seed)
    history = torch.randint(1, NUM_ITEMS + 1, (length,), generator=gen)
    stamps = torch.cumsum(torch.randint(1, 10_000, (length,), generator=gen), 0)
    candidates = torch.randint(1, NUM_ITEMS + 1, (count,), generator=gen)
    labels = torch.randint(0, 2, (length, 2), generator=gen).float() if ranker else None
    to = lambda t: None if t is None else t.to(device)  # noqa: E731
    return to(history), to(stamps), to(candidates), to(labels)


def test_graphs_stay_off_on_a_cpu():
    scorer = MFalcon(make_model("retriever", True, "cpu"), micro_batch_size=4)
    assert scorer._graphs is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("kind", ["retriever", "ranker"])
@pytest.mark.parametrize("use_time,series", [(True, False), (False, False), (True, True)],
                         ids=["time", "no-time", "time-and-changes"])
@pytest.mark.parametrize("dtype", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_graphs_equal_the_eager_pass(kind, use_time, series, dtype):
    model = make_model(kind, use_time, "cuda", series)
    graphed, eager = MFalcon(model, micro_batch_size=64), MFalcon(model, micro_batch_size=64, cuda_graphs=False)
    assert graphed._graphs is not None
    # users a and b share a capacity (128 history tokens for the retriever), c needs another; a comes back
    cases = [("a", 70, 150), ("b", 100, 64), ("c", 140, 1), ("a", 70, 150), ("b", 100, 5)]
    with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
        for seed, (user, length, count) in enumerate(cases):
            history, stamps, candidates, labels = request(length, count, ord(user), "cuda", kind == "ranker")
            if not use_time:
                stamps = None
            query_time = None if stamps is None else int(stamps[-1]) + 3600 * seed
            changes = None  # before the first event, inside the history, after it
            if series:
                changes = (torch.tensor([1, 2, 3], device="cuda"),
                           torch.stack([stamps[0] - 5, stamps[length // 2], stamps[-1] + 1]))
            got = graphed.encode_candidates(history, stamps, candidates, user=user, history_labels=labels,
                                            query_time=query_time, changes=changes)
            want = eager.encode_candidates(history, stamps, candidates, user=user, history_labels=labels,
                                           query_time=query_time, changes=changes)
            tolerance = 1e-5 if dtype is None else 2e-2
            torch.testing.assert_close(got, want, atol=tolerance, rtol=tolerance)
    assert len(graphed._graphs._graphs) >= 3
