"""Builds what a run needs from a Config: the protocol split, the model and the device."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from genrec.config import Config, DataConfig
from genrec.data import (ProtocolSplit, SequenceData, SyntheticSpec, build_sequences, leave_one_out, load_events,
                         min_length_for)
from genrec.data.user_features import read_user_features
from genrec.model import SequentialRetriever


@dataclass
class PreparedData:
    split: ProtocolSplit
    num_items: int
    has_timestamps: bool
    item_vocab: np.ndarray  # dense id k -> source id item_vocab[k - 1]
    summary: dict[str, int | str]
    context_cardinalities: tuple[int, ...] = ()  # per user feature (data.user_features); () = none


def prepare_data(config: Config) -> PreparedData:
    data_config = config.data
    synthetic = SyntheticSpec(num_users=data_config.synthetic_users, num_items=data_config.synthetic_items,
                              seed=data_config.synthetic_seed)
    events = load_events(data_config.dataset, data_config.path, data_config.skip_bad_rows, synthetic)
    data = build_sequences(events, data_config.tie_order, min_length_for(data_config.mode))
    summary = {
        "source": data.source, "events": len(events), "skipped_rows": events.skipped_rows,
        "users": data.sequences.num_users, "dropped_users": data.dropped_users, "items": data.num_items,
    }
    cardinalities = attach_user_features(data_config, data, summary)
    return PreparedData(leave_one_out(data, data_config.mode), data.num_items,
                        events.timestamps is not None, data.item_vocab, summary, cardinalities)


def attach_user_features(data_config: DataConfig, data: SequenceData, summary: dict) -> tuple[int, ...]:
    """Reads data.user_features (when set) into data.sequences.context and notes it in `summary`;
    returns each feature's number of values (() without user features)."""
    if data_config.user_features is None:
        return ()
    features = read_user_features(data_config.dataset, data_config.user_features, data_config.skip_bad_rows)
    data.sequences.context, missing = features.align(data.user_vocab)
    summary.update({"user_features": ",".join(features.names), "users_without_features": missing})
    return features.cardinalities


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but no CUDA device is available")
    return torch.device(name)


# Dense bf16 tensor-core peaks from the vendors' data sheets (training runs under bf16 autocast on
# CUDA); the first name contained in the device's name wins. MFU is not reported elsewhere.
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0}


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def build_model(config: Config, data: PreparedData) -> SequentialRetriever:
    return SequentialRetriever(config.model, data.num_items, config.data.max_seq_len, use_time=data.has_timestamps,
                               context_cardinalities=data.context_cardinalities)
