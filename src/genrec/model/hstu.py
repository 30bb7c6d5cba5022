"""HSTU encoder (paper Eq. 1-3, with the official research code's details).

Per layer: X^ = LayerNorm(X) (no affine); U, V, Q, K = Split(SiLU(W1 X^)) (no bias);
A V with A = SiLU(Q K^T + rab) / N under the causal mask; Y = X + W2 Dropout(U * LayerNorm(A V)).
With model.feed_forward (an ablation, not the paper's HSTU), Y + FFN(LayerNorm(Y)) with SASRec's FFN.
Shapes: T tokens, D model dim, H heads, Dqk / Dv per-head dims.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genrec.config import ModelConfig
from genrec.model.feed_forward import feed_forward_flops, point_wise_feed_forward
from genrec.model.kv_cache import HistoryCache
from genrec.model.rab import RelativeBias
from genrec.model.recompute import run_layer
from genrec.ops import hstu_attention
from genrec.ops.attention import attention_flops, candidate_attention
from genrec.ops.attention.rab import query_timestamps
from genrec.ops.softmax_attention import jagged_softmax_attention


class HSTULayer(nn.Module):
    def __init__(self, config: ModelConfig, max_seq_len: int, use_time: bool) -> None:
        super().__init__()
        self.num_heads, self.qk_dim, self.v_dim = config.num_heads, config.qk_dim, config.v_dim
        self.max_seq_len = max_seq_len
        self.backend = config.attention_backend
        self.softmax = config.attention == "softmax"
        dim = config.embedding_dim
        self.uvqk = nn.Linear(dim, self.num_heads * (2 * self.v_dim + 2 * self.qk_dim), bias=False)
        self.output = nn.Linear(self.num_heads * self.v_dim, dim)
        self.dropout = nn.Dropout(config.dropout)
        self.rab = RelativeBias(max_seq_len, config.rab.num_time_buckets, config.rab.time_bucket_scale,
                                use_position=config.rab.position, use_time=config.rab.time and use_time)
        nn.init.normal_(self.uvqk.weight, std=0.02)
        nn.init.xavier_uniform_(self.output.weight)
        nn.init.zeros_(self.output.bias)
        self.feed_forward = None
        if config.feed_forward:
            self.feed_forward_norm = nn.LayerNorm(dim)
            self.feed_forward = point_wise_feed_forward(dim, config.dropout)

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [T, D] -> u [T, H*Dv], v [T, H, Dv], q [T, H, Dqk], k [T, H, Dqk] (paper Eq. 1)."""
        hv, hqk = self.num_heads * self.v_dim, self.num_heads * self.qk_dim
        u, v, q, k = torch.split(F.silu(self.uvqk(F.layer_norm(x, x.shape[-1:]))), [hv, hv, hqk, hqk], dim=-1)
        return (u, v.reshape(-1, self.num_heads, self.v_dim), q.reshape(-1, self.num_heads, self.qk_dim),
                k.reshape(-1, self.num_heads, self.qk_dim))

    def _finish(self, x: torch.Tensor, u: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """Y = X + W2 Dropout(U * LayerNorm(A V)) (paper Eq. 3), then the feed-forward sublayer if any."""
        attended = attended.reshape(x.shape[0], -1)
        y = x + self.output(self.dropout(u * F.layer_norm(attended, attended.shape[-1:])))
        if self.feed_forward is None:
            return y
        return y + self.feed_forward(self.feed_forward_norm(y))

    def forward(self, x: torch.Tensor, seq_offsets: torch.Tensor, timestamps: torch.Tensor | None,
                num_targets: torch.Tensor | None = None, cache: HistoryCache | None = None,
                sorted_timestamps: bool = False, query_timestamps: torch.Tensor | None = None) -> torch.Tensor:
        """x [T, D] -> [T, D]. With `cache` (one user's history), appends this layer's keys/values.
        query_timestamps [T]: each row's query time t' (see genrec.ops.attention.rab); sorted_timestamps: the
        timestamps and the query times never decrease within a sequence."""
        u, v, q, k = self._project(x)
        if self.softmax:
            if cache is not None or num_targets is not None:
                raise ValueError("softmax HSTU attention has no candidate (M-FALCON) path")
            return self._finish(x, u, jagged_softmax_attention(q, k, v, seq_offsets))
        if cache is not None:
            cache.keys.append(k)
            cache.values.append(v)
        attended = hstu_attention(q, k, v, seq_offsets, max_seq_len=self.max_seq_len, alpha=1.0,
                                  num_targets=num_targets,
                                  rab=self.rab(timestamps, sorted_timestamps, query_timestamps),
                                  backend=self.backend)
        return self._finish(x, u, attended)

    def forward_candidates(self, x: torch.Tensor, timestamps: torch.Tensor | None, cache: HistoryCache,
                           layer_index: int) -> torch.Tensor:
        """Candidate rows only: x [C, D] -> [C, D], attending to the cached history and themselves."""
        u, v, q, k = self._project(x)
        attended = candidate_attention(
            q, k, v, cache.keys[layer_index], cache.values[layer_index], max_seq_len=self.max_seq_len,
            alpha=1.0, rab=self.rab(cache.token_timestamps), candidate_timestamps=timestamps,
            history_offsets=cache.history_offsets, backend=self.backend)
        return self._finish(x, u, attended)


class HSTUEncoder(nn.Module):
    def __init__(self, config: ModelConfig, max_seq_len: int, use_time: bool) -> None:
        super().__init__()
        self.layers = nn.ModuleList(HSTULayer(config, max_seq_len, use_time) for _ in range(config.num_layers))
        self.checkpoint_layers = config.checkpoint_layers

    def forward(self, x: torch.Tensor, seq_offsets: torch.Tensor, timestamps: torch.Tensor | None,
                num_targets: torch.Tensor | None = None, cache: HistoryCache | None = None,
                sorted_timestamps: bool = False, query_times: torch.Tensor | None = None,
                token_query_times: torch.Tensor | None = None) -> torch.Tensor:
        """query_times [B]: the time of the event each sequence's last history token predicts (the held-out
        target's in evaluation, the request's in serving); None: its own time. token_query_times [T]: every
        token's instead (SequenceBatch.token_query_times). sorted_timestamps: the batch's timestamps, then each
        query time, never decrease (SequenceBatch.timestamps_sorted)."""
        queries = token_query_times
        if timestamps is not None and queries is None:  # t' of every token, once for all layers
            queries = query_timestamps(timestamps, seq_offsets, num_targets, query_times)
            # candidates follow the query time with their own times, in no promised order
            sorted_timestamps = sorted_timestamps and (query_times is None or num_targets is None)
        for index, layer in enumerate(self.layers):
            x = run_layer(layer, index < self.checkpoint_layers and cache is None,
                          x, seq_offsets, timestamps, num_targets, cache, sorted_timestamps, queries)
        return x

    def forward_flops(self, lengths: torch.Tensor) -> float:
        """Matrix-multiply FLOPs of one forward pass over sequences of these lengths."""
        layer = self.layers[0]
        dim, projected = layer.uvqk.in_features, layer.uvqk.out_features
        per_token = 2 * dim * projected + 2 * layer.output.in_features * dim  # f1 and f2
        if layer.feed_forward is not None:
            per_token += feed_forward_flops(dim)
        per_layer = float(lengths.sum()) * per_token + attention_flops(lengths, layer.num_heads, layer.qk_dim,
                                                                       layer.v_dim)
        return len(self.layers) * per_layer

    def forward_candidates(self, x: torch.Tensor, timestamps: torch.Tensor | None,
                           cache: HistoryCache) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            x = layer.forward_candidates(x, timestamps, cache, index)
        return x
