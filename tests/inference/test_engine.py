"""genrec.load / genrec.train: the Python API a notebook or a service of one's own uses."""

import subprocess
import sys

import numpy as np
import pytest
import torch

import genrec
from tests.tiny import tiny_config


@pytest.fixture(scope="module")
def retrieval(tmp_path_factory):
    out = tmp_path_factory.mktemp("retrieval")
    run = genrec.train(tiny_config(mode="paper", epochs=1), out)
    assert set(run.metrics) >= {"hr@10", "ndcg@10"} and run.directory == out
    return run.load()


@pytest.fixture(scope="module")
def ranking(tmp_path_factory):
    config = tiny_config(mode="paper", epochs=1)
    config.train.task = "ranking"
    return genrec.train(config, tmp_path_factory.mktemp("ranking")).load()


HISTORIES = [[5, 17, 42], [3, 9], [11]]
TIMES = [[100, 200, 300], [50, 60], [7]]


def test_recommend_is_batched_and_excludes_the_history(retrieval):
    items, scores = retrieval.recommend(HISTORIES, k=5, timestamps=TIMES, query_times=[400, 70, 8])
    for index, history in enumerate(HISTORIES):
        alone_items, alone_scores = retrieval.recommend([history], k=5, timestamps=[TIMES[index]],
                                                        query_times=[[400, 70, 8][index]])
        assert items[index] == alone_items[0]
        np.testing.assert_allclose(scores[index], alone_scores[0], rtol=1e-5, atol=1e-6)
        assert not set(items[index]) & set(history) and scores[index] == sorted(scores[index], reverse=True)
    seen = retrieval.recommend(HISTORIES[:1], k=retrieval.num_items, timestamps=TIMES[:1], exclude_seen=False)
    assert len(seen[0][0]) == retrieval.num_items


@pytest.mark.parametrize("index, breadth", [("hnsw", 256), ("ivf", 1000)])
def test_a_faiss_index_serves_the_exact_top_k(retrieval, index, breadth):
    """At full breadth (every IVF cell; an HNSW search wider than the 150 items) the index finds the exact top-k,
    with the history excluded."""
    pytest.importorskip("faiss")
    served = genrec.load(retrieval.name, index=index, index_breadth=breadth)
    assert served.index.kind == index
    exact_items, exact_scores = retrieval.recommend(HISTORIES, k=10, timestamps=TIMES, query_times=[400, 70, 8])
    items, scores = served.recommend(HISTORIES, k=10, timestamps=TIMES, query_times=[400, 70, 8])
    assert items == exact_items
    np.testing.assert_allclose(scores, exact_scores, rtol=1e-5, atol=1e-5)
    served.index.breadth = 1  # the search goes through the index: a narrow one misses some of the top-k
    assert served.recommend(HISTORIES, k=10, timestamps=TIMES, query_times=[400, 70, 8])[0] != exact_items
    with pytest.raises(ValueError, match="index must be one of exact, hnsw, ivf"):
        genrec.load(retrieval.name, index="lsh")


def test_embeddings_match_the_scores(retrieval):
    users = retrieval.embed_users(HISTORIES, TIMES, query_times=[400, 70, 8])
    ids, table = retrieval.item_embeddings()
    assert users.shape == (3, table.shape[1]) and ids.shape[0] == table.shape[0] == retrieval.num_items
    items, scores = retrieval.recommend(HISTORIES, k=3, timestamps=TIMES, query_times=[400, 70, 8])
    row = {int(source): r for r, source in enumerate(ids.tolist())}
    for user, (top, top_scores) in enumerate(zip(items, scores)):
        expected = (users[user] @ table[[row[i] for i in top]].T).tolist()
        np.testing.assert_allclose(expected, top_scores, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("call, message", [
    (lambda r: r.recommend([[5, 999_999]], timestamps=[[1, 2]]), "unknown history item id"),
    (lambda r: r.recommend([[]], timestamps=[[]]), "history is empty"),
    (lambda r: r.recommend([[5]], k=0, timestamps=[[1]]), "k must be in"),
    (lambda r: r.recommend([[5, 6]], timestamps=[[1]]), "one entry per history item"),
    (lambda r: r.recommend([[5, 6]]), "send timestamps"),
    (lambda r: r.recommend([[5, 6]], timestamps=[[1, 2]], query_times=[1]), "before the last history event"),
    (lambda r: r.recommend([], timestamps=[]), "no histories"),
])
def test_bad_requests_are_value_errors(retrieval, call, message):
    with pytest.raises(ValueError, match=message):
        call(retrieval)


def test_rank_per_task_probabilities_and_the_user_cache(ranking):
    actions = [[1, 0], [0, 0], [1, 1]]
    scores = ranking.rank([5, 17, 42], actions, [3, 9, 27], timestamps=[100, 200, 300], query_time=400, user="u")
    assert scores.shape == (3, len(ranking.tasks)) and ((scores > 0) & (scores < 1)).all()
    again = ranking.rank([5, 17, 42], actions, [9], timestamps=[100, 200, 300], query_time=400, user="u")
    np.testing.assert_allclose(again[0], scores[1], atol=1e-6)
    with pytest.raises(ValueError, match="0 or 1"):
        ranking.rank([5], [[2, 0]], [3], timestamps=[1])


def test_load_picks_the_task_and_refuses_the_wrong_one(retrieval, ranking):
    from genrec.inference.engine import RankingRun, RetrievalRun
    assert isinstance(retrieval, RetrievalRun) and isinstance(ranking, RankingRun)
    with pytest.raises(ValueError, match="a retrieval run, where a ranking run is needed"):
        RankingRun(retrieval.name)


def test_inference_and_serving_import_no_training_code():
    code = ("import sys, genrec.inference.engine, genrec.api\n"
            "import importlib.util\n"
            "if importlib.util.find_spec('fastapi'): import genrec.serve.http\n"
            "print(sorted(m for m in sys.modules if m.startswith('genrec.train')))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
    assert torch.__version__  # the subprocess imported the same torch
