"""How much faster does HSTU train than a Transformer on long histories, what does Stochastic Length
(SL) remove, and how much memory does a token cost? (paper Sec. 3.3, Table 3 and Fig. 5)

One training step (forward, backward, fused AdamW; bf16 autocast, fp32 weights) of the same histories:
- `transformer`: pre-LN softmax Transformer, SDPA's flash backend (causal), FFN 4x with GELU, batches
  padded to their longest sequence as FlashAttention2-based stacks are;
- `hstu`: genrec's HSTU encoder (jagged, fused Triton attention with position and time bias), SL off
  (the same as alpha = 2) and alpha in 1.6-1.9 (each step draws a fresh subsample; drawing is host work
  outside the timed step);
both 8 layers, d = 512, 4 heads of 128, dropout 0.2, ~64k history tokens a step. `--compile on` runs both
models through torch.compile (dynamic shapes: it fuses the norms, activations and dropout between the matrix
multiplies; the fused attention and SDPA are traced whole), `--compile both` eager and compiled in one run; each
speedup is against the Transformer run the same way. `--profile` adds each step row's largest kernels (GPU ms per
step from torch.profiler over a few more steps; CPU time on a CPU): where the step goes.

History lengths: lognormal with median N/4 and sigma 1.2, capped at N (a log keeps a user's last N
events), at least 1; mean ~0.33 N, 12% of users at the cap. The two parameters were chosen so that SL's
sparsity at alpha = 1.7 lies within 3 points of the paper's Table 3 row at all four N; the other alphas
follow from the same distribution. Sparsity = the fraction of the causal attention work (sum of n^2)
that SL removes, in expectation (genrec.data.stochastic_length.expected_attention_work) and as drawn.

FLOPs count matrix multiplies on real tokens only (the Transformer's padding is not useful work):
3x the forward's; MFU against the device's dense bf16 peak. Memory: peak allocated during the step;
per token: (peak - weights and optimizer state) / tokens, with every layer recomputing its
activations (model.checkpoint_layers) or none; the largest batch at N = 8,192 found by doubling.

    python benchmarks/long_sequences.py --out benchmarks/results/long_sequences.json           # a GPU
    python benchmarks/long_sequences.py --sparsity-only --out /tmp/sparsity.json               # any CPU
    python benchmarks/long_sequences.py --sizes 64 --tokens 512 --device cpu --out /tmp/t.json  # smoke run

Writes a PNG chart beside the JSON (needs matplotlib, extra `viz`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from report import environment  # noqa: E402
from genrec.config import ModelConfig, preset  # noqa: E402
from genrec.data.batch import SequenceBatch  # noqa: E402
from genrec.data.stochastic_length import expected_attention_work, stochastic_length  # noqa: E402
from genrec.model.hstu import HSTUEncoder  # noqa: E402
from genrec.ops.jagged import jagged_to_padded, offsets_from_lengths, padded_to_jagged  # noqa: E402
from genrec.train.experiment import peak_tflops  # noqa: E402

ALPHAS = (1.6, 1.7, 1.8, 1.9)
PAPER_TABLE3_ALPHA_1_7 = {1024: 0.561, 2048: 0.636, 4096: 0.698, 8192: 0.756}
MEDIAN_FRACTION, SIGMA = 0.25, 1.2
WIDE = {"embedding_dim": 512, "num_layers": 8, "num_heads": 4, "qk_dim": 128, "v_dim": 128, "dropout": 0.2}
WARMUP_STEPS, TIMED_STEPS, SL_DRAWS, PROFILED_STEPS, PROFILED_KERNELS = 3, 10, 5, 5, 8
MAX_SEARCH_TOKENS = 1 << 24


def history_lengths(max_len: int, num_tokens: int, seed: int) -> torch.Tensor:
    """Lognormal lengths (median N/4, sigma 1.2) capped at N, drawn until they hold num_tokens."""
    generator = torch.Generator().manual_seed(seed)
    draws = torch.exp(math.log(MEDIAN_FRACTION * max_len) + SIGMA * torch.randn(4 * num_tokens // max_len + 64,
                                                                                generator=generator))
    lengths = draws.round().clamp(1, max_len).long()
    count = int(torch.searchsorted(torch.cumsum(lengths, 0), num_tokens)) + 1
    return lengths[:count]


def sparsity_rows(sizes: list[int], alphas: tuple[float, ...]) -> list[dict]:
    rows = []
    for max_len in sizes:
        lengths = history_lengths(max_len, 2_000_000, seed=max_len)  # many users: the expectation's sample
        full = float((lengths.double() ** 2).sum())
        batch = _batch(lengths[:2000], max_len)
        drawn_full = float((batch.lengths.double() ** 2).sum())
        generator = torch.Generator().manual_seed(0)
        for alpha in alphas:
            drawn = float((stochastic_length(batch, alpha, generator).lengths.double() ** 2).sum())
            rows.append({"N": max_len, "alpha": alpha,
                         "sparsity": round(1 - expected_attention_work(lengths, max_len, alpha) / full, 4),
                         "sparsity_drawn": round(1 - drawn / drawn_full, 4),
                         "paper": PAPER_TABLE3_ALPHA_1_7.get(max_len) if alpha == 1.7 else None})
    return rows


def _batch(lengths: torch.Tensor, max_len: int) -> SequenceBatch:
    """Histories of these lengths, gaps of 1 s to 1 h between events (the time bias reads them)."""
    total = int(lengths.sum())
    gaps = torch.randint(1, 3600, (total,), generator=torch.Generator().manual_seed(total))
    return SequenceBatch(item_ids=torch.arange(1, total + 1), seq_offsets=offsets_from_lengths(lengths),
                         max_seq_len=max_len, timestamps=torch.cumsum(gaps, 0))


class TransformerBlock(nn.Module):
    """Pre-LN: x + Attn(LN(x)), then + FFN(LN(x)) with a 4x hidden layer."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads, self.dropout = num_heads, dropout
        self.attention_norm, self.ffn_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.attention_norm(x)).view(b, n, 3, self.num_heads, d // self.num_heads).unbind(2)
        attended = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                  is_causal=True, dropout_p=self.dropout)
        x = x + F.dropout(self.out(attended.transpose(1, 2).reshape(b, n, d)), self.dropout)
        return x + self.ffn(self.ffn_norm(x))


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(TransformerBlock(config.embedding_dim, config.num_heads, config.dropout)
                                      for _ in range(config.num_layers)))

    def forward(self, x: torch.Tensor, seq_offsets: torch.Tensor, max_len: int) -> torch.Tensor:
        """x [T, D] jagged -> [T, D], computed padded to the batch's longest sequence (max_len)."""
        return padded_to_jagged(self.blocks(jagged_to_padded(x, seq_offsets, max_len)), seq_offsets)

    def forward_flops(self, lengths: torch.Tensor) -> float:
        dim = self.blocks[0].out.in_features
        per_token = 2 * dim * (3 * dim + dim + 8 * dim)  # qkv, out, FFN up and down
        attention = 2 * 2 * dim * float((lengths.double() ** 2).sum()) / 2  # two matmuls, causal half
        return len(self.blocks) * (float(lengths.sum()) * per_token + attention)


class Case:
    """One model's training step on one history batch (optionally SL-subsampled, a fresh draw per step)."""

    def __init__(self, architecture: str, config: ModelConfig, lengths: torch.Tensor, max_len: int,
                 alpha: float, device: torch.device, compiled: bool = False) -> None:
        torch.manual_seed(0)
        self.architecture, self.max_len, self.device = architecture, max_len, device
        self.model = (Transformer(config) if architecture == "transformer"
                      else HSTUEncoder(config, max_len, use_time=True)).to(device)
        if compiled:  # the Transformer's padded stack: its padding checks lengths on the host
            (self.model.blocks if architecture == "transformer" else self.model).compile(dynamic=True)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, fused=device.type == "cuda")
        self.dim = config.embedding_dim
        self.history_tokens = int(lengths.sum())
        base = _batch(lengths, max_len)
        generator = torch.Generator().manual_seed(1)
        draws = [stochastic_length(base, alpha, generator) for _ in range(SL_DRAWS)] if alpha < 2 else [base]
        self.inputs = [self._inputs(batch) for batch in draws]
        self.computed = [batch.lengths for batch in draws]

    def _inputs(self, batch: SequenceBatch) -> tuple:
        x = torch.randn(int(batch.seq_offsets[-1]), self.dim, generator=torch.Generator().manual_seed(2))
        return (x.to(self.device), batch.seq_offsets.to(self.device), batch.timestamps.to(self.device),
                int(batch.lengths.max()))

    def step(self, index: int) -> None:
        x, offsets, timestamps, longest = self.inputs[index % len(self.inputs)]
        with torch.autocast(self.device.type, dtype=torch.bfloat16), \
                sdpa_kernel([SDPBackend.FLASH_ATTENTION] if self.device.type == "cuda" else [SDPBackend.MATH]):
            out = (self.model(x, offsets, longest) if self.architecture == "transformer"
                   else self.model(x, offsets, timestamps, sorted_timestamps=True))
            loss = out.float().square().mean()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def flops_per_step(self) -> float:
        return 3 * statistics.mean(self.model.forward_flops(lengths) for lengths in self.computed)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_case(case: Case, device: torch.device) -> dict:
    for index in range(WARMUP_STEPS):
        case.step(index)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = []
    for index in range(TIMED_STEPS):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            case.step(index)
            end.record()
            end.synchronize()
            seconds.append(start.elapsed_time(end) / 1e3)
        else:
            started = datetime.datetime.now()
            case.step(index)
            seconds.append((datetime.datetime.now() - started).total_seconds())
    step = statistics.median(seconds)
    tflops = case.flops_per_step() / step / 1e12
    peak = peak_tflops(device)
    return {"ms_per_step": round(step * 1e3, 3), "history_tokens": case.history_tokens,
            "computed_tokens": round(statistics.mean(float(lengths.sum()) for lengths in case.computed)),
            "history_tokens_per_s": round(case.history_tokens / step), "tflops": round(tflops, 2),
            "mfu": None if peak is None else round(tflops / peak, 4),
            "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None}


def kernel_times(case: Case, device: torch.device) -> dict:
    """The step's largest kernels: ms per step each (device time on a GPU, CPU time on a CPU), and all kernels'."""
    from torch.profiler import ProfilerActivity, profile

    on_gpu = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CUDA if on_gpu else ProfilerActivity.CPU]) as profiler:
        for index in range(PROFILED_STEPS):
            case.step(index)
        _sync(device)
    events = [event for event in profiler.key_averages()
              if (event.device_time_total if on_gpu else event.self_cpu_time_total) > 0]
    per_step = {event.key: (event.device_time_total if on_gpu else event.self_cpu_time_total) / PROFILED_STEPS / 1e3
                for event in events}
    largest = sorted(per_step.items(), key=lambda item: -item[1])[:PROFILED_KERNELS]
    return {"kernels_ms": {name[:80]: round(ms, 3) for name, ms in largest},
            "all_kernels_ms": round(sum(per_step.values()), 3)}


def step_rows(sizes: list[int], tokens: int, device: torch.device, compile_modes: list[bool],
              alphas: tuple[float, ...], profile_kernels: bool, emit) -> None:
    config = _config(WIDE)
    for max_len in sizes:
        lengths = history_lengths(max_len, tokens, seed=max_len + 1)
        for compiled in compile_modes:
            baseline = None
            for architecture, alpha in [("transformer", 2.0), ("hstu", 2.0)] + [("hstu", a) for a in alphas]:
                row = {"N": max_len, "model": architecture, "alpha": None if alpha == 2.0 else alpha,
                       "compiled": compiled, "sequences": len(lengths)}
                case = Case(architecture, config, lengths, max_len, alpha, device, compiled)
                row.update(time_case(case, device))
                if profile_kernels:
                    row.update(kernel_times(case, device))
                del case
                baseline = baseline or row["ms_per_step"]
                row["speedup_vs_transformer"] = round(baseline / row["ms_per_step"], 2)
                emit("steps", row)
                _free(device)


def memory_rows(max_len: int, tokens: int, device: torch.device, emit) -> None:
    """Activation memory per token with and without recomputation, and the largest batch that fits."""
    for name, fields in (("hstu-large-like", {}), ("d512-8-layer", WIDE)):
        for recompute in (False, True):
            config = _config(fields, checkpoint_layers=8 if recompute else 0)
            case = Case("hstu", config, history_lengths(max_len, tokens, seed=3), max_len, 2.0, device)
            case.step(0)  # the optimizer's state exists from here on
            _sync(device)
            static = torch.cuda.memory_allocated()
            row = {"model": name, "checkpoint_layers": config.checkpoint_layers, "N": max_len}
            row.update(time_case(case, device))
            row["activation_bytes_per_token"] = round((row["peak_memory_gb"] * 2**30 - static) / case.history_tokens)
            del case
            _free(device)
            row["largest_fitting_tokens"] = _largest_fitting(config, max_len, row["activation_bytes_per_token"],
                                                             device)
            emit("memory", row)


def _largest_fitting(config: ModelConfig, max_len: int, bytes_per_token: int, device: torch.device) -> int:
    """Doubling from the power of two below half of what the free memory holds at this cost per token."""
    free, _ = torch.cuda.mem_get_info()
    tokens = 1 << max(10, int(math.log2(free / 2 / bytes_per_token)))
    fitted = 0
    while tokens <= MAX_SEARCH_TOKENS:
        try:
            Case("hstu", config, history_lengths(max_len, tokens, seed=4), max_len, 2.0, device).step(0)
            _sync(device)
            fitted = tokens
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            _free(device)
        tokens *= 2
    return fitted


def _config(fields: dict, checkpoint_layers: int = 0) -> ModelConfig:
    config = preset("hstu-large").model  # d = 50, 8 layers, 2 heads of 25
    for key, value in fields.items():
        setattr(config, key, value)
    config.attention_backend, config.checkpoint_layers = "auto", checkpoint_layers
    return config


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _format(row: dict) -> str:
    return "  ".join(f"{key}={value}" for key, value in row.items() if value is not None)


def write_chart(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if result["steps"] else 1
    figure, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.2), squeeze=False)
    sparsity = axes[0][0]
    for alpha in sorted({row["alpha"] for row in result["sparsity"]}):
        rows = [row for row in result["sparsity"] if row["alpha"] == alpha]
        sparsity.plot([row["N"] for row in rows], [100 * row["sparsity"] for row in rows], marker="o",
                      label=f"alpha {alpha}")
    sizes = sorted({row["N"] for row in result["sparsity"]})
    paper = [(n, s) for n, s in sorted(PAPER_TABLE3_ALPHA_1_7.items()) if n in sizes]
    sparsity.plot([n for n, _ in paper], [100 * s for _, s in paper], "k*", markersize=10,
                  label="paper Table 3, alpha 1.7")
    sparsity.set(xscale="log", xlabel="max length N", ylabel="attention work removed (%)",
                 title="Stochastic Length sparsity")
    sparsity.set_xticks(sizes, [str(n) for n in sizes])
    sparsity.minorticks_off()
    sparsity.legend(fontsize=8)
    if result["steps"]:
        speed = axes[0][1]
        hstu = [row for row in result["steps"] if row["model"] == "hstu"]
        alphas = sorted({row["alpha"] for row in hstu}, key=lambda alpha: alpha or 2.0)
        colors = dict(zip(alphas, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
        for compiled in sorted({row.get("compiled", False) for row in hstu}):
            for alpha in alphas:
                rows = [row for row in hstu if row["alpha"] == alpha and row.get("compiled", False) == compiled]
                label = "HSTU, SL off" if alpha is None else f"HSTU, SL alpha {alpha}"
                speed.plot([row["N"] for row in rows], [row["speedup_vs_transformer"] for row in rows], marker="o",
                           color=colors[alpha], linestyle="--" if compiled else "-",
                           label=label + (", both compiled" if compiled else ""))
        speed.axhline(1.0, color="grey", linestyle=":", label="Transformer (flash, padded)")
        sizes = sorted({row["N"] for row in result["steps"]})
        speed.set(xscale="log", ylim=(0, None), xlabel="max length N", ylabel="training-step speedup",
                  title=f"HSTU vs Transformer, one step ({result['device']})")
        speed.set_xticks(sizes, [str(n) for n in sizes])
        speed.minorticks_off()
        speed.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1024,2048,4096,8192", help="max lengths N")
    parser.add_argument("--tokens", type=int, default=65536, help="history tokens per step (before SL)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--alphas", default=",".join(map(str, ALPHAS)), help="SL alphas timed beside SL off")
    parser.add_argument("--compile", choices=("off", "on", "both"), default="off",
                        help="run both models through torch.compile (on), or eager and compiled (both)")
    parser.add_argument("--skip-memory", action="store_true", help="no activation-memory rows")
    parser.add_argument("--profile", action="store_true", help="each step row's largest kernels (torch.profiler)")
    parser.add_argument("--sparsity-only", action="store_true", help="Table 3 only (no training steps)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/long_sequences.json"))
    parser.add_argument("--chart-from", type=Path, help="only draw the chart of this results file")
    args = parser.parse_args()
    if args.chart_from:
        write_chart(json.loads(args.chart_from.read_text()), args.chart_from.with_suffix(".png"))
        return
    sizes = [int(size) for size in args.sizes.split(",")]
    device = torch.device(args.device)
    result = {**environment(device.type), "triton": _triton_version(),
              "length_distribution": {"kind": "lognormal, capped at N", "median": f"{MEDIAN_FRACTION} N",
                                      "sigma": SIGMA, "min": 1},
              "model": WIDE, "sparsity": [], "steps": [], "memory": []}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def emit(section: str, row: dict) -> None:  # every row is saved at once: a time limit keeps what finished
        result[section].append(row)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(_format(row), flush=True)

    for row in sparsity_rows(sizes, ALPHAS + (2.0,)):
        emit("sparsity", row)
    if not args.sparsity_only:
        compile_modes = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
        alphas = tuple(float(alpha) for alpha in args.alphas.split(",") if alpha)
        step_rows(sizes, args.tokens, device, compile_modes, alphas, args.profile, emit)
        if device.type == "cuda" and not args.skip_memory:
            memory_rows(max(sizes), args.tokens, device, emit)
    write_chart(result, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


if __name__ == "__main__":
    main()
