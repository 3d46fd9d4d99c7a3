"""
Three measurements behind docs/experiments.md, made without training, on the embedded default's dump:

1. the encoder with W_e = identity (Â = h, block 15's output at its last position) reading the k real
   tokens ending at p, for several k: how much of A's effect on the next token the context alone gives;
2. how linearly decodable the tokens at p, p-1, p-2 are from A: a ridge regression from standardised A
   to the token's input embedding, fit on the train split, scored on val by the nearest embedding;
3. what reaches the positions after p: with only p patched, the KL at p and summed over p+1..p+4, for
   texts read by the identity encoder and by the encoder of the earlier default's lens (lenses/austen_next_words),
   beside that lens's own explanation and mean ablation: can any text, read by either encoder, give
   later positions more than the mean activation does?

    $ python docs/probes.py   (after `python dump.py config/austen_smollm2.py`; a few minutes on 2 cores)
"""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dump import Shards  # noqa: E402
from checkpoint import load_checkpoint, load_lens  # noqa: E402
from lens import Lens, LensConfig, explain_all, patched_kls, real_tokens  # noqa: E402
from model import load_model, pick_dtype  # noqa: E402

out_dir, model, layer, n_val = 'out/austen', 'assets/smollm2-135m', 15, 200
lm, tokenizer = load_model(model, 'cpu', False, pick_dtype('auto', 'cpu'))
train, val = Shards(out_dir, 'train'), Shards(out_dir, 'val')
acts_train, tokens_train, pos_train = train.get(np.arange(min(8192, len(train))))
acts, tokens, pos = val.get(np.arange(n_val))

# the prompt before the words, as when these were first measured: its last position then predicts what follows
# the words, as A does when the words are its context (the default's repeated prompt predicts their first word)
lens = Lens(LensConfig(layer=layer, encoder_init='identity', encoder_prompt='<|endoftext|>Summary of the text: <text>'),
            lm, tokenizer)
lens.stats.set(acts_train)
with torch.no_grad():
    read = lambda ids: torch.cat([lens.encoder(ids[i:i + 32]) for i in range(0, len(ids), 32)]).float()
    patches = {f'{k} real tokens': read(real_tokens(tokens, pos, k, 'previous')[0].clamp(min=0)) for k in (1, 2, 4, 8, 12)}
    patches['mean ablation'] = lens.stats.mean.expand_as(acts)
    kls = patched_kls(lm, layer, tokens, pos, patches, 32)[0]
print(f"identity encoder, KL at p over {n_val} val samples (nats):")
for name, kl in kls.items():
    print(f"  {name:<16}{kl.mean():.3f}")

standard = lambda a: (a - lens.stats.mean) / lens.stats.scale
x_train, x_val = standard(acts_train), standard(acts[:n_val])
embeddings = lm.get_input_embeddings().weight.float()
print(f"ridge regression from A to a token's embedding ({len(x_train)} train samples, {n_val} val):")
for back in (0, 1, 2):
    target = lambda t, p: real_tokens(t, p, back + 1, 'previous')[0][:, 0].clamp(min=0)
    y_train, y_val = target(tokens_train, pos_train), target(tokens, pos)
    w = torch.linalg.solve(x_train.T @ x_train + 10.0 * torch.eye(x_train.shape[1]), x_train.T @ embeddings[y_train])
    accuracy = ((x_val @ w @ embeddings.T).argmax(-1) == y_val).float().mean()
    print(f"  token p-{back}: nearest-embedding accuracy {accuracy:.3f}")

after = 4
next_words_lens = load_lens(load_checkpoint('lenses/austen_next_words'), lm, tokenizer, model).eval()
with torch.no_grad():
    _, _, recon = explain_all(next_words_lens, acts, 32)
    own_logits = patched_kls(lm, layer, tokens, pos, dict(a=acts), 32)[1]
    texts = {'8 real tokens ending at p': real_tokens(tokens, pos, 8, 'previous')[0],
             '8 real tokens around p': real_tokens(tokens, pos + 4, 8, 'previous')[0],  # p-3..p+4
             'the token at p': real_tokens(tokens, pos, 1, 'previous')[0],
             '8 real tokens after p': real_tokens(tokens, pos, 8, 'next')[0],
             "the LM's top 8 next tokens": own_logits.topk(8, -1).indices}
    patches = {'mean ablation': lens.stats.mean.expand_as(acts), 'next-words lens, its explanation': recon}
    for reader, encoder in (('identity encoder', lens.encoder), ('next-words encoder', next_words_lens.encoder)):
        for name, ids in texts.items():
            patches[f'{reader}: {name}'] = torch.cat([encoder(ids[i:i + 32].clamp(min=0)) for i in range(0, n_val, 32)]).float()
    kls = patched_kls(lm, layer, tokens, pos, patches, 32, after=after)[0]
complete = ~kls['mean ablation'].isnan().any(1)  # windows with `after` tokens after p (texts past the window: clamped)
print(f"KL with only p patched ({n_val} val samples at p, the {int(complete.sum())} with {after} tokens after p for the sum):")
print(f"  {'patch at p':<50}{'at p':>7}{'p+1..p+' + str(after):>10}" + ''.join(f"{'p+' + str(k):>7}" for k in range(1, after + 1)))
for name, kl in kls.items():
    print(f"  {name:<50}{kl[:, 0].mean():7.3f}{kl[complete, 1:].sum(1).mean():10.3f}"
          + ''.join(f"{kl[complete, k].mean():7.3f}" for k in range(1, after + 1)))
