#!/usr/bin/env bash
# Issue 28, item 4: the number of epochs decided on evidence. Every `textcnn` and `paper` run of
# the protocol (3 epochs) was still improving at epoch 3, so the default head and loss (`paper`,
# weighted CE) and `textcnn` run longer on both of the protocol's sets, seeds 1-3, everything
# else as in the protocol. Each part is its own experiment folder; a stopped part continues with
# the same command (it adds --resume when the folder exists).
# Usage: benches/results/epochs-protocol-2026-12-07/run.sh RUNS_ROOT
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
exe=${EMRCLASS_EXE:-$here/../../../target/release/emrclass}
chip=$here/../../../../shared/data/chip-ctc
root=${1:?usage: run.sh RUNS_ROOT}
mkdir -p "$root"
part() {
  local name=$1; shift
  local out=$root/$name resume=()
  [ -d "$out" ] && resume=(--resume)
  "$exe" --device simt experiment --seeds 1,2,3 --quiet --out "$out" "${resume[@]}" "$@" \
    > "$root/$name.stdout.txt" 2> "$root/$name.stderr.txt"
  cp "$out/results.md" "$here/$name.md"
}
long=(--synthetic-long --long-text head-tail --max-len 128)
chip_ctc=(--train "$chip/CHIP-CTC_train.json" --dev "$chip/CHIP-CTC_dev.json" --max-len 128)
part long-6-epochs "${long[@]}" --heads paper,textcnn --losses wce --epochs 6
part chip-ctc-paper-6-epochs "${chip_ctc[@]}" --heads paper --losses wce --epochs 6
part long-4-epochs "${long[@]}" --heads paper,textcnn --losses wce --epochs 4
part long-5-epochs "${long[@]}" --heads paper,textcnn --losses wce --epochs 5
