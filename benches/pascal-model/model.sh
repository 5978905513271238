#!/bin/bash
# model.sh CUTLASS_DIR SIM_BUILD_DIR [SET...]
#
# The GTX 1050 Ti timing-model table in one command: builds the project's harnesses (this folder,
# against the working tree's kernels/) and the anchors (PyTorch's own sm_61 kernels from CUTLASS,
# ../shared/tools/pascal-model/anchors/), runs every shape of the named sets on the model, and
# writes OUT/README.md (the table) and OUT/runs.jsonl (a row per run: kernel, shape, side
# ours|cutlass, cycles, and on our rows speedup = the anchor's cycles / ours).
#
#   CUTLASS_DIR    a CUTLASS v3.5.1 tree (include/, examples/41_fused_multi_head_attention/), e.g.
#                  git --git-dir=CUTLASS_GIT archive --prefix=cutlass-3.5.1/ v3.5.1 include \
#                      examples/41_fused_multi_head_attention | tar x
#   SIM_BUILD_DIR  the simulator, built by ../shared/tools/pascal-model/setup.sh
#   SET            attention | gemm | memory | gemm-large | attention-waves | all (default:
#                  attention gemm memory)
# Environment: TABLE_ONLY=1 (only re-make the table from raw/), OUT (default
# benches/results/pascal-model-DATE: the table and raw/, to commit), WORK
# (binaries and the simulator's run folders, default target/pascal-model), JOBS (runs at a time,
# default 2), PASCAL_MODEL (default ../shared/tools/pascal-model beside the repository).
# A run whose line is already in OUT/raw/ is not run again: re-running the command finishes an
# interrupted table. Cost on one core: attention L128 1-9 min a run, GEMM 512x768x768 ~10 min,
# 512x3072x768 ~40 min (gemm-large), attention forward B1 H6 L512 ~8 min (attention-waves); the
# last two not in the default sets.
set -eo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
if [ $# -lt 2 ]; then
    sed -n '2,23p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
CUTLASS=$(cd "$1" && pwd)
SIM=$(cd "$2" && pwd)
shift 2
SETS=${*:-attention gemm memory}
[ "$SETS" = all ] && SETS="attention gemm memory gemm-large attention-waves"
PM=${PASCAL_MODEL:-$ROOT/../shared/tools/pascal-model}
PM=$(cd "$PM" && pwd)
OUT=${OUT:-$ROOT/benches/results/pascal-model-$(date +%F)}
WORK=${WORK:-$ROOT/target/pascal-model}
JOBS=${JOBS:-2}
mkdir -p "$OUT/raw" "$WORK/bin"
OUT=$(cd "$OUT" && pwd)
WORK=$(cd "$WORK" && pwd)

# TABLE_ONLY=1: no build and no runs, only the table from what raw/ holds.
TABLE_ONLY=${TABLE_ONLY:-0}

# 1. Build (nvcc 11.8, sm_61 SASS + PTX; the model runs the PTX).
[ "$TABLE_ONLY" = 1 ] || {
echo "[model] building harnesses into $WORK/bin" >&2
# Ours always (the working tree's kernels); the anchors once (CUTLASS does not change; minutes).
only="gemm_tiles attention_forward_flash attention_backward memory_bound"
for a in cutlass_gemm cutlass_fmha_fwd cutlass_fmha_bwd; do [ -x "$WORK/bin/$a" ] || only="$only $a"; done
ONLY=$only "$PM/anchors/build.sh" "$CUTLASS" "$ROOT" "$WORK/bin" >/dev/null
}

# 2. The runs: NAME|BINARY ARGS|KERNEL|SHAPE|SIDE
runs() {
    for set in $SETS; do
        case $set in
        attention)
            for s in "1 12 128 64|B1 H12 L128 d64" "1 2 512 64|B1 H2 L512 d64"; do
                a=${s%%|*}; label=${s#*|}; tag=$(echo "$a" | tr ' ' _)
                echo "fwd-ours-$tag|attention_forward_flash $a|attention forward|$label|ours"
                echo "fwd-cutlass-$tag|cutlass_fmha_fwd $a|attention forward|$label|cutlass"
                echo "bwd-ours-$tag|attention_backward $a|attention backward|$label|ours"
                echo "bwd-cutlass-$tag|cutlass_fmha_bwd $a|attention backward|$label|cutlass"
            done ;;
        attention-waves)
            # The forward at L512 with whole waves: B1 H2 is 16 blocks of 64 queries on the
            # model's 12 slots (6 SMs x 2), a second wave a third full; H6 is 48, four whole
            # waves, as B16 H12's 1536 blocks nearly are.
            echo "fwd-ours-1_6_512_64|attention_forward_flash 1 6 512 64|attention forward|B1 H6 L512 d64|ours"
            echo "fwd-cutlass-1_6_512_64|cutlass_fmha_fwd 1 6 512 64|attention forward|B1 H6 L512 d64|cutlass" ;;
        gemm | gemm-large)
            [ $set = gemm ] && shapes="512 768 768" || shapes="512 3072 768"
            m=${shapes%% *}; rest=${shapes#* }; n=${rest%% *}; k=${rest#* }
            tag=${m}x${n}x${k}
            echo "gemm-nn-cutlass-$tag|cutlass_gemm $m $n $k 128x128|SGEMM NN 128x128|$tag|cutlass"
            for l in nn nt tn; do
                echo "gemm-$l-ours-$tag|gemm_tiles $m $n $k 128x128 $l|SGEMM $(echo $l | tr a-z A-Z) 128x128|$tag|ours"
            done ;;
        memory)
            # BERT-base sizes at 4 x 128 tokens (softmax: 4 x 12 heads x 128 query rows of 128
            # scores; AdamW: one FFN weight, 768 x 3072), and LayerNorm and dropout also at
            # 16 x 128 (the training step's rows); device_copy, the model's ceiling for them.
            for s in "device_copy 2048 768" "layernorm_forward 512 768" "layernorm_backward 512 768" "softmax_rows_forward 6144 128" \
                "gelu_forward 512 3072" "gelu_backward 512 3072" "dropout_forward 512 768" "adamw_step 768 3072" \
                "layernorm_forward 2048 768" "layernorm_backward 2048 768" "dropout_forward 2048 768"; do
                set -- $s
                echo "mem-$1-$2x$3|memory_bound $s|$1|$2x$3|ours"
            done ;;
        *) echo "unknown set $set (attention | gemm | memory | gemm-large | attention-waves | all)" >&2; exit 2 ;;
        esac
    done
}
runs >"$OUT/plan.txt"

# 3. Run what is not in raw/ yet, JOBS at a time; each line of raw/NAME.txt is run.sh's summary.
run_one() {
    IFS='|' read -r name cmd _ <<<"$1"
    [ -s "$OUT/raw/$name.txt" ] && grep -q "cycles [0-9]" "$OUT/raw/$name.txt" && return 0
    # shellcheck disable=SC2086
    "$PM/run.sh" "$SIM" "$WORK/runs/$name" "$WORK/bin/"$cmd >"$OUT/raw/$name.txt.tmp" 2>&1 || true
    # Harnesses that make their inputs with kernels of their own time only the last kernel.
    if grep -q "timed=last" "$OUT/raw/$name.txt.tmp"; then
        last=$(awk '/^gpu_sim_cycle = / { c = $3 } END { print c }' "$WORK/runs/$name/sim.log")
        echo "last kernel cycles $last" >>"$OUT/raw/$name.txt.tmp"
    fi
    mv "$OUT/raw/$name.txt.tmp" "$OUT/raw/$name.txt"
    echo "[model] $(cat "$OUT/raw/$name.txt")" >&2
}
export -f run_one
export OUT WORK PM SIM
[ "$TABLE_ONLY" = 1 ] || tr '\n' '\0' <"$OUT/plan.txt" | xargs -0 -P "$JOBS" -I{} bash -c 'run_one "$@"' _ {}

# 4. The table.
python3 "$HERE/model_table.py" "$OUT"
echo "[model] wrote $OUT/README.md and $OUT/runs.jsonl" >&2
