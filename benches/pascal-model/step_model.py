#!/usr/bin/env python3
"""step_model.py RESULTS_DIR: a modelled BERT-base training step on the GTX 1050 Ti, ours and PyTorch's.

A model built on a model: every kernel's time is its work (FLOPs or bytes) divided by the rate its
family reached in RESULTS_DIR/runs.jsonl (model.sh's GPGPU-Sim runs), summed over the launches of
one step of the encoder (12 layers) and AdamW. Not a measurement; what it leaves out is listed in
what it prints. Writes RESULTS_DIR/step_model.md and prints it.

Rates. GEMM: ours per layout from the 512x768x768 runs; PyTorch's (cuBLAS, which cannot run in the
model) from CUTLASS's SIMT SGEMM at the same shape, NN, for every layout. The FFN's GEMMs (a 3072
side) take the 512x3072x768 NN runs' rates when runs.jsonl has them (model.sh gemm-large): CUTLASS's
as it ran, ours NN as it ran and NT/TN scaled by their ratio to NN at 512x768x768. Attention: time per
(batch, head) slice of the runs at L128 (B1 H12) and L512 (B1 H2; the forward from B1 H6, whole
waves, when run), ours and CUTLASS's fused kernels (what PyTorch's memory-efficient SDPA runs on
sm_61). Memory-bound kernels: the GB/s our kernels
reached, for both sides (PyTorch's elementwise kernels are bound by the same DRAM); the sides then
differ by how many passes over memory each makes.
"""
import json
import os
import sys

MHZ = 1392e6
H, F, HEADS, LAYERS, PARAMS = 768, 3072, 12, 12, 110e6


def load(results):
    rows = [json.loads(l) for l in open(os.path.join(results, "runs.jsonl"))]
    got = {(r["kernel"], r["shape"], r["side"]): r for r in rows if r.get("cycles")}

    def secs(kernel, shape, side):
        r = got.get((kernel, shape, side))
        if not r:
            sys.exit(f"{kernel} {shape} {side} is not in runs.jsonl: run model.sh first")
        return r["cycles"] / MHZ

    flops = 2 * 512 * 768 * 768
    gemm = {("ours", l): flops / secs(f"SGEMM {l.upper()} 128x128", "512x768x768", "ours") for l in ("nn", "nt", "tn")}
    cut = flops / secs("SGEMM NN 128x128", "512x768x768", "cutlass")
    gemm.update({("torch", l): cut for l in ("nn", "nt", "tn")})
    # The FFN's shapes, when their runs exist; else the 512x768x768 rates stand for them too.
    large = [got.get(("SGEMM NN 128x128", "512x3072x768", side)) for side in ("ours", "cutlass")]
    if all(large):
        big = 4 * flops
        ours_nn, cut_nn = big / (large[0]["cycles"] / MHZ), big / (large[1]["cycles"] / MHZ)
        for l in ("nn", "nt", "tn"):
            gemm[("ours-ffn", l)] = ours_nn * gemm[("ours", l)] / gemm[("ours", "nn")]
            gemm[("torch-ffn", l)] = cut_nn
    else:
        gemm.update({(f"{side}-ffn", l): gemm[(side, l)] for side in ("ours", "torch") for l in ("nn", "nt", "tn")})
    attn = {}
    for L, shape, heads in ((128, "B1 H12 L128 d64", 12), (512, "B1 H2 L512 d64", 2)):
        for side, who in (("ours", "ours"), ("torch", "cutlass")):
            attn[(side, L, "fwd")] = secs("attention forward", shape, who) / heads
            attn[(side, L, "bwd")] = secs("attention backward", shape, who) / heads
    # The L512 forward with whole waves (model.sh attention-waves), when run: B16 H12's 1,536
    # blocks have no tail, B1 H2's 16 do.
    if all(got.get(("attention forward", "B1 H6 L512 d64", who)) for who in ("ours", "cutlass")):
        for side, who in (("ours", "ours"), ("torch", "cutlass")):
            attn[(side, 512, "fwd")] = secs("attention forward", "B1 H6 L512 d64", who) / 6
    gbps = {r["kernel"]: r["gb_per_s"] * 1e9 for r in rows if r.get("gb_per_s")}
    # The largest-rows run of each kernel; plain streaming passes at gelu_backward's rate (the
    # dropout runs read no DRAM in the model).
    for r in rows:
        if r.get("gb_per_s") and r["shape"].startswith("2048"):
            gbps[r["kernel"]] = r["gb_per_s"] * 1e9
    gbps["streaming"] = gbps["gelu_backward"]
    return gemm, attn, gbps


def step(side, L, gemm, attn, gbps, B=16):
    """Seconds per family for one training step of BERT-base's encoder + AdamW at B x L."""
    T = B * L
    t = {"GEMM": 0.0, "attention": 0.0, "memory-bound": 0.0, "AdamW": 0.0}

    def mm(m, n, k, layout):
        family = f"{side}-ffn" if F in (m, n, k) else side
        t["GEMM"] += 2 * m * n * k / gemm[(family, layout)]

    def mem(kernel, nbytes):
        t["memory-bound"] += nbytes / gbps[kernel]

    act = T * H * 4  # one [T, H] fp32 tensor, bytes
    for _ in range(LAYERS):
        # Forward: y = x W^T (NT); backward dx = dy W (NN), dW = dy^T x (TN).
        for n, k in ((3 * H, H), (H, H), (F, H), (H, F)):
            mm(T, n, k, "nt")
            mm(T, k, n, "nn")
            mm(n, k, T, "tn")
        t["attention"] += B * HEADS * (attn[(side, L, "fwd")] + attn[(side, L, "bwd")])
        ffn = act * F // H  # one [T, F] tensor
        # Both sides: two LayerNorms forward (read, write) and backward (read x and dy, write
        # dx and what the gamma gradient needs), GELU's backward (read x and dy, write dx),
        # the bias gradients (dy of QKV, O, FFN up and down read once: 9 [T, H]), attention's
        # row sums dO . O (read 2).
        mem("layernorm_forward", 2 * 2 * act)
        mem("layernorm_backward", 2 * 4 * act)
        mem("gelu_backward", 3 * ffn)
        mem("streaming", 9 * act + 2 * act)
        if side == "ours":
            # Bias, dropout, residual and GELU ride in the GEMM epilogues: the FFN's epilogue
            # writes the activation beside the pre-activation (one [T, F] more), and each
            # LayerNorm backward writes the dropped copy of its gradient (two [T, H] more).
            mem("gelu_forward", ffn)
            mem("streaming", 2 * act)
        else:
            # Eager BertLayer: GELU forward (read, write); two hidden dropouts (read, write, a
            # 1-byte mask) and two residual adds (read 2, write 1) forward; backward the two
            # dropouts (read gradient and mask, write) and the two residual gradient sums.
            mem("gelu_forward", 2 * ffn)
            mem("streaming", 2 * (act * 9 // 4) + 2 * 3 * act)
            mem("streaming", 2 * (act * 9 // 4) + 2 * 3 * act)
    t["AdamW"] = 7 * 4 * PARAMS / gbps["adamw_step"]
    return t


def main():
    results = sys.argv[1]
    gemm, attn, gbps = load(results)
    lines = ["# Modelled BERT-base training step on the GTX 1050 Ti (a model, not a measurement)", "",
             "From `runs.jsonl` beside this file by `benches/pascal-model/step_model.py`: each launch's time is its",
             "FLOPs or bytes over its family's modelled rate (see the script's header), summed over one step of",
             "BERT-base's encoder (12 layers, B16) and AdamW over 110 M parameters. Left out on both sides:",
             "embeddings, the classification head and its loss, the gradient norm, host work and launch latency.",
             "PyTorch's GEMMs are CUTLASS's SIMT SGEMM (cuBLAS cannot run in the model); its attention is CUTLASS's",
             "fused kernel (what SDPA runs on sm_61); its elementwise kernels move bytes at the rate ours reach.",
             "Plain streaming passes (dropout, residual adds, bias-gradient reads) take gelu_backward's rate: the",
             "dropout runs read no DRAM in the model (see README.md). GEMM and attention dominate either way.",
             "The FFN's GEMMs take the 512x3072x768 rates and the L512 attention forward the B1 H6 (whole-wave)",
             "runs where runs.jsonl has them (see the script's header).", "",
             "| L | side | GEMM ms | attention ms | memory-bound ms | AdamW ms | step ms | ours vs PyTorch |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for L in (128, 512):
        ours, torch = step("ours", L, gemm, attn, gbps), step("torch", L, gemm, attn, gbps)
        for side, t in (("ours", ours), ("PyTorch", torch)):
            total = sum(t.values())
            ratio = f"**{sum(torch.values()) / sum(ours.values()):.2f}×**" if side == "ours" else ""
            lines.append(f"| {L} | {side} | {1e3 * t['GEMM']:.1f} | {1e3 * t['attention']:.1f} | "
                         f"{1e3 * t['memory-bound']:.1f} | {1e3 * t['AdamW']:.1f} | {1e3 * total:.1f} | {ratio} |")
    lines.append("")
    text = "\n".join(lines)
    open(os.path.join(results, "step_model.md"), "w").write(text)
    print(text)


if __name__ == "__main__":
    main()
