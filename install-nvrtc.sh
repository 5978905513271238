#!/usr/bin/env bash
# Installs NVRTC 12.9 (PyPI's nvidia-cuda-nvrtc-cu12 wheel) under target/nvrtc unless an NVRTC
# is already configured. NVRTC needs no GPU; emrclass finds it there by itself. 12.x is the
# last NVRTC that compiles for sm_61 (GTX 1050 Ti): CUDA 13 dropped Pascal.
set -euo pipefail
cd "$(dirname "$0")"
nvrtc_dir=target/nvrtc
if [ -n "${EMRCLASS_NVRTC_DIR:-}" ] || [ -e "$nvrtc_dir/nvidia/cuda_nvrtc/lib/libnvrtc.so.12" ]; then
    exit 0
fi
echo "install-nvrtc.sh: installing nvidia-cuda-nvrtc-cu12==12.9.86 under $nvrtc_dir"
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    --no-deps --target "$nvrtc_dir" "nvidia-cuda-nvrtc-cu12==12.9.86"
