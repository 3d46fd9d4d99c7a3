"""SimpleStories with the SimpleStories-5M tokenizer: data/simplestories/{train,val}.bin + meta.json.
Needs the HF hub. The dataset's own train and test splits are disjoint sets of stories; test becomes val.
Run: python data/simplestories/prepare.py
"""
import os, sys

from transformers import AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from tokens import eot_id, write_splits

try:
    from datasets import load_dataset
except ImportError:
    raise SystemExit("the HF `datasets` package is missing: pip install datasets")

TOKENIZER = "SimpleStories/SimpleStories-5M"
num_proc = max(1, (os.cpu_count() or 2) // 2)
tok = AutoTokenizer.from_pretrained(TOKENIZER)
eot = eot_id(tok)  # this tokenizer has no <|endoftext|>; its eos is [EOS]

ds = load_dataset("SimpleStories/SimpleStories")
ds = ds.map(lambda b: {"ids": tok(b["story"], add_special_tokens=False)["input_ids"]}, batched=True,
            remove_columns=ds["train"].column_names, num_proc=num_proc, desc="tokenizing")


def docs(split):
    for batch in split.iter(batch_size=1024):
        yield from batch["ids"]


meta = dict(tokenizer=TOKENIZER, vocab_size=len(tok), eot_id=eot, eot_token=tok.convert_ids_to_tokens(eot),
            document="one SimpleStories story",
            split="by document: the dataset's own train split -> train, its test split -> val")
write_splits(docs(ds["train"]), docs(ds["test"]), HERE, meta)
