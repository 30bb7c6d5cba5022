"""Checkpoints: one safetensors file holding model, optimiser and RNG state, written atomically
(temp file + fsync + os.replace), so a crash never leaves a half-written checkpoint behind.

Keys: `model.<name>` (the training weights), `ema.<name>` (their moving average, when the run keeps
one), `optim.<param index>.<state name>`, `rng.<name>`, `vocab.items` (source id of dense item id k at
index k - 1, so serving maps ids without the data set); metadata (JSON strings):
`config`, `trainer_state`, `param_groups`, and `sha256` over every tensor and the other metadata, checked on
load so that a flipped bit is an error rather than a silently different model.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

try:
    from safetensors import safe_open
    from safetensors.torch import load_file, save
except ImportError:  # pragma: no cover - exercised only without the train extra
    safe_open = load_file = save = None


def _require_safetensors() -> None:
    if save is None:
        raise ValueError("checkpoints need safetensors: pip install 'genrec[train]'")


@dataclass
class Checkpoint:
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None
    rng: dict[str, torch.Tensor]
    config: dict[str, Any]
    state: dict[str, Any]
    item_vocab: torch.Tensor | None = None
    averaged: dict[str, torch.Tensor] | None = None
    extra: dict[str, torch.Tensor] | None = None  # a trainer's own state tensors (a stream's vocabulary)

    def inference_weights(self) -> dict[str, torch.Tensor]:
        """What evaluation and serving load: the averaged parameters (and the buffers) where the run
        kept an average, else the training weights."""
        return {**self.model, **(self.averaged or {})}


TEMPORARY_PREFIX = ".genrec-tmp."


def _file_mode() -> int:
    """What open() would give a new file under this process's umask (mkstemp makes them 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()


def locate_checkpoint(path: Path) -> tuple[Path, Path]:
    """(run directory, checkpoint file) for a run directory (its best checkpoint, else its last) or for a
    file inside one (that checkpoint; config.json or another file: the directory's default)."""
    path = Path(path)
    if path.is_file():
        run_dir = path.parent
        if path.suffix == ".safetensors":
            return run_dir, path
    else:
        run_dir = path
    best = run_dir / "best.safetensors"
    return run_dir, best if best.is_file() else run_dir / "last.safetensors"


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Writes a temporary file beside `path`, then renames it over `path`: readers see the old file or the
    new one, never a part. A full disk (or any OS error) leaves `path` as it was and is a ValueError."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp_name = tempfile.mkstemp(prefix=f"{TEMPORARY_PREFIX}{path.name}.", dir=path.parent)
    except OSError as error:
        raise ValueError(f"{path}: cannot write ({error.strerror or error})") from error
    try:
        with os.fdopen(handle, "wb") as tmp:
            tmp.write(payload)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp_name, FILE_MODE)  # readable by whom the umask allows, as the run's other files
        os.replace(tmp_name, path)
    except OSError as error:
        Path(tmp_name).unlink(missing_ok=True)
        raise ValueError(f"{path}: cannot write ({error.strerror or error}); the previous file is intact") from error
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, result) -> None:
    """A result file (metrics.json, summary.json) as strict JSON, written atomically: a metric that is undefined
    (NaN, e.g. an AUC over labels of one class) is written as null, since NaN is no JSON value and strict
    readers (jq, browsers) refuse the whole file."""
    atomic_write_bytes(path, json.dumps(_finite_or_null(result), indent=2, allow_nan=False).encode())


def _finite_or_null(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(item) for item in value]
    return value


def remove_stale_temporaries(directory: Path) -> int:
    """Deletes the temporary files a killed run left in `directory` (atomic_write_bytes's); returns how many."""
    stale = list(directory.glob(f"{TEMPORARY_PREFIX}*")) if directory.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def save_checkpoint(path: Path, weights: dict[str, torch.Tensor], optim_state: dict[str, Any] | None,
                    rng: dict[str, torch.Tensor], config: dict[str, Any], state: dict[str, Any],
                    item_vocab: torch.Tensor | None = None, averaged: dict[str, torch.Tensor] | None = None,
                    extra: dict[str, torch.Tensor] | None = None) -> None:
    """weights: a module's state dict; optim_state: an optimiser's; averaged: the moving average of
    some of the weights (all with whole tensors)."""
    _require_safetensors()
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in weights.items()}
    tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in (averaged or {}).items()})
    if item_vocab is not None:
        tensors["vocab.items"] = item_vocab.cpu().contiguous()
    tensors.update({f"extra.{k}": v.cpu().contiguous() for k, v in (extra or {}).items()})
    metadata = {"config": json.dumps(config), "trainer_state": json.dumps(state)}
    if optim_state is not None:
        for index, per_param in optim_state["state"].items():
            for name, value in per_param.items():
                tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value)
                tensors[f"optim.{index}.{name}"] = tensor.detach().cpu().contiguous()
        metadata["param_groups"] = json.dumps(optim_state["param_groups"])
    tensors.update({f"rng.{k}": v.cpu().contiguous() for k, v in rng.items()})
    metadata["sha256"] = _digest(tensors, metadata)
    atomic_write_bytes(path, save(tensors, metadata=metadata))


def _digest(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for key in sorted(metadata):
        if key != "sha256":
            digest.update(f"{key}={metadata[key]}".encode())
    for key in sorted(tensors):
        digest.update(f"{key}:{tensors[key].dtype}:{list(tensors[key].shape)}".encode())
        digest.update(tensors[key].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_checkpoint(path: Path) -> Checkpoint:
    _require_safetensors()
    if not path.is_file():
        raise ValueError(f"{path}: no such checkpoint")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as error:  # safetensors raises its own error types for every kind of damage
        raise ValueError(f"{path}: damaged checkpoint (not a readable safetensors file: {error})") from error
    if "config" not in metadata or "trainer_state" not in metadata:
        raise ValueError(f"{path}: not a genrec checkpoint (metadata lacks config/trainer_state)")
    if "sha256" in metadata and metadata["sha256"] != _digest(tensors, metadata):
        raise ValueError(f"{path}: damaged checkpoint (checksum mismatch: its bytes changed after it was written)")
    try:
        return _unpack(tensors, metadata)
    except (ValueError, KeyError) as error:
        raise ValueError(f"{path}: damaged checkpoint ({error})") from error


def _unpack(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Checkpoint:
    optimizer = None
    if "param_groups" in metadata:
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = value
        optimizer = {"state": state, "param_groups": json.loads(metadata["param_groups"])}
    return Checkpoint(
        model={k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")},
        optimizer=optimizer,
        rng={k[len("rng."):]: v for k, v in tensors.items() if k.startswith("rng.")},
        config=json.loads(metadata["config"]),
        state=json.loads(metadata["trainer_state"]),
        item_vocab=tensors.get("vocab.items"),
        averaged={k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")} or None,
        extra={k[len("extra."):]: v for k, v in tensors.items() if k.startswith("extra.")} or None,
    )


def rng_state(generators: dict[str, torch.Generator], device: torch.device) -> dict[str, torch.Tensor]:
    """Every random stream a run draws from: the global CPU (and CUDA) generators and the run's own."""
    rng = {"torch": torch.get_rng_state(), **{name: g.get_state() for name, g in generators.items()}}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def restore_rng(rng: dict[str, torch.Tensor], generators: dict[str, torch.Generator], device: torch.device) -> None:
    torch.set_rng_state(rng["torch"])
    for name, generator in generators.items():
        generator.set_state(rng[name])
    if "cuda" in rng and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], device)


def ranker_weights(model_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ranker's own weights out of a ranking checkpoint (which holds the DIN baseline beside it)."""
    return {k.removeprefix("ranker."): v for k, v in model_state.items() if k.startswith("ranker.")}
