"""The Pile (uncopyrighted subset) with the GPT-2 tokenizer: the first 10M train documents and 100k
validation documents, as the original's gpt2_pile runs. Needs the HF hub and `pip install datasets`.
Run: python data/pile/prepare.py
"""
import itertools
import os
import sys

import tiktoken

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from tokens import write_splits

try:
    from datasets import load_dataset
except ImportError:
    raise SystemExit("the HF `datasets` package is missing: pip install datasets")

enc = tiktoken.get_encoding("gpt2")


def docs(split, n):  # streamed: the full Pile is ~800 GB; the train and validation splits share no document
    rows = load_dataset("monology/pile-uncopyrighted", split=split, streaming=True)
    return (enc.encode_ordinary(row["text"]) for row in itertools.islice(rows, n))


meta = dict(tokenizer="tiktoken:gpt2", vocab_size=enc.n_vocab, eot_id=enc.eot_token, document="one Pile document",
            split="by document: the dataset's own train and validation splits")
write_splits(docs("train", 10_000_000), docs("validation", 100_000), HERE, meta)
