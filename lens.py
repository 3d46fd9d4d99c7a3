"""
The Consistency Lens: a decoder that writes an activation A as t_text words, an encoder that reads
the words back into Â, and the losses that make Â do what A did.

    decoder   [prompt_left | W_d A + b_d | prompt_right] -> t_text tokens, each a hard Gumbel-softmax
              sample with a straight-through gradient, fed back through a (differentiable) KV cache
    encoder   [prompt_prefix | the tokens' embeddings | prompt_postfix] -> block K's output at the
              last position -> Â = W_e h + b_e
    loss      w_kl KL(P(.|A) || P(.|Â)) at the next token of p   (the frozen LM, A or Â patched at (L, p))
            + w_lm KL(P_base(.|natural prefix, tokens) || P_dec)   (fluency)
            - w_entropy H(P_dec)
            + w_mse |Â - A|^2

Both sides run the frozen LM's own weights (or, after unfreezing, their own trainable copies, whole or
low-rank updates on its shared weights); the frozen LM that defines the KL is never trained and is not a
submodule, so DDP, state_dict and the optimizer only ever see the lens's trainable parameters.
"""
import contextlib
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.profiler import record_function
from transformers import DynamicCache

from model import (block_output, blocks, check_layer, checkpoint_blocks, compute_dtype, embed, low_rank_copy,
                   next_token_logits, positions_in_window, trainable_copy)

TAU_FLOOR = 0.1  # below this the Gumbel-softmax gradient becomes too spiky to learn from
EMBEDDING_ROWS = 4096  # rows of the embedding matrix ActivationStats reads at a time


@dataclass
class LensConfig:
    layer: int = 15  # block whose output A is explained and patched
    encoder_layer: int = -1  # block K whose output at the last position the encoder reads; -1: the same block as layer
    t_text: int = 4  # explanation length in tokens
    decoder_prompt: str = '<|endoftext|><embed>'  # <embed> marks A's slot; last: the decoder continues from A
    encoder_prompt: str = '<|endoftext|>Summary of the text:<text>'  # <text> marks where the words go
    encoder_init: str = 'identity'  # W_e at the start: 'identity' (Â = h) or 'zero' (Â = mean: iteration 0 is mean ablation)
    encoder_reads: str = 'last'  # 'last' position, or 'first_and_last': also the first word's, through a map starting as the identity
    lora_rank: int = 16  # once unfrozen, each side trains: 0, a whole copy of the LM; r > 0, rank-r updates of its linear maps

    def __post_init__(self):
        if self.encoder_layer == -1:
            self.encoder_layer = self.layer
        if self.decoder_prompt.count('<embed>') != 1:
            raise SystemExit(f"decoder_prompt {self.decoder_prompt!r} must contain '<embed>' exactly once: "
                             f"it marks where the activation goes, e.g. '<|endoftext|><embed>'")
        if self.encoder_prompt.count('<text>') != 1:
            raise SystemExit(f"encoder_prompt {self.encoder_prompt!r} must contain '<text>' exactly once: "
                             f"it marks where the explanation goes, e.g. 'Summary of the text: <text>'")
        if self.encoder_init not in ('identity', 'zero'):
            raise SystemExit(f"encoder_init={self.encoder_init!r}: use 'identity' (Â starts as h) "
                             f"or 'zero' (Â starts at the mean)")
        if self.encoder_reads not in ('last', 'first_and_last'):
            raise SystemExit(f"encoder_reads={self.encoder_reads!r}: use 'last' (Â from the last position) or "
                             f"'first_and_last' (also from the first word's)")
        if self.lora_rank < 0:
            raise SystemExit(f"lora_rank={self.lora_rank}: use 0 (unfreezing trains whole copies of the LM) or a rank, e.g. 16")
        if self.t_text < 1:
            raise SystemExit(f"t_text={self.t_text}: an explanation needs at least one token, pass --t_text=10")


def gumbel_hard(logits, tau):
    """A hard Gumbel-softmax sample: the one-hot of argmax(logits + g), g standard Gumbel noise, carrying
    the soft sample's gradient (straight-through). As F.gumbel_softmax(hard=True), but g = -log(-log u)
    from uniform u: F.gumbel_softmax draws it with exponential_, several times slower on CPU. u = 0 gives
    g = -inf, a token never drawn, as it should be."""
    soft = F.softmax((logits - (-torch.rand_like(logits).log()).log()) / tau, -1)
    hard = F.one_hot(soft.argmax(-1), logits.shape[-1]).to(soft.dtype)
    return hard - soft.detach() + soft


def kl_div(logits_p, logits_q):
    """KL(P || Q) per row, in fp32, from logits."""
    logp, logq = F.log_softmax(logits_p.float(), -1), F.log_softmax(logits_q.float(), -1)
    return (logp.exp() * (logp - logq)).sum(-1)


def entropy(logits):
    logp = F.log_softmax(logits.float(), -1)
    return -(logp.exp() * logp).sum(-1)


def fve(recon, acts):
    """Fraction of variance explained: 1 - sum |Â - A|^2 / sum |A - mean(A)|^2."""
    return 1 - (recon - acts).pow(2).sum() / (acts - acts.mean(0)).pow(2).sum()


def cosine(recon, acts):
    return F.cosine_similarity(recon.float(), acts.float(), dim=-1)


def reconstruction_metrics(recon, acts):
    """MSE, fraction of variance explained, mean cosine and mean norm ratio |Â| / |A| over a set of samples."""
    recon, acts = recon.float(), acts.float()
    return dict(mse=(recon - acts).pow(2).mean().item(), fve=fve(recon, acts).item(),
                cos=cosine(recon, acts).mean().item(), norm_ratio=(recon.norm(dim=-1) / acts.norm(dim=-1)).mean().item())


def square_linear(d, identity):
    """A d x d map that starts as the identity, or at zero (its output then starts at its bias, 0)."""
    proj = nn.Linear(d, d)
    with torch.no_grad():
        proj.weight.copy_(torch.eye(d) if identity else torch.zeros(d, d))
        proj.bias.zero_()
    return proj


def prompt_parameter(lm, tokenizer, text):
    """Trainable prompt embeddings initialised from the embeddings of `text`'s tokens."""
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long, device=lm.device)
    return nn.Parameter(embed(lm, ids).detach().float()) if len(ids) else None


def batch_cat(B, *pieces):
    """Concatenate along the sequence: prompt parameters [n, d] are shared by the batch, tensors [B, n, d]
    are per sample, None is skipped."""
    return torch.cat([p[None].expand(B, -1, -1) if p.dim() == 2 else p for p in pieces if p is not None], 1)


class WithLM(nn.Module):
    """A side of the lens that runs the frozen LM, or its own trainable copy once unfrozen."""

    def __init__(self, lm):
        super().__init__()
        self.__dict__['frozen_lm'] = lm  # a plain attribute: not a submodule, never trained or saved
        self.lm_copy = None

    @property
    def lm(self):
        return self.frozen_lm if self.lm_copy is None else self.lm_copy

    def unfreeze(self, grad_checkpointing=False, shard=None, last_block=None, lora_rank=0):
        self.lm_copy = (low_rank_copy(self.frozen_lm, lora_rank, last_block) if lora_rank
                        else trainable_copy(self.frozen_lm, last_block, shard))
        if grad_checkpointing:
            checkpoint_blocks(self.lm_copy)


class Decoder(WithLM):
    """Reads A through two doors: the input slot (A standardised to an embedding's scale, then W_d), and
    the slot's residual at the input of block layer + 1 (when there is one), where the LM itself reads
    activations of A's depth (A plus a learned correction, zero at the start)."""

    def __init__(self, cfg, lm, tokenizer, stats):
        super().__init__(lm)
        left, right = cfg.decoder_prompt.split('<embed>')
        self.t_text = cfg.t_text
        self.__dict__['stats'] = stats  # the Lens's buffers, not saved twice
        self.depth = cfg.layer + 1 if cfg.layer + 1 < len(blocks(lm)) else None
        self.prompt_left = prompt_parameter(lm, tokenizer, left)
        self.prompt_right = prompt_parameter(lm, tokenizer, right)
        self.slot = 0 if self.prompt_left is None else len(self.prompt_left)
        d = lm.get_input_embeddings().embedding_dim
        self.proj = square_linear(d, identity=True)
        self.depth_proj = square_linear(d, identity=False) if self.depth is not None else None

    def prefix(self, acts, lm):
        """The prompt with A in its slot [B, P, d], and what slot_writes writes at the slot at the input of
        block layer + 1 ({block: [B, 1, d]})."""
        standard = (acts - self.stats.mean) / self.stats.scale
        slot = self.proj(standard * self.stats.embedding_rms)[:, None]
        writes = {}
        if self.depth is not None:
            writes[self.depth] = (acts + self.stats.scale * self.depth_proj(standard))[:, None]
        prefix = batch_cat(len(acts), self.prompt_left, slot, self.prompt_right).to(compute_dtype(lm))
        return prefix, writes

    def forward(self, acts, tau=1.0, mode='gumbel'):
        """Write t_text tokens for each activation. mode: 'gumbel' (hard Gumbel-softmax, straight-through
        gradient: training), 'greedy' or 'sample' (inference). Returns (one_hot [B, T, V], logits [B, T, V],
        ids [B, T]); one_hot carries the gradient into the encoder."""
        lm = self.lm
        prefix, writes = self.prefix(acts, lm)
        cache = DynamicCache()
        with slot_writes(lm, self.slot, writes):
            logits = lm(inputs_embeds=prefix, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        one_hots, all_logits = [], []
        for t in range(self.t_text):
            all_logits.append(logits)
            if mode == 'gumbel':
                one_hot = gumbel_hard(logits.float(), max(tau, TAU_FLOOR))
            else:
                ids = logits.argmax(-1) if mode == 'greedy' else torch.multinomial(F.softmax(logits.float() / tau, -1), 1)[:, 0]
                one_hot = F.one_hot(ids, logits.shape[-1]).float()
            one_hots.append(one_hot)
            if t < self.t_text - 1:
                step = embed(lm, one_hot)[:, None]
                logits = lm(inputs_embeds=step, past_key_values=cache, use_cache=True).logits[:, -1]
        one_hot = torch.stack(one_hots, 1)
        return one_hot, torch.stack(all_logits, 1), one_hot.argmax(-1)

    def teacher_forced_logits(self, acts, targets):
        """The decoder's logits [B, T, V] for writing `targets` [B, T] (ids) given A, in one forward."""
        lm = self.lm
        prefix, writes = self.prefix(acts, lm)
        with slot_writes(lm, self.slot, writes):
            sequence = torch.cat([prefix, embed(lm, targets[:, :-1].clamp(min=0))], 1)
            return lm(inputs_embeds=sequence, logits_to_keep=targets.shape[1]).logits


@contextlib.contextmanager
def slot_writes(lm, slot, writes):
    """Within the block, the input of block k at position `slot` is replaced by writes[k] ([B, 1, d])."""
    def writer(value):
        def write(module, args, kwargs):
            hidden = args[0] if args else kwargs['hidden_states']
            hidden = torch.cat([hidden[:, :slot], value.to(hidden.dtype), hidden[:, slot + 1:]], 1)
            return ((hidden,) + tuple(args[1:]), kwargs) if args else (args, {**kwargs, 'hidden_states': hidden})
        return write
    handles = [blocks(lm)[k].register_forward_pre_hook(writer(value), with_kwargs=True) for k, value in writes.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class Encoder(WithLM):
    """Â = mean + scale * W_e((h - mean) / scale), h block K's output at the last position, standardised
    by A's statistics (K is layer by default: h lives where A does, and without its shared mean the
    per-sample part of h is not drowned by a few near-constant massive dimensions). W_e starts at zero,
    so an untrained encoder gives the mean activation: iteration 0 is mean ablation.
    encoder_reads='first_and_last' adds W_f((h_first - mean) / scale), h_first block K's output at the
    first word, W_f starting as the identity: where the words begin with the token at p, that state is
    the LM holding p's token after a short prefix, which is what later positions read from p
    (docs/experiments.md, issue 17)."""

    def __init__(self, cfg, lm, tokenizer, stats):
        super().__init__(lm)
        prefix, postfix = cfg.encoder_prompt.split('<text>')
        self.layer = cfg.encoder_layer
        self.__dict__['stats'] = stats  # the Lens's buffers, not saved twice
        self.prompt_prefix = prompt_parameter(lm, tokenizer, prefix)
        self.prompt_postfix = prompt_parameter(lm, tokenizer, postfix)
        d = lm.get_input_embeddings().embedding_dim
        self.proj = square_linear(d, identity=cfg.encoder_init == 'identity')
        # the first word's hidden state is the LM holding that word as its current token, as A holds p's
        self.first_proj = square_linear(d, identity=True) if cfg.encoder_reads == 'first_and_last' else None
        self.first = 0 if self.prompt_prefix is None else len(self.prompt_prefix)

    def unfreeze(self, grad_checkpointing=False, shard=None, lora_rank=0):
        super().unfreeze(grad_checkpointing, shard, self.layer, lora_rank)

    def forward(self, text):
        """Â from the explanation: `text` is one-hot rows [B, T, V] (gradients flow) or token ids [B, T]."""
        sequence = batch_cat(len(text), self.prompt_prefix, embed(self.lm, text), self.prompt_postfix)
        hidden = block_output(self.lm, self.layer, inputs_embeds=sequence.to(compute_dtype(self.lm)))
        standard = lambda i: (hidden[:, i].float() - self.stats.mean) / self.stats.scale  # only the positions read
        read = self.proj(standard(-1))
        if self.first_proj is not None:
            read = read + self.first_proj(standard(self.first))
        return self.stats.mean + self.stats.scale * read


class ActivationStats(nn.Module):
    """The statistics that put A on a common scale: its mean over the train split, the RMS of A - mean
    (one scale for all dimensions, so the geometry of A is kept), and the RMS of an input embedding.
    A mid-layer residual is far from an embedding: much larger, and most of its energy is the mean shared
    by every sample, so fed raw into an input slot it looks the same for all samples. Buffers: saved in the lens's state_dict, set once by train.py from the train shards."""

    def __init__(self, lm):
        super().__init__()
        d = lm.get_input_embeddings().embedding_dim
        self.register_buffer('mean', torch.zeros(d))
        self.register_buffer('scale', torch.ones(()))
        # 4,096 rows at a time: a [V, d] fp32 copy would be 2 GB at a 128k vocabulary and d 4096
        ids = torch.arange(lm.get_input_embeddings().num_embeddings, device=lm.device)
        squares = sum(embed(lm, chunk).float().pow(2).sum() for chunk in ids.split(EMBEDDING_ROWS))
        self.register_buffer('embedding_rms', (squares / (len(ids) * d)).sqrt())

    @torch.no_grad()
    def set(self, acts):
        """From a sample of activations [n, d]."""
        self.mean.copy_(acts.float().mean(0))
        self.scale.copy_((acts.float() - self.mean).pow(2).mean().sqrt())


def real_tokens(tokens, pos, n, which):
    """The n real tokens of each window ending at p ('previous'), starting at it ('current') or following it
    ('next'), [B, n], with -100 (cross-entropy's ignore index) outside the window, and whether a row is
    complete [B]."""
    offset = pos[:, None] + torch.arange(n, device=pos.device) + dict(previous=1 - n, current=0, next=1)[which]
    outside = (offset < 0) | (offset >= tokens.shape[1])
    rows = tokens.gather(1, offset.clamp(0, tokens.shape[1] - 1)).masked_fill(outside, -100)
    return rows, ~outside.any(1)


@torch.no_grad()
def patched_kls(lm, layer, tokens, pos, patches, batch_size, after=0):
    """The measurement that train.py's periodic eval and eval.py share: KL(P(.|A) || P(.|patch)) at p per
    sample for each patch ({name: [n, d]}), and the logits at p of the LM and with the first patch ([n, V]).
    after=K: the KLs at p..p+K, only p patched ([n, K + 1] each; NaN where p + k is past the window).
    One prefix pass per batch serves every patch, and batches go in order of p, because
    next_token_logits pads a batch's prefixes to its largest p (mixed batches would waste ~40%)."""
    order = pos.argsort()
    shape = (len(tokens),) + ((after + 1,) if after else ())
    kls = {name: torch.empty(shape, device=tokens.device) for name in patches}
    logits_a, logits_first = [None] * len(tokens), [None] * len(tokens)
    for i in range(0, len(tokens), batch_size):
        s = order[i:i + batch_size]
        own, *logits = next_token_logits(lm, layer, tokens[s], pos[s], *(p[s] for p in patches.values()), after=after)
        for name, patch_logits in zip(patches, logits):
            kl = kl_div(own, patch_logits)
            kls[name][s] = kl if not after else kl.masked_fill(~positions_in_window(pos[s], after, tokens.shape[1]), float('nan'))
        for j, a, first in zip(s.tolist(), own, logits[0]):
            logits_a[j], logits_first[j] = (a, first) if not after else (a[0], first[0])
    return kls, torch.stack(logits_a), torch.stack(logits_first)


@torch.no_grad()
def explain_all(lens, acts, batch_size, mode='greedy', pick_k=1):
    """(explanations, ids [n, t_text], Â [n, d]) of every activation, batch_size at a time. pick_k > 1: each A's
    explanation is the one of pick_k sampled whose Â lies nearest A (the original's best of K: it reads A alone)."""
    explain = (lambda a: lens.explain(a, mode)) if pick_k == 1 else (lambda a: nearest_of_sampled(lens, a, pick_k))
    parts = [explain(acts[i:i + batch_size]) for i in range(0, len(acts), batch_size)]
    return sum((p[0] for p in parts), []), torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts]).float()


def nearest_of_sampled(lens, acts, k):
    (texts, ids, recon), B = lens.explain(acts.repeat(k, 1), 'sample'), len(acts)
    errors = (recon.float() - acts.float().repeat(k, 1)).pow(2).sum(-1).view(k, B)  # sample j of A b in row j * B + b
    rows = errors.argmin(0) * B + torch.arange(B, device=acts.device)
    return [texts[i] for i in rows.tolist()], ids[rows], recon[rows]


class Lens(nn.Module):
    def __init__(self, cfg, lm, tokenizer):
        super().__init__()
        check_layer(lm, cfg.layer, 'layer')
        check_layer(lm, cfg.encoder_layer, 'encoder_layer')
        self.cfg = cfg
        self.__dict__['lm'], self.tokenizer = lm, tokenizer  # the frozen LM: not a submodule
        self.stats = ActivationStats(lm)
        self.decoder = Decoder(cfg, lm, tokenizer, self.stats)
        self.encoder = Encoder(cfg, lm, tokenizer, self.stats)
        natural = cfg.decoder_prompt.replace('<embed>', 'something')
        self.natural_prefix = torch.tensor(tokenizer.encode(natural), dtype=torch.long, device=lm.device)

    def unfreeze(self, grad_checkpointing=False, shard=None):
        """From now on each side runs its own trainable copy of the LM; grad_checkpointing recomputes the
        copies' blocks in backward instead of storing them (less memory, more time); shard takes each copied block as it is made (train.py's FSDP)."""
        self.decoder.unfreeze(grad_checkpointing, shard, lora_rank=self.cfg.lora_rank)
        self.encoder.unfreeze(grad_checkpointing, shard, lora_rank=self.cfg.lora_rank)

    def state_dict(self, *args, keep_vars=False, **kwargs):
        """Without the frozen LM's tensors, which low-rank copies share: they come with the model."""
        shared = {id(t) for t in (*self.lm.parameters(), *self.lm.buffers())}
        state = super().state_dict(*args, keep_vars=True, **kwargs)
        return {k: v if keep_vars else v.detach() for k, v in state.items() if id(v) not in shared}

    def load_state_dict(self, state_dict, strict=True, assign=False):
        shared = set(super().state_dict(keep_vars=True)) - set(self.state_dict(keep_vars=True))
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        wrong = result.unexpected_keys + [k for k in result.missing_keys if k not in shared]
        if strict and wrong:
            raise RuntimeError(f"the lens's state does not fit this lens: {wrong[:5]}")
        return result

    def forward(self, acts, tokens, pos, tau=1.0, terms=(), warm_target='previous', resample=False, pg_k=8):
        """The training loss terms of a batch, unweighted: train.py weighs and sums them. Always 'kl' (at the
        next token of p), 'entropy' (of the decoder's distributions) and 'mse' (Â - A in units of A's scale,
        about 1 - FVE: raw units are dominated by a few massive dimensions and differ between models by orders
        of magnitude), and the terms named in `terms`, whose passes cost time:
          'lm'             fluency: KL(the frozen LM reading the words after the natural prefix || the decoder)
          'warm'           the warm start, a per-sample target from the first step: the decoder's teacher-forced
                           cross-entropy for writing the t_text real tokens of warm_target ('previous': ending at p,
                           'current': from p, 'next': after p), and 'kl_real_text', the KL of the encoder reading them
          'current_token'  the decoder's cross-entropy for the token at p in the word where warm_target puts it
                           (the first for 'current', the last for 'previous')
          'pg'             the policy gradient of the KL over pg_k explanations sampled per activation, read by the
                           encoder and patched in the KL's own pass (policy_gradient), and 'pg_kl', their mean KL at p
        resample: patch Â + (A' - Â') with A' another sample of the batch, so the KL measures whether the
        reconstruction error carried over from another context still preserves A's function. 'fve' and 'cos'
        come along as metrics."""
        with record_function('lens.decoder'):  # labels for profilers: bench.py's time split, GPU traces
            one_hot, dec_logits, ids = self.decoder(acts, tau)
        with record_function('lens.encoder'):
            recon = self.encoder(one_hot)
            if 'warm' in terms:
                targets, complete = real_tokens(tokens, pos, self.cfg.t_text, warm_target)
                recon_real = self.encoder(targets.clamp(min=0))
        if 'pg' in terms:
            with record_function('lens.policy_gradient'), torch.no_grad():
                sampled = self.decoder(acts.repeat(pg_k, 1), 1.0, 'sample')[2]
                recons_sampled = self.encoder(sampled).view(pg_k, len(acts), -1)
        with record_function('lens.kl'):  # one prefix pass serves every patch
            patch = recon + (acts.roll(1, 0) - recon.roll(1, 0)) if resample else recon
            logits_a, *logits = next_token_logits(self.lm, self.cfg.layer, tokens, pos, patch,
                                                  *([recon_real] if 'warm' in terms else []),
                                                  *(recons_sampled if 'pg' in terms else []))
        out = dict(kl=kl_div(logits_a, logits[0]).mean(), entropy=entropy(dec_logits).mean(),
                   mse=((recon - acts) / self.stats.scale).pow(2).mean())
        if 'current_token' in terms:  # the decoder's logits are already computed: no extra pass
            word = dict(current=0, previous=-1)[warm_target]
            out['current_token'] = F.cross_entropy(dec_logits[:, word].float(), tokens.gather(1, pos[:, None])[:, 0])
        if 'lm' in terms:
            with record_function('lens.fluency'), torch.no_grad():
                natural = self.natural_prefix[None].expand(len(ids), -1)
                base_logits = self.lm(input_ids=torch.cat([natural, ids], 1), logits_to_keep=ids.shape[1] + 1).logits[:, :-1]
            out['lm'] = kl_div(base_logits, dec_logits).mean()
        if 'warm' in terms:
            with record_function('lens.warm_start'):
                logits_forced = self.decoder.teacher_forced_logits(acts, targets)
            out['warm'] = F.cross_entropy(logits_forced.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
            # rows that run past the window are padded: the encoder learns only from complete ones
            out['kl_real_text'] = (kl_div(logits_a, logits[1]) * complete).sum() / complete.sum().clamp(min=1)
        if 'pg' in terms:
            kls = torch.stack([kl_div(logits_a, patch_logits) for patch_logits in logits[-pg_k:]]).detach()  # [k, B]
            with record_function('lens.policy_gradient'):
                out['pg'] = self.policy_gradient(acts, sampled, kls)
            out['pg_kl'] = kls.mean()
        return out | dict(fve=fve(recon.detach(), acts), cos=cosine(recon.detach(), acts).mean())

    def policy_gradient(self, acts, sampled, kls):
        """REINFORCE with reward -KL and a group baseline (as GRPO, without clipping): per activation the decoder
        sampled k explanations (temperature 1; `sampled` [k B, T], the k groups stacked as acts.repeat(k, 1) stacks
        them), the encoder read each, and `kls` [k, B] are their KLs at p. The loss is -(advantage x the sample's
        log-probability under the decoder), the advantage being how far the sample's KL lies below its group's mean,
        in units of the group's standard deviation. The Gumbel KL trains the words through a relaxed gradient; this
        scores the exact words the encoder reads, and every sample teaches: better than its group's mean pulled up,
        worse pushed down."""
        k, B = kls.shape
        advantage = (kls.mean(0) - kls) / (kls.std(0) + 1e-6)
        forced = self.decoder.teacher_forced_logits(acts.repeat(k, 1), sampled).float()
        log_prob = forced.log_softmax(-1).gather(-1, sampled[..., None])[..., 0].sum(-1).view(k, B)
        return -(advantage * log_prob).mean()

    @torch.no_grad()
    def explain(self, acts, mode='greedy', tau=1.0):
        """Explanations of activations [B, d] as (list of strings, token ids [B, T], Â [B, d])."""
        one_hot, _, ids = self.decoder(acts, tau, mode)
        return [self.tokenizer.decode(row) for row in ids.tolist()], ids, self.encoder(ids)


def top_tokens(tokenizer, logits, k=3):
    probs, ids = F.softmax(logits.float(), -1).topk(k)
    return [(tokenizer.decode([i]), p) for p, i in zip(probs.tolist(), ids.tolist())]


def format_sample(tokenizer, tokens, p, explanation, logits_a, logits_recon, width=24):
    """A sample as text: the context with the token at p in [[ ]], the explanation, and the top-3 next
    tokens predicted with A and with Â patched in."""
    context = tokenizer.decode(tokens[max(0, p - width):p].tolist()) + '[[' + tokenizer.decode([int(tokens[p])]) + ']]'
    show = lambda logits: ' '.join(f'{t!r} {q:.2f}' for t, q in top_tokens(tokenizer, logits))
    return (f"  context: {context!r}\n  explanation: {explanation!r}\n"
            f"  next token with A: {show(logits_a)} | with Â: {show(logits_recon)}")
