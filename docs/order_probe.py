"""
Does a decoder copy the tail better when it writes it backwards? A fresh decoder (the default's settings, untrained)
learns to write the real tokens p-3..p from A alone, by teacher-forced cross-entropy, in text order (p-3 first, as the
default writes them) or reversed (p first, then p-1, ...). Greedily, text order commits to its least certain word
first: A at block 15 holds little of p-3, so the first word is filler and the rest follow it; reversed, the
certain words come first and the uncertain ones are written knowing them. Each order's greedy words, put back in text
order, are read by a trained lens's encoder (fixed) and patched at p, beside that encoder's reading of the tail itself
(the control), on eval.py's 200 val samples.

    $ python docs/order_probe.py ORDER STEPS LR LENS      ORDER: text or reversed
    $ python docs/order_probe.py reversed 200 1e-3 lenses/austen_smollm2
"""
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from checkpoint import load_checkpoint  # noqa: E402
from dump import Shards  # noqa: E402
from lens import Lens, LensConfig, patched_kls, real_tokens  # noqa: E402
from model import load_model, pick_dtype  # noqa: E402

order, steps, lr, lens_path = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
if order not in ('text', 'reversed'):
    raise SystemExit(f"order {order!r}: use text or reversed")
model, n, batch_size, steps_per_eval, train_batch = 'assets/smollm2-135m', 200, 50, 50, 32
torch.manual_seed(1337)
lm, tokenizer = load_model(model, 'cpu', False, pick_dtype('auto', 'cpu'))
checkpoint = load_checkpoint(lens_path)
lens = Lens(LensConfig(**checkpoint['lens_config']), lm, tokenizer)
lens.unfreeze()
trained = {k: v for k, v in checkpoint['lens'].items() if not k.startswith('decoder.')}
lens.load_state_dict(trained, strict=False)  # the trained encoder and statistics, a fresh decoder
lens.eval()
decoder, layer, T = lens.decoder, lens.cfg.layer, lens.cfg.t_text
flip = (lambda ids: ids.flip(1)) if order == 'reversed' else (lambda ids: ids)
acts, tokens, pos = Shards('out/austen', 'val').get(np.arange(n))
tail = real_tokens(tokens, pos, T, 'previous')[0]
with torch.no_grad():
    control = torch.cat([lens.encoder(i) for i in tail.clamp(min=0).split(batch_size)]).float()


@torch.no_grad()
def report(step):
    ids = flip(torch.cat([decoder(a, 1.0, 'greedy')[2] for a in acts.split(batch_size)]))
    recon = torch.cat([lens.encoder(i) for i in ids.split(batch_size)]).float()
    kls = patched_kls(lm, layer, tokens, pos, {'words': recon, 'control': control}, batch_size)[0]
    match = ' '.join(f'{m:.2f}' for m in (ids == tail).float().mean(0).tolist())
    forced = torch.cat([decoder.teacher_forced_logits(a, flip(t).clamp(min=0)) for a, t in zip(acts.split(batch_size), tail.split(batch_size))])
    nll = flip(F.cross_entropy(forced.flatten(0, 1).float(), flip(tail).flatten(), ignore_index=-100, reduction='none').view(n, T)).mean(0)
    words = [tokenizer.decode(row) for row in ids[:5].tolist()]
    print(f"step {step}: greedy words' KL at p {kls['words'].mean():.4f} (median {kls['words'].median():.3f}), "
          f"the tail {kls['control'].mean():.4f}; at p-3..p greedy = the tail {match}, "
          f"cross-entropy {' '.join(f'{x:.2f}' for x in nll.tolist())} | {words}", flush=True)


params = [p for p in decoder.parameters() if p.requires_grad]
optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
train, rng, t0 = Shards('out/austen', 'train'), np.random.default_rng(0), time.time()
report(0)
for step in range(1, steps + 1):
    a, t, p = train.get(np.sort(rng.choice(len(train), train_batch, replace=False)))
    targets = flip(real_tokens(t, p, T, 'previous')[0])
    decoder.train()
    logits = decoder.teacher_forced_logits(a, targets.clamp(min=0))
    loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    decoder.eval()
    if step % 10 == 0:
        print(f"step {step}: cross-entropy {loss.item():.3f} ({(time.time() - t0) / step:.2f} s/step)", flush=True)
    if step % steps_per_eval == 0 or step == steps:
        report(step)
