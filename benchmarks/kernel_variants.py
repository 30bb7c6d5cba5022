"""Which version of the fused attention kernels is faster? Loads several copies of kernel.py (files) into one
process and times each one's backward (or forward) kernels on the same inputs, per kernel (torch.profiler), so
that an A/B of a kernel change runs on one GPU in one call. Also prints each version's largest difference from
the first's outputs and the tiles the autotuner picked. Writes JSON and a bar chart (PNG) beside it.

Inputs as benchmarks/attention.py's D = 128 cases: 4 heads of 128, ~124k bf16 tokens in sequences of 0.9-1 N,
time gaps of 1 s to 1 h; relative bias parts as --rab says (none: no bias, the baseline of rab's cost). --kernels
bias: the bias-gradient kernel alone, recomputing ds (compiles in a fraction of the time); all: the whole backward (dQ,
dK/dV, bias; through the scratch where the version has one and GENREC_BACKWARD_SCRATCH_GB allows it); fwd: the
forward.

    git show HEAD~1:src/genrec/ops/attention/kernel.py > /tmp/kernel_before.py
    python benchmarks/kernel_variants.py /tmp/kernel_before.py src/genrec/ops/attention/kernel.py --out /tmp/k.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from attention import make_case  # noqa: E402
from report import bar_chart, environment  # noqa: E402
from genrec.ops.attention.rab import query_timestamps  # noqa: E402
from genrec.ops.jagged import offsets_from_lengths  # noqa: E402

TIMED = 5


def load(path: str):
    spec = importlib.util.spec_from_file_location(f"kernel_variant_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def launches_of(module, inputs: dict, kernels: str):
    """The version's forward, its backward (all its kernels), or its bias-gradient kernel alone launched as backward
    does; each returns a tuple of outputs."""
    q, k, v, grad = inputs["q"], inputs["k"], inputs["v"], inputs["grad"]
    args = (inputs["offsets"], None, inputs["position"], inputs["time"], inputs["stamps"], inputs["queries"],
            inputs["n"], 1.0 / q.shape[2], 0, 0, 0.301, True)
    if kernels == "fwd":
        return lambda: (module.forward(q, k, v, *args),)
    if kernels == "all":
        return lambda: module.backward(grad, q, k, v, *args)

    def bias_only():
        options = module._Options(q, v, *args, backward=True)
        dpos = torch.zeros_like(inputs["position"])
        dtime = torch.zeros(0 if inputs["time"] is None else inputs["time"].numel(), device=q.device)
        strides = (q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), grad.stride(0),
                   grad.stride(1))
        if "SCRATCH" not in module._bwd_bias_kernel.arg_names:  # a version from before the backward's scratch
            for grid, pointers in options.launches("BLOCK", diagonals=True):
                module._bwd_bias[grid](q, k, v, grad, dpos, dtime, *pointers, *strides, *options.scalars,
                                       **options.bias_constexprs)
            return dpos, dtime
        unused = inputs["offsets"]  # the bias kernel alone recomputes ds: no scratch, placeholders for its pointers
        for grid, pointers in options.launches("BLOCK", diagonals=True, scratch_offsets=unused):
            module._bwd_bias[grid](q, k, v, grad, dpos, dtime, *pointers, unused, unused, *strides, 0,
                                   *options.scalars, **options.bias_constexprs, SCRATCH=False)
        return dpos, dtime
    return bias_only


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+",
                        help="copies of src/genrec/ops/attention/kernel.py; the first is the baseline")
    parser.add_argument("--n", type=int, default=8192, help="max length N")
    parser.add_argument("--rab", choices=("none", "position", "position+time"), default="position+time")
    parser.add_argument("--kernels", choices=("bias", "all", "fwd"), default="bias",
                        help="bias: the bias-gradient kernel; all: the whole backward; fwd: the forward")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.kernels == "bias" and args.rab == "none":
        parser.error("--kernels bias times the bias-gradient kernel, which runs only with a bias")
    lengths, q, k, v, stamps = make_case(args.n, 4, 128, None, (0.9, 1.0), seed=args.n + 128)
    offsets = offsets_from_lengths(lengths)
    with_time = args.rab == "position+time"
    inputs = {"q": q, "k": k, "v": v, "grad": torch.randn_like(q), "offsets": offsets, "n": args.n,
              "position": torch.randn(2 * args.n - 1, device="cuda") * 0.02 if args.rab != "none" else None,
              "time": torch.randn(129, device="cuda") * 0.02 if with_time else None,
              "stamps": stamps if with_time else None,
              "queries": query_timestamps(stamps, offsets, None) if with_time else None}
    result = {**environment("cuda"), "n": args.n, "rab": args.rab, "kernels": args.kernels, "rows": []}
    first = None
    for path in args.files:
        module = load(path)
        run = launches_of(module, inputs, args.kernels)
        outputs = run()  # autotunes
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(TIMED):
                run()
            torch.cuda.synchronize()
        times = {event.key: round(event.device_time_total / TIMED / 1e3, 3) for event in prof.key_averages()
                 if event.key.startswith("_") and event.key.endswith("_kernel")}
        first = first or outputs
        difference = max(float((a.float() - b.float()).abs().max()) for a, b in zip(outputs, first) if a.numel())
        picks = {name: str(getattr(module, name).best_config) for name in ("_fwd", "_bwd_kv", "_bwd_q", "_bwd_bias")
                 if hasattr(getattr(module, name), "best_config")}
        row = {"file": path, "ms": times, "max_difference_from_first": difference, "tiles": picks}
        result["rows"].append(row)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"{path}: " + ", ".join(f"{key} {ms:.2f} ms" for key, ms in sorted(times.items()))
              + f"; max |difference| from the first {difference:.3g}", flush=True)
    kernels = sorted({key for row in result["rows"] for key in row["ms"]})
    what = "forward kernel" if args.kernels == "fwd" else "backward kernels"
    bar_chart(args.out.with_suffix(".png"), f"{what}, N = {args.n}, rab: {args.rab} ({result['device']})",
              kernels, {row["file"]: [row["ms"].get(key, 0.0) for key in kernels]
                        for row in result["rows"]}, "GPU ms per call")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
