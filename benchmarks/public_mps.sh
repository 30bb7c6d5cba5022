#!/bin/bash
# Trains many public-benchmark runs at once on one GPU: one benchmarks/public.py process per line of
# RUNS_FILE (its arguments after --data-root), all sharing the GPU through CUDA MPS; after SECONDS the
# runs still going are stopped, and the finished rows are merged into OUT_JSON (one file, since a
# remote runner may return only a few files); the runs' logs go beside it, into one public-runs.log.
# Leave the caller a minute past SECONDS: the merge imports torch.
#   bash benchmarks/public_mps.sh benchmarks/public-runs/hstu-xl-seeds.txt "$OUT/public.json" 520
set -u
[ -f "$1" ] || { echo "no such runs file: $1" >&2; exit 1; }
runs_file=$1 out_json=$2 deadline=${3:-520} data_root=${DATA_ROOT:-.data}
parts=$(mktemp -d)
export PYTHONPATH=src PYTHONUNBUFFERED=1
mapfile -t runs < <(grep -v '^\s*\(#\|$\)' "$runs_file")
[ "${#runs[@]}" -gt 0 ] || { echo "no runs in $runs_file" >&2; exit 1; }
# the processes share the CPU cores: 12 runs of 16 threads each on 16 cores ran ~5x slower per epoch
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / ${#runs[@]} > 0 ? $(nproc) / ${#runs[@]} : 1 ))}
nvidia-cuda-mps-control -d
for i in "${!runs[@]}"; do
  # shellcheck disable=SC2086  # each line is a list of arguments
  python3 benchmarks/public.py --data-root "$data_root" --runs-sharing-gpu "${#runs[@]}" \
    --out "$parts/$i.json" ${runs[$i]} > "$parts/$i.log" 2>&1 &
done
for _ in $(seq "$deadline"); do [ -z "$(jobs -r)" ] && break; sleep 1; done
running=$(jobs -pr); [ -n "$running" ] && echo "stopped at the deadline: $(jobs -r)" && kill $running
wait
# rows first: the MPS daemon has been seen to hang on quit, and a caller's time limit must not lose them
python3 benchmarks/public.py --out "$out_json" --merge "$parts"/*.json \
  --merged-command "bash benchmarks/public_mps.sh $runs_file: one public.py per line, through MPS"
for log in "$parts"/*.log; do echo "== run $(basename "$log" .log)"; cat "$log"; done \
  > "$(dirname "$out_json")/public-runs.log"
for log in "$parts"/*.log; do tail -n 1 "$log"; done
echo quit | timeout 30 nvidia-cuda-mps-control || echo "the MPS daemon did not quit within 30 s"
