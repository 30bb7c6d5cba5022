"""How does a training step scale over GPUs when the item table is sharded by rows? (weak and strong scaling)

For each world size W in --gpus, `torchrun --nproc_per_node W` runs this file's worker. The worker builds genrec's
retrieval model and its training step as `genrec train` builds them:
- DDP for the dense weights;
- the item table stored in bf16 and sharded by rows across the ranks (train.item_table_sharding = rows,
  genrec.train.parallel.shard_item_tables); with W = 1 it is one whole table with sparse gradients;
- row-wise AdaGrad for the table and AdamW for the rest, and sampled softmax with 512 negatives under bf16
  autocast.
It then times steps on random jagged batches. Lengths are lognormal with median max_len / 4 and sigma 1.2, capped at
max_len. Item ids are Zipf over the table's rows, so a step's unique ids and its all-to-all traffic look like a log's.
- weak scaling: --users-per-rank users on every rank (the global batch grows with W);
- strong scaling: --users-per-rank x max(--gpus) users split over the W ranks.
Reported per (model, W, mode): ms/step, global tokens/s, speedup against W = 1, MFU, peak GPU memory, and the
communication share. The share is the time of the NCCL kernels over the CUDA time of the profiled steps, on rank 0.
Models:
- `large`: HSTU-large-like (d = 50, 8 layers, 2 heads of 25);
- `wide`: d = 512, 8 layers, 4 heads of 128.
NCCL's NVLink multicast stays off (NCCL_NVLS_ENABLE=0).

    python benchmarks/multigpu.py --gpus 1,2,4,8 --rows 50000000 --out benchmarks/results/multigpu.json   # GPUs
    python benchmarks/multigpu.py --gpus 1,2 --rows 20000 --users-per-rank 8 --models large --device cpu \\
        --out /tmp/multigpu.json                                                                   # smoke run, Gloo

Writes a PNG chart beside the JSON (needs matplotlib, extra `viz`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from report import environment, pyplot, save_chart  # noqa: E402

MODELS = {"large": dict(embedding_dim=50, num_layers=8, num_heads=2, qk_dim=25, v_dim=25),
          "wide": dict(embedding_dim=512, num_layers=8, num_heads=4, qk_dim=128, v_dim=128)}
WARMUP_STEPS, TIMED_STEPS, PROFILED_STEPS = 3, 10, 3
NUM_NEGATIVES, MAX_LEN = 512, 512


def random_batch(num_users: int, num_rows: int, generator, device):
    """Jagged histories: lognormal lengths (median MAX_LEN / 4, sigma 1.2, capped), Zipf(1.1)-like item ids."""
    import torch

    from genrec.data.batch import SequenceBatch
    from genrec.ops.jagged import offsets_from_lengths

    lengths = torch.exp(math.log(MAX_LEN / 4) + 1.2 * torch.randn(num_users, generator=generator))
    lengths = lengths.round().clamp(2, MAX_LEN).long()
    total = int(lengths.sum())
    # inverse-CDF draw of a power law over ranks 1..num_rows - 1, scattered over the rows by a fixed permutation
    ranks = (torch.rand(total, generator=generator) * math.log(num_rows - 1)).exp().long().clamp(1, num_rows - 1)
    item_ids = (ranks * 2_654_435_761) % (num_rows - 1) + 1
    gaps = torch.randint(1, 86_400, (total,), generator=generator)
    batch = SequenceBatch(item_ids, offsets_from_lengths(lengths), MAX_LEN, timestamps=torch.cumsum(gaps, 0))
    return batch.to(device), lengths


def worker(args) -> None:
    """One rank of one (model, world size, mode) under torchrun; rank 0 prints a JSON line."""
    import torch
    import torch.distributed as dist
    from torch.profiler import ProfilerActivity, profile

    from genrec.config import preset
    from genrec.model import SequentialRetriever
    from genrec.ops.jagged import positions_with_successor
    from genrec.train.experiment import peak_tflops
    from genrec.train.losses import sampled_softmax_loss
    from genrec.train.optimizers import build_optimizer
    from genrec.train.parallel import data_parallel, exit_rank, init_distributed, shard_item_tables

    ranks, device = init_distributed(args.device)
    device = device or torch.device(args.device if args.device != "auto" else "cuda")
    config = preset("hstu")
    for key, value in MODELS[args.model].items():
        setattr(config.model, key, value)
    config.model.item_table_dtype, config.data.max_seq_len = "bfloat16", MAX_LEN
    config.train.embedding_optimizer, config.train.item_table_sharding = "rowwise_adagrad", "rows"
    config.validate()
    torch.manual_seed(0)
    with torch.device(device):  # built where it trains; a sharded table never whole: each rank draws its rows
        model = SequentialRetriever(config.model, args.rows - 1, MAX_LEN, use_time=True,
                                    build_item_table=not ranks.enabled)
    sharded = shard_item_tables(model, ranks)
    train_model = data_parallel(model, ranks, device)
    optimizer = build_optimizer(config.train, model, sparse_tables=not ranks.enabled)
    users = args.users_per_rank if args.mode == "weak" else args.users_per_rank * args.max_world // ranks.world_size
    generator = torch.Generator().manual_seed(1 + ranks.rank)
    sample = torch.Generator(device).manual_seed(2 + ranks.rank)
    autocast = device.type == "cuda"

    def step() -> int:
        batch, lengths = random_batch(users, args.rows, generator, device)
        positions = positions_with_successor(batch.seq_offsets.cpu()).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            user = train_model(batch).index_select(0, positions)
            loss = sampled_softmax_loss(user, batch.item_ids[positions + 1], model.item_embeddings, args.rows - 1,
                                        NUM_NEGATIVES, config.train.loss.temperature, sample,
                                        similarity=model.similarity, whole_table=not sharded)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return int(lengths.sum())

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        if ranks.enabled:
            dist.barrier()

    for _ in range(WARMUP_STEPS):
        step()
    synchronize()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started, tokens = time.perf_counter(), 0
    for _ in range(TIMED_STEPS):
        tokens += step()
    synchronize()
    seconds = (time.perf_counter() - started) / TIMED_STEPS
    communication = None
    if device.type == "cuda":
        with profile(activities=[ProfilerActivity.CUDA]) as profiler:
            for _ in range(PROFILED_STEPS):
                step()
            synchronize()
        kernels = [event for event in profiler.key_averages() if event.device_time_total > 0]
        total = sum(event.device_time_total for event in kernels)
        nccl = sum(event.device_time_total for event in kernels if "nccl" in event.key.lower())
        communication = round(nccl / total, 4) if total else None
    everyone = torch.tensor([tokens / TIMED_STEPS], dtype=torch.float64, device=device)
    if ranks.enabled:
        dist.all_reduce(everyone)
    step_flops = 3 * model.encoder.forward_flops(lengths_of(users, args.rows, ranks.world_size))
    peak = peak_tflops(device)
    if ranks.is_main:
        tokens_per_s = float(everyone) / seconds
        print(json.dumps({
            "model": args.model, "world_size": ranks.world_size, "mode": args.mode, "users_per_rank": users,
            "table_rows": args.rows, "table_gb_per_rank": round(model.embedding.item.weight.numel() * 2 / 2**30, 2),
            "ms_per_step": round(seconds * 1e3, 2), "tokens_per_s": round(tokens_per_s),
            "mfu": round(step_flops / seconds / 1e12 / peak, 4) if peak else None,
            "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
            "communication_share": communication}))
    exit_rank(ranks)


def lengths_of(users: int, num_rows: int, world_size: int):
    """The lengths of one rank's batch, for the FLOP count (every rank draws from the same distribution; the
    count is rank 0's share times the ranks)."""
    import torch

    generator = torch.Generator().manual_seed(1)
    _, lengths = random_batch(users, num_rows, generator, "cpu")
    return lengths.repeat(world_size)


def write_chart(result: dict, path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return

    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, mode in zip(axes, ("weak", "strong")):
        for model in MODELS:
            rows = sorted((r for r in result["rows"] if r["mode"] == mode and r["model"] == model),
                          key=lambda r: r["world_size"])
            if rows:
                axis.plot([r["world_size"] for r in rows], [r["speedup"] for r in rows], "o-", label=model)
        worlds = sorted({r["world_size"] for r in result["rows"]})
        axis.plot(worlds, worlds, ":", color="grey", label="linear")
        axis.set_title(f"{mode} scaling")
        axis.set_xlabel("GPUs")
        axis.set_ylabel("tokens/s against 1 GPU")
        axis.legend(fontsize=8)
    save_chart(figure, f"{result['rows'][0]['table_rows']:,}-row item table sharded by rows, {result['device']}", path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--gpus", default="1,2,4,8", help="world sizes")
    parser.add_argument("--models", default="large,wide")
    parser.add_argument("--rows", type=int, default=50_000_000, help="item table rows")
    parser.add_argument("--users-per-rank", type=int, default=64)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # internal: one torchrun rank
    parser.add_argument("--model", default="large", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="weak", help=argparse.SUPPRESS)
    parser.add_argument("--max-world", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    worlds = [int(w) for w in args.gpus.split(",")]
    result = {**environment(args.device), "rows": []}
    for model in args.models.split(","):
        for mode in ("weak", "strong"):
            for world in worlds:
                command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(world), __file__, "--worker", "--model", model, "--mode", mode, "--rows",
                           str(args.rows), "--users-per-rank", str(args.users_per_rank), "--device", args.device,
                           "--max-world", str(max(worlds)), "--out", str(args.out)]
                # NVLink multicast can take a shared host's GPUs out of service
                environment_vars = {**os.environ, "NCCL_NVLS_ENABLE": "0"}
                run = subprocess.run(command, capture_output=True, text=True, env=environment_vars)
                if run.returncode != 0:
                    raise SystemExit(f"{model} {mode} W={world} failed:\n{run.stderr[-4000:]}")
                row = json.loads(run.stdout.strip().splitlines()[-1])
                base = next((r for r in result["rows"] if (r["model"], r["mode"], r["world_size"]) == (model, mode, 1)),
                            row)
                row["speedup"] = round(row["tokens_per_s"] / base["tokens_per_s"], 3)
                result["rows"].append(row)
                print(json.dumps(row))
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(result, indent=2) + "\n")
    write_chart(result, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
