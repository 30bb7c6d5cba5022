import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from genrec.config import Config, load_config_file  # noqa: E402
from genrec.serve.http import Limits, create_app  # noqa: E402
from genrec.train.ranking import RankingTrainer  # noqa: E402
from genrec.train.trainer import Trainer  # noqa: E402

TINY = Path(__file__).resolve().parents[1] / "tiny.toml"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    config = load_config_file(TINY, Config())
    config.train.epochs, config.train.device = 1, "cpu"
    Trainer(config, out, progress=False, log=lambda _: None).fit()
    return out


@pytest.fixture(scope="module")
def ranker_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranker")
    config = load_config_file(TINY, Config())
    config.train.epochs, config.train.device, config.train.task = 1, "cpu", "ranking"
    RankingTrainer(config, out, log=lambda _: None).fit()
    return out


@pytest.fixture(scope="module")
def client(run_dir, ranker_dir):
    return TestClient(create_app(run_dir, limits=Limits(max_k=50, max_candidates=8), ranker_dir=ranker_dir))


def history():
    return {"history": [5, 17, 42], "timestamps": [1000, 2000, 3000], "k": 5}


def test_health_and_schema(client):
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["items"] > 0
    assert "/v1/retrieve" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200


def test_retrieve_returns_ranked_unseen_items(client):
    body = client.post("/v1/retrieve", json=history()).json()
    assert len(body["items"]) == 5 and body["scores"] == sorted(body["scores"], reverse=True)
    assert not set(body["items"]) & {5, 17, 42}
    with_seen = client.post("/v1/retrieve", json={**history(), "exclude_history": False, "k": 50}).json()
    assert len(with_seen["items"]) == 50


def test_retrieve_through_a_faiss_index(run_dir):
    pytest.importorskip("faiss")
    indexed = TestClient(create_app(run_dir, index="hnsw", index_breadth=256))
    assert indexed.get("/healthz").json()["index"] == "hnsw"
    exact = TestClient(create_app(run_dir)).post("/v1/retrieve", json=history()).json()
    assert indexed.post("/v1/retrieve", json=history()).json()["items"] == exact["items"]


@pytest.mark.parametrize("payload, message", [
    ({"history": [], "timestamps": [], "k": 5}, "history is empty"),
    ({"history": [5, 999_999], "timestamps": [1, 2], "k": 5}, "unknown history item id(s): [999999]"),
    ({"history": [5] * 25, "timestamps": list(range(25)), "k": 5}, "at most 24"),
    ({"history": [5], "timestamps": [1], "k": 0}, "k must be in [1, 50]"),
    ({"history": [5], "timestamps": [1], "k": 51}, "k must be in [1, 50]"),
    ({"history": [5, 6], "timestamps": [1], "k": 5}, "one entry per history item"),
    ({"history": [5, 6], "k": 5}, "send timestamps"),
])
def test_bad_requests_are_4xx_with_reason(client, payload, message):
    response = client.post("/v1/retrieve", json=payload)
    assert response.status_code == 422 and message in response.json()["detail"]


def rank_request(**changes):
    return {"history": [5, 17, 42], "actions": [[1, 0], [0, 0], [1, 1]], "timestamps": [1000, 2000, 3000],
            "candidates": [3, 9, 27], **changes}


def test_rank_returns_a_probability_per_task_and_candidate(client):
    assert client.get("/healthz").json()["ranking_tasks"] == ["liked", "loved"]
    body = client.post("/v1/rank", json=rank_request()).json()
    assert body["tasks"] == ["liked", "loved"] and len(body["scores"]) == 3
    assert all(0.0 < p < 1.0 for scores in body["scores"] for p in scores)
    alone = client.post("/v1/rank", json=rank_request(candidates=[9])).json()
    assert alone["scores"][0] == pytest.approx(body["scores"][1], abs=1e-5)  # candidates do not interact


@pytest.mark.parametrize("changes, message", [
    ({"candidates": list(range(1, 10))}, "at most 8 per request"),
    ({"candidates": []}, "no candidates"),
    ({"candidates": [999_999]}, "unknown candidate item id(s)"),
    ({"actions": [[1, 0], [0, 1]]}, "actions must hold"),
    ({"actions": [[1], [0], [1]]}, "actions must hold"),
    ({"history": [], "actions": [], "timestamps": []}, "history is empty"),
])
def test_bad_rank_requests(client, changes, message):
    response = client.post("/v1/rank", json=rank_request(**changes))
    assert response.status_code == 422 and message in response.json()["detail"]


def test_runs_of_the_wrong_task_are_refused(run_dir, ranker_dir):
    with pytest.raises(ValueError, match="a ranking run, where a retrieval run is needed"):
        create_app(ranker_dir)
    with pytest.raises(ValueError, match="a retrieval run, where a ranking run is needed"):
        create_app(run_dir, ranker_dir=run_dir)


def test_rank_without_a_ranker_is_404(run_dir):
    response = TestClient(create_app(run_dir)).post("/v1/rank", json=rank_request())
    assert response.status_code == 404 and "--ranker" in response.json()["detail"]


def test_malformed_json_is_4xx(client):
    response = client.post("/v1/retrieve", content=b"{not json", headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500


@pytest.mark.parametrize("path, body, field", [
    ("/v1/retrieve", b'{"history": [5, 17], "timestamps": [NaN, 2], "k": 5}', "timestamps.0"),
    ("/v1/retrieve", b'{"history": [5, 17], "timestamps": [Infinity, 2], "k": 5}', "timestamps.0"),
    ("/v1/retrieve", b'{"history": [5, 17], "timestamps": [1e400, 2], "k": 5}', "timestamps.0"),
    ("/v1/retrieve", b'{"history": [5, 17], "timestamps": [1, 2], "k": -Infinity}', "k"),
    ("/v1/retrieve", b'{"history": [5, 9223372036854775808], "timestamps": [1, 2]}', "history.1"),
    ("/v1/retrieve", b'{"history": [5, 17], "timestamps": [1, 2], "query_time": 99999999999999999999}', "query_time"),
    ("/v1/retrieve", b'{"history": [5, 17], "timestamps": [1, 2], "k": 18446744073709551616}', "k"),
    ("/v1/rank", json.dumps(rank_request(candidates=[3, 2 ** 63])).encode(), "candidates.1"),
    ("/v1/rank", json.dumps(rank_request(actions=[[1, 0], [0, 2], [1, 1]])).encode(), "actions.1.1"),
    ("/v1/rank", json.dumps(rank_request(actions=[[1, 0], [0, -1], [1, 1]])).encode(), "actions.1.1"),
    ("/v1/rank", b'{"history": [5], "actions": [[NaN, 0]], "timestamps": [1], "candidates": [3]}', "actions.0.0"),
])
def test_non_finite_and_out_of_range_numbers_are_422_naming_the_field(client, path, body, field):
    response = client.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422 and field in response.json()["detail"], response.text
    assert client.post("/v1/retrieve", json=history()).status_code == 200  # still serving


def test_a_body_over_the_limit_is_413_and_the_server_keeps_serving(run_dir):
    client = TestClient(create_app(run_dir, limits=Limits(max_body_bytes=2000)))
    big = {**history(), "history": [5] * 1000, "timestamps": list(range(1000))}
    assert client.post("/v1/retrieve", json=big).status_code == 413
    chunked = client.post("/v1/retrieve", content=iter([json.dumps(big).encode()[:1500]] * 2),
                          headers={"content-type": "application/json"})  # no content-length: counted as it comes
    assert chunked.status_code == 413
    assert client.post("/v1/retrieve", json=history()).status_code == 200


def test_the_query_time_defaults_to_now_and_may_not_precede_the_history(client):
    now = client.post("/v1/retrieve", json=history()).json()
    explicit = client.post("/v1/retrieve", json={**history(), "query_time": 3000}).json()
    later = client.post("/v1/retrieve", json={**history(), "query_time": 3000 + 10 ** 8}).json()
    assert explicit["scores"] != later["scores"]  # the model uses the gap to the request
    assert now["items"] and explicit["items"]
    early = client.post("/v1/retrieve", json={**history(), "query_time": 2999})
    assert early.status_code == 422 and "before the last history event" in early.json()["detail"]
    ranked = client.post("/v1/rank", json=rank_request(query_time=2999))
    assert ranked.status_code == 422


def test_rank_reuses_a_users_cached_history(client, ranker_dir):
    first = client.post("/v1/rank", json=rank_request(user_id="u1", query_time=5000)).json()
    again = client.post("/v1/rank", json=rank_request(user_id="u1", query_time=5000, candidates=[9])).json()
    assert again["scores"][0] == pytest.approx(first["scores"][1], abs=1e-6)
    moved = client.post("/v1/rank", json=rank_request(user_id="u1", query_time=5000 + 10 ** 8)).json()
    assert moved["scores"] != first["scores"]  # a new query time rebuilds the cache


def test_non_finite_weights_are_refused_at_start(run_dir, tmp_path):
    import shutil

    from genrec.checkpoint import load_checkpoint, save_checkpoint
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    checkpoint = load_checkpoint(broken / "last.safetensors")
    weights = {**checkpoint.model, "embedding.item.weight": checkpoint.model["embedding.item.weight"].clone()}
    weights["embedding.item.weight"][4, 0] = float("nan")
    save_checkpoint(broken / "last.safetensors", weights, None, checkpoint.rng, checkpoint.config, checkpoint.state,
                    checkpoint.item_vocab)
    (broken / "best.safetensors").unlink(missing_ok=True)
    with pytest.raises(ValueError, match="non-finite weights"):
        create_app(broken)


def test_real_server_over_loopback(run_dir):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "genrec", "serve", "--checkpoint", str(run_dir),
                               "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                    assert json.loads(response.read())["status"] == "ok"
                break
            except (urllib.error.URLError, ConnectionError):
                assert server.poll() is None, server.stdout.read().decode()
                assert time.time() < deadline, "server did not start in 60 s"
                time.sleep(0.3)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/retrieve", data=json.dumps(history()).encode(),
                                         headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert len(json.loads(response.read())["items"]) == 5
    finally:
        server.terminate()
        server.wait(timeout=10)
