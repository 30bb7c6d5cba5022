"""Run configuration: nested dataclasses are the schema; TOML files override them; unknown keys fail.

Presets carry the paper's ML-1M settings (official configs): max_seq_len 200, d = 50, dropout 0.2,
128 sampled negatives, temperature 0.05, AdamW lr 1e-3 betas (0.9, 0.98), batch 128, 101 epochs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class DataConfig:
    dataset: str = "synthetic"
    path: str | None = None
    mode: str = "paper"  # paper | validated (see genrec.data.splits) | stream (genrec.train.stream)
    tie_order: str = "stable"  # stable | paper (see genrec.data.sequences.event_order)
    max_seq_len: int = 200
    # retrieval: train on this seeded share of the users (the same train.seed nests them: a larger share holds
    # every user of a smaller one); evaluation still ranks every user's held-out events, so runs on different
    # shares are scored on the same examples (quality against data, benchmarks/scaling_law.py --data-fractions)
    train_user_fraction: float = 1.0
    skip_bad_rows: bool = False
    synthetic_seed: int = 0
    synthetic_users: int = 2000
    synthetic_items: int = 1000
    # the synthetic stream's other settings (genrec.data.synthetic_stream.StreamSpec), "name=value,...", e.g.
    # "excitation=1,half_life_days=3"; "" = its defaults
    synthetic_stream: str = ""
    # MovieLens user file (ml-1m users.dat, ml-100k u.user, or the directory holding it): its features
    # become user-context prefix tokens (genrec.data.user_features); None = no prefix
    user_features: str | None = None
    # item content (ml-1m movies.dat, ml-100k u.item, or the directory holding it; s3rec: its
    # *_item2attributes.json; "topics": the synthetic stream's): features added to item tokens
    # (genrec.data.item_features) as model.item_representation says; None = no content
    item_features: str | None = None
    # a slow-changing user feature sequentialized (genrec.data.user_series): a CSV of its changes
    # (user_id,timestamp,<feature>), or "followed_topics" (the synthetic stream's); each change becomes a token
    # merged into the sequence by time; None = none
    user_series: str | None = None
    max_series_len: int = 16  # the most change tokens a sequence takes (the latest)


@dataclass
class RabConfig:
    """Relative attention bias rab^{p,t}: learned bias per relative position and per time-gap bucket."""

    position: bool = True
    time: bool = True  # switched off automatically for data without timestamps
    num_time_buckets: int = 128
    time_bucket_scale: float = 0.301  # bucket = floor(ln(max(|dt|, 1)) / scale)


@dataclass
class MoLConfig:
    """Mixture-of-logits similarity (model.similarity = "mol"); see genrec.model.similarity."""

    user_components: int = 8
    item_components: int = 4
    component_dim: int = 32
    gate_hidden: int = 64


@dataclass
class ModelConfig:
    architecture: str = "hstu"  # hstu | sasrec
    embedding_dim: int = 50
    num_layers: int = 2
    num_heads: int = 1
    qk_dim: int = 50  # per head
    v_dim: int = 50  # per head
    dropout: float = 0.2
    # the first this many layers recompute their activations in backward (genrec.model.recompute); 0 = none
    checkpoint_layers: int = 0
    rab: RabConfig = field(default_factory=RabConfig)
    attention_backend: str = "auto"  # auto | torch | triton
    attention: str = "pointwise"  # HSTU: pointwise (SiLU, paper Eq. 2) | softmax (the Table 2 ablation; no rab)
    # HSTU: SASRec's point-wise feed-forward sublayer after each layer (a block ablation; SASRec always has one)
    feed_forward: bool = False
    # an item's embedding: id (a learned row per item) | content (its content features' rows, data.item_features)
    # | id+content (their sum)
    item_representation: str = "id"
    # storage of the item embedding table: float32 | bfloat16 (half the memory; needs the row-wise optimiser)
    item_table_dtype: str = "float32"
    similarity: str = "dot"  # dot (cosine of the l2-normalised embeddings) | mol (mixture of logits)
    mol: MoLConfig = field(default_factory=MoLConfig)


@dataclass
class LossConfig:
    negatives: str = "sampled"  # sampled (uniform, per position) | all (full softmax over the catalog)
    num_negatives: int = 128
    in_batch_negatives: int = 0  # extra negatives drawn from the batch's targets (logQ-corrected)
    temperature: float = 0.05


@dataclass
class TrainConfig:
    task: str = "retrieval"  # retrieval (next item) | ranking (actions on items, multi-task)
    epochs: int = 101
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.98)
    # the item tables' optimiser: adamw (as the rest) | rowwise_adagrad (one number of state per row, sparse
    # gradients; genrec.train.optimizers), with its own learning rate
    embedding_optimizer: str = "adamw"
    embedding_learning_rate: float = 0.05
    # under torchrun with DDP: replicated (every rank holds the item tables) | rows (each rank holds 1/world of
    # their rows and answers lookups for them; needs rowwise_adagrad; genrec.train.parallel.shard_item_tables)
    item_table_sharding: str = "replicated"
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda
    loader_workers: int = 0  # processes making the next batches during the step (genrec.data.loader); 0 = none
    # training forwards through torch.compile (genrec.train.experiment.compiled): off | kernels (fused kernels,
    # dynamic shapes) | graphs (also replayed from CUDA graphs, batches padded to bucketed shapes: genrec.data.buckets)
    # | step (retrieval on one process: kernels, and the whole step with loss and optimiser replayed from one CUDA
    # graph per bucketed shape: genrec.train.step_graphs)
    compile: str = "off"
    data_parallel: str = "ddp"  # under torchrun: ddp (replicas) | fsdp (FSDP2: parameters and optimiser sharded)
    eval_every: int = 1  # epochs between validation passes (validated mode)
    patience: int = 0  # validated mode: stop after this many passes without improvement; 0 = never
    lr_schedule: str = "constant"  # constant | cosine (decays to 0 at the last epoch)
    warmup_epochs: int = 0  # linear warm-up from 0 over this many epochs, then the schedule
    stochastic_length_alpha: float = 0.0  # subsample long histories (paper Sec. 3.3); 0 = off, (0, 2]
    # which events a cut keeps: uniform (drawn without replacement, the paper's) | contiguous (a run at a uniform start,
    # so every target is the next event) | successors (a uniform draw whose kept events still predict their true
    # successors, dropped or not, at those successors' times). Stream mode's cuts keep the window's events first.
    stochastic_length_sampling: str = "uniform"
    # the position a kept event embeds: kept (its index in the cut sequence) | original (its index in the whole history,
    # as evaluation embeds it; the retrieval trainer, outside stream mode and train.compile = step)
    stochastic_length_positions: str = "kept"
    ema_decay: float = 0.0  # evaluate and serve a moving average of the weights, updated every step; 0 = off
    # ranking: the DIN baseline's impressions per user and step, each at a position drawn uniformly (with replacement)
    # among those with a history; the ranker learns at every event
    baseline_impressions: int = 1
    eval_batch_size: int = 512
    loss: LossConfig = field(default_factory=LossConfig)


@dataclass
class StreamConfig:
    """data.mode = "stream": one pass in time order, each window evaluated and then trained on."""

    window_days: float = 1.0
    item_capacity: int = 0  # item rows of the embedding table; 0 = the data's distinct items
    evict_after_days: float = 0.0  # free the rows of items unseen this long; 0 = only when the table is full
    max_windows: int = 0  # stop after this many windows (resume to go on); 0 = the whole stream
    checkpoint_every_steps: int = 0  # also checkpoint inside a window every this many batches; 0 = at window ends


@dataclass
class EvalConfig:
    ks: tuple[int, ...] = (10, 50, 200)
    exclude_history: bool = True
    # retrieval: rank the full catalogue for a seeded sample of this many users (the same users in every
    # evaluation of the run), for data sets whose users x items is too large to score whole; 0 = every user
    max_users: int = 0


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)

    def validate(self) -> "Config":
        for name, value in _floats(self):
            if not math.isfinite(value):
                raise ValueError(f"bad config: {name} = {value} is not a finite number")
        checks = [
            (self.data.mode in ("paper", "validated", "stream"), "data.mode must be paper, validated or stream"),
            (self.data.mode != "stream" or self.train.task == "retrieval", "data.mode = stream trains retrieval only"),
            (self.stream.window_days > 0 and self.stream.item_capacity >= 0 and self.stream.evict_after_days >= 0
             and self.stream.max_windows >= 0 and self.stream.checkpoint_every_steps >= 0,
             "stream.window_days must be positive; item_capacity, evict_after_days, max_windows and "
             "checkpoint_every_steps >= 0"),
            (self.data.tie_order in ("stable", "paper"), "data.tie_order must be 'stable' or 'paper'"),
            (self.data.max_seq_len >= 2, "data.max_seq_len must be >= 2"),
            (self.model.architecture in ("hstu", "sasrec"), "model.architecture must be 'hstu' or 'sasrec'"),
            (self.model.embedding_dim > 0 and self.model.num_layers > 0 and self.model.num_heads > 0,
             "model.embedding_dim, num_layers and num_heads must be positive"),
            (self.model.qk_dim > 0 and self.model.v_dim > 0, "model.qk_dim and v_dim must be positive"),
            (0.0 <= self.model.dropout < 1.0, "model.dropout must be in [0, 1)"),
            (0 <= self.model.checkpoint_layers <= self.model.num_layers,
             "model.checkpoint_layers must be in [0, model.num_layers]"),
            (self.model.rab.num_time_buckets > 0 and self.model.rab.time_bucket_scale > 0,
             "model.rab.num_time_buckets and time_bucket_scale must be positive"),
            (self.model.attention in ("pointwise", "softmax"), "model.attention must be pointwise or softmax"),
            (self.model.attention == "pointwise" or not (self.model.rab.position or self.model.rab.time),
             "model.attention = softmax has no relative bias: set model.rab.position and model.rab.time to false"),
            (self.model.architecture == "hstu" or not self.model.feed_forward,
             "model.feed_forward is an HSTU option: SASRec's blocks always have their feed-forward sublayer"),
            (self.model.attention_backend in ("auto", "torch", "triton"),
             "model.attention_backend must be auto, torch or triton"),
            (self.model.similarity in ("dot", "mol"), "model.similarity must be dot or mol"),
            (min(self.model.mol.user_components, self.model.mol.item_components, self.model.mol.component_dim,
                 self.model.mol.gate_hidden) > 0, "model.mol sizes must be positive"),
            (self.model.similarity == "dot" or self.train.loss.negatives == "sampled",
             "model.similarity = mol needs train.loss.negatives = sampled (it cannot afford a [P, I, K] tensor)"),
            (self.train.task in ("retrieval", "ranking"), "train.task must be 'retrieval' or 'ranking'"),
            (self.data.user_features is None or (self.model.architecture == "hstu"
                                                 and self.data.dataset in ("ml-1m", "ml-100k")),
             "data.user_features (user-context prefix tokens) needs model.architecture = hstu and "
             "data.dataset = ml-1m or ml-100k"),
            (self.model.item_representation in ("id", "content", "id+content"),
             "model.item_representation must be id, content or id+content"),
            ((self.data.item_features is None) == (self.model.item_representation == "id"),
             "model.item_representation = content or id+content reads data.item_features, which nothing else reads: "
             "set both or neither"),
            (self.data.item_features is None or self.data.dataset in ("ml-1m", "ml-100k", "s3rec", "synthetic-stream"),
             "data.item_features (item content) needs data.dataset = ml-1m, ml-100k, s3rec or synthetic-stream"),
            ((self.data.item_features == "topics") == (self.data.item_features is not None
                                                       and self.data.dataset == "synthetic-stream"),
             "data.item_features = topics is the synthetic stream's, and the synthetic stream's items have no other"),
            (self.model.item_representation != "content" or self.train.embedding_optimizer == "adamw",
             "model.item_representation = content has no item table for train.embedding_optimizer to train"),
            (self.data.max_series_len > 0, "data.max_series_len must be positive"),
            (self.data.user_series is None or self.model.architecture == "hstu",
             "data.user_series (user-feature change tokens) needs model.architecture = hstu"),
            (self.data.user_series != "followed_topics" or self.data.dataset == "synthetic-stream",
             "data.user_series = followed_topics is the synthetic stream's: it needs data.dataset = synthetic-stream"),
            (self.train.epochs >= 0, "train.epochs must be >= 0"),
            (self.train.batch_size > 0 and self.train.eval_batch_size > 0, "batch sizes must be positive"),
            (self.train.loader_workers >= 0, "train.loader_workers must be >= 0"),
            (self.train.baseline_impressions >= 1, "train.baseline_impressions must be >= 1"),
            (self.train.compile in ("off", "kernels", "graphs", "step"),
             "train.compile must be off, kernels, graphs or step"),
            (self.train.compile not in ("graphs", "step") or self.data.max_seq_len >= 2,
             f"train.compile = {self.train.compile} pads batches with sequences of 1 to max_seq_len tokens: "
             "max_seq_len >= 2"),
            (self.train.compile != "step" or (self.train.task == "retrieval" and self.data.mode != "stream"),
             "train.compile = step captures the retrieval trainer's step: ranking and stream runs take graphs"),
            (self.train.compile != "step" or (self.model.architecture == "hstu" and self.model.attention == "pointwise"
                                              and self.model.attention_backend != "torch"),
             "train.compile = step needs HSTU's pointwise attention through its fused kernel (model.architecture = "
             "hstu, model.attention = pointwise, model.attention_backend auto or triton): the padded softmax stacks "
             "and the reference attention read the longest sequence's length back from the GPU, which a CUDA graph "
             "cannot"),
            (self.train.compile != "step" or self.train.embedding_optimizer == "adamw",
             "train.compile = step needs train.embedding_optimizer = adamw (the row-wise optimiser's sparse "
             "gradients are not captured)"),
            (self.train.compile != "step" or self.train.loss.in_batch_negatives == 0,
             "train.compile = step needs train.loss.in_batch_negatives = 0 (their logQ counts size a tensor by the "
             "batch's contents)"),
            (self.train.learning_rate > 0, "train.learning_rate must be positive"),
            (all(0.0 <= beta < 1.0 for beta in self.train.betas), "train.betas must be in [0, 1)"),
            (self.train.weight_decay >= 0, "train.weight_decay must be >= 0"),
            (self.train.embedding_optimizer in ("adamw", "rowwise_adagrad"),
             "train.embedding_optimizer must be adamw or rowwise_adagrad"),
            (self.train.embedding_learning_rate > 0, "train.embedding_learning_rate must be positive"),
            (self.model.item_table_dtype in ("float32", "bfloat16"),
             "model.item_table_dtype must be float32 or bfloat16"),
            (self.model.item_table_dtype == "float32" or self.train.embedding_optimizer == "rowwise_adagrad",
             "model.item_table_dtype = bfloat16 needs train.embedding_optimizer = rowwise_adagrad (AdamW would keep "
             "bf16 moments and lose small updates)"),
            (self.train.item_table_sharding in ("replicated", "rows"),
             "train.item_table_sharding must be replicated or rows"),
            (self.train.item_table_sharding == "replicated" or self.train.embedding_optimizer == "rowwise_adagrad",
             "train.item_table_sharding = rows needs train.embedding_optimizer = rowwise_adagrad"),
            (self.train.item_table_sharding == "replicated" or self.model.item_representation == "id",
             "train.item_table_sharding = rows shards the item table alone: it needs model.item_representation = id"),
            (self.train.item_table_sharding == "replicated" or self.train.ema_decay == 0,
             "train.item_table_sharding = rows cannot keep a weight average (train.ema_decay): it would hold only "
             "each rank's rows"),
            (self.train.embedding_optimizer == "adamw" or self.train.data_parallel == "ddp"
             or self.train.item_table_sharding == "rows",
             "train.embedding_optimizer = rowwise_adagrad under train.data_parallel = fsdp needs "
             "train.item_table_sharding = rows (FSDP2 would shard a replicated table's rows under the optimiser)"),
            (0.0 < self.data.train_user_fraction <= 1.0, "data.train_user_fraction must be in (0, 1]"),
            (self.data.train_user_fraction == 1.0 or (self.train.task == "retrieval" and self.data.mode != "stream"),
             "data.train_user_fraction samples retrieval's training users (paper or validated mode)"),
            (self.data.synthetic_users > 0 and self.data.synthetic_items > 0,
             "data.synthetic_users and synthetic_items must be positive"),
            (not self.data.synthetic_stream or self.data.dataset == "synthetic-stream",
             "data.synthetic_stream sets the synthetic stream: it needs data.dataset = synthetic-stream"),
            (0.0 <= self.train.ema_decay < 1.0, "train.ema_decay must be in [0, 1)"),
            (self.train.device in ("auto", "cpu", "cuda"), "train.device must be auto, cpu or cuda"),
            (self.train.data_parallel in ("ddp", "fsdp"), "train.data_parallel must be ddp or fsdp"),
            (self.train.eval_every > 0, "train.eval_every must be positive"),
            (self.train.patience >= 0, "train.patience must be >= 0"),
            (0.0 <= self.train.stochastic_length_alpha <= 2.0, "train.stochastic_length_alpha must be in [0, 2]"),
            (self.train.stochastic_length_sampling in ("uniform", "contiguous", "successors"),
             "train.stochastic_length_sampling must be uniform, contiguous or successors"),
            (self.train.stochastic_length_sampling == "uniform" or self.data.mode != "stream",
             f"train.stochastic_length_sampling = {self.train.stochastic_length_sampling} is not for stream mode: a "
             "stream's cut keeps the window's events first"),
            (self.train.stochastic_length_sampling != "successors" or (
                self.train.task == "retrieval" and self.train.compile != "step"
                and self.data.user_features is None and self.data.user_series is None),
             "train.stochastic_length_sampling = successors trains retrieval on event tokens alone: not with "
             "train.task = ranking, train.compile = step, data.user_features or data.user_series"),
            (self.train.stochastic_length_positions in ("kept", "original"),
             "train.stochastic_length_positions must be kept or original"),
            (self.train.stochastic_length_positions == "kept" or (
                self.train.task == "retrieval" and self.data.mode != "stream" and self.train.compile != "step"),
             "train.stochastic_length_positions = original is for the retrieval trainer, outside stream mode and "
             "train.compile = step"),
            (self.train.lr_schedule in ("constant", "cosine"), "train.lr_schedule must be constant or cosine"),
            (0 <= self.train.warmup_epochs <= max(self.train.epochs, 0),
             "train.warmup_epochs must be in [0, train.epochs]"),
            (self.train.loss.negatives in ("sampled", "all"), "train.loss.negatives must be sampled or all"),
            (self.train.loss.num_negatives > 0, "train.loss.num_negatives must be positive"),
            (self.train.loss.negatives == "sampled" or self.train.loss.in_batch_negatives == 0,
             "train.loss.in_batch_negatives needs train.loss.negatives = sampled"),
            (self.train.loss.in_batch_negatives >= 0, "train.loss.in_batch_negatives must be >= 0"),
            (self.train.loss.temperature > 0, "train.loss.temperature must be positive"),
            (len(self.eval.ks) > 0 and all(k > 0 for k in self.eval.ks), "eval.ks must be positive"),
            (self.eval.max_users >= 0, "eval.max_users must be >= 0"),
            (self.eval.max_users == 0 or self.train.task == "retrieval",
             "eval.max_users samples retrieval's users; ranking scores every held-out impression"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"bad config: {message}")
        if self.model.architecture == "sasrec" and self.model.embedding_dim % self.model.num_heads:
            raise ValueError("bad config: sasrec needs embedding_dim divisible by num_heads")
        return self


def _floats(node: Any, where: str = "") -> list[tuple[str, float]]:
    """Every float field of a config (tuple entries included), by dotted name."""
    found = []
    for item in dataclasses.fields(node):
        value, name = getattr(node, item.name), f"{where}{item.name}"
        if dataclasses.is_dataclass(value):
            found += _floats(value, f"{name}.")
        elif isinstance(value, float):
            found.append((name, value))
        elif isinstance(value, tuple):
            found += [(f"{name}[{i}]", v) for i, v in enumerate(value) if isinstance(v, float)]
    return found


def _preset_hstu_large(config: Config) -> None:
    config.model.num_layers, config.model.num_heads = 8, 2
    config.model.qk_dim = config.model.v_dim = 25


def _preset_sasrec(config: Config) -> None:
    config.model.architecture = "sasrec"
    config.model.num_layers, config.model.num_heads = 2, 1


def _preset_hstu_xl(config: Config) -> None:
    """HSTU-large with twice the history, 16x the sampled negatives and a moving average of the weights
    (half-life ~69 steps) scored in place of the last step's: the three changes that gave the most on
    ML-1M (benchmarks/results/public.json; the README says what each change gave)."""
    _preset_hstu_large(config)
    config.data.max_seq_len = 400
    config.train.loss.num_negatives = 2048
    config.train.ema_decay = 0.99


PRESETS = {"hstu": lambda config: None, "hstu-large": _preset_hstu_large, "hstu-xl": _preset_hstu_xl,
           "sasrec": _preset_sasrec}


def preset(name: str) -> Config:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; expected one of {', '.join(PRESETS)}")
    config = Config()
    PRESETS[name](config)
    return config


def apply_overrides(target: Any, overrides: dict[str, Any], where: str = "") -> None:
    """Recursively sets dataclass fields from a nested dict; unknown keys and wrong types fail."""
    known = {f.name: f for f in dataclasses.fields(target)}
    for key, value in overrides.items():
        name = f"{where}{key}"
        if key not in known:
            raise ValueError(f"bad config: unknown key {name!r}; expected one of {', '.join(known)}")
        current = getattr(target, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"bad config: {name} must be a table")
            apply_overrides(current, value, f"{name}.")
            continue
        if isinstance(current, tuple):
            value = _tuple_like(current, value, name)
        expected = type(current) if current is not None else (str, type(None))
        if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or (isinstance(value, bool) and not isinstance(current, bool)):
            raise ValueError(f"bad config: {name} = {value!r} has the wrong type "
                             f"(expected {type(current).__name__})")
        setattr(target, key, value)


def _tuple_like(current: tuple, value: Any, name: str) -> tuple:
    """A TOML array as a tuple of the default's element type; pairs (betas) keep their length."""
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"bad config: {name} = {value!r} must be an array like {list(current)}")
    kind = type(current[0])
    if kind is float:
        value = [float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
    if any(not isinstance(v, kind) or isinstance(v, bool) for v in value):
        raise ValueError(f"bad config: {name} = {value!r} must hold {kind.__name__} values")
    if len(current) == 2 and len(value) != 2:
        raise ValueError(f"bad config: {name} = {value!r} must hold exactly 2 values")
    return tuple(value)


def parse_assignment(text: str) -> dict[str, Any]:
    """'train.loss.num_negatives=512' -> {"train": {"loss": {"num_negatives": 512}}}; the value is read
    as TOML (numbers, booleans, quoted strings, arrays) and as a bare string when it is not TOML."""
    key, separator, raw = text.partition("=")
    if not separator or not key.strip() or any(not part for part in key.strip().split(".")):
        raise ValueError(f"bad config assignment {text!r}: expected section.key=value")
    try:
        value: Any = tomllib.loads(f"value = {raw.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value


def load_config_file(path: Path, base: Config) -> Config:
    if path.is_dir():
        raise ValueError(f"{path}: --config must be a TOML file, and this is a directory")
    try:
        with open(path, "rb") as handle:
            overrides = tomllib.load(handle)
    except FileNotFoundError as error:
        raise ValueError(f"{path}: no such config file") from error
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: cannot read the config file ({error})") from error
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path}: not valid TOML: {error}") from error
    apply_overrides(base, overrides)
    return base


def config_to_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_from_dict(values: dict[str, Any]) -> Config:
    config = Config()
    apply_overrides(config, values)
    return config.validate()


def load_run_config(run_dir: Path) -> Config:
    """The config.json of a run directory; a missing, unreadable or damaged one is an error naming the file."""
    path = run_dir / "config.json"
    if not path.is_file():
        raise ValueError(f"{run_dir}: no config.json (not a genrec run directory)")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: damaged run config ({error})") from error
    if not isinstance(values, dict):
        raise ValueError(f"{path}: damaged run config (not a JSON object)")
    try:
        return config_from_dict(values)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error


def config_to_toml(config: Config) -> str:
    """The whole config as TOML that --config reads back (fields that are None are commented out: TOML has
    no null)."""
    lines: list[str] = []

    def section(values: dict[str, Any], name: str) -> None:
        tables = {k: v for k, v in values.items() if isinstance(v, dict)}
        if name:
            lines.append(f"\n[{name}]")
        for key, value in values.items():
            if key in tables:
                continue
            if value is None:
                lines.append(f"# {key} = (unset)")
            elif isinstance(value, (list, tuple)):
                lines.append(f"{key} = [{', '.join(json.dumps(v) for v in value)}]")
            else:
                lines.append(f"{key} = {json.dumps(value)}")
        for key, table in tables.items():
            section(table, f"{name}.{key}" if name else key)
    section(config_to_dict(config), "")
    return "\n".join(lines).lstrip("\n") + "\n"


def config_to_json(config: Config) -> str:
    return json.dumps(config_to_dict(config), indent=2, sort_keys=True)
