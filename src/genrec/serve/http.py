"""HTTP service over genrec.inference.engine (extra `serve`: FastAPI + uvicorn). A thin JSON layer: it
validates request shapes and calls the loaded runs, whose ValueErrors become 422s.

POST /v1/retrieve: history -> top-K items with scores. POST /v1/rank: history with its actions +
candidates -> per-task probabilities (M-FALCON). GET /healthz. OpenAPI schema at /docs.
Every bad request (malformed JSON, NaN or out-of-range numbers, unknown ids, empty or too long
history, bad k, actions outside {0, 1}, a body over the size limit) is a 4xx whose message names the
problem and the field; the server keeps serving. Each request's `query_time` (default: now) is the
time the model is asked about, as training asks each position about the next event's time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

try:
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, Field
except ImportError as error:  # pragma: no cover - exercised only without the serve extra
    raise ImportError("genrec serve needs FastAPI and uvicorn: pip install 'genrec[serve]'") from error

from genrec.inference.engine import NonFiniteOutput, RankingRun, RetrievalRun

Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]  # ids and times the model's int64 tensors can hold


class Change(BaseModel):
    timestamp: Int64 = Field(description="when the user feature took this value (Unix time)")
    value: str | Int64 = Field(description="its new value")


class RetrieveRequest(BaseModel):
    history: list[Int64] = Field(description="the user's item ids (source ids), oldest first")
    timestamps: list[Int64] | None = Field(default=None, description="one Unix time per history item")
    query_time: Int64 | None = Field(default=None, description="the request's Unix time (default: now)")
    k: Int64 = Field(default=10, description="how many items to return")
    exclude_history: bool = Field(default=True, description="never return items already in the history")
    user_features: dict[str, str | Int64] | None = Field(
        default=None, description="every user feature of a model trained with them (default: the user is unknown)")
    changes: list[Change] | None = Field(
        default=None, description="the changes of a model's sequentialized user feature, up to query_time")


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
    user_features: dict[str, str | Int64] | None = Field(
        default=None, description="every user feature of a model trained with them (default: the user is unknown)")
    changes: list[Change] | None = Field(
        default=None, description="the changes of a model's sequentialized user feature, up to query_time")


class RankResponse(BaseModel):
    tasks: list[str]
    scores: list[list[float]] = Field(description="per candidate, one probability per task")


class Limits(BaseModel):
    max_k: int = 1000
    max_candidates: int = 4096
    max_body_bytes: int = 1 << 20


def create_app(run_dir: Path, device: str = "cpu", limits: Limits | None = None,
               ranker_dir: Path | None = None, index: str = "exact", index_breadth: int = 128) -> FastAPI:
    retriever = RetrievalRun(run_dir, device, index, index_breadth)
    ranker = RankingRun(ranker_dir, device) if ranker_dir is not None else None
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
        return {"status": "ok", "items": retriever.num_items, "model": retriever.config.model.architecture,
                "index": "exact" if retriever.index is None else retriever.index.kind,
                "ranking_tasks": None if ranker is None else ranker.tasks}

    @app.exception_handler(ValueError)
    def bad_request(_: Request, error: ValueError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=422)

    @app.exception_handler(NonFiniteOutput)
    def broken_model(_: Request, error: NonFiniteOutput) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=500)

    @app.post("/v1/retrieve", response_model=ScoredItems)
    def retrieve(request: RetrieveRequest) -> ScoredItems:
        max_k = min(limits.max_k, retriever.num_items)
        if not 1 <= request.k <= max_k:
            raise ValueError(f"k must be in [1, {max_k}], got {request.k}")
        changes = None if request.changes is None else [[(c.timestamp, c.value) for c in request.changes]]
        items, scores = retriever.recommend([request.history], request.k,
                                            None if request.timestamps is None else [request.timestamps],
                                            request.exclude_history, [request.query_time], [request.user_features],
                                            changes)
        return ScoredItems(items=items[0], scores=scores[0])

    @app.post("/v1/rank", response_model=RankResponse)
    def rank(request: RankRequest) -> RankResponse:
        if ranker is None:
            raise HTTPException(404, "no ranker loaded: start genrec serve with --ranker DIR")
        scores = ranker.rank(request.history, request.actions, request.candidates, request.timestamps,
                             request.query_time, request.user_id, limits.max_candidates, request.user_features,
                             None if request.changes is None else [(c.timestamp, c.value) for c in request.changes])
        return RankResponse(tasks=ranker.tasks, scores=scores.tolist())

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
