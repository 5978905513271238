"""The masked-LM loss curve of transformers' own recipe (`run_mlm.py`: texts tokenized, joined
and cut into blocks, DataCollatorForLanguageModeling masking 15 % of tokens 80/10/10, Trainer
with AdamW, linear warm-up and decay, clipping 1.0) on the same texts, model shape and settings
as an `emrclass pretrain --mask-unit token` run, over several seeds; then the table of both
curves (`compare`), the engine's mean against PyTorch's seed spread.

run_mlm.py is not in the transformers wheel; its data path is these few lines (group_texts,
the collator, Trainer), kept as it writes them. Differences that remain, by design: run_mlm's
blocks are a plain cut of the joined texts (each text [CLS] ... [SEP]); the engine's blocks each
open with [CLS] and end with [SEP], texts joined by [SEP], the last short block kept. The
collator masks each token with probability 0.15; the engine masks round(15 %) of each sequence.

    /tmp/fixenv/bin/python benches/run_mlm_curve.py torch --config DIR --texts FILE.json \
        --records 3000 --out OUT --seeds 1 2 3 --epochs 2 --batch 16 --lr 5e-4 --warmup 0.06
    (the engine: emrclass pretrain --config DIR --text OUT/texts.txt --mask-unit token ...
     --out OUT/engine-seedN --log-every 1, for each seed)
    python3 benches/run_mlm_curve.py compare OUT --window 10

Pinned: torch 2.9.1, transformers 4.57.1 (as the fixtures), accelerate 1.12.0 (Trainer needs it).
"""

import argparse
import json
import math
import os
import sys


def torch_side(a):
    import torch
    import transformers
    from transformers import (BertConfig, BertForMaskedLM, BertTokenizerFast, DataCollatorForLanguageModeling,
                              Trainer, TrainingArguments)
    assert torch.__version__.startswith("2.9.1"), torch.__version__
    assert transformers.__version__ == "4.57.1", transformers.__version__
    torch.set_num_threads(a.threads)
    os.makedirs(a.out, exist_ok=True)
    with open(a.texts) as f:
        records = [r["text"].strip() for r in json.load(f)][: a.records]
    records = [t for t in records if t]
    with open(os.path.join(a.out, "texts.txt"), "w") as f:
        f.write("\n".join(records) + "\n")
    tok = BertTokenizerFast(vocab_file=os.path.join(a.config, "vocab.txt"), do_lower_case=True)
    config = BertConfig.from_json_file(os.path.join(a.config, "config.json"))
    # run_mlm.py: tokenize, then group_texts into blocks of block_size (the remainder dropped).
    ids = tok(records)["input_ids"]
    joined = [t for r in ids for t in r]
    block = a.max_len
    blocks = [joined[i:i + block] for i in range(0, len(joined) - block + 1, block)]
    # run_mlm.py's validation_split_percentage (5): the first 5 % held out.
    held = max(1, len(blocks) * 5 // 100)
    eval_blocks, train_blocks = blocks[:held], blocks[held:]

    class Blocks(torch.utils.data.Dataset):
        def __init__(self, b):
            self.b = b

        def __len__(self):
            return len(self.b)

        def __getitem__(self, i):
            return {"input_ids": self.b[i]}

    runs = {}
    for seed in a.seeds:
        transformers.set_seed(seed)
        model = BertForMaskedLM(config)
        args = TrainingArguments(output_dir=os.path.join(a.out, f"torch-seed{seed}"), seed=seed,
                                 per_device_train_batch_size=a.batch, per_device_eval_batch_size=a.batch,
                                 num_train_epochs=a.epochs, learning_rate=a.lr, warmup_ratio=a.warmup,
                                 weight_decay=a.weight_decay, max_grad_norm=1.0, lr_scheduler_type="linear",
                                 logging_steps=1, eval_strategy="epoch", save_strategy="no", report_to=[],
                                 use_cpu=True, dataloader_num_workers=0, disable_tqdm=True)
        trainer = Trainer(model=model, args=args, train_dataset=Blocks(train_blocks),
                          eval_dataset=Blocks(eval_blocks),
                          data_collator=DataCollatorForLanguageModeling(tok, mlm_probability=0.15))
        trainer.train()
        hist = trainer.state.log_history
        runs[seed] = dict(loss=[(h["step"], h["loss"]) for h in hist if "loss" in h],
                          eval=[(h["step"], h["eval_loss"]) for h in hist if "eval_loss" in h])
        print(f"seed {seed}: {len(runs[seed]['loss'])} steps, eval {runs[seed]['eval']}", flush=True)
    with open(os.path.join(a.out, "torch.json"), "w") as f:
        json.dump(dict(blocks=dict(train=len(train_blocks), held_out=len(eval_blocks)), runs=runs,
                       settings=vars(a)), f)


def windows(points, w):
    """Means of consecutive windows of w steps: (last step, mean)."""
    out = []
    for i in range(0, len(points) - w + 1, w):
        chunk = points[i:i + w]
        out.append((chunk[-1][0], sum(p[1] for p in chunk) / w))
    return out


def compare(a):
    with open(os.path.join(a.out, "torch.json")) as f:
        torch_runs = json.load(f)["runs"]
    engine, engine_eval = {}, {}
    for name in sorted(os.listdir(a.out)):
        log = os.path.join(a.out, name, "log.jsonl")
        if name.startswith("engine-seed") and os.path.isfile(log):
            with open(log) as f:
                lines = [json.loads(l) for l in f]
            engine[name] = [(l["step"], l["loss"]) for l in lines if "loss" in l]
            engine_eval[name] = [l["eval_loss"] for l in lines if l.get("epoch_end") and l["epoch"] > 0]
    if not engine:
        sys.exit(f"{a.out}: no engine-seedN runs")
    t = {s: windows(r["loss"], a.window) for s, r in torch_runs.items()}
    e = {s: windows(r, a.window) for s, r in engine.items()}
    n = min(min(len(v) for v in t.values()), min(len(v) for v in e.values()))
    print(f"| steps | PyTorch min | PyTorch max | engine mean | engine seeds | within |")
    print("|---:|---:|---:|---:|---:|:---:|")
    inside = 0
    for k in range(n):
        tv = [v[k][1] for v in t.values()]
        ev = [v[k][1] for v in e.values()]
        mean = sum(ev) / len(ev)
        ok = min(tv) <= mean <= max(tv)
        inside += ok
        step = list(t.values())[0][k][0]
        print(f"| {step - a.window + 1}-{step} | {min(tv):.3f} | {max(tv):.3f} | {mean:.3f} | "
              f"{' '.join(f'{x:.3f}' for x in ev)} | {'yes' if ok else 'no'} |")
    print(f"\nengine mean within PyTorch's seed range in {inside} of {n} windows of {a.window} steps")
    print("\n| held-out loss after epoch | PyTorch seeds | engine seeds |")
    print("|---:|---|---|")
    epochs = min(min(len(r["eval"]) for r in torch_runs.values()), min(len(v) for v in engine_eval.values()))
    for k in range(epochs):
        tv = " ".join(f"{r['eval'][k][1]:.3f}" for r in torch_runs.values())
        ev = " ".join(f"{v[k]:.3f}" for v in engine_eval.values())
        print(f"| {k + 1} | {tv} | {ev} |")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("torch")
    t.add_argument("--config", required=True)
    t.add_argument("--texts", required=True)
    t.add_argument("--records", type=int, default=3000)
    t.add_argument("--out", required=True)
    t.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    t.add_argument("--epochs", type=float, default=2)
    t.add_argument("--batch", type=int, default=16)
    t.add_argument("--lr", type=float, default=5e-4)
    t.add_argument("--warmup", type=float, default=0.06)
    t.add_argument("--weight-decay", type=float, default=0.01)
    t.add_argument("--max-len", type=int, default=128)
    t.add_argument("--threads", type=int, default=1)
    c = sub.add_parser("compare")
    c.add_argument("out")
    c.add_argument("--window", type=int, default=10)
    a = p.parse_args()
    torch_side(a) if a.cmd == "torch" else compare(a)


if __name__ == "__main__":
    main()
