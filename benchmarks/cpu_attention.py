"""Is grouping sequences by length worth it on the CPU? The PyTorch backend's attention (forward + backward, with the
position and time bias) over real training batches, padded to each batch's longest (the reference) and padded
group by group (genrec.ops.attention.length_groups), in the same run; median over the batches of each data set.

    python benchmarks/cpu_attention.py --data-root ../shared/data --out benchmarks/results/cpu-attention.json

Prints a table, writes the JSON and a PNG chart beside it (the chart needs matplotlib, extra `viz`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from public import DATASETS  # noqa: E402
from report import bar_chart, environment  # noqa: E402

from genrec.config import preset  # noqa: E402
from genrec.data import make_batch  # noqa: E402
from genrec.model.rab import RelativeBias  # noqa: E402
from genrec.ops.attention import hstu_attention_reference  # noqa: E402
from genrec.ops.attention.length_groups import hstu_attention_grouped  # noqa: E402
from genrec.train.experiment import prepare_data  # noqa: E402

PATHS = {"reference (padded to the batch's longest)": hstu_attention_reference,
         "grouped by length": hstu_attention_grouped}


def batches(data_root: Path, dataset: str, count: int, batch_size: int, max_seq_len: int) -> list:
    config = preset("hstu")
    if dataset == "synthetic-stream":
        config.data.dataset, config.data.synthetic_users = "synthetic-stream", 5000
    else:
        config.data.dataset, relative = DATASETS[dataset]
        config.data.path = str(data_root / relative)
    train = prepare_data(config).split.train
    order = np.random.default_rng(0).permutation(train.num_users)
    return [make_batch(train, order[i * batch_size:(i + 1) * batch_size], max_seq_len) for i in range(count)]


def step_seconds(attention, batch, bias: RelativeBias, heads: int, dim: int) -> float:
    tokens = batch.item_ids.numel()
    q, k, v = (torch.randn(tokens, heads, dim, requires_grad=True) for _ in range(3))
    started = time.perf_counter()
    out = attention(q, k, v, batch.seq_offsets, max_seq_len=batch.max_seq_len, alpha=1.0,
                    rab=bias(batch.timestamps, batch.timestamps_sorted))
    out.sum().backward()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--datasets", default="ml-1m-3k,ml-1m-sas,synthetic-stream")
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-seq-len", type=int, default=200)
    parser.add_argument("--heads", type=int, default=1, help="the hstu preset's shape: 1 head of 50")
    parser.add_argument("--dim", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu-attention.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    bias = RelativeBias(args.max_seq_len, 128, 0.301, use_position=True, use_time=True)
    result = {**environment("cpu"), "threads": torch.get_num_threads(), "rows": []}
    print(f"{'data set':<18} {'tokens':>7} {'padded':>7}  " + "  ".join(f"{name[:26]:>26}" for name in PATHS)
          + "  speedup")
    for dataset in args.datasets.split(","):
        made = batches(args.data_root, dataset, args.batches, args.batch_size, args.max_seq_len)
        for batch in made[:2]:  # warm-up
            for attention in PATHS.values():
                step_seconds(attention, batch, bias, args.heads, args.dim)
        seconds = {name: statistics.median(step_seconds(attention, batch, bias, args.heads, args.dim)
                                           for batch in made) for name, attention in PATHS.items()}
        lengths = [batch.lengths for batch in made]
        row = {"dataset": dataset, "mean_tokens": round(statistics.mean(int(x.sum()) for x in lengths)),
               # the reference's padded work against the sequences' own: sum of B * max^2 over sum of L^2
               "padding_factor": round(sum(len(x) * int(x.max()) ** 2 for x in lengths)
                                       / sum(int((x ** 2).sum()) for x in lengths), 2),
               "ms": {name: round(1000 * value, 1) for name, value in seconds.items()}}
        reference, grouped = seconds.values()
        row["speedup"] = round(reference / grouped, 2)
        result["rows"].append(row)
        print(f"{dataset:<18} {row['mean_tokens']:>7} {row['padding_factor']:>6}x  "
              + "  ".join(f"{row['ms'][name]:>23} ms" for name in PATHS) + f"  {row['speedup']:.2f}x", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    chart(result, args.out.with_suffix(".png"))


def chart(result: dict, path: Path) -> None:
    rows = result["rows"]
    bar_chart(path, f"PyTorch attention over training batches, {result['device']}",
              [f"{row['dataset']}\n(padding {row['padding_factor']}x)" for row in rows],
              {name: [row["ms"][name] for row in rows] for name in PATHS}, "ms per batch, forward + backward")


if __name__ == "__main__":
    main()
