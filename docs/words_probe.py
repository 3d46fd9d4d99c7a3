"""
What a lens's other words carry beyond the token at p, for a lens whose words hold that token in a fixed
place: the first word (warm_start_target='current', config/austen_first_word.py) or the last
('previous', the embedded default, config/austen_smollm2.py; docs/experiments.md). Through the lens's own
encoder and with only p patched, the KL at p and summed over p+1..p+4 when the encoder reads
  the lens's words | its word at p's place alone | (first-word lenses) that word, then the LM's greedy
  continuation | the real token at p alone | the lens's words with the real token at p in its place |
  the real tokens of that layout (p..p+T-1 or p-T+1..p),
on all 200 val samples and split by whether the lens's word there is the token at p. If the first two
rows agree, the other words add nothing to what that one word gives; if the lens's words with the real
token beat that token alone, they carry something it does not.

    $ python docs/words_probe.py out/austen/<run>/ckpt.pt   (after dump.py config/austen_smollm2.py; ~1 min on 2 cores)
"""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dump import Shards  # noqa: E402
from baselines import batched, model_continuation  # noqa: E402
from checkpoint import load_checkpoint, load_lens  # noqa: E402
from lens import explain_all, patched_kls, real_tokens  # noqa: E402
from model import load_model, pick_dtype  # noqa: E402

out_dir, model, layer, n_val, batch_size = 'out/austen', 'assets/smollm2-135m', 15, 200, 32
torch.set_grad_enabled(False)
checkpoint = load_checkpoint(sys.argv[1])
layout = checkpoint['config']['warm_start_target']
if layout not in ('current', 'previous'):
    raise SystemExit(f"this lens was trained with warm_start_target={layout!r}: the probe needs words that start "
                     f"('current') or end ('previous') with the token at p")
lm, tokenizer = load_model(model, 'cpu', False, pick_dtype('auto', 'cpu'))
lens = load_lens(checkpoint, lm, tokenizer, model).eval()
acts, tokens, pos = Shards(out_dir, 'val').get(np.arange(n_val))
_, ids, recon = explain_all(lens, acts, batch_size)
word, current = 0 if layout == 'current' else lens.cfg.t_text - 1, tokens.gather(1, pos[:, None])
read = lambda rows: batched(lens.encoder, batch_size, rows).float()
with_real_token = ids.clone()
with_real_token[:, word] = current[:, 0]
patches = {'the lens': recon, f"its {'first' if word == 0 else 'last'} word alone": read(ids[:, word:word + 1])}
if layout == 'current':
    continuation, _ = model_continuation(lm, tokens, pos, lens.cfg.t_text, batch_size)
    patches["its first word + the LM's continuation"] = read(torch.cat([ids[:, :1], continuation[:, :-1]], 1))
patches |= {'the token at p alone': read(current), "the lens's other words + the real token at p": read(with_real_token),
            'the real tokens': read(real_tokens(tokens, pos, lens.cfg.t_text, layout)[0].clamp(min=0))}
kls = patched_kls(lm, layer, tokens, pos, patches, batch_size, after=4)[0]
right = ids[:, word] == current[:, 0]
print(f"the lens's word {word} is the token at p on {int(right.sum())} of {n_val} samples")
print("| the encoder reads | at p | at p, that word right | at p, wrong | p+1..p+4 | p+1..p+4, right |")
print("|---|---:|---:|---:|---:|---:|")
for name, k in kls.items():
    at_p, after = k[:, 0], k[:, 1:].sum(1)
    complete = ~after.isnan()
    print(f"| {name} | {at_p.mean():.3f} | {at_p[right].mean():.3f} | {at_p[~right].mean():.3f} | "
          f"{after[complete].mean():.3f} | {after[complete & right].mean():.3f} |")
