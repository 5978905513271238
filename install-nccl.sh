#!/usr/bin/env bash
# Installs NCCL for CUDA 12 (PyPI's nvidia-nccl-cu12 wheel) under target/nccl, where emrclass
# finds it by itself for data-parallel training on CUDA GPUs (`emrclass launch`). Not needed by
# the tests or on the simulator; EMRCLASS_NCCL_DIR points at any other copy instead.
set -euo pipefail
cd "$(dirname "$0")"
nccl_dir=target/nccl
if [ -n "${EMRCLASS_NCCL_DIR:-}" ] || [ -e "$nccl_dir/nvidia/nccl/lib/libnccl.so.2" ]; then
    exit 0
fi
echo "install-nccl.sh: installing nvidia-nccl-cu12==2.27.5 under $nccl_dir"
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    --no-deps --target "$nccl_dir" "nvidia-nccl-cu12==2.27.5"
