"""The training losses of lens.Lens.forward computed the straightforward way, as the original paid for
them: the decoder re-runs its whole sequence for every token (no KV cache), the encoder runs every block
and the LM head, the KL runs two full-window forwards with A and Â patched at (layer, p), and the
fluency reference runs the whole natural-prefix sequence. It shares only the decoder's input
construction with lens.py, so the test that Lens.forward equals it checks the cheap paths (cache, early
exit, one-position KL, prefix mask); bench.py times it beside the real step (`--compare_naive=True`)."""
import torch
import torch.nn.functional as F

from lens import TAU_FLOOR, batch_cat, cosine, entropy, fve, gumbel_hard, kl_div, real_tokens, slot_writes
from model import block_tensor, blocks, compute_dtype, embed, full_precision_logits, patched


def naive_forward(lens, acts, tokens, pos, tau=1.0, terms=(), warm_target='previous'):
    """Lens.forward's dict of loss terms for the same arguments and Gumbel noise."""
    lm, dec, enc, B, T = lens.lm, lens.decoder, lens.encoder, len(acts), lens.cfg.t_text
    prefix, writes = dec.prefix(acts, dec.lm)
    sequence, one_hots, dec_logits = prefix, [], []
    for t in range(T):
        with slot_writes(dec.lm, dec.slot, writes):
            logits = dec.lm(inputs_embeds=sequence).logits[:, -1]
        dec_logits.append(logits)
        one_hots.append(gumbel_hard(logits.float(), max(tau, TAU_FLOOR)))  # the same noise draws
        sequence = torch.cat([sequence, embed(dec.lm, one_hots[-1])[:, None]], 1)
    one_hot, dec_logits = torch.stack(one_hots, 1), torch.stack(dec_logits, 1)

    captured = []
    handle = blocks(enc.lm)[enc.layer].register_forward_hook(lambda m, a, out: captured.append(block_tensor(out)))
    try:
        enc.lm(inputs_embeds=batch_cat(B, enc.prompt_prefix, embed(enc.lm, one_hot), enc.prompt_postfix).to(compute_dtype(enc.lm)))
    finally:
        handle.remove()
    standard = (captured[0].float() - lens.stats.mean) / lens.stats.scale
    read = enc.proj(standard[:, -1])
    if lens.cfg.encoder_reads == 'first_and_last':
        first_word = 0 if enc.prompt_prefix is None else len(enc.prompt_prefix)
        read = read + enc.first_proj(standard[:, first_word])
    recon = lens.stats.mean + lens.stats.scale * read

    rows = torch.arange(B, device=tokens.device)
    window = lambda: full_precision_logits(lm, lm.base_model(input_ids=tokens).last_hidden_state)
    with torch.no_grad(), patched(lm, lens.cfg.layer, pos, acts):
        window_a = window()
    with patched(lm, lens.cfg.layer, pos, recon):
        window_recon = window()
    logits_a = window_a[rows, pos]
    kl = kl_div(logits_a, window_recon[rows, pos])

    ids = one_hot.argmax(-1)
    with torch.no_grad():
        natural = lens.natural_prefix[None].expand(B, -1)
        base_logits = lm(input_ids=torch.cat([natural, ids], 1)).logits[:, len(lens.natural_prefix) - 1:-1]
    fluency = kl_div(base_logits, dec_logits).mean()

    out = dict(kl=kl.mean(), entropy=entropy(dec_logits).mean(), mse=((recon - acts) / lens.stats.scale).pow(2).mean())
    if 'lm' in terms:
        out['lm'] = fluency
    if 'warm' in terms:
        targets, complete = real_tokens(tokens, pos, T, warm_target)
        with slot_writes(dec.lm, dec.slot, writes):
            sequence = torch.cat([prefix, embed(dec.lm, targets[:, :-1].clamp(min=0))], 1)
            logits = dec.lm(inputs_embeds=sequence).logits[:, -T:]
        out['warm'] = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
        with patched(lm, lens.cfg.layer, pos, enc(targets.clamp(min=0))):
            kl_real = kl_div(logits_a, window()[rows, pos])
        out['kl_real_text'] = kl_real[complete].mean() if complete.any() else torch.zeros(())
    if 'current_token' in terms:
        out['current_token'] = F.cross_entropy(dec_logits[:, 0 if warm_target == 'current' else T - 1].float(), tokens[rows, pos])
    return out | dict(fve=fve(recon.detach(), acts), cos=cosine(recon.detach(), acts).mean())
