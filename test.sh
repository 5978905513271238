#!/usr/bin/env bash
# Runs every test of emrclass, installing first what the tests need (NVRTC 12.x, for the
# static kernel report). No GPU is needed: kernels run on the SIMT simulator.
# Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")"
./install-nvrtc.sh
cargo test --release "$@"
