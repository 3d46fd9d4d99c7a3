"""
Which rule that reads A alone picks the best of K explanations sampled from a lens? For eval.py's 200 val samples:
K explanations per A sampled at temperature T (1 unless given), each read by the lens's encoder and patched at p,
and the mean KL at p of the one each rule picks, for K = 1, 2, 4, ... K, beside the oracle (the lowest KL, which
needs the context):

- mse: the squared distance |Â - A|^2 (the original's best of K, and eval.py's --pick_k);
- standardized: the same, each dimension divided by A's standard deviation over these samples;
- cosine, centered_cos: the angle between Â and A, raw or after subtracting the lens's mean A;
- context_free_kl: the KL between the frozen LM's next-token predictions with A and with Â written at block L of a
  two-token text of end-of-text tokens (blocks after L read nothing of the real context);
- fisher: (Â - A)^T F (Â - A), F the Fisher information of the next-token distribution at p with respect to block
  L's output at p, averaged over 512 train samples (4 tokens drawn from each one's prediction): the KL's second-order
  term, with the context averaged out.

    $ python docs/pick_probe.py 64 lenses/austen_smollm2 [T]     (or a checkpoint: out/austen/RUN/ckpt.pt)
"""
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from checkpoint import load_checkpoint, load_lens  # noqa: E402
from dump import Shards  # noqa: E402
from lens import explain_all, kl_div, patched_kls  # noqa: E402
from model import compute_dtype, load_model, next_token_logits, pick_dtype  # noqa: E402

K, lens_path, T = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
model, n, batch_size = 'assets/smollm2-135m', 200, 32
torch.manual_seed(1337)
lm, tokenizer = load_model(model, 'cpu', False, pick_dtype('auto', 'cpu'))
lens = load_lens(load_checkpoint(lens_path), lm, tokenizer, model).eval()
layer = lens.cfg.layer
acts, tokens, pos = Shards('out/austen', 'val').get(np.arange(n))
t0 = time.time()
greedy = explain_all(lens, acts, batch_size)[2]
sampled = torch.cat([lens.explain(a, 'sample', T)[2] for a in acts.repeat(K, 1).split(batch_size * 4)]).float().view(K, n, -1)
kls = patched_kls(lm, layer, tokens, pos, {'greedy': greedy, **dict(enumerate(sampled))}, batch_size)[0]
sampled_kls = torch.stack([kls[k] for k in range(K)])  # [K, n]
print(f"{lens_path}: greedy {kls['greedy'].mean():.4f} ({time.time() - t0:.0f}s)", flush=True)

fisher, draws, n_fisher = 0, 4, 512
for acts_train, tokens_train, pos_train in zip(*(x.split(batch_size) for x in Shards('out/austen', 'train').get(np.arange(n_fisher)))):
    patch = acts_train.float().requires_grad_()
    log_p = next_token_logits(lm, layer, tokens_train, pos_train, patch.to(compute_dtype(lm)))[1].float().log_softmax(-1)
    drawn = torch.multinomial(log_p.exp(), draws, replacement=True)
    for j in range(draws):
        grad, = torch.autograd.grad(log_p.gather(1, drawn[:, j:j + 1]).sum(), patch, retain_graph=j < draws - 1)
        fisher = fisher + grad.T @ grad / (n_fisher * draws)

eot = torch.full((n, 2), tokenizer.eot_id)
with torch.no_grad():
    out = next_token_logits(lm, layer, eot, torch.ones(n, dtype=torch.long), acts.to(lm.dtype), *sampled.to(lm.dtype))
    context_free = torch.stack([kl_div(out[1], logits).float() for logits in out[2:]])
A, mean = acts.float(), lens.stats.mean.float()
scores = dict(mse=(sampled - A).pow(2).sum(-1), standardized=((sampled - A) / (A.std(0) + 1e-3)).pow(2).sum(-1),
              cosine=-F.cosine_similarity(sampled, A[None], dim=-1),
              centered_cos=-F.cosine_similarity(sampled - mean, A[None] - mean, dim=-1), context_free_kl=context_free,
              fisher=torch.einsum('kni,ij,knj->kn', sampled - A, fisher, sampled - A))
for k in sorted({2 ** i for i in range(K.bit_length())} | {K}):
    picked = lambda score: sampled_kls[:k].gather(0, score[:k].argmin(0, keepdim=True)).mean()
    print(f"K={k:3d} oracle {sampled_kls[:k].min(0).values.mean():.3f} | " +
          ' | '.join(f'{name} {picked(score):.3f}' for name, score in scores.items()), flush=True)
for name, score in scores.items():
    r = np.mean([np.corrcoef(score[:, j].numpy(), sampled_kls[:, j].numpy())[0, 1] for j in range(n)])
    print(f"{name}: mean correlation with the KL over one sample's K explanations {r:.3f}")
