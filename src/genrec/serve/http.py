"""HTTP service over genrec.inference (extra `serve`: FastAPI + uvicorn). A thin JSON layer: it
validates requests, maps source item ids to the model's dense ids and back, and calls inference.

POST /v1/retrieve: history -> top-K items with scores. POST /v1/rank: history with its actions +
candidates -> per-task probabilities (M-FALCON). GET /healthz. OpenAPI schema at /docs.
Every bad request (malformed JSON, NaN or out-of-range numbers, unknown ids, empty or too long
history, bad k, actions outside {0, 1}, a body over the size limit) is a 4xx whose message names the
problem and the field; the server keeps serving. Each request's `query_time` (default: now) is the
time the model is asked about, as training asks each position about the next event's time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import torch

try:
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, Field
except ImportError as error:  # pragma: no cover - exercised only without the serve extra
    raise ImportError("genrec serve needs FastAPI and uvicorn: pip install 'genrec[serve]'") from error

from genrec.config import load_run_config
from genrec.data.batch import SequenceBatch
from genrec.inference.mfalcon import MFalcon
from genrec.inference.retrieval import top_k_exact
from genrec.model import SequentialRetriever
from genrec.model.ranking import GenerativeRanker
from genrec.ops.jagged import offsets_from_lengths
from genrec.train.checkpoint import load_checkpoint
from genrec.train.ranking import ranker_weights


Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]  # ids and times the model's int64 tensors can hold


class RetrieveRequest(BaseModel):
    history: list[Int64] = Field(description="the user's item ids (source ids), oldest first")
    timestamps: list[Int64] | None = Field(default=None, description="one Unix time per history item")
    query_time: Int64 | None = Field(default=None, description="the request's Unix time (default: now)")
    k: Int64 = Field(default=10, description="how many items to return")
    exclude_history: bool = Field(default=True, description="never return items already in the history")


class ScoredItems(BaseModel):
    items: list[int]
    scores: list[float]


class RankRequest(BaseModel):
    history: list[Int64] = Field(description="the user's item ids (source ids), oldest first")
    actions: list[list[Annotated[int, Field(ge=0, le=1)]]] = Field(
        description="per history item, one 0/1 per task (see /healthz)")
    timestamps: list[Int64] | None = Field(default=None, description="one Unix time per history item")
    candidates: list[Int64] = Field(description="item ids to score")
    query_time: Int64 | None = Field(default=None, description="the request's Unix time, when the candidates are "
                                                               "shown (default: now)")
    user_id: str | None = Field(default=None, max_length=256, description="keys the user's cached history: its "
                                                                          "keys/values are reused while it is unchanged")


class RankResponse(BaseModel):
    tasks: list[str]
    scores: list[list[float]] = Field(description="per candidate, one probability per task")


class Limits(BaseModel):
    max_k: int = 1000
    max_candidates: int = 4096
    max_body_bytes: int = 1 << 20


class LoadedRun:
    """A trained run loaded for serving: config, checkpoint, source <-> dense id maps."""

    task = "retrieval"

    def __init__(self, run_dir: Path, device: str) -> None:
        self.config = load_run_config(run_dir)
        if self.config.train.task != self.task:
            raise ValueError(f"{run_dir}: a {self.config.train.task} run, where a {self.task} run is needed")
        if self.config.data.user_features is not None:
            raise ValueError(f"{run_dir}: serving a model with user-context prefix tokens is not supported yet")
        best = run_dir / "best.safetensors"
        self.checkpoint = load_checkpoint(best if best.is_file() else run_dir / "last.safetensors")
        self.name = str(run_dir)
        broken = [k for k, v in self.checkpoint.inference_weights().items()
                  if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if broken:
            raise ValueError(f"{run_dir}: non-finite weights ({', '.join(broken[:3])}); refusing to serve them")
        if self.checkpoint.item_vocab is None:
            raise ValueError(f"{run_dir}: checkpoint has no item vocabulary (retrain with this genrec)")
        self.source_ids = self.checkpoint.item_vocab.to(torch.int64)  # dense id k -> source_ids[k - 1]
        self.dense_of = {int(source): dense + 1 for dense, source in enumerate(self.source_ids.tolist())}
        self.uses_time = any(k.endswith("time_weights") for k in self.checkpoint.model)
        self.device = torch.device(device)

    def dense_ids(self, ids: list[int], what: str) -> torch.Tensor:
        unknown = [item for item in ids if item not in self.dense_of]
        if unknown:
            raise HTTPException(422, f"unknown {what} item id(s): {unknown[:10]}")
        return torch.tensor([self.dense_of[item] for item in ids], dtype=torch.int64, device=self.device)

    def query_time(self, requested: int | None, timestamps: list[int] | None) -> int | None:
        """The request's time (now by default), which may not precede its history; None without a time bias."""
        if not self.uses_time:
            return None
        now = int(time.time()) if requested is None else requested
        if timestamps and now < timestamps[-1]:
            raise HTTPException(422, f"query_time {now} is before the last history event ({timestamps[-1]})")
        return now

    def finite(self, scores: torch.Tensor) -> torch.Tensor:
        if not bool(torch.isfinite(scores).all()):
            raise HTTPException(500, f"{self.name}: the model produced non-finite scores; refusing to serve them")
        return scores

    def history(self, history: list[int], timestamps: list[int] | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Validated dense history ids and timestamps (None when the model has no time bias)."""
        if not history:
            raise HTTPException(422, "history is empty: at least one item is needed")
        limit = self.config.data.max_seq_len - (1 if self.config.train.task == "ranking" else 0)
        if len(history) > limit:
            raise HTTPException(422, f"history has {len(history)} items; at most {limit} are accepted")
        if timestamps is not None and len(timestamps) != len(history):
            raise HTTPException(422, "timestamps must have one entry per history item")
        if self.uses_time and timestamps is None:
            raise HTTPException(422, "this model uses time: send timestamps with the history")
        stamps = torch.tensor(timestamps, dtype=torch.int64, device=self.device) if self.uses_time else None
        return self.dense_ids(history, "history"), stamps


class Retriever(LoadedRun):
    def __init__(self, run_dir: Path, device: str = "cpu") -> None:
        super().__init__(run_dir, device)
        self.model = SequentialRetriever(self.config.model, len(self.source_ids), self.config.data.max_seq_len,
                                         use_time=self.uses_time)
        self.model.load_state_dict(self.checkpoint.inference_weights())
        self.model.to(device).eval()
        with torch.no_grad():
            self.items = self.model.item_embeddings()  # the prepared (normalised) table, once, not per request

    @torch.no_grad()
    def retrieve(self, request: RetrieveRequest, limits: Limits) -> ScoredItems:
        if not 1 <= request.k <= min(limits.max_k, len(self.source_ids)):
            raise HTTPException(422, f"k must be in [1, {min(limits.max_k, len(self.source_ids))}], got {request.k}")
        ids, stamps = self.history(request.history, request.timestamps)
        query_time = self.query_time(request.query_time, request.timestamps)
        batch = SequenceBatch(ids, offsets_from_lengths(torch.tensor([len(ids)], device=self.device)),
                              self.config.data.max_seq_len, timestamps=stamps,
                              query_times=None if query_time is None else torch.tensor([query_time],
                                                                                       device=self.device))
        user = self.finite(self.model(batch)[-1:])
        exclude = offsets = None
        if request.exclude_history:
            exclude, offsets = ids, torch.tensor([0, len(ids)], device=self.device)
        scores, dense = top_k_exact(user, self.items, request.k, exclude, offsets,
                                    similarity=self.model.similarity.all)
        keep = scores[0] > float("-inf")  # excluded-out slots when k passes the unseen items
        return ScoredItems(items=self.source_ids[dense[0][keep].cpu() - 1].tolist(),
                           scores=scores[0][keep].cpu().tolist())


class Ranker(LoadedRun):
    task = "ranking"

    def __init__(self, run_dir: Path, device: str = "cpu") -> None:
        super().__init__(run_dir, device)
        self.tasks = list(self.checkpoint.state["tasks"])
        model = GenerativeRanker(self.config.model, len(self.source_ids), len(self.tasks),
                                 self.config.data.max_seq_len, use_time=self.uses_time)
        model.load_state_dict(ranker_weights(self.checkpoint.model))
        self.scorer = MFalcon(model.to(device).eval())

    def rank(self, request: RankRequest, limits: Limits) -> RankResponse:
        ids, stamps = self.history(request.history, request.timestamps)
        if not request.candidates:
            raise HTTPException(422, "no candidates to rank")
        if len(request.candidates) > limits.max_candidates:
            raise HTTPException(422, f"{len(request.candidates)} candidates; at most {limits.max_candidates} per request")
        if len(request.actions) != len(request.history) or any(len(a) != len(self.tasks) for a in request.actions):
            raise HTTPException(422, f"actions must hold, per history item, {len(self.tasks)} values "
                                     f"(tasks: {', '.join(self.tasks)})")
        labels = torch.tensor(request.actions, dtype=torch.float32, device=self.device)
        candidates = self.dense_ids(request.candidates, "candidate")
        query_time = self.query_time(request.query_time, request.timestamps)
        # the cache (keyed by user, checked against the history and query time) is M-FALCON's, behind its lock
        scores = self.scorer.encode_candidates(ids, stamps, candidates, user=request.user_id, history_labels=labels,
                                               query_time=query_time)
        return RankResponse(tasks=self.tasks, scores=self.finite(scores.float()).cpu().tolist())


def create_app(run_dir: Path, device: str = "cpu", limits: Limits | None = None,
               ranker_dir: Path | None = None) -> FastAPI:
    retriever = Retriever(run_dir, device)
    ranker = Ranker(ranker_dir, device) if ranker_dir is not None else None
    limits = limits or Limits()
    app = FastAPI(title="genrec", description="Generative recommender serving (HSTU).")
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    def invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        # FastAPI's own answer echoes the input, which fails to encode when it holds NaN or inf (a 500)
        problems = "; ".join(f"{'.'.join(str(part) for part in e['loc'] if part != 'body') or 'body'}: {e['msg']}"
                             for e in error.errors())
        return JSONResponse({"detail": problems}, status_code=422)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", "items": len(retriever.source_ids), "model": retriever.config.model.architecture,
                "ranking_tasks": None if ranker is None else ranker.tasks}

    @app.post("/v1/retrieve", response_model=ScoredItems)
    def retrieve(request: RetrieveRequest) -> ScoredItems:
        return retriever.retrieve(request, limits)

    @app.post("/v1/rank", response_model=RankResponse)
    def rank(request: RankRequest) -> RankResponse:
        if ranker is None:
            raise HTTPException(404, "no ranker loaded: start genrec serve with --ranker DIR")
        return ranker.rank(request, limits)

    return app


class BodyLimit:
    """ASGI middleware: a request body over max_bytes gets 413 before it is parsed (a JSON body costs ~12x
    its size in memory once parsed)."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await _too_large(send, self.max_bytes)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await _too_large(send, self.max_bytes)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        sent = False

        async def replay():
            nonlocal sent
            if sent:  # the body was read: what comes next is the client's disconnect
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await self.app(scope, replay, send)


async def _too_large(send, max_bytes: int) -> None:
    payload = json.dumps({"detail": f"request body over {max_bytes} bytes (genrec serve --max-body-bytes)"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})
