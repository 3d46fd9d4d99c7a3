"""
Throughput, time split, peak memory and MFU of one Consistency Lens training step (what train.py's loop
does: Lens.forward with all losses, backward, grad clip, AdamW), or of dump.py's forward.

    $ python bench.py config/austen_smollm2.py
    $ python bench.py --model=gpt2-small-random --layer=6 --encoder_layer=6 --t_text=10 --ctx=128 \
          --batch_size=8 --compare_naive=True
    $ python bench.py --model=gpt2-small-random --layer=6 --ctx=128 --bench=dump

--model=gpt2-small-random is GPT-2-small's shape (124M parameters) with seeded random weights and the
byte tokenizer, for benchmarking without the hub. Batches come from <out_dir>/acts/train when it was
dumped for this model/layer/ctx, else random tokens (A read from them, so it has the model's scale).
--compare_naive=True also runs the straightforward path (the original's costs: no KV cache, no early
exit, full-window patched forwards) on the same batches and Gumbel noise, checks that both paths give
the same losses and ends with `speedup_vs_naive: X.XX`. --bench=dump times dump.py's early exit at
`layer` against a full forward read through hidden_states, and ends with `speedup_vs_full: X.XX`.
On a CPU shared with another job, run with OMP_NUM_THREADS=1: two threads contending for a busy core
make every small op wait at a barrier (a [8, 50257] fill took 5.4 ms instead of 0.03 ms, a step 35 s
instead of 5.5 s).
"""
import resource
import time

import numpy as np
import torch
import torch.nn.functional as F

from configurator import configure
from dump import Shards
from lens import TAU_FLOOR, Lens, LensConfig, batch_cat, cosine, entropy, fve, kl_at_position, kl_div
from model import (ByteTokenizer, autocast, frozen, block_tensor, blocks, check_layer, embed, load_model, max_context,
                   patched, read_activations)

# -----------------------------------------------------------------------------
# the keys shared with train.py, with its defaults
model = 'assets/smollm2-135m'  # also 'gpt2-small-random': GPT-2-small's shape, random weights, no hub
out_dir = 'out/austen'  # real batches from <out_dir>/acts/train when dumped for this model/layer/ctx
layer = 15
ctx = 64
seed = 1337
device = 'cpu'
dtype = 'float32'  # autocast dtype on CUDA: bfloat16 is the fast choice
trust_remote_code = False
batch_size = 8
t_text = 8
encoder_layer = -1  # block the encoder reads; -1: the same block as layer
decoder_prompt = '<|endoftext|>Short explanation of <embed>:'
encoder_prompt = '<|endoftext|>Summary of the text: <text>'
compile = False  # torch.compile the lens, as train.py does (the time split is then not available)
# bench only
bench = 'train'  # 'train': a training step; 'dump': dump.py's early-exit forward against a full forward
warmup_steps = 3  # untimed steps first: allocator, caches, compilation
num_steps = 5  # timed steps
compare_naive = False  # also time the straightforward path and check its losses equal the fast path's
# -----------------------------------------------------------------------------
configure(globals())
encoder_layer = layer if encoder_layer == -1 else encoder_layer

PEAK_FLOPS = {'H100 PCIe': 756e12, 'H100': 989e12, 'H200': 989e12, 'A100': 312e12}  # bf16 dense, first match wins
WEIGHTS = dict(w_kl=1.0, w_lm=1.0, w_entropy=0.01, w_mse=0.0)  # every loss term in the graph (alpha fully ramped)
TAU = 1.0
cuda = device.startswith('cuda')
if cuda and not torch.cuda.is_available():
    raise SystemExit(f"device={device!r} but CUDA is not available on this machine: pass --device=cpu")
if bench not in ('train', 'dump'):
    raise SystemExit(f"bench={bench!r}: use 'train' (a training step) or 'dump' (dump.py's forward)")
if cuda:
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def sync():
    if cuda:
        torch.cuda.synchronize()


def load():
    if model != 'gpt2-small-random':
        return load_model(model, device, trust_remote_code)
    from transformers import GPT2Config, GPT2LMHeadModel
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        lm = GPT2LMHeadModel(GPT2Config())  # 12 blocks, d 768, vocab 50257; byte ids (< 257) are valid ids
    return frozen(lm, device), ByteTokenizer()


def make_batches(lm, n):
    """n batches of (acts, tokens, pos): the dumped train split if it matches, else random tokens."""
    try:
        shards = Shards(out_dir, 'train', model=model, layer=layer, ctx=ctx)
        print(f"data: activation shards in {out_dir}/acts/train ({len(shards)} samples)")
        return [[t.to(device) for t in shards.get(np.arange(i * batch_size, (i + 1) * batch_size) % len(shards))]
                for i in range(n)]
    except SystemExit as why:
        print(f"data: random tokens, A read from them ({why})")
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n):
        tokens = torch.randint(lm.config.get_text_config().vocab_size, (batch_size, ctx), generator=gen).to(device)
        pos = torch.randint(min(8, ctx - 1), ctx, (batch_size,), generator=gen).to(device)
        with torch.no_grad(), autocast(device, dtype):
            batches.append([read_activations(lm, layer, tokens, pos).float(), tokens, pos])
    return batches


def losses(acts, recon, kl, base_logits, dec_logits):
    """The loss dict of Lens.forward, from its pieces."""
    fluency, ent = kl_div(base_logits, dec_logits).mean(), entropy(dec_logits).mean()
    mse = (recon.float() - acts.float()).pow(2).mean()
    loss = WEIGHTS['w_kl'] * kl.mean() + WEIGHTS['w_lm'] * fluency - WEIGHTS['w_entropy'] * ent + WEIGHTS['w_mse'] * mse
    return dict(loss=loss, kl=kl.mean(), lm=fluency, entropy=ent, mse=mse,
                fve=fve(recon.detach().float(), acts.float()), cos=cosine(recon.detach(), acts).mean())


def fast_forward(lens, acts, tokens, pos, tick):
    """lens.Lens.forward cut into its parts so each can be timed; checked equal to it at start-up."""
    one_hot, dec_logits, ids = lens.decoder(acts, TAU)
    tick('decoder')
    recon = lens.encoder(one_hot)
    tick('encoder')
    kl, _, _ = kl_at_position(lens.lm, layer, tokens, pos, acts, recon)
    tick('kl')
    with torch.no_grad():
        natural = lens.natural_prefix[None].expand(len(ids), -1)
        base_logits = lens.lm(input_ids=torch.cat([natural, ids], 1), logits_to_keep=ids.shape[1] + 1).logits[:, :-1]
    tick('fluency')
    return losses(acts, recon, kl, base_logits, dec_logits)


def naive_forward(lens, acts, tokens, pos, tick):
    """The same losses computed the straightforward way, as the original paid for them."""
    lm, dec, enc, B = lens.lm, lens.decoder, lens.encoder, len(acts)
    # decoder: the whole sequence again for every token, no KV cache
    sequence = batch_cat(B, dec.prompt_left, dec.proj(acts)[:, None], dec.prompt_right)
    one_hots, dec_logits = [], []
    for t in range(t_text):
        logits = lm(inputs_embeds=sequence).logits[:, -1]
        dec_logits.append(logits)
        one_hots.append(F.gumbel_softmax(logits.float(), tau=max(TAU, TAU_FLOOR), hard=True))  # same noise draws
        if t < t_text - 1:
            sequence = torch.cat([sequence, embed(lm, one_hots[-1])[:, None]], 1)
    one_hot, dec_logits = torch.stack(one_hots, 1), torch.stack(dec_logits, 1)
    tick('decoder')
    # encoder: every block and the LM head, block K's output captured by a hook
    captured = []
    handle = blocks(lm)[encoder_layer].register_forward_hook(lambda m, a, out: captured.append(block_tensor(out)))
    try:
        lm(inputs_embeds=batch_cat(B, enc.prompt_prefix, embed(lm, one_hot), enc.prompt_postfix))
    finally:
        handle.remove()
    recon = enc.proj(captured[0][:, -1])
    tick('encoder')
    # KL: two full-window forwards, A and then Â patched at (layer, p), read at p
    rows = torch.arange(B, device=tokens.device)
    with torch.no_grad(), patched(lm, layer, pos, acts):
        logits_a = lm(input_ids=tokens).logits[rows, pos]
    with patched(lm, layer, pos, recon):
        logits_recon = lm(input_ids=tokens).logits[rows, pos]
    tick('kl')
    with torch.no_grad():
        natural = lens.natural_prefix[None].expand(B, -1)
        base_logits = lm(input_ids=torch.cat([natural, one_hot.argmax(-1)], 1)).logits[:, len(lens.natural_prefix) - 1:-1]
    tick('fluency')
    return losses(acts, recon, kl_div(logits_a, logits_recon), base_logits, dec_logits)


def step_flops(lm, lens, pos, naive):
    """Analytic FLOPs of one step: {part: forward FLOPs, 'backward': all backward FLOPs}, counting useful
    work (not the left padding of the KL prefix pass).
    Forward: 2 per weight per token in the blocks, in the LM head (2*V*d per token whose logits are
    computed) and in the one-hot embedding matmuls, plus attention: 4*d per (query, key) pair per block
    (QK^T and AV; causal, so a sequence of n has n(n+1)/2 pairs). Backward where gradients flow: the LM is
    frozen, so only activation gradients are computed: 1x the forward for weight matmuls (no weight
    gradients, hence not the usual 2x), 2x for attention (dQ, dK and dV, dP). The lens's own maps and
    prompts (2 d x d per sample) are negligible and left out."""
    text = lm.config.get_text_config()
    d, V, N, B, T = text.hidden_size, text.vocab_size, len(blocks(lm)), len(pos), t_text
    per_block = sum(p.numel() for p in blocks(lm)[0].parameters())
    pairs = lambda n: n * (n + 1) // 2

    def f(tokens, attn_pairs, n_blocks, head=0, onehot=0, backward=False):
        return 2 * per_block * tokens * n_blocks + 2 * V * d * (head + onehot) + 4 * d * attn_pairs * n_blocks * (1 + backward)

    length = lambda prompt: 0 if prompt is None else len(prompt)
    P = length(lens.decoder.prompt_left) + 1 + length(lens.decoder.prompt_right)  # decoder prefix
    S = length(lens.encoder.prompt_prefix) + T + length(lens.encoder.prompt_postfix)  # encoder sequence
    R = len(lens.natural_prefix) + T  # fluency reference sequence
    p = pos.tolist()
    if naive:  # decoder: T full forwards of growing length, all logits; encoder and KL: every block and logit
        seqs = [P + t for t in range(T)]
        dec = dict(tokens=B * sum(seqs), attn_pairs=B * sum(pairs(n) for n in seqs), n_blocks=N, head=B * sum(seqs), onehot=B * (T - 1))
        kl_back = dict(tokens=B * ctx, attn_pairs=B * pairs(ctx), n_blocks=N - layer - 1, head=B * ctx)
        return dict(decoder=f(**dec), encoder=f(B * S, B * pairs(S), N, head=B * S, onehot=B * T),
                    kl=2 * f(B * ctx, B * pairs(ctx), N, head=B * ctx), fluency=f(B * R, B * pairs(R), N, head=B * R),
                    backward=f(**dec, backward=True) + f(B * S, B * pairs(S), encoder_layer + 1, onehot=B * T, backward=True)
                    + f(**kl_back, backward=True))
    # decoder: prefix + T - 1 cached steps, one logit row each; encoder: blocks 0..K; KL: prefix 0..p-1, then
    # position p twice (A, Â), backward through blocks L+1.. at p; fluency: T + 1 logit rows
    dec = dict(tokens=B * (P + T - 1), attn_pairs=B * pairs(P + T - 1), n_blocks=N, head=B * T, onehot=B * (T - 1))
    step = dict(tokens=B, attn_pairs=sum(q + 1 for q in p), head=B)
    return dict(decoder=f(**dec), encoder=f(B * S, B * pairs(S), encoder_layer + 1, onehot=B * T),
                kl=f(sum(p), sum(pairs(q) for q in p), N, head=B) + 2 * f(**step, n_blocks=N),
                fluency=f(B * R, B * pairs(R), N, head=B * (T + 1)),
                backward=f(**dec, backward=True) + f(B * S, B * pairs(S), encoder_layer + 1, onehot=B * T, backward=True)
                + f(**step, n_blocks=N - layer - 1, backward=True))


def peak_flops():
    if not cuda:
        return None
    name = torch.cuda.get_device_name(device)
    peak = next((v for k, v in PEAK_FLOPS.items() if k in name), None)
    if peak is None:
        print(f"MFU: n/a, {name!r} is not in PEAK_FLOPS in bench.py (add its bf16 dense peak there)")
    return peak


def run_train(lm, tokenizer):
    check_layer(lm, encoder_layer, 'encoder_layer')
    cfg = LensConfig(layer=layer, encoder_layer=encoder_layer, t_text=t_text, decoder_prompt=decoder_prompt,
                     encoder_prompt=encoder_prompt)
    batches = make_batches(lm, warmup_steps + num_steps)
    paths = ['fast', 'naive'] if compare_naive else ['fast']
    lenses = {path: Lens(cfg, lm, tokenizer).to(device) for path in paths}  # identical inits
    optimizers = {path: torch.optim.AdamW(lenses[path].parameters(), lr=1e-3, weight_decay=0.0, fused=cuda) for path in paths}
    compiled = torch.compile(lenses['fast']) if compile else None
    # the timed fast step runs fast_forward, not Lens.forward: make sure they are still the same computation
    acts, tokens, pos = batches[0]
    with torch.no_grad(), autocast(device, dtype):
        torch.manual_seed(seed)
        want = lenses['fast'](acts, tokens, pos, tau=TAU, **WEIGHTS)['loss']
        torch.manual_seed(seed)
        got = fast_forward(lenses['fast'], acts, tokens, pos, lambda part: None)['loss']
    if not torch.allclose(want, got, rtol=1e-4):
        raise SystemExit(f"bench.py's fast_forward gives loss {got.item()} but lens.Lens.forward {want.item()}: "
                         f"lens.py changed, update fast_forward in bench.py to match")

    times = {path: {} for path in paths}
    flops = {path: {} for path in paths}
    outs, peak_mem = {path: [] for path in paths}, {}
    for step, (acts, tokens, pos) in enumerate(batches):
        for path in paths:  # interleaved, so both paths see the same load on a shared machine
            lens, timed = lenses[path], step >= warmup_steps
            last = [time.perf_counter()]

            def tick(part):
                sync()
                now = time.perf_counter()
                if timed:
                    times[path][part] = times[path].get(part, 0.0) + now - last[0]
                last[0] = now

            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            torch.manual_seed(seed + step)  # the same Gumbel noise for both paths
            with autocast(device, dtype):
                if compiled is not None and path == 'fast':
                    out = compiled(acts, tokens, pos, tau=TAU, **WEIGHTS)
                    tick('forward (compiled)')
                else:
                    out = (naive_forward if path == 'naive' else fast_forward)(lens, acts, tokens, pos, tick)
            out['loss'].backward()
            tick('backward')
            torch.nn.utils.clip_grad_norm_(lens.parameters(), 1.0)
            optimizers[path].step()
            optimizers[path].zero_grad(set_to_none=True)
            tick('optimizer')
            outs[path].append({k: v.item() for k, v in out.items()})
            if timed:
                for part, fl in step_flops(lm, lens, pos, path == 'naive').items():
                    part = 'forward (compiled)' if compiled is not None and path == 'fast' and part != 'backward' else part
                    flops[path][part] = flops[path].get(part, 0) + fl
            peak_mem[path] = max(peak_mem.get(path, 0), torch.cuda.max_memory_allocated(device) if cuda else 0)

    peak, rate = peak_flops(), {}
    for path in paths:
        total = sum(times[path].values())
        rate[path] = batch_size * num_steps / total
        memory = (f"peak CUDA memory {peak_mem[path] / 2**20:.0f} MiB" if cuda else
                  f"peak RSS of the process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
        print(f"\n{path} path: {rate[path]:.2f} samples/s, {rate[path] * t_text:.1f} explanation tokens/s, "
              f"{total / num_steps * 1000:.0f} ms/step, {memory}")
        print(f"  {'part':<20}{'ms/step':>9}{'%':>6}{'GFLOP/sample':>14}")
        for part, seconds in times[path].items():
            print(f"  {part:<20}{seconds / num_steps * 1000:>9.0f}{100 * seconds / total:>6.1f}"
                  f"{flops[path].get(part, 0) / (batch_size * num_steps) / 1e9:>14.2f}")
        achieved = sum(flops[path].values()) / total
        print(f"  MFU {100 * achieved / peak:.1f}% ({achieved / 1e12:.1f} TFLOP/s of {peak / 1e12:.0f})" if peak else
              f"  achieved {achieved / 1e9:.1f} GFLOP/s" + ('' if cuda else ' (CPU: no peak table, so no MFU)'))
    if compare_naive:
        diff = max(abs(f[k] - n[k]) / max(abs(f[k]), abs(n[k]), 1e-8)
                   for f, n in zip(outs['fast'], outs['naive']) for k in f)
        print(f"\nmax relative loss difference, fast vs naive over {len(batches)} steps "
              f"({', '.join(outs['fast'][0])}): {diff:.2e}")
        print(f"speedup_vs_naive: {rate['fast'] / rate['naive']:.2f}")


def run_dump(lm):
    """dump.py's forward (stop after block `layer`) against a full forward read through hidden_states."""
    times, diff = {'early exit': 0.0, 'full forward': 0.0}, 0.0
    for step, (_, tokens, pos) in enumerate(make_batches(lm, warmup_steps + num_steps)):
        rows = torch.arange(len(tokens), device=tokens.device)
        with torch.no_grad(), autocast(device, dtype):
            t0 = time.perf_counter()
            early = read_activations(lm, layer, tokens, pos)
            sync()
            t1 = time.perf_counter()
            full = lm(input_ids=tokens, output_hidden_states=True).hidden_states[layer + 1][rows, pos]
            sync()
            t2 = time.perf_counter()
        if step >= warmup_steps:
            times['early exit'] += t1 - t0
            times['full forward'] += t2 - t1
            diff = max(diff, (early - full).abs().max().item())
    for name, seconds in times.items():
        print(f"{name}: {batch_size * ctx * num_steps / seconds:,.0f} tokens/s ({seconds / num_steps * 1000:.0f} ms/batch)")
    note = ' (the last block: hidden_states has the final norm applied)' if layer == len(blocks(lm)) - 1 else ''
    print(f"max |A early - A full|: {diff:.2e}{note}")
    print(f"speedup_vs_full: {times['full forward'] / times['early exit']:.2f}")


lm, tokenizer = load()
check_layer(lm, layer, 'layer')
if ctx > max_context(lm):
    raise SystemExit(f"ctx={ctx} is longer than the model's context of {max_context(lm)} tokens: lower --ctx")
text = lm.config.get_text_config()
seqsshape = f", encoder_layer {encoder_layer}, t_text {t_text}" if bench == 'train' else ''
print(f"bench {bench}: {model} ({sum(p.numel() for p in lm.parameters()) / 1e6:.1f}M parameters, {len(blocks(lm))} blocks, "
      f"d {text.hidden_size}, vocab {text.vocab_size}), layer {layer}{seqsshape}, ctx {ctx}, batch {batch_size}, "
      f"{device} {dtype} ({torch.cuda.get_device_name(device) if cuda else f'CPU threads: {torch.get_num_threads()}'}), "
      f"{warmup_steps} warm-up + {num_steps} timed steps")
try:
    run_train(lm, tokenizer) if bench == 'train' else run_dump(lm)
except (torch.cuda.OutOfMemoryError, RuntimeError) as e:
    if 'out of memory' not in str(e) and "can't allocate memory" not in str(e):
        raise
    raise SystemExit(f"out of memory at batch_size={batch_size} on {device}: lower --batch_size") from None
