"""Converts FOLDER/pytorch_model.bin to FOLDER/model.safetensors (fp32, names unchanged).

Usage: python3 weights/convert_to_safetensors.py FOLDER
Needs torch and safetensors (pip install torch==2.9.1 safetensors==0.6.2).
"""

import os
import sys

import torch
from safetensors.torch import save_file


def main(folder):
    src = os.path.join(folder, "pytorch_model.bin")
    dst = os.path.join(folder, "model.safetensors")
    state = torch.load(src, map_location="cpu", weights_only=True)
    tensors = {name: t.detach().to(torch.float32).contiguous() for name, t in state.items() if t.is_floating_point()}
    skipped = sorted(set(state) - set(tensors))
    tmp = dst + ".tmp"
    save_file(tensors, tmp, metadata={"format": "pt"})
    os.replace(tmp, dst)  # atomic: a crash never leaves a half-written model.safetensors
    print(f"wrote {len(tensors)} tensors to {dst}" + (f"; skipped non-float {skipped}" if skipped else ""))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
