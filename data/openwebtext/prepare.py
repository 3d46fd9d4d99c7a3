"""OpenWebText with the GPT-2 tokenizer, nanoGPT style: data/openwebtext/{train,val}.bin + meta.json.
Needs the HF hub and ~80 GB of disk (HF cache + ~17 GB of .bin). Train ends up ~9B tokens, val ~4M.
Run: python data/openwebtext/prepare.py
With another model's tokenizer (its ids are what that model reads), into data/openwebtext/<name>/:
     python data/openwebtext/prepare.py --tokenizer=meta-llama/Llama-3.2-1B
"""
import os, sys

import tiktoken

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from tokens import write_splits

try:
    from datasets import load_dataset
except ImportError:
    raise SystemExit("the HF `datasets` package is missing: pip install datasets")

num_proc = max(1, (os.cpu_count() or 2) // 2)
tokenizer = next((arg.split("=", 1)[1] for arg in sys.argv[1:] if arg.startswith("--tokenizer=")), None)
if tokenizer:
    from transformers import AutoTokenizer
    hf = AutoTokenizer.from_pretrained(tokenizer)
    encode, out_dir = (lambda text: hf(text, add_special_tokens=False)["input_ids"]), os.path.join(HERE, os.path.basename(tokenizer))
    token_meta = dict(tokenizer=tokenizer, vocab_size=len(hf), eot_id=hf.eos_token_id, eot_token=hf.eos_token)
    os.makedirs(out_dir, exist_ok=True)
else:
    enc = tiktoken.get_encoding("gpt2")
    encode, out_dir = enc.encode_ordinary, HERE
    token_meta = dict(tokenizer="tiktoken:gpt2", vocab_size=enc.n_vocab, eot_id=enc.eot_token, eot_token="<|endoftext|>")

ds = load_dataset("Skylion007/openwebtext", num_proc=num_proc)  # only a train split, ~8M documents
# a document is one web page; hold out 0.05% of them, seeded as in nanoGPT so the split matches it
ds = ds["train"].train_test_split(test_size=0.0005, seed=2357, shuffle=True)
ds = ds.map(lambda ex: {"ids": encode(ex["text"])}, remove_columns=["text"],
            num_proc=num_proc, desc="tokenizing")


def docs(split):  # stream from the on-disk arrow cache, batched since per-row access is slow
    for batch in split.iter(batch_size=1024):
        yield from batch["ids"]


meta = dict(token_meta, document="one OpenWebText web page",
            split="by document: Skylion007/openwebtext train_test_split(test_size=0.0005, seed=2357), as nanoGPT")
write_splits(docs(ds["train"]), docs(ds["test"]), out_dir, meta)
