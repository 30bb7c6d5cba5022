"""Compiles the attention kernels ahead of time for an H100 (sm_90) with triton's bundled ptxas, no
GPU needed; run in a process without TRITON_INTERPRET (the interpreter replaces the compiler).

    python tests/ops/compile_for_hopper.py [--quick]   # one line per variant: shared memory, SFU ops in the PTX,
                                                       # registers and spill stack per thread (cuobjdump)
    python tests/ops/compile_for_hopper.py --tiles bwd_kv   # bf16, D = 128: every tile of the kernel's tuning list

--quick compiles each kernel (bf16) with every option and the bias on at head dim 25 (no window-free tiles
then), then plain (but the bias-gradient kernel), with the position bias alone, and the backward through its
scratch with both biases, at head dim 128 (whole tiles below the diagonal in their own loop). --tiles shows where
a tile runs out of registers: a kernel that spills (stack > 0) keeps part of its tile in local memory.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from genrec.ops.attention import kernel

INT64_POINTERS = {"seq_offsets", "num_targets", "scratch_offsets", "ts", "qts", "time_g"}
FP32_POINTERS = {"pos_w", "time_w", "DPOS", "DTIME"}
FLOATS = {"alpha", "inv_n", "time_scale"}
KERNELS = {"fwd": (kernel._fwd_kernel, (128, 64, 8, 3)), "bwd_kv": (kernel._bwd_kv_kernel, (64, 64, 4, 2)),
           "bwd_q": (kernel._bwd_q_kernel, (128, 64, 8, 2)), "bwd_bias": (kernel._bwd_bias_kernel, (64, 64, 8, 2))}


def signature(fn, dtype: str, constexprs: dict) -> dict[str, str]:
    """The launch's argument types: the forward gathers bias weights in the inputs' dtype, the backward in fp32
    (kernel._Options); the position table is in the inputs' dtype in both."""
    forward = fn is kernel._fwd_kernel
    types = {}
    for name in fn.arg_names:
        if name in constexprs:
            types[name] = "constexpr"
        elif name in INT64_POINTERS:
            types[name] = "*i64"
        elif name in FP32_POINTERS:
            in_dtype = (name == "time_w" and forward) or (name == "pos_w" and (forward or constexprs["POS_TABLE"]))
            types[name] = f"*{dtype}" if in_dtype else "*fp32"
        elif name in FLOATS:
            types[name] = "fp32"
        elif name in ("P_S", "DS_S") and fn is kernel._bwd_kv_kernel:  # tensor descriptors, blocked by the tile
            types[name] = f"tensordesc<{dtype}[{constexprs['BLOCK_M']},{constexprs['BLOCK_N']}]>"
        elif name.startswith("stride") or name in ("max_seq_len", "max_attn_len", "contextual_len", "num_buckets",
                                                   "length_tier", "scratch_stride"):
            types[name] = "i32"
        else:
            types[name] = f"*{dtype}"
    return types


def compile_variant(name: str, dtype: str, variant: str, head_dim: int, tile: tuple | None = None) -> dict:
    """variant: "plain"; "position" (the position bias alone, read from its table); "all" (every option and
    both biases; with candidates the position bias is gathered); "scratch" (both biases, no other option, the
    backward through its scratch). tile: (block_m, block_n, warps, stages[, split])
    instead of the kernel's default (block_m alone for the bias kernel's square tiles)."""
    fn, (block_m, block_n, warps, stages) = KERNELS[name]
    split = variant == "position"
    if tile is not None:
        block_m, block_n, warps, stages, split = (*tile, False)[:5]
    flags = dict.fromkeys(("HAS_TARGETS", "HAS_POS", "TIME_BIAS", "HAS_WINDOW", "HAS_CONTEXT"), variant == "all")
    # with timestamps sorted within each sequence, as genrec's batches have them
    flags.update(HAS_POS=variant != "plain", POS_TABLE=variant in ("position", "scratch"),
                 TIME_BIAS=2 * (variant in ("all", "scratch")))
    block_dim = max(16, triton.next_power_of_2(head_dim))
    constexprs = dict(H=4, DQK=head_dim, DV=head_dim, IEEE=dtype == "fp32", BLOCK_DQK=block_dim,
                      BLOCK_DV=block_dim, **flags)
    if name == "bwd_bias":  # square tiles along block diagonals
        constexprs.update(BLOCK=block_m, BLOCK_REL=2 * block_m, BLOCK_BUCKETS=256)
    else:
        constexprs.update(BLOCK_M=block_m, BLOCK_N=block_n)
    if name == "bwd_kv":  # which sums the time buckets only without a position bias; "position" as split programs
        constexprs.update(TIME_GRAD=flags["TIME_BIAS"] and not flags["HAS_POS"], BLOCK_BUCKETS=256,
                          SPLIT=split)
    if "SCRATCH" in fn.arg_names:
        constexprs["SCRATCH"] = variant == "scratch"
        if variant != "scratch":  # the launchers pass None for the scratch's descriptors then
            constexprs.update(P_S=None, DS_S=None)
    types = signature(fn, dtype, constexprs)
    # what a launch specialises on: 16-byte aligned pointers, and strides divisible by 16 where they are
    aligned = [name for name, kind in types.items() if kind.startswith("*")
               or (name.startswith("stride") and head_dim % 16 == 0)]
    attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in aligned}
    source = ASTSource(fn=fn, signature=types, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": warps, "num_stages": stages})
    ptx = compiled.asm["ptx"]
    return {"shared_bytes": compiled.metadata.shared, "async_copies": compiled.asm["ttgir"].count("async_copy_global"),
            "sfu_ops": {op: len(re.findall(rf"\b{op}\.approx", ptx)) for op in ("tanh", "ex2", "rcp", "lg2")},
            "divisions": len(re.findall(r"\bdiv\.\w+\.f32", ptx)),
            "4-byte async copies": len(re.findall(r"cp\.async\.\w+\.shared\.global \[[^]]*\], \[[^]]*\], 0x4,", ptx)),
            "2-byte loads": len(re.findall(r"\bld\.global\.b16", ptx)),
            "2-byte stores": len(re.findall(r"\bst\.global\.b16", ptx)),
            **resource_usage(compiled.asm["cubin"])}


def resource_usage(cubin: bytes) -> dict:
    """Registers and spill stack per thread, as triton's bundled cuobjdump reads them off the cubin."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        usage = subprocess.run([tool, "-res-usage", file.name], capture_output=True, text=True, check=True).stdout
    registers, stack = re.search(r"REG:(\d+) STACK:(\d+)", usage).groups()
    return {"registers": int(registers), "stack": int(stack)}


def tuned_tiles(name: str) -> list[tuple]:
    """The tiles the autotuner may give this kernel (kernel.py's lists)."""
    if name == "bwd_kv":
        return ([(*tile, False) for tile in kernel._KEY_BLOCK_CONFIGS]
                + [(*tile, True) for tile in kernel._SPLIT_KEY_BLOCK_CONFIGS])
    if name == "bwd_bias":
        return [(block, block, warps, stages) for block, warps, stages in kernel._DIAGONAL_CONFIGS]
    return list(kernel._ROW_BLOCK_CONFIGS)


def main() -> None:
    if "--tiles" in sys.argv:
        name = sys.argv[sys.argv.index("--tiles") + 1]
        for tile, variant in itertools.product(tuned_tiles(name), ("plain", "position", "all", "scratch")):
            if (name == "bwd_bias" and variant == "plain") or (name == "fwd" and variant == "scratch"):
                continue
            info = compile_variant(name, "bf16", variant, 128, tile)
            print(f"{name:<8} tile {tile} {variant:<9} registers {info['registers']} stack {info['stack']} "
                  f"shared {info['shared_bytes']}", flush=True)
        return
    variants = itertools.product(KERNELS, ("bf16", "fp32"), ("plain", "position", "all", "scratch"), (128, 25))
    if "--quick" in sys.argv:
        variants = [(name, "bf16", variant, head_dim) for variant, head_dim in (("all", 25), ("plain", 128),
                                                                                 ("position", 128), ("scratch", 128))
                    for name in KERNELS]
    for name, dtype, variant, head_dim in variants:
        # the bias kernel runs only with a bias; the forward has no scratch
        if (name == "bwd_bias" and variant == "plain") or (name == "fwd" and variant == "scratch"):
            continue
        info = compile_variant(name, dtype, variant, head_dim)
        print(f"{name:<7} {dtype} {variant:<9} D={head_dim:<4} {info}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
