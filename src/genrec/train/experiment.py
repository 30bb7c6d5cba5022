"""Builds what a run needs from a Config: the sequences (one data path for retrieval and ranking), the
protocol split, the model and the device."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from genrec.config import Config, DataConfig
from genrec.data import (Events, ProtocolSplit, SequenceData, SyntheticSpec, build_sequences, leave_one_out,
                         load_events, min_length_for)
from genrec.data.actions import action_labels
from genrec.data.batch import SequenceBatch
from genrec.data.buckets import pad_to_bucket, padded_sequences
from genrec.data.item_features import ItemFeatures, read_item_features
from genrec.data.splits import train_on_share
from genrec.data.user_features import read_user_features
from genrec.data.user_series import UserChanges, UserSeries, read_user_changes
from genrec.devices import memory_of
from genrec.model import SequentialRetriever
from genrec.model.embeddings import ItemContent
from genrec.train.optimizers import item_tables
from genrec.train.parallel import Distributed, shard_item_tables


@dataclass
class PreparedData:
    split: ProtocolSplit
    num_items: int
    has_timestamps: bool
    item_vocab: np.ndarray  # dense id k -> source id item_vocab[k - 1]
    summary: dict[str, int | str]
    context_cardinalities: tuple[int, ...] = ()  # per user feature (data.user_features); () = none
    item_content: ItemContent | None = None  # the items' content codes (data.item_features); None = none
    series_cardinality: int = 0  # the values of the sequentialized user feature (data.user_series); 0 = none
    input_values: dict = field(default_factory=dict)  # see LoadedSequences


def open_store(data_config: DataConfig):
    """The event store data.path names (data.dataset = store)."""
    from genrec.data.event_store import EventStore

    if data_config.path is None:
        raise ValueError("dataset 'store' needs --data-dir: the directory genrec prepare wrote")
    return EventStore.open(data_config.path)


def read_events(data_config: DataConfig) -> Events:
    """The events of the configured data set (a file, or the generated synthetic sets; an event store is opened by
    open_store)."""
    synthetic = SyntheticSpec(num_users=data_config.synthetic_users, num_items=data_config.synthetic_items,
                              seed=data_config.synthetic_seed)
    return load_events(data_config.dataset, data_config.path, data_config.skip_bad_rows, synthetic,
                       data_config.synthetic_stream)


@dataclass
class LoadedSequences:
    data: SequenceData
    summary: dict[str, int | str | list[str]]
    has_timestamps: bool
    context_cardinalities: tuple[int, ...]  # per user feature (data.user_features); () = none
    task_names: list[str]  # action signals (labels of data.sequences) when asked for; [] otherwise
    item_content: ItemContent | None  # the items' content codes (data.item_features); None = none
    series_cardinality: int  # the values of the sequentialized user feature (data.user_series); 0 = none
    # the user inputs' values, as serving maps a request's to codes (code c is values[c - 1]):
    # {"user_features": {name: [value, ...]}, "user_series": [value, ...]}, each only when used
    input_values: dict = field(default_factory=dict)


def load_sequences(config: Config, min_length: int, with_actions: bool = False) -> LoadedSequences:
    """The data set of `config` as per-user time-ordered sequences (users shorter than min_length dropped and
    counted), with each event's action signals (genrec.data.actions) when with_actions, and user features."""
    data_config = config.data
    if data_config.dataset == "store":
        return _store_sequences(config, min_length, with_actions)
    events = read_events(data_config)
    task_names, labels = action_labels(events) if with_actions else ([], None)
    data = build_sequences(events, data_config.tie_order, min_length, labels)
    summary = {
        "source": data.source, "events": len(events), "skipped_rows": events.skipped_rows,
        "users": data.sequences.num_users, "dropped_users": data.dropped_users, "items": data.num_items,
        **({"tasks": task_names} if with_actions else {}),
    }
    values: dict = {}
    cardinalities = attach_user_features(data_config, data, summary, values)
    return LoadedSequences(data, summary, events.timestamps is not None, cardinalities, task_names,
                           item_content(data_config, data, events, summary),
                           attach_user_series(data_config, data, events, summary, values), values)


def _store_sequences(config: Config, min_length: int, with_actions: bool) -> LoadedSequences:
    """The sequences of an event store (genrec.data.event_store), memory-mapped: nothing is read whole."""
    if config.data.tie_order != "stable":
        raise ValueError("an event store keeps ties in file order: use tie_order = stable with it")
    store = open_store(config.data)
    data = store.sequences(min_length)
    task_names = []
    if with_actions:
        labels = store.action_labels()
        data.sequences.labels, task_names = labels, labels.names
    manifest = store.manifest
    summary = {"source": manifest["source"], "store": str(store.path), "store_checksum": manifest["checksum"],
               "events": manifest["events"], "skipped_rows": manifest["skipped_rows"],
               "users": data.sequences.num_users, "dropped_users": data.dropped_users, "items": data.num_items,
               **({"tasks": task_names} if with_actions else {})}
    values: dict = {}
    cardinalities = attach_user_features(config.data, data, summary, values)
    return LoadedSequences(data, summary, store.has_timestamps, cardinalities, task_names,
                           item_content(config.data, data, None, summary),
                           attach_user_series(config.data, data, None, summary, values), values)


def prepare_data(config: Config) -> PreparedData:
    """Sequences and their leave-one-out split (retrieval)."""
    loaded = load_sequences(config, min_length_for(config.data.mode))
    split = leave_one_out(loaded.data, config.data.mode)
    if config.data.train_user_fraction < 1.0:
        split = train_on_share(split, config.data.train_user_fraction, config.train.seed)
        loaded.summary.update(train_users=split.train.num_users, train_events=split.train.num_events)
    return PreparedData(split, loaded.data.num_items, loaded.has_timestamps,
                        loaded.data.item_vocab, loaded.summary, loaded.context_cardinalities, loaded.item_content,
                        loaded.series_cardinality, loaded.input_values)


def attach_user_features(data_config: DataConfig, data: SequenceData, summary: dict, values: dict) -> tuple[int, ...]:
    """Reads data.user_features (when set) into data.sequences.context, notes it in `summary` and its values in
    `values` (LoadedSequences.input_values); returns each feature's number of values (() without user features)."""
    if data_config.user_features is None:
        return ()
    features = read_user_features(data_config.dataset, data_config.user_features, data_config.skip_bad_rows)
    data.sequences.context, missing = features.align(data.user_vocab)
    summary.update({"user_features": ",".join(features.names), "users_without_features": missing})
    values["user_features"] = features.vocabulary()
    return features.cardinalities


def attach_user_series(data_config: DataConfig, data: SequenceData, events: Events | None, summary: dict,
                       values: dict) -> int:
    """Puts data.user_series's changes (when set) beside data.sequences, notes them in `summary` and their values in
    `values`; returns the feature's number of values (0 without). events: the log the sequences came from (its
    own changes)."""
    if data_config.user_series is None:
        return 0
    if data.sequences.timestamps is None:
        raise ValueError(f"{data.source}: data.user_series merges changes in by time, and the events have none")
    changes = changes_of(data_config, events)
    series = UserSeries.of_users(changes, data.user_vocab, data_config.max_series_len)
    data.sequences.series = series
    summary.update({"user_series": changes.name, "user_series_changes": int((series.ends - series.starts).sum())})
    values["user_series"] = list(changes.values)
    return changes.cardinality


def changes_of(data_config: DataConfig, events: Events | None) -> UserChanges:
    """The changes data.user_series names: the synthetic stream's own (of `events`), or a CSV's."""
    if data_config.user_series == "followed_topics":
        return events.user_changes
    return read_user_changes(data_config.user_series, data_config.skip_bad_rows)


def item_features_of(data_config: DataConfig, events: Events | None) -> ItemFeatures:
    """The item features data.item_features names: the synthetic stream's topics (of `events`), or a file's."""
    if data_config.item_features == "topics":
        return events.item_features
    return read_item_features(data_config.dataset, data_config.item_features, data_config.skip_bad_rows)


def item_content(data_config: DataConfig, data: SequenceData, events: Events | None, summary: dict
                 ) -> ItemContent | None:
    """The content codes of data.item_features (when set) for the sequences' items, noted in `summary`. events: the
    log the sequences came from (its own item features)."""
    if data_config.item_features is None:
        return None
    features = item_features_of(data_config, events)
    codes, weights, missing = features.align(data.item_vocab)
    summary.update({"item_features": ",".join(features.names), "items_without_features": missing})
    return ItemContent(torch.from_numpy(codes), torch.from_numpy(weights), features.num_codes)


# Dense bf16 tensor-core peaks from the vendors' data sheets (training runs under bf16 autocast on
# CUDA); the first name contained in the device's name wins. MFU is not reported elsewhere.
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0}


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def build_model(config: Config, data: PreparedData, device: torch.device,
                ranks: Distributed = Distributed()) -> SequentialRetriever:
    return build_checked(lambda build_item_table: SequentialRetriever(
        config.model, data.num_items, config.data.max_seq_len, use_time=data.has_timestamps,
        context_cardinalities=data.context_cardinalities, item_content=data.item_content,
        series_cardinality=data.series_cardinality, max_series_len=config.data.max_series_len,
        build_item_table=build_item_table), config, device, data.split.train.num_events, ranks)


def compiled(module: torch.nn.Module, config: Config, padded: bool = True) -> torch.nn.Module:
    """`module` (as trained: wrapped or sharded) as train.compile says. kernels: through torch.compile, which fuses
    the small kernels between the matrix multiplies (norms, SiLU gates, dropout), with dynamic shapes (a jagged
    batch's token count differs every step and must not recompile). graphs: the same, replayed from CUDA graphs
    (mode reduce-overhead), which record one graph per shape, so the trainers pad each batch to one of a few
    (genrec.data.buckets); a module whose inputs are not padded (padded = False: the ranking run's DIN) is
    compiled as under kernels. step: as under kernels; the trainer captures its whole step around it
    (genrec.train.step_graphs). The fused attention is a registered op, traced whole."""
    if config.train.compile == "off":
        return module
    if config.train.compile == "graphs" and padded:
        return TunedBeforeGraphs(module, torch.compile(module, dynamic=True, mode="reduce-overhead"))
    return torch.compile(module, dynamic=True)


class TunedBeforeGraphs(torch.nn.Module):
    """The graphs, after one eager forward and backward of the first batch (the random state kept, the gradients
    cleared). The Triton kernels autotune there: autotuning during the graphs' warm-up would leave its
    benchmark buffers in the graphs' memory pool, which CUDA graph trees refuse ("tensors in the cudagraph pool
    not tracked as outputs")."""

    def __init__(self, eager: torch.nn.Module, graphs: torch.nn.Module) -> None:
        super().__init__()
        self.eager, self.graphs, self.tuned = eager, graphs, False

    def forward(self, *args, **kwargs):
        if not self.tuned:
            parameters = list(self.eager.parameters())
            devices = sorted({p.device.index for p in parameters if p.is_cuda})
            with torch.random.fork_rng(devices=devices):
                outputs = [t for t in torch.utils._pytree.tree_leaves(self.eager(*args, **kwargs))
                           if isinstance(t, torch.Tensor) and t.requires_grad]
                torch.stack([t.float().sum() for t in outputs]).sum().backward()
            for parameter in parameters:
                parameter.grad = None
            self.tuned = True
        return self.graphs(*args, **kwargs)


def graph_batches(config: Config, ranks: Distributed) -> Callable[[SequenceBatch], SequenceBatch]:
    """What a trainer does to a batch before its compiled forward: pad it to a bucketed shape under
    train.compile = graphs or step (read the real rows, [:T], of the outputs), else nothing."""
    if config.train.compile not in ("graphs", "step"):
        return lambda batch: batch
    num_sequences = padded_sequences(-(-config.train.batch_size // ranks.world_size), config.data.max_seq_len)
    return lambda batch: pad_to_bucket(batch, num_sequences)


# fp32 weights, their gradients and AdamW's two moments
TRAINING_BYTES_PER_PARAMETER = 16


def training_bytes(module: torch.nn.Module, embedding_optimizer: str, table_share: float = 1.0) -> int:
    """A lower bound of the bytes that training `module`'s parameters holds on one device: AdamW's 16 per
    parameter, but only the weights themselves for row-wise item tables (sparse gradients, one number of state per
    row), of which a device holds table_share (1 / ranks when sharded by rows)."""
    rowwise = {id(table.weight) for table in item_tables(module)} if embedding_optimizer == "rowwise_adagrad" else set()
    return sum(int(p.numel() * p.element_size() * table_share) if id(p) in rowwise
               else p.numel() * TRAINING_BYTES_PER_PARAMETER for p in module.parameters())


def build_checked(factory: Callable[[bool], torch.nn.Module], config: Config, device: torch.device,
                  num_events: int, ranks: Distributed = Distributed()) -> torch.nn.Module:
    """factory(build_item_table) on `device`, after checking on the meta device (no memory) that training it fits: a
    config with absurd sizes is an error before anything is allocated, not an out-of-memory crash (or a swap
    storm). A lower bound: the parameters' training state and each layer's saved activations of one full batch (of
    at most `num_events`, the training events). Under torchrun with train.item_table_sharding = rows the item
    tables are never built whole: each rank draws its rows alone (genrec.train.parallel.shard_item_tables)."""
    sharded = config.train.item_table_sharding == "rows" and ranks.enabled
    with torch.device("meta"):
        skeleton = factory(True)
    num_parameters = sum(p.numel() for p in skeleton.parameters())
    model = config.model
    per_token = 3 * model.embedding_dim + 2 * model.num_heads * (model.qk_dim + model.v_dim)  # fp32, per layer
    batch_tokens = min(config.train.batch_size * config.data.max_seq_len, num_events)
    activations = 4 * batch_tokens * model.num_layers * per_token
    table_share = 1.0 / ranks.world_size if sharded else 1.0
    needed = training_bytes(skeleton, config.train.embedding_optimizer, table_share) + activations
    available = memory_of(device)
    if needed > available:
        raise ValueError(f"bad config: training this model ({num_parameters:,} parameters, batches of up to "
                         f"{batch_tokens:,} tokens) needs at least "
                         f"{needed / 2**30:,.1f} GiB, more than the {available / 2**30:,.1f} GiB of {device}; lower "
                         "model.embedding_dim, num_layers, qk_dim / v_dim, data.max_seq_len or train.batch_size")
    model = factory(not sharded)
    if sharded:
        shard_item_tables(model, ranks)
    return model.to(device)
