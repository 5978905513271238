#!/bin/bash
# Issue 27, "it helps, measured": a small BERT (2 layers, hidden 128, 2 heads, the bert-base-chinese
# vocabulary of ../shared/data) pretrained from random init on CHIP-CTC's 22,962 training texts,
# then fine-tuned on 2,013 labelled training records (every one of the 44 classes, at least 3 each)
# and evaluated on 2,000 dev records, from the pretrained encoder and from the very init it
# started from (`pretrain --epochs 0`), seeds 1-3. On the simulator (no GPU), one process per run.
# Usage: benches/results/pretrain-chip-ctc-2026-12-07/run.sh OUT   (OUT: a scratch folder)
set -e
OUT=${1:?a scratch folder}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
B=$ROOT/target/release/emrclass
DATA=$ROOT/../shared/data
mkdir -p "$OUT/small"
cp "$HERE/config.json" "$OUT/small/config.json"
cp "$DATA/bert-base-chinese/vocab.txt" "$OUT/small/vocab.txt"
python3 "$HERE/subsets.py" "$DATA/chip-ctc" "$OUT"
T=$DATA/chip-ctc/CHIP-CTC_train.json
$B --device simt --seed 1 pretrain --config "$OUT/small" --text "$T" --out "$OUT/init" --epochs 0 --max-len 128
$B --device simt --seed 1 pretrain --config "$OUT/small" --text "$T" --out "$OUT/pre" --epochs 4 --max-len 128 \
   --batch-size 32 --lr 5e-4 --warmup-ratio 0.06 --weight-decay 0.01
for from in init pre; do
  for seed in 1 2 3; do
    $B --device simt --seed $seed train --quiet --encoder "$OUT/$from/encoder" --train "$OUT/ft_train.json" \
       --dev "$OUT/ft_dev.json" --head cls --loss ce --max-len 64 --epochs 3 --batch-size 32 --lr 5e-4 \
       --log-every 10 --out "$OUT/ft-$from-s$seed"
  done
done
