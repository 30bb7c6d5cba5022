"""CUDA graphs of M-FALCON's candidate pass: the whole micro-batch (candidate embeddings, every layer's projections,
fused cached attention and output) recorded once and replayed, so that a request costs a few copies and one graph
launch per micro-batch instead of some 15 kernel launches and their Python per layer.

A graph holds fixed-size buffers: M candidate ids and times (M a power of two up to the micro-batch size), and every
layer's history keys/values with room for `capacity` history tokens (the next power of two of the history's
length); the fused kernel reads the history's real length from a device tensor, so one graph serves every history
up to its capacity, and a graph keeps the history it holds until another user's comes. Fewer candidates than M are
padded with copies of the first, whose rows are dropped (a candidate never sees another). Graphs are keyed by M,
capacity, whether times are used and the dtypes, and share one memory pool.

Shapes: M micro-batch size, L history tokens, P capacity, H heads, Dqk / Dv head dims.
"""

from __future__ import annotations

import torch
import triton

from genrec.model.kv_cache import HistoryCache


def graphs_apply(model) -> bool:
    """Whether the model's candidate pass can be captured: on a CUDA device, through the fused kernel."""
    from genrec.ops.attention import TRITON_AVAILABLE

    layers = model.encoder.layers
    return (TRITON_AVAILABLE and next(model.parameters()).is_cuda
            and all(layer.backend in ("auto", "triton") for layer in layers))


def _autocast_dtype() -> torch.dtype | None:
    return torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None


class _CandidateGraph:
    def __init__(self, model, micro_batch_size: int, capacity: int, history: HistoryCache, with_time: bool,
                 pool) -> None:
        device = history.keys[0].device
        self.model = model
        self.ids = torch.ones(micro_batch_size, dtype=torch.int64, device=device)
        self.times = torch.zeros(micro_batch_size, dtype=torch.int64, device=device) if with_time else None
        self.position = torch.zeros(1, dtype=torch.int64, device=device)
        self.cache = HistoryCache(
            history.item_ids, None,
            token_timestamps=torch.zeros(capacity, dtype=torch.int64, device=device) if with_time else None,
            keys=[torch.zeros(capacity, *k.shape[1:], dtype=k.dtype, device=device) for k in history.keys],
            values=[torch.zeros(capacity, *v.shape[1:], dtype=v.dtype, device=device) for v in history.values],
            history_offsets=torch.zeros(2, dtype=torch.int64, device=device))
        self.loaded: HistoryCache | None = None
        self.load(history)
        dtype = _autocast_dtype()
        # a first run outside the graph compiles and autotunes the kernels (capture cannot); autocast's cast cache
        # is off while capturing, as CUDA graphs require
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            self._forward()
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None, cache_enabled=False):
            with torch.cuda.graph(self.graph, pool=pool):
                self.out = self._forward()

    def _forward(self) -> torch.Tensor:
        tokens = self.model.candidate_tokens(self.ids, self.position)
        return self.model.candidate_outputs(self.model.encoder.forward_candidates(tokens, self.times, self.cache))

    def load(self, history: HistoryCache) -> None:
        """Copies a user's history keys/values (and times, position, length) into the graph's buffers."""
        length = history.keys[0].shape[0]
        torch._foreach_copy_([k[:length] for k in self.cache.keys] + [v[:length] for v in self.cache.values],
                             history.keys + history.values)
        if self.cache.token_timestamps is not None:
            self.cache.token_timestamps[:length].copy_(history.token_timestamps)
        self.cache.history_offsets.copy_(torch.tensor([0, length]))
        self.position.fill_(history.candidate_position)
        self.loaded = history

    def run(self, history: HistoryCache, ids: torch.Tensor, times: torch.Tensor | None) -> torch.Tensor:
        """The outputs of these candidates ([:n] of the graph's output, valid until the next run)."""
        if self.loaded is not history:
            self.load(history)
        count = ids.shape[0]
        self.ids[:count].copy_(ids)
        self.ids[count:].copy_(ids[:1].expand(self.ids.shape[0] - count))
        if self.times is not None:
            self.times[:count].copy_(times)
            self.times[count:].copy_(times[:1].expand(self.times.shape[0] - count))
        self.graph.replay()
        return self.out[:count]


class CandidateGraphs:
    """M-FALCON's candidate pass through captured CUDA graphs (see the module docstring). Not thread-safe: the
    graphs' buffers are shared (MFalcon holds a lock around it)."""

    def __init__(self, model, micro_batch_size: int) -> None:
        self.model = model
        self.micro_batch_size = micro_batch_size
        self._graphs: dict[tuple, _CandidateGraph] = {}
        self._pool = None

    def _graph(self, history: HistoryCache, count: int, with_time: bool) -> _CandidateGraph:
        size = min(triton.next_power_of_2(count), self.micro_batch_size)
        key = (size, triton.next_power_of_2(history.keys[0].shape[0]), with_time, _autocast_dtype(),
               history.keys[0].dtype)
        if key not in self._graphs:
            self._pool = self._pool or torch.cuda.graph_pool_handle()
            self._graphs[key] = _CandidateGraph(self.model, size, key[1], history, with_time, self._pool)
        return self._graphs[key]

    def encode(self, history: HistoryCache, candidate_ids: torch.Tensor,
               candidate_timestamps: torch.Tensor | None) -> torch.Tensor:
        """The candidates' outputs, as MFalcon.encode_candidates computes them eagerly."""
        result = None
        for start in range(0, candidate_ids.shape[0], self.micro_batch_size):
            ids = candidate_ids[start:start + self.micro_batch_size]
            times = None if candidate_timestamps is None else candidate_timestamps[start:start + ids.shape[0]]
            out = self._graph(history, ids.shape[0], times is not None).run(history, ids, times)
            if result is None:
                result = out.new_empty(candidate_ids.shape[0], *out.shape[1:])
            result[start:start + ids.shape[0]].copy_(out)
        return result
