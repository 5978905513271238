#!/usr/bin/env python3
"""sass_report.py CUBIN_DIR ANCHOR_BIN_DIR OUT_DIR

The machine code the GTX 1050 Ti would run, ours beside PyTorch's (CUTLASS), main loop by main
loop. Ours: the engine's own compile path (`emrclass kernels --cubin-dir CUBIN_DIR`: NVRTC
12.x, sm_61 CUBIN). Theirs: the anchors' sm_61 SASS (OUT/bin of model.sh: nvcc 11.8).
Disassembled with `cuobjdump -sass` (CUDA 11.8). Writes OUT_DIR/sass.jsonl and OUT_DIR/SASS.md.

A loop is a region closed by a backward branch; the rows are a kernel's outermost loops with at
least 16 FFMA (a loop body counted once: static counts, not executed ones). Per loop:
instructions, FFMA and their share, instructions per FFMA, XMAD (Pascal has no integer
multiplier: a 32-bit multiply is 3 XMADs, a 64-bit one ~15), int64_ops (instructions finishing a
64-bit integer add or address: .X carry-ins; a 64-bit multiply shows as XMAD and .X), integer
instructions, branches, barriers, shared/global memory instructions by width. Per kernel:
registers (cuobjdump -res-usage) and the occupancy they allow on a GTX 1050 Ti.
"""
import json
import os
import re
import subprocess
import sys
from collections import Counter

# Our hot kernels -> threads per block.
OURS = {
    "gemm_f32_128x128": 256, "gemm_f32_128x64": 256, "gemm_f32_64x64": 256,
    "attention_forward_flash": 256, "attention_forward_flash_dropout": 256,
    "attention_backward_kv_flash": 256, "attention_backward_kv_flash_dropout": 256,
    "attention_backward_q_flash": 256, "attention_backward_q_flash_dropout": 256,
}
# anchor binary -> (label, threads per block)
ANCHORS = {"cutlass_gemm": ("CUTLASS SIMT SGEMM", None), "cutlass_fmha_fwd": ("CUTLASS fmha forward f32 Sm50", 128),
           "cutlass_fmha_bwd": ("CUTLASS fmha backward f32 Sm50", 128)}
INTEGER = ("XMAD", "IADD", "IADD3", "IADD32I", "ISCADD", "LEA", "SHL", "SHR", "LOP", "LOP3", "LOP32I", "BFE",
           "BFI", "ISETP", "IMNMX", "SEL", "ICMP", "FLO", "POPC")


def opcode(ins):
    ins = re.sub(r"^@!?P\w+\s+", "", ins.strip())
    return ins.split()[0] if ins else ""


def functions(listing):
    for f in re.split(r"\n\s*Function : ", listing)[1:]:
        name = f.split("\n", 1)[0].strip()
        ins = [(int(m.group(1), 16), m.group(2).strip().lstrip("{").strip())
               for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", f)]
        yield name, ins


def loops(ins):
    spans = []
    for addr, op in ins:
        b = re.search(r"\bBRA\b.*0x([0-9a-f]+)", op)
        if b and int(b.group(1), 16) < addr:
            spans.append((int(b.group(1), 16), addr))
    outer = [s for s in spans if not any(o != s and o[0] <= s[0] and s[1] <= o[1] for o in spans)]
    for lo, hi in sorted(outer):
        body = [op for a, op in ins if lo <= a <= hi]
        full = Counter(opcode(o) for o in body)
        base = Counter()
        for k, v in full.items():
            base[k.split(".")[0]] += v
        if base["FFMA"] < 16:
            continue
        n = len(body)
        yield {
            "loop": f"{lo:#x}-{hi:#x}", "instructions": n, "ffma": base["FFMA"],
            "ffma_share": round(base["FFMA"] / n, 3), "instr_per_ffma": round(n / base["FFMA"], 3),
            "xmad": base["XMAD"], "int64_ops": sum(v for k, v in full.items() if "X" in k.split(".")[1:]),
            "integer": sum(base[k] for k in INTEGER), "branches": base["BRA"], "barriers": base["BAR"],
            "memory": {k: v for k, v in sorted(full.items()) if k.startswith(("LDS", "LDG", "STS", "STG", "LDL", "STL"))},
        }


def resources(path):
    text = subprocess.run(["cuobjdump", "-res-usage", path], capture_output=True, text=True).stdout
    out, name = {}, None
    for line in text.splitlines():
        m = re.search(r"Function (\S+):", line)
        if m:
            name = m.group(1)
        m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", line)
        if m and name:
            out[name] = {k: int(v) for k, v in zip(("registers", "stack", "shared", "local"), m.groups())}
    return out


def occupancy(regs, shared, threads):
    """Resident blocks per SM on a GTX 1050 Ti (64K registers, 96 KiB shared, 2048 threads, 32 blocks)."""
    if not threads:
        return None
    warps = -(-threads // 32)
    by_regs = 65536 // (-(-regs * 32 // 256) * 256 * warps) if regs else 32
    by_smem = (96 * 1024) // (-(-shared // 256) * 256) if shared else 32
    blocks = min(by_regs, by_smem, 2048 // (warps * 32), 32)
    return {"blocks_per_sm": blocks, "occupancy": round(blocks * warps / 64, 3)}


def rows_for(path, side, wanted):
    listing = subprocess.run(["cuobjdump", "-sass", path], capture_output=True, text=True, check=True).stdout
    res = resources(path)
    for name, ins in functions(listing):
        label, threads = wanted(name)
        if not label:
            continue
        r = res.get(name, {})
        found = list(loops(ins))
        # The main loop: the leanest of those doing (nearly) the most FFMA -- for our GEMMs the
        # unchecked interior loop, beside the edge blocks' bounds-checked copy.
        most = max((lp["ffma"] for lp in found), default=0)
        candidates = [i for i, lp in enumerate(found) if lp["ffma"] >= 0.9 * most]
        main = min(candidates, key=lambda i: found[i]["instr_per_ffma"]) if candidates else None
        for i, lp in enumerate(found):
            row = {"kernel": label, "side": side, "function": name if len(name) < 90 else name[:87] + "...",
                   "main": i == main, **lp, "registers": r.get("registers"), "spill_local": r.get("local"),
                   "shared_static": r.get("shared")}
            occ = occupancy(r.get("registers", 0), r.get("shared", 0), threads)
            if occ:
                row.update(occ)
            yield row


def anchor_label(label, function):
    """CUTLASS's GEMM binary holds one kernel per threadblock tile: name it by its tile."""
    m = re.search(r"GemmShapeILi(\d+)ELi(\d+)ELi8E", function)
    return f"{label} {m.group(1)}x{m.group(2)}" if m and "SGEMM" in label else label


def gemm_threads(function):
    """Threads of CUTLASS's SIMT GEMM tiles (warp 32x64 or 64x32): 128x128 256, 128x64 128, 64x64 64."""
    m = re.search(r"GemmShapeILi(\d+)ELi(\d+)ELi8E", function)
    return int(m.group(1)) * int(m.group(2)) // 64 if m else None


def main():
    cubins, anchors, out = sys.argv[1:4]
    os.makedirs(out, exist_ok=True)
    rows = []
    for f in sorted(os.listdir(cubins)):
        if f.endswith("-sm_61.cubin"):
            rows += rows_for(os.path.join(cubins, f), "ours",
                             lambda n: (n, OURS[n]) if n in OURS else (None, None))
    for binary, (label, threads) in ANCHORS.items():
        path = os.path.join(anchors, binary)
        if os.path.exists(path):
            # One kernel per anchor binary (CUTLASS's device-side kernel; skip helpers without FFMA).
            rows += rows_for(path, "cutlass", lambda n, l=label, t=threads: (anchor_label(l, n), t or gemm_threads(n)))
    with open(os.path.join(out, "sass.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    lines = ["# SASS of the hot kernels' loops (sm_61), ours beside CUTLASS", "",
             "Static counts over each loop body once (see `benches/pascal-model/sass_report.py`); `main` marks",
             "the leanest loop among those with the most FFMA (for our GEMMs: the unchecked interior loop every BERT-sized block runs;",
             "the other is the bounds-checked loop of edge blocks). Ours: NVRTC 12.x CUBIN (the engine's compile",
             "path); CUTLASS: nvcc 11.8.", "",
             "| kernel | side | loop | main | instr | FFMA | instr/FFMA | XMAD | int64 | integer | BRA | regs | blocks/SM | memory |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        mem = ", ".join(f"{k} {v}" for k, v in r["memory"].items())
        lines.append(f"| {r['kernel']} | {r['side']} | {r['loop']} | {'yes' if r['main'] else ''} | {r['instructions']} | "
                     f"{r['ffma']} | {r['instr_per_ffma']:.2f} | {r['xmad']} | {r['int64_ops']} | {r['integer']} | "
                     f"{r['branches']} | {r['registers']} | {r.get('blocks_per_sm', '')} | {mem} |")
    lines.append("")
    open(os.path.join(out, "SASS.md"), "w").write("\n".join(lines))
    print(f"wrote {out}/sass.jsonl and {out}/SASS.md ({len(rows)} loops)")


if __name__ == "__main__":
    main()
