#!/usr/bin/env bash
# Runs every test of emrclass, installing first what the tests need:
# NVRTC 12.x (PyPI's nvidia-cuda-nvrtc-cu12 wheel, under target/nvrtc) for the kernel report.
# No GPU is needed: kernels run on the SIMT simulator. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")"

nvrtc_dir=target/nvrtc
if [ -z "${EMRCLASS_NVRTC_DIR:-}" ] && [ ! -e "$nvrtc_dir/nvidia/cuda_nvrtc/lib/libnvrtc.so.12" ]; then
    echo "test.sh: installing NVRTC 12.9 (nvidia-cuda-nvrtc-cu12==12.9.86) under $nvrtc_dir"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
        --no-deps --target "$nvrtc_dir" "nvidia-cuda-nvrtc-cu12==12.9.86"
fi

cargo test --release "$@"
