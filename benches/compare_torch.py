#!/usr/bin/env python3
"""The PyTorch side of `emrclass bench --compare-torch`, and the GPU report's assembler.

  compare_torch.py time --reps N      reads a JSON list of work specs on stdin (the `spec` of
                                      each emrclass bench row) and prints one JSON object per
                                      spec: what PyTorch ran, its median ms and peak memory.
  compare_torch.py report DIR         joins DIR/bench.jsonl, DIR/env.json and DIR/tests.jsonl
                                      into DIR/report.md and DIR/report.json.

What each family times (forward + backward unless said; CUDA events; one warm-up, then the
median of N):
  copy       Tensor.copy_ of the same bytes
  gemm       torch.mm, fp32, TF32 off (cuBLAS SGEMM)
  attention  F.scaled_dot_product_attention, fp32, dropout as given
  gru, lstm  nn.GRU / nn.LSTM, bidirectional, batch_first (cuDNN)
  textcnn    nn.Conv1d per width + ReLU + max over time
  loss       the loss's forward and backward from logits, and its value read back (.item(),
             as the engine's loss step returns it)
  encoder    transformers BertModel with one layer, default attention (SDPA)
  step       transformers BertModel + the same head + loss, clip_grad_norm_, torch AdamW:
             one whole training step in eager mode, with torch.cuda.max_memory_allocated;
             with "objective": "mlm" (`bench step --pretrain`), transformers BertForMaskedLM
             with labels at the engine's masked positions (its logits cover every position,
             as transformers computes them), clip_grad_norm_ and AdamW
Requires torch with CUDA; transformers for `encoder` and `step`.
"""
import json
import sys


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def timed(torch, fn, reps):
    """Median ms of fn() over reps runs after one warm-up, timed by CUDA events."""
    fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b))
    return median(out)


def fwd_bwd(torch, forward, backward, reps):
    """Median forward ms and backward ms, each timed by events."""
    f_ms, b_ms = [], []
    for i in range(reps + 1):
        a, m, b = (torch.cuda.Event(enable_timing=True) for _ in range(3))
        a.record()
        y = forward()
        m.record()
        backward(y)
        b.record()
        b.synchronize()
        if i > 0:
            f_ms.append(a.elapsed_time(m))
            b_ms.append(m.elapsed_time(b))
    return median(f_ms), median(b_ms)


def loss_fn(torch, kind, classes):
    F = torch.nn.functional
    dev = "cuda"
    weights = torch.ones(classes, device=dev)
    sim = torch.full((classes, classes), 0.1, device=dev) + 0.9 * torch.eye(classes, device=dev)
    soft = sim / sim.sum(1, keepdim=True)
    state = {"acc": None}

    def ghm_weights(logits, y, bins=10, momentum=0.75):
        with torch.no_grad():
            g = 1 - torch.softmax(logits, 1).gather(1, y[:, None])[:, 0]
            idx = (g * bins).long().clamp(max=bins - 1)
            counts = torch.bincount(idx, minlength=bins).float()
            acc = counts if state["acc"] is None else momentum * state["acc"] + (1 - momentum) * counts
            state["acc"] = acc
            nonempty = (counts > 0).sum()
            return len(y) / (acc[idx].clamp(min=1e-12) * nonempty)

    def f(logits, y):
        if kind == "CrossEntropy":
            return F.cross_entropy(logits, y)
        if kind == "WeightedCrossEntropy":
            return F.cross_entropy(logits, y, weight=weights)
        if kind == "Focal":
            ce = F.cross_entropy(logits, y, reduction="none")
            return ((1 - torch.exp(-ce)) ** 2 * ce).mean()
        if kind == "GhmC":
            ce = F.cross_entropy(logits, y, reduction="none")
            return (ghm_weights(logits, y) * ce).sum() / len(y)
        if kind == "GhmCs":
            logp = torch.log_softmax(logits, 1)
            ce = -(soft[y] * logp).sum(1)
            return (ghm_weights(logits, y) * weights[y] * ce).sum() / len(y)
        raise ValueError(f"no loss {kind}")

    return f


class PaperHead:
    """Text-CNN || BiGRU over the token states, concatenated with the pooled [CLS]; dropout and a
    linear layer (the engine's `paper` head; other heads reduce to parts of it)."""

    @staticmethod
    def build(torch, kind, hidden, classes, filters, rnn_hidden, widths=(2, 3, 4)):
        nn = torch.nn

        class Head(nn.Module):
            def __init__(self):
                super().__init__()
                self.use_cnn = kind in ("Paper", "TextCnn")
                self.use_rnn = kind in ("Paper", "BiGru")
                self.use_cls = kind in ("Paper", "Cls")
                feats = 0
                if self.use_cnn:
                    self.convs = nn.ModuleList(nn.Conv1d(hidden, filters, w) for w in widths)
                    feats += filters * len(widths)
                if self.use_rnn:
                    self.gru = nn.GRU(hidden, rnn_hidden, batch_first=True, bidirectional=True)
                    feats += 2 * rnn_hidden
                if self.use_cls:
                    feats += hidden
                self.drop = nn.Dropout(0.1)
                self.fc = nn.Linear(feats, classes)

            def forward(self, states, pooled):
                parts = []
                if self.use_cnn:
                    x = states.transpose(1, 2)
                    parts += [torch.relu(c(x)).amax(2) for c in self.convs]
                if self.use_rnn:
                    parts.append(self.gru(states)[0].amax(1))
                if self.use_cls:
                    parts.append(pooled)
                return self.fc(self.drop(torch.cat(parts, 1)))

        return Head()


def eager_step(torch, params, loss_of):
    """One eager training step as the engine's: loss_of(), backward, clip_grad_norm_ at 1.0,
    AdamW (lr 1e-5, weight decay 0.01); returns the loss as a float."""
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01)

    def step():
        loss = loss_of()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss.item()

    return step


def time_step(torch, step, reps, batch, length):
    """A step's row fields after one untimed step (AdamW's moments): median ms, samples/s, tokens/s."""
    step()
    ms = timed(torch, step, reps)
    return {"ms": ms, "samples_per_s": batch / (ms / 1e3), "tokens_per_s": batch * length / (ms / 1e3)}


def run_spec(torch, spec, reps):
    fam = spec["family"]
    dev = "cuda"
    F = torch.nn.functional
    torch.manual_seed(0)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    out = {"spec": spec}
    if fam == "copy":
        n = spec["bytes"] // 4
        a = torch.empty(n, device=dev)
        c = torch.empty(n, device=dev)
        out["what"] = f"Tensor.copy_ {spec['bytes'] >> 20} MiB"
        out["ms"] = timed(torch, lambda: c.copy_(a), reps)
    elif fam == "gemm":
        m, n, k = spec["m"], spec["n"], spec["k"]
        # The same stored layouts as the engine's row: op(A) = A^T when trans_a, etc.
        a = torch.randn(k, m, device=dev).t() if spec.get("trans_a") else torch.randn(m, k, device=dev)
        b = torch.randn(n, k, device=dev).t() if spec.get("trans_b") else torch.randn(k, n, device=dev)
        c = torch.empty(m, n, device=dev)
        layout = ("T" if spec.get("trans_a") else "N") + ("T" if spec.get("trans_b") else "N")
        out["what"] = f"torch.mm fp32 TF32 off {layout} {m}x{n}x{k}"
        out["ms"] = timed(torch, lambda: torch.mm(a, b, out=c), reps)
    elif fam == "attention":
        B, L, H, d = spec["batch"], spec["len"], spec["heads"], spec["head_dim"]
        q, k, v = (torch.randn(B, H, L, d, device=dev, requires_grad=True) for _ in range(3))
        do = torch.randn(B, H, L, d, device=dev)
        p = spec.get("dropout", 0.0)
        fw = lambda: F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        bw = lambda y: torch.autograd.grad(y, (q, k, v), do)
        f, b = fwd_bwd(torch, fw, bw, reps)
        out.update(what=f"SDPA fp32 B={B} L={L} H={H} d={d}", forward_ms=f, backward_ms=b, ms=f + b)
    elif fam in ("gru", "lstm"):
        B, L, I, Hd = spec["batch"], spec["len"], spec["input"], spec["hidden"]
        cls = torch.nn.GRU if fam == "gru" else torch.nn.LSTM
        rnn = cls(I, Hd, batch_first=True, bidirectional=True).to(dev)
        x = torch.randn(B, L, I, device=dev, requires_grad=True)
        do = torch.randn(B, L, 2 * Hd, device=dev)
        params = [x] + list(rnn.parameters())
        f, b = fwd_bwd(torch, lambda: rnn(x)[0], lambda y: torch.autograd.grad(y, params, do), reps)
        out.update(what=f"nn.{cls.__name__} cuDNN B={B} L={L} in={I} H={Hd}", forward_ms=f, backward_ms=b, ms=f + b)
    elif fam == "textcnn":
        B, L, I, Fn = spec["batch"], spec["len"], spec["input"], spec["filters"]
        convs = [torch.nn.Conv1d(I, Fn, w).to(dev) for w in spec["widths"]]
        x = torch.randn(B, L, I, device=dev, requires_grad=True)
        dp = torch.randn(B, Fn * len(convs), device=dev)
        params = [x] + [p for c in convs for p in c.parameters()]

        def fw():
            xt = x.transpose(1, 2)
            return torch.cat([torch.relu(c(xt)).amax(2) for c in convs], 1)

        f, b = fwd_bwd(torch, fw, lambda y: torch.autograd.grad(y, params, dp), reps)
        out.update(what=f"nn.Conv1d x{len(convs)} B={B} L={L} in={I} F={Fn}", forward_ms=f, backward_ms=b, ms=f + b)
    elif fam == "loss":
        rows, k = spec["rows"], spec["classes"]
        fn = loss_fn(torch, spec["kind"], k)
        logits = (2 * torch.randn(rows, k, device=dev)).requires_grad_()
        y = torch.randint(0, k, (rows,), device=dev)

        def step():
            loss = fn(logits, y)
            torch.autograd.grad(loss, logits)
            return loss.item()

        out["what"] = f"torch {spec['kind']} rows={rows} K={k}"
        out["ms"] = timed(torch, step, reps)
    elif fam in ("encoder", "step"):
        import transformers

        layers = spec.get("layers", 1)
        hidden, heads = spec["hidden"], spec["heads"]
        B, L = spec["batch"], spec["len"]
        vocab = spec.get("vocab", 128)
        cfg = transformers.BertConfig(
            vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
            num_attention_heads=heads, intermediate_size=spec.get("intermediate", 4 * hidden),
            max_position_embeddings=max(L, 512), hidden_act="gelu")
        mlm = spec.get("objective") == "mlm"
        model = (transformers.BertForMaskedLM if mlm else transformers.BertModel)(cfg).to(dev).train()
        ids = torch.randint(1, vocab, (B, L), device=dev)
        mask = torch.ones(B, L, dtype=torch.long, device=dev)
        if fam == "encoder":
            dh = torch.randn(B, L, hidden, device=dev)
            params = list(model.parameters())
            fw = lambda: model(input_ids=ids, attention_mask=mask).last_hidden_state
            bw = lambda y: y.backward(dh)
            f, b = fwd_bwd(torch, fw, bw, reps)
            out.update(what=f"transformers BertLayer B={B} L={L} H={hidden}", forward_ms=f, backward_ms=b, ms=f + b)
        elif mlm:
            # The engine's masked positions (plan::sizing_masked_batch): n a row, evenly spaced
            # between [CLS] and [SEP].
            inner, n = L - 2, spec["masked_per_row"]
            cols = torch.tensor([1 + k * inner // n for k in range(n)], device=dev)
            labels = torch.full((B, L), -100, dtype=torch.long, device=dev)
            labels[:, cols] = ids[:, cols]
            step = eager_step(torch, list(model.parameters()),
                              lambda: model(input_ids=ids, attention_mask=mask, labels=labels).loss)
            out["what"] = f"PyTorch eager BertForMaskedLM step {layers}x{heads} H={hidden} B={B} L={L} {n}/{L} masked"
            out.update(time_step(torch, step, reps, B, L))
        else:
            k = spec["classes"]
            head = PaperHead.build(torch, spec["head"], hidden, k, spec["textcnn_filters"], spec["rnn_hidden"]).to(dev)
            fn = loss_fn(torch, spec["loss"], k)
            y = torch.randint(0, k, (B,), device=dev)
            def loss_of():
                o = model(input_ids=ids, attention_mask=mask)
                return fn(head(o.last_hidden_state, o.pooler_output), y)

            step = eager_step(torch, list(model.parameters()) + list(head.parameters()), loss_of)
            out["what"] = f"PyTorch eager step {layers}x{heads} H={hidden} B={B} L={L} {spec['head']}"
            out.update(time_step(torch, step, reps, B, L))
    else:
        raise ValueError(f"no family {fam}")
    out["peak_bytes"] = torch.cuda.max_memory_allocated()
    return out


def time_main(reps):
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    specs = json.load(sys.stdin)
    for spec in specs:
        try:
            row = run_spec(torch, spec, reps)
        except Exception as e:  # one failing family must not hide the others
            row = {"spec": spec, "what": f"error: {e}", "ms": None}
        row["torch"] = torch.__version__
        row["device"] = torch.cuda.get_device_name()
        print(json.dumps(row), flush=True)


def key(spec):
    return json.dumps(spec, sort_keys=True)


def report_main(folder):
    import os

    read_lines = lambda p: [json.loads(l) for l in open(p) if l.strip().startswith("{")] if os.path.exists(p) else []
    env = json.load(open(os.path.join(folder, "env.json"))) if os.path.exists(os.path.join(folder, "env.json")) else {}
    bench = read_lines(os.path.join(folder, "bench.jsonl"))
    tests = read_lines(os.path.join(folder, "tests.jsonl"))
    ours = [r for r in bench if r.get("kind") == "emrclass"]
    torch_rows = [r for r in bench if r.get("kind") == "torch"]

    def speedups(family, pred=lambda s: True):
        return [r for r in torch_rows if r["spec"]["family"] == family and pred(r["spec"]) and r.get("ms")]

    goals = []

    def goal(name, rows, need, value_of, detail):
        vals = [value_of(r) for r in rows]
        if not vals:
            goals.append({"goal": name, "status": "not measured", "detail": detail})
            return
        worst = min(vals)
        goals.append({"goal": name, "worst": worst, "need": need,
                      "status": "met" if worst >= need else "not met", "detail": detail})

    # The products of a BERT-base step at 16 x 128 and 16 x 512 tokens: forward (tokens, out,
    # in), input gradient (tokens, in, out), weight gradient (out, in, tokens), each linear
    # (in, out) of a layer. Only the plan the launcher picks counts (`bench gemm --tiles all`
    # times the others too).
    linears = ((768, 2304), (768, 768), (768, 3072), (3072, 768))
    bert_shapes = {shape for t in (2048, 8192) for i, o in linears for shape in ((t, o, i), (t, i, o), (o, i, t))}
    bert_gemm = lambda s: (s["m"], s["n"], s["k"]) in bert_shapes and s.get("picked", True)
    goal("GEMM at BERT-base shapes >= 90% of cuBLAS SGEMM (TF32 off)", speedups("gemm", bert_gemm), 0.9,
         lambda r: r["speedup"], "emrclass GFLOP/s / cuBLAS GFLOP/s, worst shape")
    goal("attention fwd+bwd >= PyTorch SDPA fp32", speedups("attention"), 1.0, lambda r: r["speedup"], "worst L")
    goal("BiGRU fwd+bwd >= cuDNN nn.GRU", speedups("gru"), 1.0, lambda r: r["speedup"], "")
    steps = speedups("step", lambda s: s.get("objective") != "mlm")
    goal("paper step >= 1.3x PyTorch eager samples/s", steps, 1.3, lambda r: r["speedup"], "")
    peak = {key(r["spec"]): r.get("peak_bytes") for r in ours if r["spec"]["family"] == "step"}
    goal("paper step peak memory <= 0.5x PyTorch's", steps, 1.0,
         lambda r: 0.5 * r["peak_bytes"] / max(peak.get(key(r["spec"])) or 1, 1),
         "0.5 x torch peak / emrclass peak (>= 1 means met)")

    rep = {"environment": env, "tests": tests, "goals": goals, "bench": bench}
    with open(os.path.join(folder, "report.json"), "w") as f:
        json.dump(rep, f, indent=1)
    md = ["# emrclass GPU verification report", ""]
    for k in ("gpu", "driver", "cuda_driver_api", "nvrtc", "torch", "transformers", "date", "commit"):
        if k in env:
            md.append(f"- {k}: {env[k]}")
    md += ["", "## Tests on the device", "", "| test binary | result |", "|---|---|"]
    for t in tests:
        md.append(f"| {t.get('name')} | {t.get('result')} |")
    md += ["", "## Goals", "", "| goal | measured (worst) | needed | status |", "|---|---|---|---|"]
    for g in goals:
        w = g.get("worst")
        md.append(f"| {g['goal']} | {'-' if w is None else f'{w:.2f}'} | {g.get('need', '-')} | {g['status']} |")
    md += ["", "## emrclass against PyTorch (same GPU, same run)", "",
           "| work | emrclass ms | PyTorch ms | speed-up | PyTorch peak MiB |", "|---|---|---|---|---|"]
    for r in torch_rows:
        ms = r.get("ms")
        md.append("| {} | {:.3f} | {} | {} | {} |".format(
            r.get("what"), r.get("emrclass_ms", float("nan")),
            "-" if ms is None else f"{ms:.3f}",
            "-" if r.get("speedup") is None else f"{r['speedup']:.2f}x",
            "-" if r.get("peak_bytes") is None else f"{r['peak_bytes'] / 2**20:.1f}"))
    # device used = the GPU's used memory after a step (context, modules, pool, the engine): less
    # the engine's peak, it is what a memory plan's context reserve (320 MiB) has to cover.
    md += ["", "## emrclass rows", "",
           "| work | ms | GFLOP/s or rows/s | roofline | peak MiB | device used MiB | launches / host waits per step |",
           "|---|---|---|---|---|---|---|"]
    for r in ours:
        ms = r.get("ms", (r.get("forward_ms") or 0) + (r.get("backward_ms") or 0))
        rate = r.get("gflops") or (r.get("gflop") and r["gflop"] / (ms / 1e3)) or r.get("rows_per_s") or r.get("bytes_per_s")
        roof = r.get("roofline")
        pk = r.get("peak_bytes")
        used = r.get("device_used_bytes")
        launches, waits = r.get("launches_per_step"), r.get("host_syncs_per_step")
        md.append("| {} {} | {:.3f} | {} | {} | {} | {} | {} |".format(
            r.get("what", r["spec"].get("family")), r.get("shape", ""), ms or 0.0,
            "-" if rate is None else f"{rate:.4g}", "-" if roof is None else f"{100 * roof:.1f}%",
            "-" if pk is None else f"{pk / 2**20:.1f}",
            "-" if used is None else f"{used / 2**20:.1f}",
            "-" if launches is None else f"{launches} / {waits}"))
    with open(os.path.join(folder, "report.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "time":
        reps = int(sys.argv[sys.argv.index("--reps") + 1]) if "--reps" in sys.argv else 10
        time_main(reps)
    elif len(sys.argv) == 3 and sys.argv[1] == "report":
        report_main(sys.argv[2])
    else:
        sys.exit(__doc__)
