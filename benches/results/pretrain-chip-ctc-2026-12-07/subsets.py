"""The fine-tuning subsets of the experiment (run.sh): 2,013 training records, every class with
max(3, its share of 2,000) records, and 2,000 dev records, drawn with Python's random.Random(2026)."""
import json
import random
import sys
from collections import defaultdict

data, out = sys.argv[1], sys.argv[2]
train = json.load(open(f"{data}/CHIP-CTC_train.json"))
dev = json.load(open(f"{data}/CHIP-CTC_dev.json"))
r = random.Random(2026)
by_class = defaultdict(list)
for x in train:
    by_class[x["label"]].append(x)
picked = []
for label, xs in sorted(by_class.items()):
    picked += r.sample(xs, min(len(xs), max(3, round(len(xs) / len(train) * 2000))))
r.shuffle(picked)
json.dump(picked, open(f"{out}/ft_train.json", "w"), ensure_ascii=False)
json.dump(r.sample(dev, 2000), open(f"{out}/ft_dev.json", "w"), ensure_ascii=False)
print(len(picked), "training records,", len(by_class), "classes; 2000 dev records")
