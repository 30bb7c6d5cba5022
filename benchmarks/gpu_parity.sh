#!/bin/bash
# GPU parity of the fused attention kernels on the device, in groups that each fit one device call (compiling
# every variant cold takes ~25 s a case on an H200; the whole training-kernel file does not fit one 10-minute
# call). Training kernels (tests/ops/test_attention_kernel.py): one fixed tile per launch (GENREC_AUTOTUNE=0).
# M-FALCON's candidate kernel (group candidates): autotuned, plus every tile of its tuning list launched as is; then
# its CUDA graphs against the eager pass (fixed tiles).
# Appends to OUT_DIR/gpu-parity-DATE.txt with the device, versions and the group; commit it under
# docs/gpu-parity/ whenever a kernel changes.
# Group tiles: every tile of the training kernels' autotune lists launched as is, on random jagged lengths (four
# pytest processes at once). Group rab: the reference cases with a relative bias, both dtypes (four processes). Cut
# off by `timeout`, either group still appends what each of its processes logged.
#   bash benchmarks/gpu_parity.sh "$OUT" fp32   # groups: fp32, bf16, rab, tiles, rest (everything else), all, candidates
# A third argument narrows a training-kernel group by pytest -k (one call may not hold them all), e.g. tiles 0-5:
#   bash benchmarks/gpu_parity.sh "$OUT" tiles "context-0 or long-0 or context-5 or long-5"
set -u
out_dir=${1:?usage: gpu_parity.sh OUT_DIR GROUP [PYTEST_K]}
group=${2:-all}
narrow=${3:+ and ($3)}
case "$group" in
  fp32) select="matches_reference and fp32" ;;
  bf16) select="matches_reference and bf16" ;;
  rest) select="not matches_reference and not tuned_tile" ;;
  tiles) select="tuned_tile" ;;
  rab) select="matches_reference and rab" ;;
  all) select="" ;;
  candidates) ;;
  *) echo "unknown group $group (fp32, bf16, rab, tiles, rest, all, candidates)" >&2; exit 2 ;;
esac
log="$out_dir/gpu-parity-$(date -u +%Y-%m-%d).txt"
mkdir -p "$out_dir"
{
  echo "== $(date -u) group $group${narrow}"
  nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || echo "no GPU: the interpreter runs the kernels"
  PYTHONPATH=src python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  echo "GENREC_BACKWARD_SCRATCH_GB=${GENREC_BACKWARD_SCRATCH_GB-unset}"
  if [ "$group" = tiles ] || [ "$group" = rab ]; then
    # four processes at once: each case compiles its kernels cold, which is CPU work, and the device has the cores
    parts=("fp32 and long" "fp32 and not long" "bf16 and long" "bf16 and not long")
    if [ "$group" = rab ]; then  # about as many cases in each
      some="(window or wide_times or unsorted or time_only)"
      parts=("fp32 and $some" "fp32 and not $some" "bf16 and $some" "bf16 and not $some")
    fi
    collect() {  # each process's log into the dated one, in order
      for i in 0 1 2 3; do echo "-- $select and ${parts[$i]}$narrow"; cat "$out_dir/.part-$i.txt"; rm "$out_dir/.part-$i.txt"; done
    }
    cut_off() {  # timeout sends SIGTERM: stop the processes and keep what they logged
      kill $(jobs -p) 2>/dev/null
      wait
      { collect; printf '\ncut off: SIGTERM\n'; } >> "$log"
      exit 124
    }
    trap cut_off TERM
    for i in 0 1 2 3; do
      GENREC_AUTOTUNE=0 PYTHONPATH=src:. python3 -m pytest -v -p no:cacheprovider tests/ops/test_attention_kernel.py \
        -k "$select and ${parts[$i]}$narrow" > "$out_dir/.part-$i.txt" 2>&1 &
    done
    rc=0
    for job in $(jobs -p); do wait "$job" || rc=1; done
    trap - TERM
    collect
    (exit $rc)
  elif [ "$group" = candidates ]; then
    PYTHONPATH=src:. python3 -m pytest -v -p no:cacheprovider tests/ops/test_candidate_kernel.py 2>&1
    # the graphs' tests prefill through the training kernel, whose autotuning alone would take the call's time
    GENREC_AUTOTUNE=0 PYTHONPATH=src:. python3 -m pytest -v -p no:cacheprovider \
      tests/inference/test_candidate_graphs.py 2>&1
  else
    GENREC_AUTOTUNE=0 PYTHONPATH=src:. python3 -m pytest -v -p no:cacheprovider tests/ops/test_attention_kernel.py \
      -k "${select:-test}$narrow" 2>&1
  fi
  echo "pytest rc=$?"
} >> "$log"
tail -n 3 "$log"
