"""
The baselines every lens is measured against, in one table: baseline_patches builds each patch at (layer, p)
from its one-line definition, for eval.py's protocol and for train.py's periodic eval (periodic_eval, the
same measurement on a slice of the val split per rank). First of all the text-inversion control: the real
tokens ending at p, read by the lens's own encoder and by the frozen LM bare. A lens that loses to it writes
a worse copy of its input.
"""
import functools

import torch
from transformers import DynamicCache

from lens import explain_all, format_sample, patched_kls, real_tokens, reconstruction_metrics
from model import block_output, full_precision_logits


def bare_reading(lm, layer, eot_id, ids):
    """The frozen LM reading token rows ids [B, T] bare: the end-of-text token, then the tokens, block `layer`'s output
    at the last one [B, d]. No prompt and no trained parameter, so no choice of a lens can weaken it."""
    return block_output(lm, layer, input_ids=torch.cat([ids.new_full((len(ids), 1), eot_id), ids], 1))[:, -1].float()


@torch.no_grad()
def control_patches(lens, tokens, pos, batch_size):
    """The text-inversion control's two readings of the t_text real tokens ending at p (fewer where p + 1 < t_text),
    {name: [n, d]}: by the lens's encoder ('text_prev_tokens') and by the frozen LM bare ('text_prev_tokens_frozen').
    The control is the lower KL of the two: a lens that loses to it writes a worse copy of its input."""
    lengths = (pos + 1).clamp(max=lens.cfg.t_text)
    out = {name: torch.empty(len(tokens), lens.stats.mean.shape[0], device=tokens.device)
           for name in ('text_prev_tokens', 'text_prev_tokens_frozen')}
    for n in lengths.unique().tolist():
        rows = (lengths == n).nonzero()[:, 0]
        for s in rows.split(batch_size):
            ids = real_tokens(tokens[s], pos[s], n, 'previous')[0]
            out['text_prev_tokens'][s] = lens.encoder(ids).float()
            out['text_prev_tokens_frozen'][s] = bare_reading(lens.lm, lens.cfg.layer, lens.tokenizer.eot_id, ids)
    return out


def batched(fn, batch_size, *tensors):
    """fn over chunks of batch_size rows of `tensors`, the outputs concatenated."""
    return torch.cat([fn(*(t[i:i + batch_size] for t in tensors)) for i in range(0, len(tensors[0]), batch_size)])


def by_length(rows, fn, batch_size):
    """fn over 1-D token tensors grouped by length (neither the encoder nor the LM call takes padding),
    the results in the order of `rows`."""
    out = [None] * len(rows)
    for length in {len(r) for r in rows}:
        group = [i for i, r in enumerate(rows) if len(r) == length]
        for i, value in zip(group, batched(fn, batch_size, torch.stack([rows[i] for i in group]))):
            out[i] = value
    return torch.stack(out)


@torch.no_grad()
def model_continuation(lm, tokens, pos, n, batch_size):
    """The frozen LM's own greedy n-token continuation of each window's tokens 0..p ([B, n] ids) and its logits
    at p ([B, V], the fp32 head as in patched_kls). Batches go in order of p, left-padded to their longest
    prefix, with the mask and positions that say where each row starts."""
    ids_out, logits_at_p = torch.empty(len(tokens), n, dtype=torch.long, device=tokens.device), [None] * len(tokens)
    order = pos.argsort()
    for i in range(0, len(tokens), batch_size):
        s = order[i:i + batch_size]
        source = torch.arange(int(pos[s].max()) + 1, device=tokens.device)[None] - (pos[s].max() - pos[s])[:, None]
        mask, position, cache, rows = (source >= 0).long(), source.clamp(min=0), DynamicCache(), []
        step = tokens[s].gather(1, position)
        for t in range(n):
            hidden = lm.base_model(input_ids=step, attention_mask=mask, position_ids=position, past_key_values=cache,
                                   use_cache=True).last_hidden_state
            logits = full_precision_logits(lm, hidden[:, -1])
            if t == 0:
                for j, row in zip(s.tolist(), logits):
                    logits_at_p[j] = row
            step = logits.argmax(-1, keepdim=True)
            rows.append(step)
            mask, position = torch.cat([mask, mask.new_ones(len(s), 1)], 1), position[:, -1:] + 1
        ids_out[s] = torch.cat(rows, 1)
    return ids_out, torch.stack(logits_at_p)


def real_text(tokens, pos, n):
    """The (up to) n real tokens of each window ending at p, and those after p (empty where p ends the window)."""
    return ([tokens[b, max(0, p + 1 - n):p + 1] for b, p in enumerate(pos.tolist())],
            [tokens[b, p + 1:p + 1 + n] for b, p in enumerate(pos.tolist())])


def baseline_patches(lens, lm, acts, tokens, pos, ids, recon, batch_size, names=None, paired_recon=None, continued=None):
    """The baselines' patches at (layer, p) ({name: [n, d]}), all of them or those in `names`, the lens's greedy
    words ids and Â recon given. Sample i's "other sample" is i+1 (mod n); paired_recon, when given, is its Â
    (train.py's ranks each hold a slice); continued, model_continuation's output when already computed. Text goes
    through the lens's own encoder unless said otherwise."""
    t_text, n = lens.cfg.t_text, len(acts)
    partner = torch.arange(n, device=acts.device).roll(-1)
    read = lambda rows: batched(lens.encoder, batch_size, rows).float()
    bare = lambda rows: batched(lambda r: bare_reading(lm, lens.cfg.layer, lens.tokenizer.eot_id, r), batch_size, rows)
    once = functools.cache
    continuation = once(lambda: continued or model_continuation(lm, tokens, pos, t_text, batch_size))  # (ids, logits at p)
    current, top = tokens.gather(1, pos[:, None]), once(lambda: continuation()[1].topk(t_text, -1).indices)
    control = once(lambda: control_patches(lens, tokens, pos, batch_size))
    prompted = lens.encoder.prompt_prefix is not None or lens.encoder.prompt_postfix is not None
    build = dict(
        zero=lambda: torch.zeros_like(acts),  # the zero vector
        mean=lambda: lens.stats.mean.expand_as(acts),  # mean ablation: the mean A over 8,192 train samples
        resample=lambda: acts[partner],  # the other sample's A
        # the control's two readings of the t_text real tokens ending at p (fewer where p + 1 < t_text): by the
        # lens's encoder, and by the frozen LM bare (end-of-text, the tokens, block L's output at the last one)
        text_prev_tokens=lambda: control()['text_prev_tokens'],
        text_prev_tokens_frozen=lambda: control()['text_prev_tokens_frozen'],
        lens_words_frozen=lambda: bare(ids),  # the lens's words read bare: a meaning, or a private code?
        text_current_token=lambda: read(current),  # the token at p alone
        text_shuffled=lambda: recon[partner] if paired_recon is None else paired_recon,  # the other sample's words
        text_top_tokens=lambda: read(top()),  # the LM's own t_text most likely next tokens at p, most likely first
        text_model_continuation=lambda: read(continuation()[0]),  # the LM's own greedy continuation of 0..p
        # the token at p, then the first t_text - 1 of those two: a decoder naming p's token, then the model's prediction
        text_current_and_top_tokens=lambda: read(torch.cat([current, top()[:, :-1]], 1)),
        text_current_and_continuation=lambda: read(torch.cat([current, continuation()[0][:, :-1]], 1)),
        # with an encoder prompt only: the (up to) t_text real tokens after p, and an empty explanation
        text_next_tokens=lambda: by_length(real_text(tokens, pos, t_text)[1], lens.encoder, batch_size).float(),
        text_empty=lambda: lens.encoder(ids[:1, :0]).float().expand_as(acts))
    if not prompted:
        names = [name for name in names or build if name not in ('text_next_tokens', 'text_empty')]
    return {name: build[name]() for name in names or build}


@torch.no_grad()
def periodic_eval(lens, lm, tokenizer, acts, tokens, pos, names, batch_size, downstream_positions, num_print_samples):
    """eval.py's measurement with greedy explanations on this rank's val samples (rank r of w holds samples r,
    r + w, ...): the lens's KL at p and summed over p+1..p+downstream_positions (only p patched) beside the
    baselines `names`, the control (the lower of its two readings), the fraction of distinct explanations,
    MSE and FVE, gathered from every rank; and a few samples to print."""
    ddp = torch.distributed.is_initialized()
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if ddp else (0, 1)
    explanations, ids, recon = explain_all(lens, acts, batch_size)
    paired = None  # sample i+1's Â over the whole eval set: this rank's i+1 is the next rank's i
    if ddp:
        everyone = [torch.empty_like(recon) for _ in range(world)]
        torch.distributed.all_gather(everyone, recon.contiguous())
        paired = everyone[(rank + 1) % world] if rank + 1 < world else everyone[0].roll(-1, 0)
    patches = dict(lens=recon, **baseline_patches(lens, lm, acts, tokens, pos, ids, recon, batch_size, names, paired))
    kls, logits_a, logits_recon = patched_kls(lm, lens.cfg.layer, tokens, pos, patches, batch_size, after=downstream_positions)
    samples = [format_sample(tokenizer, tokens[b], int(pos[b]), explanations[b], logits_a[b], logits_recon[b])
               for b in range(min(len(acts), num_print_samples))]
    # per sample: the KL at p and summed after it (NaN where the window ends before p + downstream_positions)
    kl = torch.stack([torch.stack([k[:, 0], k[:, 1:].sum(1)], 1) for k in kls.values()]).cpu()  # [patches, n, 2]
    recon, acts = recon.cpu(), acts.cpu()
    if ddp:
        gathered = [None] * world
        torch.distributed.all_gather_object(gathered, [kl, recon, acts, explanations])
        kl, recon, acts = (torch.cat([g[i] for g in gathered], dim) for i, dim in ((0, 1), (1, 0), (2, 0)))
        explanations = [e for g in gathered for e in g[3]]
    at_p, downstream = kl[..., 0].mean(1).tolist(), kl[..., 1].nanmean(1).tolist()
    control = [list(patches).index(name) for name in ('text_prev_tokens', 'text_prev_tokens_frozen')]
    return dict(**{'kl' if name == 'lens' else f'kl_{name}': v for name, v in zip(patches, at_p)},
                **{'kl_downstream' if name == 'lens' else f'kl_downstream_{name}': v for name, v in zip(patches, downstream)},
                kl_control=min(at_p[i] for i in control), kl_downstream_control=min(downstream[i] for i in control),
                lens_beats_control=(kl[0, :, 0] < kl[control, :, 0].min(0).values).float().mean().item(),
                explanations_unique=len(set(explanations)) / len(explanations),
                **reconstruction_metrics(recon, acts)), samples
