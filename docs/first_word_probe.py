"""
What the words after the first carry, for a lens whose words start with the token at p
(config/austen_first_word.py, docs/experiments.md): through the lens's own encoder and with only p patched,
the KL at p and summed over p+1..p+4 when the encoder reads
  the lens's words | its first word alone | its first word, then the LM's greedy continuation |
  the real token at p alone | the real token at p, then the lens's words after its first,
on all 200 val samples and split by whether the lens's first word is the token at p. If the first two rows
agree, the words after the first add nothing to what the first word gives.

    $ python docs/first_word_probe.py out/austen/<run>/ckpt.pt   (after dump.py config/austen_smollm2.py; ~1 min on 2 cores)
"""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dump import Shards  # noqa: E402
from eval import batched, model_continuation  # noqa: E402
from lens import explain_all, load_checkpoint, load_lens, patched_kls  # noqa: E402
from model import load_model, pick_dtype  # noqa: E402

out_dir, model, layer, n_val, batch_size = 'out/austen', 'assets/smollm2-135m', 15, 200, 32
torch.set_grad_enabled(False)
lm, tokenizer = load_model(model, 'cpu', False, pick_dtype('auto', 'cpu'))
lens = load_lens(load_checkpoint(sys.argv[1]), lm, tokenizer, model).eval()
acts, tokens, pos = Shards(out_dir, 'val').get(np.arange(n_val))
_, ids, recon = explain_all(lens, acts, batch_size)
continuation, _ = model_continuation(lm, tokens, pos, lens.cfg.t_text, batch_size)
current = tokens.gather(1, pos[:, None])
read = lambda rows: batched(lens.encoder, batch_size, rows).float()
patches = {'the lens': recon, 'its first word alone': read(ids[:, :1]),
           "its first word + the LM's continuation": read(torch.cat([ids[:, :1], continuation[:, :-1]], 1)),
           'the token at p alone': read(current),
           "the token at p + the lens's later words": read(torch.cat([current, ids[:, 1:]], 1))}
kls = patched_kls(lm, layer, tokens, pos, patches, batch_size, after=4)[0]
right = ids[:, 0] == current[:, 0]
print(f"the lens's first word is the token at p on {int(right.sum())} of {n_val} samples")
print(f"| the encoder reads | at p | at p, first word right | at p, first word wrong | p+1..p+4 | p+1..p+4, right |")
print("|---|---:|---:|---:|---:|---:|")
for name, k in kls.items():
    at_p, after = k[:, 0], k[:, 1:].sum(1)
    complete = ~after.isnan()
    print(f"| {name} | {at_p.mean():.3f} | {at_p[right].mean():.3f} | {at_p[~right].mean():.3f} | "
          f"{after[complete].mean():.3f} | {after[complete & right].mean():.3f} |")
