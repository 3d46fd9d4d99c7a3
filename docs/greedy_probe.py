"""
Can a trained lens's greedy words get nearer the words its samples hold, without the whole training loop? Two ways,
each measured by the greedy words' KL at p (read by the lens's encoder, patched at p) on eval.py's 200 val samples:

- contrastive BETAS: decoding, no training. Each word is the argmax of log p(w | A, words so far) - beta x log p(w |
  the mean A, words so far), among the words the decoder gives at least 1% of its top word's probability: words
  specific to this A rather than the filler every A gets (beta 0 is greedy).
- train RULE STEPS K LR: the decoder alone trains (the encoder fixed, AdamW at a constant rate, 16 train activations
  a step) on the teacher-forced cross-entropy of a target, and the greedy words are measured every 50 steps:
    kl     expert iteration: per A, the lowest KL at p of its greedy words and K samples (the KL reads the context,
           which training may use);
    cycle  the decoder learns to invert the encoder on its own samples: per A, K samples w, each taught as the
           words for the encoder's reading of it, Â(w), a target that Â(w) alone determines.

    $ python docs/greedy_probe.py contrastive 0,0.25,0.5,1 lenses/austen_smollm2
    $ python docs/greedy_probe.py train kl 150 8 1e-3 lenses/austen_smollm2
"""
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from transformers import DynamicCache

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from checkpoint import load_checkpoint, load_lens  # noqa: E402
from dump import Shards  # noqa: E402
from lens import embed, explain_all, fve, patched_kls, slot_writes  # noqa: E402
from model import load_model, pick_dtype  # noqa: E402

mode, lens_path = sys.argv[1], sys.argv[-1]
model, n, batch_size, steps_per_eval, train_batch = 'assets/smollm2-135m', 200, 50, 50, 16
torch.manual_seed(1337)
lm, tokenizer = load_model(model, 'cpu', False, pick_dtype('auto', 'cpu'))
lens = load_lens(load_checkpoint(lens_path), lm, tokenizer, model).eval()
decoder, layer = lens.decoder, lens.cfg.layer
acts, tokens, pos = Shards('out/austen', 'val').get(np.arange(n))


def report(name, recon, words):
    kl = patched_kls(lm, layer, tokens, pos, {name: recon}, batch_size)[0][name]
    print(f"{name}: greedy words' KL at p {kl.mean():.4f} (median {kl.median():.3f}), FVE {fve(recon, acts.float()):.3f} | "
          f"{words[:5]}", flush=True)


@torch.no_grad()
def contrastive(a, beta):
    """Words [B, T] for activations a [B, d]: the decoder reads A and the mean A side by side, one cache."""
    B, lm_copy = len(a), decoder.lm
    prefix, writes = decoder.prefix(torch.cat([a, lens.stats.mean.expand(B, -1).to(a.dtype)]), lm_copy)
    cache, words = DynamicCache(), []
    with slot_writes(lm_copy, decoder.slot, writes):
        logits = lm_copy(inputs_embeds=prefix, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
    for t in range(decoder.t_text):
        log_p = F.log_softmax(logits.float(), -1)
        own, prior = log_p[:B], log_p[B:]
        score = (own - beta * prior).masked_fill(own < own.max(-1, keepdim=True).values + np.log(0.01), -np.inf)
        words.append(score.argmax(-1))
        step = embed(lm_copy, F.one_hot(words[-1].repeat(2), logits.shape[-1]).float())[:, None]
        logits = lm_copy(inputs_embeds=step, past_key_values=cache, use_cache=True).logits[:, -1]
    return torch.stack(words, 1)


if mode == 'contrastive':
    for beta in map(float, sys.argv[2].split(',')):
        ids = torch.cat([contrastive(a, beta) for a in acts.split(batch_size)])
        recon = torch.cat([lens.encoder(i) for i in ids.split(batch_size)]).float()
        report(f'beta {beta:g}', recon, [tokenizer.decode(row) for row in ids.tolist()])
    sys.exit()

rule, steps, K, lr = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
if rule not in ('kl', 'cycle'):
    raise SystemExit(f"rule {rule!r}: use kl or cycle")
lens.encoder.requires_grad_(False)
params = [p for p in decoder.parameters() if p.requires_grad]
optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
train, rng, t0 = Shards('out/austen', 'train'), np.random.default_rng(0), time.time()
words, _, recon = explain_all(lens, acts, batch_size)
report('step 0', recon, words)
for step in range(1, steps + 1):
    a, t, p = train.get(np.sort(rng.choice(len(train), train_batch, replace=False)))
    with torch.no_grad():
        sampled = decoder(a.repeat(K, 1), 1.0, 'sample')[2]
        if rule == 'kl':
            candidates = torch.cat([decoder(a, 1.0, 'greedy')[2], sampled]).view(K + 1, train_batch, -1)
            read = lens.encoder(candidates.flatten(0, 1)).view(K + 1, train_batch, -1)
            kls = patched_kls(lm, layer, t, p, dict(enumerate(read)), train_batch)[0]
            best = torch.stack([kls[i] for i in range(K + 1)]).argmin(0)
            inputs, targets = a, candidates[best, torch.arange(train_batch)]
        else:
            inputs, targets = lens.encoder(sampled).to(a.dtype), sampled
    lens.train()
    loss = F.cross_entropy(decoder.teacher_forced_logits(inputs, targets).flatten(0, 1).float(), targets.flatten())
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    lens.eval()
    if step % 10 == 0:
        print(f"step {step}: cross-entropy {loss.item():.3f} ({(time.time() - t0) / step:.1f} s/step)", flush=True)
    if step % steps_per_eval == 0:
        words, _, recon = explain_all(lens, acts, batch_size)
        report(f'step {step}', recon, words)
