#!/usr/bin/env bash
# The simulator on 1 and 2 OS threads (issue 28): the main job (`paper` head, synthetic set,
# defaults) and the same with `--head textcnn`, timed end to end; samples/s per epoch from each
# run's log.jsonl; the checkpoints compared byte for byte across thread counts.
# Usage: benches/results/simt-threads-2026-12-07/run.sh [threads...]   (default: 1 2)
set -euo pipefail
cd "$(dirname "$0")"
exe=../../../target/release/emrclass
threads=("${@:-1 2}")
[ $# -eq 0 ] && threads=(1 2)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for head in paper textcnn; do
  for t in "${threads[@]}"; do
    out=$scratch/$head-$t
    start=$(date +%s.%N)
    $exe --device simt --simt-threads "$t" train --head "$head" --out "$out" --quiet > "$head-$t.stdout.txt" 2> "$head-$t.stderr.txt"
    end=$(date +%s.%N)
    cp "$out/log.jsonl" "$head-$t.log.jsonl"
    sps=$(grep -o '"samples_per_second":[0-9.]*' "$out/log.jsonl" | cut -d: -f2 | paste -sd' ')
    printf '%s\t%s threads\t%.1f s\tsamples/s per epoch: %s\n' "$head" "$t" "$(echo "$end - $start" | bc)" "$sps" | tee -a times.tsv
  done
  for t in "${threads[@]}"; do
    if cmp -s "$scratch/$head-${threads[0]}/checkpoint/"tensors-*.safetensors "$scratch/$head-$t/checkpoint/"tensors-*.safetensors \
       && cmp -s "$scratch/$head-${threads[0]}/best/"tensors-*.safetensors "$scratch/$head-$t/best/"tensors-*.safetensors; then
      echo "$head: checkpoint and best bytes identical at ${threads[0]} and $t threads" | tee -a times.tsv
    else
      echo "$head: checkpoints DIFFER between ${threads[0]} and $t threads" | tee -a times.tsv
    fi
  done
done
