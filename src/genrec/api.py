"""The Python API: `genrec.train(config, out_dir)` runs training and evaluation as `genrec train` does, and
`genrec.load(run_dir)` opens a finished run for inference (genrec.inference.engine)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from genrec.config import Config
from genrec.inference.engine import RankingRun, RetrievalRun, load


@dataclass
class TrainedRun:
    directory: Path
    metrics: dict[str, float]  # the test metrics (metrics.json)
    summary: dict  # everything summary.json holds

    def load(self, device: str = "cpu") -> RetrievalRun | RankingRun:
        return load(self.directory, device)


def train(config: Config, out_dir: str | Path, resume: bool = False, overwrite: bool = False,
          progress: bool = False) -> TrainedRun:
    """Trains `config` into `out_dir` (retrieval or ranking, by config.train.task) and evaluates on test; an
    `out_dir` that holds a run is refused unless `resume` (continue it) or `overwrite` (replace it)."""
    out_dir = Path(out_dir)
    if config.train.task == "ranking":
        from genrec.train.ranking import RankingTrainer
        summary = RankingTrainer(config, out_dir, log=lambda _: None).fit(resume=resume, overwrite=overwrite)
    else:
        from genrec.train.run_log import print_line
        from genrec.train.trainer import Trainer
        summary = Trainer(config, out_dir, log=print_line if progress else (lambda _: None), progress=progress).fit(
            resume=resume, overwrite=overwrite)
    return TrainedRun(out_dir, summary["metrics"], summary)


__all__ = ["TrainedRun", "load", "train"]
