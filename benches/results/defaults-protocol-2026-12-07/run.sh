#!/usr/bin/env bash
# Issue 28, item 4: the rest of the protocol for the defaults on CHIP-CTC (README, "The protocol
# for the defaults"), on the simulator with every core. The cells the decision rule needs first
# (weighted CE and GHM-CS for `paper` and `bag`), then the rest. Each part is its own experiment
# folder; a stopped part continues with the same command (it adds --resume when the folder exists).
# --epochs 3 is the protocol's own count (`train`'s default became 6 after the protocol, issue 28).
# Usage: benches/results/defaults-protocol-2026-12-07/run.sh RUNS_ROOT [PART...]
# (no PART: every part, in the order below; e.g. `run.sh /tmp/runs paper-rest` runs that one only).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
exe=${EMRCLASS_EXE:-$here/../../../target/release/emrclass}
chip=$here/../../../../shared/data/chip-ctc
root=${1:?usage: run.sh RUNS_ROOT [PART...]}
shift
wanted=("$@")
mkdir -p "$root"
part() {
  local name=$1; shift
  if [ ${#wanted[@]} -gt 0 ] && [[ " ${wanted[*]} " != *" $name "* ]]; then return 0; fi
  local out=$root/$name resume=()
  [ -d "$out" ] && resume=(--resume)
  "$exe" --device simt experiment --train "$chip/CHIP-CTC_train.json" --dev "$chip/CHIP-CTC_dev.json" \
    --max-len 128 --epochs 3 --seeds 1,2,3 --quiet --out "$out" "${resume[@]}" "$@" > "$root/$name.stdout.txt" 2> "$root/$name.stderr.txt"
  cp "$out/results.md" "$here/chip-ctc-$name.md"
}
part paper-wce-ghmcs --heads paper --losses wce,ghm-cs
part bag-wce-ghmcs --heads bag --losses wce,ghm-cs
part paper-rest --heads paper --losses ce,focal,ghm
part bag-rest --heads bag --losses ce,focal,ghm
part textcnn-rest --heads textcnn --losses focal,ghm
