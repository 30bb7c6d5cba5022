"""HTTP service over genrec.inference (extra `serve`: FastAPI + uvicorn). A thin JSON layer: it
validates requests, maps source item ids to the model's dense ids and back, and calls inference.

POST /v1/retrieve: history -> top-K items with scores. POST /v1/rank: history with its actions +
candidates -> per-task probabilities (M-FALCON). GET /healthz. OpenAPI schema at /docs.
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
from genrec.inference.mfalcon import MFalcon
from genrec.inference.retrieval import top_k_exact
from genrec.model import SequentialRetriever
from genrec.model.ranking import GenerativeRanker
from genrec.ops.jagged import offsets_from_lengths
from genrec.train.checkpoint import load_checkpoint
from genrec.train.ranking import ranker_weights


class RetrieveRequest(BaseModel):
    history: list[int] = Field(description="the user's item ids (source ids), oldest first")
    timestamps: list[int] | None = Field(default=None, description="one Unix time per history item")
    k: int = Field(default=10, description="how many items to return")
    exclude_history: bool = Field(default=True, description="never return items already in the history")


class ScoredItems(BaseModel):
    items: list[int]
    scores: list[float]


class RankRequest(BaseModel):
    history: list[int] = Field(description="the user's item ids (source ids), oldest first")
    actions: list[list[int]] = Field(description="per history item, one 0/1 per task (see /healthz)")
    timestamps: list[int] | None = Field(default=None, description="one Unix time per history item")
    candidates: list[int] = Field(description="item ids to score")
    candidate_time: int | None = Field(default=None, description="request time (default: last history time)")


class RankResponse(BaseModel):
    tasks: list[str]
    scores: list[list[float]] = Field(description="per candidate, one probability per task")


class Limits(BaseModel):
    max_k: int = 1000
    max_candidates: int = 4096


class LoadedRun:
    """A trained run loaded for serving: config, checkpoint, source <-> dense id maps."""

    task = "retrieval"

    def __init__(self, run_dir: Path, device: str) -> None:
        config_path = run_dir / "config.json"
        if not config_path.is_file():
            raise ValueError(f"{run_dir}: no config.json (not a genrec run directory)")
        self.config = config_from_dict(json.loads(config_path.read_text()))
        if self.config.train.task != self.task:
            raise ValueError(f"{run_dir}: a {self.config.train.task} run, where a {self.task} run is needed")
        if self.config.data.user_features is not None:
            raise ValueError(f"{run_dir}: serving a model with user-context prefix tokens is not supported yet")
        best = run_dir / "best.safetensors"
        self.checkpoint = load_checkpoint(best if best.is_file() else run_dir / "last.safetensors")
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

    @torch.no_grad()
    def retrieve(self, request: RetrieveRequest, limits: Limits) -> ScoredItems:
        if not 1 <= request.k <= min(limits.max_k, len(self.source_ids)):
            raise HTTPException(422, f"k must be in [1, {min(limits.max_k, len(self.source_ids))}], got {request.k}")
        ids, stamps = self.history(request.history, request.timestamps)
        batch = SequenceBatch(ids, offsets_from_lengths(torch.tensor([len(ids)], device=self.device)),
                              self.config.data.max_seq_len, timestamps=stamps)
        user = self.model(batch)[-1:]
        exclude = offsets = None
        if request.exclude_history:
            exclude, offsets = ids, torch.tensor([0, len(ids)], device=self.device)
        scores, dense = top_k_exact(user, self.model.item_embeddings(), request.k, exclude, offsets,
                                    similarity=self.model.similarity.all)
        keep = torch.isfinite(scores[0])
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
        labels = torch.tensor(request.actions, dtype=torch.float32, device=self.device).clamp(0, 1)
        candidates = self.dense_ids(request.candidates, "candidate")
        candidate_stamps = None
        if stamps is not None:
            now = request.candidate_time if request.candidate_time is not None else int(stamps[-1])
            candidate_stamps = torch.full_like(candidates, now)
        scores = self.scorer.encode_candidates(ids, stamps, candidates, candidate_stamps, history_labels=labels)
        return RankResponse(tasks=self.tasks, scores=scores.float().cpu().tolist())


def create_app(run_dir: Path, device: str = "cpu", limits: Limits | None = None,
               ranker_dir: Path | None = None) -> FastAPI:
    retriever = Retriever(run_dir, device)
    ranker = Ranker(ranker_dir, device) if ranker_dir is not None else None
    limits = limits or Limits()
    app = FastAPI(title="genrec", description="Generative recommender serving (HSTU).")

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
