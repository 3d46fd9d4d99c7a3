"""
Can a trained lens's greedy words get nearer the words its samples hold, without the whole training loop? Each way
is measured by the greedy words' KL at p (read by the lens's encoder, patched at p) on eval.py's 200 val samples:

- contrastive BETAS: decoding, no training. Each word is the argmax of log p(w | A, words so far) - beta x log p(w |
  the mean A, words so far), among the words the decoder gives at least 1% of its top word's probability: words
  specific to this A rather than the filler every A gets (beta 0 is greedy).
- beam WIDTHS: decoding, no training. The words of highest log-probability under the decoder, by a beam search of
  each width (1 is greedy): whether writing the likeliest first word first is what leaves the words generic.
- train RULE STEPS K LR LENS [T]: one side of the lens trains, AdamW at a constant rate, 16 train activations a
  step, and the greedy words are measured every 50 steps and at the last, where the lens is saved in
  out/austen/greedy_probe_RULE for eval.py's --lens. The decoder alone (the encoder fixed), on the teacher-forced
  cross-entropy of a target or by the policy gradient:
    kl     expert iteration: per A, the lowest KL at p of its greedy words and K samples at temperature T (default 1;
           the KL reads the context, which training may use);
    pg     no target: the policy gradient of the KL at p over K samples per A (lens.policy_gradient, train.py's
           w_pg), every sample pulled up or pushed down by how far its KL lies below its group's mean;
    cycle  the decoder learns to invert the encoder on its own samples: per A, K samples w, each taught as the
           words for the encoder's reading of it, Â(w), a target that Â(w) alone determines;
    edit   expert iteration over edits of the greedy words: per A, the greedy words and every variant with one word
           replaced by one of the decoder's K next-likeliest there, the lowest KL at p the target, so that each
           target is the greedy words moved one step, not a lucky sample;
  or the encoder alone:
    reader the encoder trains (the decoder fixed) on the KL at p of its reading of the greedy words, the words
           eval reads, plus the KL of its reading of the real tokens p-3..p, as training's warm term, so that the
           control's reading is not traded away (K unused); the control is measured beside the words.

    $ python docs/greedy_probe.py contrastive 0,0.25,0.5,1 lenses/austen_smollm2
    $ python docs/greedy_probe.py beam 1,4,16 lenses/austen_smollm2
    $ python docs/greedy_probe.py train kl 150 8 1e-3 lenses/austen_smollm2
    $ python docs/greedy_probe.py train kl 150 8 3e-4 lenses/austen_smollm2 0.7
    $ python docs/greedy_probe.py train reader 150 1 1e-4 lenses/austen_smollm2
"""
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from transformers import DynamicCache

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from checkpoint import load_checkpoint, load_lens, save_lens_folder  # noqa: E402
from dump import Shards  # noqa: E402
from lens import embed, explain_all, fve, kl_div, patched_kls, real_tokens, slot_writes  # noqa: E402
from model import load_model, next_token_logits, pick_dtype  # noqa: E402

mode = sys.argv[1]
lens_path = sys.argv[3 if mode in ('contrastive', 'beam') else 6]
model, n, batch_size, steps_per_eval, train_batch = 'assets/smollm2-135m', 200, 50, 50, 16
torch.manual_seed(1337)
lm, tokenizer = load_model(model, 'cpu', False, pick_dtype('auto', 'cpu'))
checkpoint = load_checkpoint(lens_path)
lens = load_lens(checkpoint, lm, tokenizer, model).eval()
decoder, layer = lens.decoder, lens.cfg.layer
acts, tokens, pos = Shards('out/austen', 'val').get(np.arange(n))


def report(name, recon, words):
    tail = real_tokens(tokens, pos, decoder.t_text, 'previous')[0].clamp(min=0)
    control = torch.cat([lens.encoder(i) for i in tail.split(batch_size)]).float()
    kls = patched_kls(lm, layer, tokens, pos, {name: recon, 'control': control}, batch_size)[0]
    print(f"{name}: greedy words' KL at p {kls[name].mean():.4f} (median {kls[name].median():.3f}), FVE "
          f"{fve(recon, acts.float()):.3f}, the tail read by this encoder {kls['control'].mean():.4f} | {words[:5]}", flush=True)


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


@torch.no_grad()
def beam(a, width):
    """Words [B, T] for activations a [B, d]: the width likeliest word sequences kept at each word, the likeliest
    at the end returned."""
    B, lm_copy = len(a), decoder.lm
    prefix, writes = decoder.prefix(a, lm_copy)
    beams, scores = torch.zeros(B, 1, 0, dtype=torch.long), torch.zeros(B, 1)
    for t in range(decoder.t_text):
        n = beams.shape[1]
        sequence = torch.cat([prefix.repeat_interleave(n, 0), embed(lm_copy, beams.flatten(0, 1)).to(prefix.dtype)], 1)
        with slot_writes(lm_copy, decoder.slot, {k: v.repeat_interleave(n, 0) for k, v in writes.items()}):
            logits = lm_copy(inputs_embeds=sequence, logits_to_keep=1).logits[:, -1]
        total = (scores[..., None] + F.log_softmax(logits.float(), -1).view(B, n, -1)).flatten(1)
        scores, index = total.topk(width, -1)
        beams = torch.cat([beams.gather(1, (index // logits.shape[-1])[..., None].expand(-1, -1, t)),
                           (index % logits.shape[-1])[..., None]], 2)
    return beams[:, 0]


if mode in ('contrastive', 'beam'):
    parse, decode, label = (float, contrastive, 'beta') if mode == 'contrastive' else (int, beam, 'width')
    for value in map(parse, sys.argv[2].split(',')):
        ids = torch.cat([decode(a, value) for a in acts.split(batch_size)])
        recon = torch.cat([lens.encoder(i) for i in ids.split(batch_size)]).float()
        report(f'{label} {value:g}', recon, [tokenizer.decode(row) for row in ids.tolist()])
    sys.exit()

rule, steps, K, lr = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
temperature = float(sys.argv[7]) if len(sys.argv) > 7 else 1.0
if rule not in ('kl', 'pg', 'edit', 'cycle', 'reader'):
    raise SystemExit(f"rule {rule!r}: use kl, pg, edit, cycle or reader")


def edits(greedy, logits):
    """[T K, B, T]: the greedy words [B, T] with word i replaced by the decoder's j-th likeliest other word there."""
    alternatives = logits.topk(K + 1, -1).indices[..., 1:]  # [B, T, K]: the greedy word is the likeliest
    variants = greedy[None, None].repeat(decoder.t_text, K, 1, 1)  # [T, K, B, T]
    for i in range(decoder.t_text):
        variants[i, :, :, i] = alternatives[:, i].T
    return variants.flatten(0, 1)


def loss_of(a, t, p):
    """The rule's loss on one batch of train activations a with their windows t and positions p."""
    with torch.no_grad():
        sampled = decoder(a.repeat(K, 1), temperature, 'sample')[2] if rule in ('kl', 'pg', 'cycle') else None
        _, logits, greedy = decoder(a, 1.0, 'greedy') if rule != 'cycle' else (None, None, None)
        if rule in ('kl', 'pg', 'edit'):  # the search: each candidate [N, B, T] read and patched in
            if rule == 'kl':  # the target may be the greedy words themselves
                candidates = torch.cat([greedy[None], sampled.view(K, train_batch, -1)])
            elif rule == 'edit':
                candidates = torch.cat([greedy[None], edits(greedy, logits)])
            else:  # pg scores its samples only
                candidates = sampled.view(K, train_batch, -1)
            read = lens.encoder(candidates.flatten(0, 1)).view(len(candidates), train_batch, -1)
            kls = torch.stack(list(patched_kls(lm, layer, t, p, dict(enumerate(read)), train_batch)[0].values()))
        if rule == 'cycle':
            inputs, targets = lens.encoder(sampled).to(a.dtype), sampled
    lens.train()
    if rule == 'reader':
        tail, complete = real_tokens(t, p, decoder.t_text, 'previous')
        own, read_words, read_tail = next_token_logits(lm, layer, t, p, lens.encoder(greedy), lens.encoder(tail.clamp(min=0)))
        return kl_div(own, read_words).mean() + (kl_div(own, read_tail) * complete).sum() / complete.sum().clamp(min=1)
    if rule == 'pg':
        return lens.policy_gradient(a, sampled, kls)
    if rule != 'cycle':
        inputs, targets = a, candidates[kls.argmin(0), torch.arange(train_batch)]
    return F.cross_entropy(decoder.teacher_forced_logits(inputs, targets).flatten(0, 1).float(), targets.flatten())


(decoder if rule == 'reader' else lens.encoder).requires_grad_(False)
params = [p for p in (lens.encoder if rule == 'reader' else decoder).parameters() if p.requires_grad]
optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
train, rng, t0 = Shards('out/austen', 'train'), np.random.default_rng(0), time.time()
folder = f'out/austen/greedy_probe_{rule}'
words, _, recon = explain_all(lens, acts, batch_size)
report('step 0', recon, words)
for step in range(1, steps + 1):
    loss = loss_of(*train.get(np.sort(rng.choice(len(train), train_batch, replace=False))))
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    lens.eval()
    if step % 10 == 0:
        print(f"step {step}: loss {loss.item():.3f} ({(time.time() - t0) / step:.1f} s/step)", flush=True)
    if step % steps_per_eval == 0 or step == steps:  # saved at every eval: a run stopped early keeps its last lens
        words, _, recon = explain_all(lens, acts, batch_size)
        report(f'step {step}', recon, words)
        save_lens_folder(lens, folder, model, train_config=checkpoint['config'])
print(f"the trained lens is in {folder}: python eval.py config/austen_smollm2.py --lens={folder}")
