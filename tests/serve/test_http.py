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
