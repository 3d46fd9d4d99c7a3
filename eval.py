"""
Measure a trained Consistency Lens on the held-out activation shards (DESIGN.md section 6), or explain
every token of a text. Prints a table, writes results.json and a self-contained HTML report next to
the checkpoint: the tables, samples, and as inline PNGs the run's learning curve (train.py's log.jsonl),
the per-sample KL distributions of the lens and every baseline, and the KL at each offset after p.

    $ python eval.py config/austen_smollm2.py                      # the newest run in out_dir
    $ python eval.py config/austen_smollm2.py --run_name=NAME --best_of_k=8
    $ python eval.py config/austen_smollm2.py --text="It is a truth universally acknowledged"
    $ python eval.py config/austen_smollm2.py --text_file=letter.txt --positions=3,5
    $ python eval.py --lens=out/austen/RUN/lens --text="She was" --edit=" a great fortune"

Every baseline goes through the same patch at (layer, p) as the lens's Â; each is defined in one line
where baseline_patches builds it, the table train.py's periodic eval shares. The control, first of all:
the lower mean KL of the two readings of the real tokens ending at p (kl_control, kl_downstream_control);
lens_vs_control = kl_lens / kl_control (and after p), lens_beats_control the fraction of samples where
the lens is below both readings.
KL recovered vs a baseline = 1 - KL_lens / KL_baseline, over the means (kl_recovered_zero, against zero
ablation, is SAELens' kl_div_score).
Downstream: with only p patched, the KL at p+1..p+downstream_positions, where later tokens read p's
residual through attention for what it says about the text so far; per offset and summed, over the
samples with that many tokens after p in their window (the others are left out and counted).
Fluency: the frozen LM's per-token NLL of the explanations and of real text under the same conditions:
both follow the natural prefix (the decoder prompt with <embed> -> 'something'), and the real text is
the same t_text tokens ending at p that the text_prev_tokens baseline reads. Real text given its own
preceding context would be judged with more context than an explanation ever gets, so it would win
for that reason alone.
Best-of-K samples K explanations per activation (temperature 1, all K in one decoder pass per batch)
and keeps the lowest-KL one. It is an
oracle choice, since it needs A's own output: it shows how much better the decoder can write, not a
lens anyone can run without A.
Steering: sample i's explanation is replaced by the (up to t_text) real tokens that follow p in the
paired sample, read by the encoder and patched in; edit_rises is how often that raises the probability
of their first token over Â's, edit_rises_other how often it raises the first token of a third sample's
edit (the control: an edit that moves predictions at random raises both as often).
"""
import json
import os
import re
import time

import numpy as np
import torch
import torch.nn.functional as F

from checkpoint import find_checkpoint, load_checkpoint, load_lens, read_log
from configurator import configure, given_keys
from dump import Shards, TokenWindows, read_tokens
from baselines import baseline_patches, batched, by_length, model_continuation, real_text
from lens import explain_all, format_sample, patched_kls, reconstruction_metrics, top_tokens
from model import load_model, max_context, pick_dtype, read_activations
from report import fmt, sample_html, show_tops, text_report, top_pairs, val_report

# -----------------------------------------------------------------------------
# shared with dump.py and train.py
model = 'assets/smollm2-135m'
data_dir = 'data/austen'
out_dir = 'out/austen'  # reads <out_dir>/acts and <out_dir>/<run_name>/{best,ckpt}.pt, writes the results beside them
layer = 15
ctx = 64
seed = 1337
acts_source = 'shards'  # or 'tokens' (the val windows from data_dir, A computed here); unless given, the checkpoint's
num_val_samples = 500  # acts_source='tokens': as dump.py draws them
min_pos = 8
device = 'cpu'
dtype = 'auto'  # the frozen LM's storage: 'auto' is bfloat16 on CUDA and on CPUs with bf16 units, else 'float32'
trust_remote_code = False
run_name = ''  # '' picks the run in out_dir saved most recently
eval_samples = 200  # the first val samples (random windows already), at most the whole split
num_print_samples = 3  # samples printed to the console
downstream_positions = 4  # the downstream KL at p+1..p+K, only p patched (train.py's periodic eval measures it too)
# eval
ckpt = ''  # a checkpoint path; '' means best.pt (else ckpt.pt) of run_name
lens = ''  # ... or a lens folder (config.json + lens.safetensors, <run dir>/lens): needs no checkpoint or run
eval_batch_size = 32
best_of_k = 4  # sampled explanations per activation; the curve reports K = 1, 2, 4, ... best_of_k
pick_k = 1  # the lens's words: 1, greedy; K > 1, the one of K sampled whose Â lies nearest A (reads A alone, not the KL)
report_samples = 40  # samples shown in report.html
text = None  # explain every token of this text instead of measuring the val shards
text_file = None  # ... or of this file's text
positions = None  # only these token positions of the text, e.g. --positions=3,5
edit = None  # with a text: these words replace the explanation at the last token (or at --positions), e.g. --edit=' the ball'
# -----------------------------------------------------------------------------


def nll(lm, prefix, ids):
    """Per-row mean NLL (nats/token) of token rows ids [B, T] under `lm`, each following the token row `prefix`."""
    logits = lm(input_ids=torch.cat([prefix[None].expand(len(ids), -1), ids], 1), logits_to_keep=ids.shape[1] + 1).logits
    return F.cross_entropy(logits[:, :-1].float().transpose(1, 2), ids, reduction='none').mean(1)


def distinct_ratio(ids):
    """Distinct tokens / tokens of each row, averaged: 1 when no explanation repeats a token."""
    return float(np.mean([len(set(row)) / len(row) for row in ids.tolist()]))


def kl_recovered(kl_lens, kl_baseline):
    """1 - KL_lens / KL_baseline: 1 when the lens preserves A's prediction, 0 when it does no better than the baseline."""
    return 1 - kl_lens / kl_baseline if kl_baseline > 0 else None


def kl_summary(kls):
    q50, q90 = torch.quantile(kls, torch.tensor([0.5, 0.9], device=kls.device)).tolist()
    return dict(kl=kls.mean().item(), kl_median=q50, kl_p90=q90)


def downstream_summary(kls, complete):
    """The KL after p ([n, K + 1], column 0 is p) over the samples with K tokens after p: summed over p+1..p+K
    and per offset. None when no sample has K tokens after p."""
    later = kls[complete, 1:]
    if not len(later):
        return dict(kl_downstream=None, kl_downstream_per_offset=None)
    return dict(kl_downstream=later.sum(1).mean().item(), kl_downstream_per_offset=later.mean(0).tolist())


def metric_name(method, key):
    """results.json's name of a method's metric: kl_<method>[_median|_p90|_recovered], kl_downstream_<method>[_per_offset],
    and mse, fve, cos, norm_ratio for the lens, with _<method> appended for each baseline."""
    for stem in ('kl_downstream', 'kl'):
        if key.startswith(stem):
            return f'{stem}_{method}{key[len(stem):]}'
    return key if method == 'lens' else f'{key}_{method}'


def steering(lens, lm, tokens, pos, logits_recon, batch_size):
    """Each sample's explanation replaced by the paired sample's real tokens after p (a window ending at p is
    skipped): how the log-probability of their first token, and of a third sample's (the control), moves."""
    t_text, n = lens.cfg.t_text, len(tokens)
    partner = torch.arange(n, device=tokens.device).roll(-1)
    edit_words = [real_text(tokens, pos, t_text)[1][j] for j in partner.tolist()]
    s = torch.tensor([i for i in range(n) if len(edit_words[i])], device=tokens.device, dtype=torch.long)
    edits = by_length([edit_words[i] for i in s.tolist()], lens.encoder, batch_size).float()
    logits_edit = patched_kls(lm, lens.cfg.layer, tokens[s], pos[s], dict(edit=edits), batch_size)[2]
    gain = F.log_softmax(logits_edit.float(), -1) - F.log_softmax(logits_recon[s].float(), -1)  # [len(s), V]
    first = torch.stack([edit_words[i][0] for i in s.tolist()])
    own, other = gain.gather(1, first[:, None])[:, 0], gain.gather(1, first.roll(-1)[:, None])[:, 0]
    return dict(edit_rises=(own > 0).float().mean().item(), edit_rises_other=(other > 0).float().mean().item(),
                edit_logp_gain=own.mean().item(), edit_logp_gain_other=other.mean().item(), edits=len(s))


def best_of_k_kl(kls, scores, k):
    """The mean KL at p of, per sample, the one of its first k sampled explanations with the lowest score ([K, n]
    each): scored by their KL it is an oracle, by their reconstruction's distance to A it reads A alone."""
    return kls[:k].gather(0, scores[:k].argmin(0, keepdim=True)).mean().item()


def measure(lens, lm, acts, tokens, pos, batch_size, best_of_k, downstream_positions, pick_k=1):
    """The protocol on val samples (acts [n, d], their windows tokens [n, ctx] and positions pos [n]).
    Returns (metrics, per-method summaries, per-sample KLs at p {method: [n]}, the explanations, the LM's own
    continuations, the logits
    at p with A and with Â)."""
    n, t0 = len(acts), time.time()  # progress lines: on a CPU every KL pass is minutes for a real model
    explanations, ids, recon = explain_all(lens, acts, batch_size, pick_k=pick_k)
    continued = model_continuation(lm, tokens, pos, lens.cfg.t_text, batch_size)
    baselines, continuation = baseline_patches(lens, lm, acts, tokens, pos, ids, recon, batch_size, continued=continued), continued[0]
    patches = dict(lens=recon, **baselines)
    # best of K: the K sampled explanations of a batch in one decoder pass, and their KLs at p alone: a pass at
    # p..p+4 would hold K x 5 logits per sample, more than a large K fits in memory
    sampled = explain_all(lens, acts.repeat(best_of_k, 1), batch_size * best_of_k, 'sample')[2].view(best_of_k, n, -1)
    words = 'greedy' if pick_k == 1 else f'the nearest A of {pick_k} sampled'
    print(f"explained {n} val samples ({words}, and {best_of_k} sampled for the best of K), read the baselines' "
          f"text ({time.time() - t0:.0f}s)", flush=True)
    kls, logits_a, logits_recon = patched_kls(lm, lens.cfg.layer, tokens, pos, patches, batch_size, after=downstream_positions)
    sampled_kls = torch.stack(list(patched_kls(lm, lens.cfg.layer, tokens, pos, dict(enumerate(sampled)), batch_size)[0].values()))
    complete = pos + downstream_positions < tokens.shape[1]
    kls_at_p = {name: k[:, 0] for name, k in kls.items()}
    print(f"KL at p..p+{downstream_positions} of the lens and {len(patches) - 1} baselines, at p of {best_of_k} sampled "
          f"explanations ({time.time() - t0:.0f}s)", flush=True)
    previous = real_text(tokens, pos, lens.cfg.t_text)[0]
    fluency = lambda rows: nll(lm, lens.natural_prefix, rows)
    nll_explanation, nll_real = batched(fluency, batch_size, ids), by_length(previous, fluency, batch_size)
    steered = steering(lens, lm, tokens, pos, logits_recon, batch_size)
    print(f"fluency, steering with {steered.pop('edits')} edits ({time.time() - t0:.0f}s)", flush=True)

    methods = {name: kl_summary(kls_at_p[name]) | downstream_summary(kls[name], complete) |
               reconstruction_metrics(patch, acts) for name, patch in patches.items()}
    for name in list(methods)[1:]:
        methods[name]['kl_recovered'] = kl_recovered(methods['lens']['kl'], methods[name]['kl'])
    metrics = {metric_name(name, k): v for name, m in methods.items() for k, v in m.items()}
    sampled_errors = (sampled.float() - acts.float()).pow(2).sum(-1)  # [K, n]: the original's pick, from A alone
    current = tokens.gather(1, pos[:, None])
    curve = sorted({2 ** i for i in range(best_of_k.bit_length())} | {best_of_k})
    control = min(('text_prev_tokens', 'text_prev_tokens_frozen'), key=lambda name: methods[name]['kl'])
    after = [methods[name]['kl_downstream'] for name in ('text_prev_tokens', 'text_prev_tokens_frozen')]
    kl_downstream_control = None if None in after else min(after)
    below_both = kls_at_p['lens'] < torch.minimum(kls_at_p['text_prev_tokens'], kls_at_p['text_prev_tokens_frozen'])
    metrics |= dict(control=control, kl_control=methods[control]['kl'], kl_downstream_control=kl_downstream_control,
                    lens_vs_control=methods['lens']['kl'] / methods[control]['kl'],
                    lens_vs_control_downstream=None if kl_downstream_control is None or methods['lens']['kl_downstream'] is None
                    else methods['lens']['kl_downstream'] / kl_downstream_control,
                    lens_beats_control=below_both.float().mean().item())
    metrics |= dict(kl_recovered_zero=methods['zero']['kl_recovered'], downstream_positions=downstream_positions,
                    downstream_samples=int(complete.sum()), downstream_left_out=int((~complete).sum()),
                    nll_explanation=nll_explanation.mean().item(), nll_real_text=nll_real.mean().item(),
                    distinct_ratio=distinct_ratio(ids), explanations_unique=len(set(explanations)) / n,
                    first_word_is_top_token=(ids[:, 0] == logits_a.argmax(-1)).float().mean().item(),
                    first_word_is_current_token=(ids[:, 0] == current[:, 0]).float().mean().item(),
                    words_include_current_token=(ids == current).any(1).float().mean().item(),
                    last_word_is_current_token=(ids[:, -1] == current[:, 0]).float().mean().item(),
                    lens_beats_current_token=(kls_at_p['lens'] < kls_at_p['text_current_token']).float().mean().item(),
                    lens_beats_model_continuation=(kls_at_p['lens'] < kls_at_p['text_model_continuation']).float().mean().item(),
                    lens_beats_current_and_continuation=(kls_at_p['lens'] < kls_at_p['text_current_and_continuation']).float().mean().item(),
                    kl_best_of_k={str(k): best_of_k_kl(sampled_kls, sampled_kls, k) for k in curve},
                    kl_best_of_k_by_reconstruction={str(k): best_of_k_kl(sampled_kls, sampled_errors, k) for k in curve}, **steered)
    return metrics, methods, {name: kls_at_p[name] for name in patches}, explanations, continuation, logits_a, logits_recon


def explain_text(lens, lm, tokenizer, model_name, text, positions, edit, batch_size, pick_k=1):
    """Every token of `text` explained (or those at `positions`; with an edit, the last unless positions):
    ({p: dict(kl, explanation, top=(top-3 with A, with Â[, with the edit])[, kl_edit])}, the tokens' pieces)."""
    ids = tokenizer.encode(text)
    if not ids:
        raise SystemExit("the text encodes to no tokens: pass a non-empty --text or --text_file")
    if len(ids) > max_context(lm):
        raise SystemExit(f"the text is {len(ids)} tokens, longer than {model_name}'s context of {max_context(lm)}: "
                         f"shorten it or split it into pieces")
    every = list(range(len(ids))) if edit is None else [len(ids) - 1]
    chosen = every if positions is None else [int(p) for p in re.findall(r'-?\d+', str(positions))]
    if not chosen or not all(0 <= p < len(ids) for p in chosen):
        raise SystemExit(f"positions={positions!r}: the text has tokens 0..{len(ids) - 1}, "
                         f"pass e.g. --positions=0,{len(ids) - 1}")
    layer, device = lens.cfg.layer, lm.device
    tokens = torch.tensor(ids, device=device)[None].expand(len(chosen), -1)
    pos = torch.tensor(chosen, device=device)
    acts = batched(lambda t, p: read_activations(lm, layer, t, p).float(), batch_size, tokens, pos)
    explanations, _, recon = explain_all(lens, acts, batch_size, pick_k=pick_k)
    kls, logits_a, logits_recon = patched_kls(lm, layer, tokens, pos, dict(lens=recon), batch_size)
    tops = top_pairs(tokenizer, logits_a, logits_recon)
    items = {p: dict(kl=k, explanation=e, top=t) for p, k, e, t in zip(chosen, kls['lens'].tolist(), explanations, tops)}
    if edit is not None:  # the user's words in place of each explanation: read by the encoder, patched in at p
        edited = lens.encoder(torch.tensor([tokenizer.encode(edit)], device=device)).float().expand_as(acts)
        kls_edit, _, logits_edit = patched_kls(lm, layer, tokens, pos, dict(edit=edited), batch_size)
        for item, k, e in zip(items.values(), kls_edit['edit'].tolist(), logits_edit):
            item['top'] += (top_tokens(tokenizer, e),)
            item['kl_edit'] = k
    return items, [tokenizer.decode([i]) for i in ids]


def print_text(items, pieces):
    print(f"{'pos':>4}  {'token':<14} {'KL':>8}  explanation")
    for p, item in items.items():
        print(f"{p:>4}  {repr(pieces[p])[:14]:<14} {item['kl']:8.4f}  {item['explanation']!r}")
        if 'kl_edit' in item:
            print(f"      next with A:    {show_tops(item['top'][0])}\n      next with Â:    {show_tops(item['top'][1])}\n"
                  f"      next with edit: {show_tops(item['top'][2])}   (KL {item['kl_edit']:.4f})")
    summary = kl_summary(torch.tensor([item['kl'] for item in items.values()]))
    print(f"KL over {len(items)} positions: mean {summary['kl']:.4f}, median {summary['kl_median']:.4f}, "
          f"p90 {summary['kl_p90']:.4f} nats")
    return summary


def results_table(methods):
    """The per-method table: KL at p, downstream, recovered, reconstruction; a row per offset after p."""
    offsets = len(next(m['kl_downstream_per_offset'] for m in methods.values()) or [])
    rows = [('KL mean (nats)', 'kl'), ('KL median', 'kl_median'), ('KL p90', 'kl_p90'),
            ('KL recovered by lens', 'kl_recovered'), (f'KL p+1..p+{offsets} summed', 'kl_downstream')]
    table = [['metric', *methods]] + [[label] + [fmt(m.get(k)) for m in methods.values()] for label, k in rows]
    table += [[f'  KL at p+{k + 1}'] + [fmt(m['kl_downstream_per_offset'][k]) for m in methods.values()] for k in range(offsets)]
    return table + [[label] + [fmt(m.get(k)) for m in methods.values()] for label, k in (
        ('MSE', 'mse'), ('FVE', 'fve'), ('cosine', 'cos'), ('norm ratio |Â|/|A|', 'norm_ratio'))]


def extra_lines(metrics, t_text):
    lines = [(f"the control: the lower KL of the real tokens ending at p read two ways ({metrics['control']})", metrics['kl_control']),
             ('lens / control at p (below 1: the words hold more of A than their text)', metrics['lens_vs_control']),
             ('lens / control summed after p', metrics['lens_vs_control_downstream']),
             ('samples where the lens beats both readings of the real tokens', metrics['lens_beats_control']),
             ('KL recovered vs zero ablation (SAELens kl_div_score)', metrics['kl_recovered_zero']),
             ("first word of the explanation = the LM's top next token", metrics['first_word_is_top_token']),
             ("samples where the lens beats the LM's own continuation", metrics['lens_beats_model_continuation']),
             ("first word of the explanation = the token at p", metrics['first_word_is_current_token']),
             ("  ... its last word (where the words end at p)", metrics['last_word_is_current_token']),
             ("  ... any word of it", metrics['words_include_current_token']),
             ("samples where the lens beats the token at p alone", metrics['lens_beats_current_token']),
             ("  ... the token at p and the LM's continuation", metrics['lens_beats_current_and_continuation']),
             (f"samples with {metrics['downstream_positions']} tokens after p (downstream KL; "
              f"{metrics['downstream_left_out']} left out)", metrics['downstream_samples']),
             ('NLL/token of the explanations after the natural prefix', metrics['nll_explanation']),
             (f'NLL/token of real text ({t_text} tokens ending at p), same prefix', metrics['nll_real_text']),
             ('distinct tokens / tokens per explanation', metrics['distinct_ratio']),
             ('distinct explanations / samples (1: every A gets its own words)', metrics['explanations_unique'])]
    lines += [(f'mean KL of the best of {k} sampled explanations (an oracle: picked by the KL)', v)
              for k, v in metrics['kl_best_of_k'].items()]
    lines += [(f'  ... picked by their reconstruction of A, no context (the original\'s best of {k})', v)
              for k, v in metrics['kl_best_of_k_by_reconstruction'].items()]
    return lines + [("steering: edits raising their first token's probability", metrics['edit_rises']),
                    ("  ... raising another sample's edit's first token (control)", metrics['edit_rises_other']),
                    ("steering: mean gain in log-probability of that token", metrics['edit_logp_gain']),
                    ("  ... of the control token", metrics['edit_logp_gain_other'])]


def print_results(table, extra):
    widths = [max(9, len(name) + 2) for name in table[0][1:]]
    for row in table:
        print(f"{row[0]:<21}" + ''.join(f"{c:>{w}}" for c, w in zip(row[1:], widths)))
    for label, value in extra:
        print(f"{label:<70}{fmt(value):>10}")


def write_json(path, obj):
    with open(path + '.tmp', 'w') as f:
        json.dump(obj, f, indent=1)
    os.replace(path + '.tmp', path)
    print(f"wrote {path}")


if __name__ == '__main__':
    config = configure(globals())
    dtype = pick_dtype(dtype, device)
    torch.set_grad_enabled(False)
    text_mode = text is not None or text_file is not None

    # checks before anything heavy: the checkpoint must explain this model's block, the data must exist
    ckpt_path = find_checkpoint(lens, ckpt, run_name, out_dir)
    checkpoint = load_checkpoint(ckpt_path)
    run_dir = ckpt_path if os.path.isdir(ckpt_path) else os.path.dirname(os.path.abspath(ckpt_path))  # the results go here
    print(f"checkpoint: {ckpt_path} (iteration {checkpoint['iter_num']})")
    # the lens explains one block of one model: the block is the checkpoint's, and so is the model unless given
    # (the same model in another folder: load_lens checks it by its fingerprint)
    given = given_keys()
    if 'layer' in given and layer != checkpoint['lens_config']['layer']:
        raise SystemExit(f"{ckpt_path} explains block {checkpoint['lens_config']['layer']}, but this run has layer={layer}: "
                         f"drop --layer (the checkpoint names it), or pass another --{'lens' if lens else 'ckpt'}")
    model = model if 'model' in given else checkpoint['config']['model']
    layer = checkpoint['lens_config']['layer']
    config.update(model=model, layer=layer)
    if edit is not None and not (text_mode and str(edit)):
        raise SystemExit(f"edit={edit!r}: an edit replaces the explanation of a token of a text, pass --text='...' "
                         f"and non-empty words, e.g. --edit=' the ball'")
    if text_file is not None:
        if not os.path.isfile(text_file):
            raise SystemExit(f"text_file {text_file!r} not found: pass --text_file=path/to/file.txt or --text='...'")
        text = open(text_file, encoding='utf-8').read()
    if text_mode and not str(text):  # str: the configurator reads --text=123 as a number
        raise SystemExit("the text to explain is empty: pass --text='some words' or a non-empty --text_file")
    if not text_mode:  # the val windows of the dump, or (a lens trained with acts_source='tokens') those it would hold
        windows = {k: globals()[k] if k in given else checkpoint['config'].get(k, globals()[k])
                   for k in ('acts_source', 'data_dir', 'num_val_samples', 'ctx', 'min_pos', 'seed')}
        if windows['acts_source'] == 'tokens':
            read_tokens(windows['data_dir'], 'val')  # the corpus exists: checked before the model loads
            num_val, window_length = windows['num_val_samples'], windows['ctx']
        else:
            val_data = Shards(out_dir, 'val', model=model, layer=layer, **({'ctx': ctx} if 'ctx' in given else {}))
            num_val, window_length = len(val_data), val_data.ctx
        n = min(eval_samples, num_val)
        if n < eval_samples:
            print(f"eval_samples={eval_samples} but the val split has {num_val} samples: measuring all {n}")
        if n < 2:
            raise SystemExit(f"eval_samples={eval_samples}: the baselines pair each sample with another, measure at least 2")
        if best_of_k < 1:
            raise SystemExit(f"best_of_k={best_of_k}: the best-of-K curve needs at least one sample, pass --best_of_k=4")
        if not 1 <= downstream_positions < window_length:
            raise SystemExit(f"downstream_positions={downstream_positions}: the KL after p needs 1 to ctx - 1 = "
                             f"{window_length - 1} positions of the {window_length}-token windows, pass e.g. --downstream_positions=4")

    if pick_k < 1:
        raise SystemExit(f"pick_k={pick_k}: the lens's words are greedy (1) or the one nearest A of K >= 2 sampled, pass --pick_k=1")

    lm, tokenizer = load_model(model, device, trust_remote_code, dtype)
    trained = load_lens(checkpoint, lm, tokenizer, model).eval()
    note = f"{ckpt_path}, iteration {checkpoint['iter_num']}, {model} block {layer}"
    torch.manual_seed(seed)
    if pick_k > 1:
        note += f", words: the one of {pick_k} sampled whose reconstruction lies nearest A"
    if text_mode:  # explain a text: every token, or the chosen positions
        items, pieces = explain_text(trained, lm, tokenizer, model, str(text), positions, None if edit is None else str(edit),
                                     eval_batch_size, pick_k)
        summary = print_text(items, pieces)
        text_report(os.path.join(run_dir, 'report_text.html'), note, items, pieces, summary, None if edit is None else str(edit))
    else:  # measure on the val samples
        if windows['acts_source'] == 'tokens':
            val_data = TokenWindows(lm, windows['data_dir'], 'val', windows['num_val_samples'], layer, windows['ctx'],
                                    windows['min_pos'], windows['seed'], eval_batch_size)
        acts, tokens, pos = (t.to(device) for t in val_data.get(np.arange(n)))
        metrics, methods, kls_at_p, explanations, continuation, logits_a, logits_recon = measure(
            trained, lm, acts, tokens, pos, eval_batch_size, best_of_k, downstream_positions, pick_k)
        table, extra = results_table(methods), extra_lines(metrics, trained.cfg.t_text)
        print(f"\n{n} val samples, {model} block {layer}, iteration {checkpoint['iter_num']}" +
              (f", the lens's words picked from {pick_k} sampled by their reconstruction of A" if pick_k > 1 else ''))
        print_results(table, extra)
        kl_lens = kls_at_p['lens']
        for b in range(min(num_print_samples, n)):
            print(f"sample {b} (KL {kl_lens[b]:.4f}):\n" + format_sample(tokenizer, tokens[b], int(pos[b]), explanations[b],
                                                                        logits_a[b], logits_recon[b]))
        write_json(os.path.join(run_dir, 'results.json'), dict(
            checkpoint=os.path.abspath(ckpt_path), iter_num=checkpoint['iter_num'], num_samples=n, metrics=metrics,
            config=config, train_config=checkpoint['config'], lens_config=checkpoint['lens_config'],
            explanations=explanations, kl_lens_per_sample=kl_lens.tolist()))
        shown, tops = min(report_samples, n), top_pairs(tokenizer, logits_a, logits_recon)
        scale = max(torch.quantile(kl_lens[:shown], 0.9).item(), 1e-6)
        samples = [sample_html(tokenizer, tokens[b].tolist(), int(pos[b]), dict(kl=kl_lens[b].item(), explanation=explanations[b],
                   top=tops[b]), tokenizer.decode(continuation[b].tolist()), scale) for b in range(shown)]
        log_dir = os.path.dirname(run_dir) if os.path.isdir(ckpt_path) else run_dir  # train.py writes <run dir>/lens
        val_report(os.path.join(run_dir, 'report.html'), note, table, extra, methods, kls_at_p,
                   read_log(os.path.join(log_dir, 'log.jsonl')), samples, scale)
