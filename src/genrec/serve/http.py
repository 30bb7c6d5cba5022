"""HTTP service over genrec.inference (extra `serve`: FastAPI + uvicorn). A thin JSON layer: it
validates requests, maps source item ids to the model's dense ids and back, and calls inference.

POST /v1/retrieve: history -> top-K items with scores. GET /healthz. OpenAPI schema at /docs.
Every bad request (malformed JSON, unknown ids, empty or too long history, bad k) is a 4xx whose
message names the problem.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

try:
    from fastapi import FastAPI, HTTPException
    from pydantic import BaseModel, Field
except ImportError as error:  # pragma: no cover - exercised only without the serve extra
    raise ImportError("genrec serve needs FastAPI and uvicorn: pip install 'genrec[serve]'") from error

from genrec.config import config_from_dict
from genrec.data.batch import SequenceBatch
from genrec.inference.retrieval import top_k_exact
from genrec.model import SequentialRetriever
from genrec.ops.jagged import offsets_from_lengths
from genrec.train.checkpoint import load_checkpoint


class RetrieveRequest(BaseModel):
    history: list[int] = Field(description="the user's item ids (source ids), oldest first")
    timestamps: list[int] | None = Field(default=None, description="one Unix time per history item")
    k: int = Field(default=10, description="how many items to return")
    exclude_history: bool = Field(default=True, description="never return items already in the history")


class ScoredItems(BaseModel):
    items: list[int]
    scores: list[float]


class Limits(BaseModel):
    max_k: int = 1000


class Retriever:
    """A trained run loaded for serving: model, id maps, limits."""

    def __init__(self, run_dir: Path, device: str = "cpu") -> None:
        config_path = run_dir / "config.json"
        if not config_path.is_file():
            raise ValueError(f"{run_dir}: no config.json (not a genrec run directory)")
        self.config = config_from_dict(json.loads(config_path.read_text()))
        best = run_dir / "best.safetensors"
        checkpoint = load_checkpoint(best if best.is_file() else run_dir / "last.safetensors")
        if checkpoint.item_vocab is None:
            raise ValueError(f"{run_dir}: checkpoint has no item vocabulary (retrain with this genrec)")
        self.source_ids = checkpoint.item_vocab.to(torch.int64)  # dense id k -> source_ids[k - 1]
        self.dense_of = {int(source): dense + 1 for dense, source in enumerate(self.source_ids.tolist())}
        has_time = any(k.endswith("time_weights") for k in checkpoint.model)
        self.model = SequentialRetriever(self.config.model, len(self.source_ids), self.config.data.max_seq_len,
                                         use_time=has_time)
        self.model.load_state_dict(checkpoint.model)
        self.model.to(device).eval()
        self.uses_time = has_time
        self.device = torch.device(device)

    def dense_ids(self, history: list[int]) -> torch.Tensor:
        unknown = [item for item in history if item not in self.dense_of]
        if unknown:
            raise HTTPException(422, f"unknown item id(s): {unknown[:10]}")
        return torch.tensor([self.dense_of[item] for item in history], dtype=torch.int64, device=self.device)

    @torch.no_grad()
    def retrieve(self, request: RetrieveRequest, limits: Limits) -> ScoredItems:
        if not request.history:
            raise HTTPException(422, "history is empty: at least one item is needed")
        if len(request.history) > self.config.data.max_seq_len:
            raise HTTPException(422, f"history has {len(request.history)} items; at most "
                                     f"{self.config.data.max_seq_len} are accepted")
        if not 1 <= request.k <= min(limits.max_k, len(self.source_ids)):
            raise HTTPException(422, f"k must be in [1, {min(limits.max_k, len(self.source_ids))}], got {request.k}")
        if request.timestamps is not None and len(request.timestamps) != len(request.history):
            raise HTTPException(422, "timestamps must have one entry per history item")
        if self.uses_time and request.timestamps is None:
            raise HTTPException(422, "this model uses time: send timestamps with the history")
        ids = self.dense_ids(request.history)
        stamps = None
        if self.uses_time:
            stamps = torch.tensor(request.timestamps, dtype=torch.int64, device=self.device)
        batch = SequenceBatch(ids, offsets_from_lengths(torch.tensor([len(ids)], device=self.device)),
                              self.config.data.max_seq_len, timestamps=stamps)
        user = self.model(batch)[-1:]
        exclude = offsets = None
        if request.exclude_history:
            exclude, offsets = ids, torch.tensor([0, len(ids)], device=self.device)
        scores, dense = top_k_exact(user, self.model.item_embeddings(), request.k, exclude, offsets)
        keep = torch.isfinite(scores[0])
        return ScoredItems(items=self.source_ids[dense[0][keep].cpu() - 1].tolist(),
                           scores=scores[0][keep].cpu().tolist())


def create_app(run_dir: Path, device: str = "cpu", limits: Limits | None = None) -> FastAPI:
    retriever = Retriever(run_dir, device)
    limits = limits or Limits()
    app = FastAPI(title="genrec", description="Generative recommender serving (HSTU).")

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", "items": len(retriever.source_ids), "model": retriever.config.model.architecture}

    @app.post("/v1/retrieve", response_model=ScoredItems)
    def retrieve(request: RetrieveRequest) -> ScoredItems:
        return retriever.retrieve(request, limits)

    return app
