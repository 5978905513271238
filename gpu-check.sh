#!/usr/bin/env bash
# GPU verification in two halves, for a GPU machine that has the CUDA driver and Python with
# torch and transformers but no Rust:
#
#   ./gpu-check.sh pack       here: builds the release test binaries and `emrclass`, strips them
#                             and packs them with NVRTC 12.9 and CHIP-CTC into
#                             target/gpu-bundle/bundle.tar.xz (git-ignored; about 40 MiB).
#   ./gpu-check.sh run OUT    there, from a copy of this repository holding target/gpu-bundle/: runs the
#                             kernel, parity and training tests on the GPU, `emrclass gradcheck`,
#                             a short CHIP-CTC training run, a short pretraining run (and a
#                             fine-tuning from its encoder), every benchmark with
#                             --compare-torch, and writes OUT/report.md, OUT/report.json,
#                             OUT/bench.jsonl, OUT/tests.jsonl, OUT/env.json and OUT/log.txt.
#
# EMRCLASS_GPU_QUICK=1 makes `run` time fewer shapes (a second, shorter try);
# EMRCLASS_GPU_GRID_SECONDS=N also runs `emrclass experiment` on CHIP-CTC (every encoder-free
# head with every loss, the issue's PyTorch reference settings) for at most N seconds, writing
# OUT/results.md and OUT/results.csv after each finished run (EMRCLASS_GPU_GRID_HEADS and
# EMRCLASS_GPU_GRID_LOSSES narrow it, comma-separated; EMRCLASS_GPU_GRID_SEEDS, default 1, runs
# each cell once per seed). EMRCLASS_GPU_PROTOCOL_SECONDS=N runs issue 16's protocol for the
# defaults for at most N seconds per data set: textcnn, paper and bag with every loss, seeds
# 1,2,3, the defaults' settings, on CHIP-CTC and on the long-record synthetic set (head-tail),
# writing OUT/protocol-chip-ctc.md and OUT/protocol-long.md. EMRCLASS_GPU_PARTS picks the parts
# to run (default "tests train bench"; bench also takes "bench-step" for the training step alone).
set -uo pipefail
cd "$(dirname "$0")"
BUNDLE=target/gpu-bundle
# Test binaries whose tests honour EMRCLASS_TEST_DEVICE=cuda (tests/common::test_device) or
# EMRCLASS_TEST_CUDA=1 (kernels_vs_reference). text_parity is left out: its MiniLM checkpoint
# (90 MB) is more than the GPU machine's transfer allows, and so is training_parity's MiniLM case
# (skipped by name below; its tiny-BERT and encoder-free cases run).
TESTS="kernels_vs_reference layer_parity loss_parity loss_edge_cases bert_parity embedding_and_weights attention_memory optim training training_parity eval_predict memory_plan"

# cargo as a plain shell would run it. Started from inside `cargo test` (tests/bench_harness.rs
# packs the bundle), cargo would inherit the test's CARGO_PKG_*, CARGO_MANIFEST_* and OUT_DIR;
# ring's build script tracks those, so ring and everything above it (the engine and every test
# binary) would be rebuilt here, and again by the next plain cargo: minutes of ./test.sh.
plain_cargo() {
    local unset=()
    local name
    for name in $(compgen -e); do
        case $name in
        CARGO_PKG_* | CARGO_MANIFEST_* | CARGO_CRATE_NAME | CARGO_BIN_EXE_* | CARGO_PRIMARY_PACKAGE | OUT_DIR) unset+=(-u "$name") ;;
        esac
    done
    env "${unset[@]}" cargo "$@"
}

pack() {
    set -e
    ./install-nvrtc.sh
    rm -rf "$BUNDLE"
    local stage="$BUNDLE/stage"
    mkdir -p "$stage/bin" "$stage/nvrtc" "$stage/data"
    plain_cargo build --release --bin emrclass
    plain_cargo test --release --no-run --message-format=json >"$BUNDLE/build.jsonl"
    python3 - "$BUNDLE/build.jsonl" "$stage/bin" $TESTS <<'PY'
import json, shutil, sys
log, dest, wanted = sys.argv[1], sys.argv[2], set(sys.argv[3:])
found = {}
for line in open(log):
    m = json.loads(line)
    if m.get("executable") and m["target"]["kind"] == ["test"] and m["target"]["name"] in wanted:
        found[m["target"]["name"]] = m["executable"]
missing = wanted - set(found)
if missing:
    sys.exit(f"test binaries not built: {sorted(missing)}")
for name, exe in found.items():
    shutil.copy(exe, f"{dest}/{name}")
PY
    cp target/release/emrclass "$stage/bin/"
    strip "$stage"/bin/*
    cp target/nvrtc/nvidia/cuda_nvrtc/lib/libnvrtc.so.12 target/nvrtc/nvidia/cuda_nvrtc/lib/libnvrtc-builtins.so.12.* "$stage/nvrtc/"
    local chip=../shared/data/chip-ctc
    if [ -f "$chip/CHIP-CTC_train.json" ]; then
        cp "$chip/CHIP-CTC_train.json" "$chip/CHIP-CTC_dev.json" "$stage/data/"
    else
        echo "note: $chip not found: the bundle has no CHIP-CTC run"
    fi
    # Issue 27's small BERT (2 x 128, the Chinese vocabulary) for a pretraining run on the GPU.
    local vocab=../shared/data/bert-base-chinese/vocab.txt
    if [ -f "$vocab" ]; then
        mkdir -p "$stage/data/small-bert"
        cp benches/results/pretrain-chip-ctc-2026-12-07/config.json "$vocab" "$stage/data/small-bert/"
    fi
    pwd >"$stage/manifest_dir"
    { git rev-parse HEAD; git status --porcelain | grep -q . && echo "(with uncommitted changes)"; } >"$stage/commit" || true
    tar -C "$stage" -cf - . | xz -T0 -6 >"$BUNDLE/bundle.tar.xz"
    rm -rf "$stage" "$BUNDLE/build.jsonl"
    local size
    size=$(stat -c %s "$BUNDLE/bundle.tar.xz")
    echo "packed $BUNDLE/bundle.tar.xz: $((size / 1048576)) MiB"
    [ "$size" -lt $((60 * 1048576)) ] || { echo "bundle over 60 MiB"; exit 1; }
}

# step NAME TIMEOUT COMMAND...: runs one step, logs it, records its outcome in tests.jsonl.
step() {
    local name=$1 limit=$2
    shift 2
    echo "=== $name: $*"
    local t0=$SECONDS
    timeout "$limit" "$@" >"$work/step.log" 2>&1
    local rc=$?
    cat "$work/step.log"
    local summary
    summary=$(grep -E "^test result:|passed, [0-9]+ failed" "$work/step.log" | tail -1)
    [ -n "$summary" ] || summary="exit $rc"
    [ $rc -eq 124 ] && summary="timed out after ${limit}s"
    python3 -c 'import json,sys; print(json.dumps({"name": sys.argv[1], "ok": sys.argv[2] == "0", "result": ("ok" if sys.argv[2] == "0" else "FAILED") + ": " + sys.argv[3], "seconds": int(sys.argv[4])}))' \
        "$name" "$rc" "$summary" "$((SECONDS - t0))" >>"$out/tests.jsonl"
    return 0
}

run() {
    out=${1:?usage: ./gpu-check.sh run OUTDIR}
    mkdir -p "$out"
    out=$(cd "$out" && pwd)
    exec > >(tee -a "$out/log.txt") 2>&1
    work=/tmp/emrclass-gpu
    rm -rf "$work" && mkdir -p "$work"
    python3 -c "import tarfile,sys; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" "$BUNDLE/bundle.tar.xz" "$work" || exit 1
    # The test binaries read tests/fixtures through the folder they were built in.
    local built
    built=$(cat "$work/manifest_dir")
    if [ "$built" != "$PWD" ] && [ ! -e "$built" ]; then
        mkdir -p "$(dirname "$built")" && ln -s "$PWD" "$built"
    fi
    # ... and run the command line where cargo built it (CARGO_BIN_EXE_emrclass).
    if [ ! -e "$PWD/target/release/emrclass" ]; then
        mkdir -p "$PWD/target/release" && ln -s "$work/bin/emrclass" "$PWD/target/release/emrclass"
    fi
    export EMRCLASS_NVRTC_DIR=$work/nvrtc EMRCLASS_CACHE_DIR=$work/cache
    export EMRCLASS_TEST_DEVICE=cuda EMRCLASS_TEST_CUDA=1 RUST_BACKTRACE=1
    local emr=$work/bin/emrclass
    python3 - "$out/env.json" "$work/commit" <<'PY'
import json, subprocess, sys, datetime
env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
       "commit": open(sys.argv[2]).read().strip().replace("\n", " "), "nvrtc": "12.9.86 (bundled wheel)"}
try:
    q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                       capture_output=True, text=True).stdout.strip().split(", ")
    env.update(gpu=q[0], driver=q[1], gpu_memory=q[2])
except Exception as e:
    env["gpu"] = f"nvidia-smi failed: {e}"
try:
    import torch
    env.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    import transformers
    env["transformers"] = transformers.__version__
except Exception as e:
    env["python_packages"] = f"import failed: {e}"
json.dump(env, open(sys.argv[1], "w"), indent=1)
print(json.dumps(env))
PY
    local quick=${EMRCLASS_GPU_QUICK:-0}
    echo "=== libraries: $(ldconfig -p | grep -cE 'libcuda\.so') libcuda entries; nvrtc from $EMRCLASS_NVRTC_DIR"
    # Kernels against the f64 reference on the GPU (the registry `emrclass gradcheck` runs, less
    # its CPU-only finite-difference half), then the parity and training tests.
    local parts=" ${EMRCLASS_GPU_PARTS:-tests train bench} "
    [[ $parts == *" tests "* ]] && for t in $TESTS; do
        local filter=()
        [ "$t" = kernels_vs_reference ] && filter=(cuda)
        [ "$t" = training_parity ] && filter=(--skip minilm)
        step "$t" 240 "$work/bin/$t" --test-threads 4 "${filter[@]}"
    done
    if [[ $parts == *" train "* ]] && [ -f "$work/data/CHIP-CTC_train.json" ]; then
        step chip-ctc-train 300 "$emr" --device cuda --seed 1 train \
            --train "$work/data/CHIP-CTC_train.json" --dev "$work/data/CHIP-CTC_dev.json" \
            --head textcnn --loss ghmcs --epochs 3 --max-len 128 --out "$work/train" --quiet
    fi
    if [[ $parts == *" train "* ]]; then
        # Issue 30: the data-parallel path on CUDA over NCCL — a world of one on any GPU (NCCL
        # from the image's PyTorch wheels unless EMRCLASS_NCCL_DIR is set), `launch` over every
        # GPU when there are several. Each must say it summed with NCCL.
        if [ -z "${EMRCLASS_NCCL_DIR:-}" ]; then
            local nccl_dir
            nccl_dir=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))' 2>/dev/null) \
                && export EMRCLASS_NCCL_DIR=$nccl_dir
        fi
        local small=(--seed 1 train --synthetic-scale 0.1 --epochs 1 --batch-size 8 --quiet)
        step nccl-world-of-one 120 bash -c 'WORLD_SIZE=1 "$@" | tee /dev/stderr | grep -q "data parallel: 1 ranks, NCCL"' _ \
            "$emr" --device cuda "${small[@]}" --out "$work/nccl-world-of-one"
        local gpus
        gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
        if [ "$gpus" -ge 2 ]; then
            step "nccl-launch-$gpus" 300 bash -c '"$@" | tee /dev/stderr | grep -q "ranks, NCCL"' _ \
                "$emr" launch --nproc-per-node "$gpus" -- --device cuda "${small[@]}" --out "$work/nccl-launch"
        fi
    fi
    if [[ $parts == *" train "* ]] && [ -f "$work/data/small-bert/vocab.txt" ] && [ -f "$work/data/CHIP-CTC_train.json" ]; then
        # Issue 27 on CUDA: pretraining from scratch (the small BERT) on CHIP-CTC's training
        # texts, one epoch, then its encoder fine-tuned as `train --encoder` takes it.
        step chip-ctc-pretrain 300 "$emr" --device cuda --seed 1 pretrain --config "$work/data/small-bert" \
            --text "$work/data/CHIP-CTC_train.json" --epochs 1 --max-len 128 --batch-size 32 --lr 5e-4 \
            --out "$work/pretrain" --quiet
        step chip-ctc-finetune-pretrained 300 "$emr" --device cuda --seed 1 train --encoder "$work/pretrain/encoder" \
            --train "$work/data/CHIP-CTC_train.json" --dev "$work/data/CHIP-CTC_dev.json" \
            --head cls --loss ce --epochs 1 --max-len 64 --lr 5e-4 --out "$work/finetune-pretrained" --quiet
    fi
    local grid=${EMRCLASS_GPU_GRID_SECONDS:-0}
    if [ "$grid" -gt 0 ] && [ -f "$work/data/CHIP-CTC_train.json" ]; then
        step chip-ctc-experiment "$grid" "$emr" --device cuda --seed 1 experiment \
            --train "$work/data/CHIP-CTC_train.json" --dev "$work/data/CHIP-CTC_dev.json" \
            --embedding-dim 128 --filters 128 --rnn-hidden 128 --dropout 0.5 --lr 1e-3 \
            --batch-size 64 --epochs 5 --max-len 128 --out "$work/grid" --quiet \
            --heads "${EMRCLASS_GPU_GRID_HEADS:-textcnn,bilstm,bigru,textcnn-bigru,paper}" \
            --losses "${EMRCLASS_GPU_GRID_LOSSES:-ce,wce,focal,ghm,ghm-cs}" \
            --seeds "${EMRCLASS_GPU_GRID_SEEDS:-1}"
        cp "$work/grid/results.md" "$work/grid/results.csv" "$out/" 2>/dev/null
    fi
    local protocol=${EMRCLASS_GPU_PROTOCOL_SECONDS:-0}
    if [ "$protocol" -gt 0 ] && [ -f "$work/data/CHIP-CTC_train.json" ]; then
        local cells=(--heads textcnn,paper,bag --losses ce,wce,focal,ghm,ghm-cs --seeds 1,2,3 --quiet)
        step protocol-chip-ctc "$protocol" "$emr" --device cuda experiment "${cells[@]}" \
            --train "$work/data/CHIP-CTC_train.json" --dev "$work/data/CHIP-CTC_dev.json" \
            --max-len 128 --out "$work/protocol-chip-ctc"
        cp "$work/protocol-chip-ctc/results.md" "$out/protocol-chip-ctc.md" 2>/dev/null
        step protocol-long "$protocol" "$emr" --device cuda experiment "${cells[@]}" \
            --synthetic-long --long-text head-tail --max-len 128 --out "$work/protocol-long"
        cp "$work/protocol-long/results.md" "$out/protocol-long.md" 2>/dev/null
    fi
    local bench=("$emr" --device cuda bench --json "$out/bench.jsonl" --compare-torch)
    # BERT-base at 16 x 512 under a 4 GiB budget: `bench step` runs the memory plan (recompute
    # some layers), and records its time, the engine's peak and the device's used memory.
    local plan4=("$emr" --device cuda --memory-budget 4GiB bench --json "$out/bench.jsonl")
    # The same step with 8-bit AdamW moments and fp16 saved activations (issue 17): its time and
    # peak beside PyTorch's (fp32 AdamW, eager).
    if [[ $parts == *" bench-step "* ]]; then
        step bench-step 240 "${bench[@]}" step
        step bench-step-lean 240 "${bench[@]}" step --optimizer adamw8bit --saved-activations fp16 --len 128,512
        step bench-step-4gib 240 "${plan4[@]}" step --len 512
        step bench-step-pretrain 240 "${bench[@]}" step --pretrain --len 128,512
        step bench-step-pretrain-4gib 240 "${plan4[@]}" step --pretrain --len 512
    elif [[ $parts != *" bench "* ]]; then
        :
    elif [ "$quick" = 1 ]; then
        step bench-copy 60 "${bench[@]}" copy
        step bench-gemm 180 "${bench[@]}" gemm --shapes 2048x2304x768,2048x768x3072,768x768x8192 \
            --layouts nn,nt,tn --tiles all
        step bench-attention 120 "${bench[@]}" attention --len 128,512
        step bench-gru 120 "${bench[@]}" gru
        step bench-lstm 120 "${bench[@]}" lstm
        step bench-step 240 "${bench[@]}" step
        step bench-step-lean 240 "${bench[@]}" step --optimizer adamw8bit --saved-activations fp16 --len 128,512
        step bench-step-4gib 240 "${plan4[@]}" step --len 512
        step bench-step-pretrain 240 "${bench[@]}" step --pretrain
        step bench-step-pretrain-4gib 240 "${plan4[@]}" step --pretrain --len 512
    else
        step bench-copy 60 "${bench[@]}" copy
        step bench-gemm 180 "${bench[@]}" gemm
        step bench-gemm-tiles 240 "${bench[@]}" gemm --shapes 2048x2304x768,2048x768x3072,768x768x8192 \
            --layouts nn,nt,tn --tiles all
        step bench-attention 180 "${bench[@]}" attention
        step bench-encoder 180 "${bench[@]}" encoder
        step bench-gru 120 "${bench[@]}" gru
        step bench-lstm 120 "${bench[@]}" lstm
        step bench-textcnn 120 "${bench[@]}" textcnn
        step bench-loss 120 "${bench[@]}" loss --rows 16,256,4096 --classes 44
        step bench-step 300 "${bench[@]}" step --len 128,512
        step bench-step-lean 300 "${bench[@]}" step --optimizer adamw8bit --saved-activations fp16 --len 128,512
        step bench-step-4gib 300 "${plan4[@]}" step --len 512
        step bench-step-pretrain 300 "${bench[@]}" step --pretrain --len 128,512
        step bench-step-pretrain-4gib 300 "${plan4[@]}" step --pretrain --len 512
    fi
    python3 benches/compare_torch.py report "$out"
}

case "${1:-}" in
pack) pack ;;
run) run "${2:-}" ;;
*)
    sed -n '2,16p' "$0"
    exit 2
    ;;
esac
