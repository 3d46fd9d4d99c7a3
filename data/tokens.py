"""Shared by the data/*/prepare.py scripts: documents of token ids -> train.bin, val.bin, meta.json.

Each .bin is one flat array of token ids with the end-of-text id after every document,
so a reader can np.memmap it and cut windows anywhere (nanoGPT style); meta.json says how.
"""
import json
import os

import numpy as np


def eot_id(tok):
    """End-of-text id of an HF tokenizer: "<|endoftext|>" when it has one (SmolLM2: 0, not its chat eos), else eos."""
    eot = tok.get_vocab().get("<|endoftext|>", tok.eos_token_id)
    if eot is None:
        raise SystemExit(f"tokenizer {tok.name_or_path} has neither <|endoftext|> nor an eos token: pick an eot id by hand")
    return eot


def _pack(chunk, dtype):
    a = np.concatenate(chunk) if chunk else np.zeros(0, np.int64)
    assert a.size == 0 or (a.min() >= 0 and a.max() <= np.iinfo(dtype).max), "token id does not fit the dtype"
    return a.astype(dtype).tobytes()


def _write_bin(docs, path, eot, dtype, chunk_tokens=1 << 24):
    # stream in ~16M-token chunks so OpenWebText never has to sit in RAM, and write to a temp name
    # renamed at the end so a killed run never leaves a truncated .bin behind
    n_docs = n_tokens = 0
    chunk, n_chunk = [], 0
    with open(path + ".tmp", "wb") as f:
        for ids in docs:
            chunk.append(np.append(np.asarray(ids, np.int64), eot))
            n_docs, n_tokens, n_chunk = n_docs + 1, n_tokens + len(chunk[-1]), n_chunk + len(chunk[-1])
            if n_chunk >= chunk_tokens:
                f.write(_pack(chunk, dtype))
                chunk, n_chunk = [], 0
        f.write(_pack(chunk, dtype))
    os.replace(path + ".tmp", path)
    return n_docs, n_tokens


def write_splits(train_docs, val_docs, out_dir, meta):
    """train_docs/val_docs: iterables (may be generators) of token-id lists, one per document.
    meta must hold tokenizer, vocab_size, eot_id; counts and dtype are added. meta.json is written last,
    so its presence means the .bin files are complete."""
    dtype = np.uint16 if meta["vocab_size"] <= 1 << 16 else np.uint32
    meta = dict(meta, dtype=np.dtype(dtype).name)
    for split, docs in (("train", train_docs), ("val", val_docs)):
        n_docs, n_tokens = _write_bin(docs, os.path.join(out_dir, f"{split}.bin"), meta["eot_id"], dtype)
        meta[f"{split}_docs"], meta[f"{split}_tokens"] = n_docs, n_tokens
        print(f"{split}: {n_docs:,} docs, {n_tokens:,} tokens ({meta['dtype']}) -> {os.path.join(out_dir, split + '.bin')}")
    path = os.path.join(out_dir, "meta.json")
    with open(path + ".tmp", "w") as f:
        json.dump(meta, f, indent=2)
    os.replace(path + ".tmp", path)
    return meta
