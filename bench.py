"""
Throughput, time split, peak memory and MFU of one Consistency Lens training step (what train.py's loop
does: Lens.forward with all losses, backward, grad clip, AdamW), or of dump.py's forward.

    $ python bench.py config/austen_smollm2.py
    $ python bench.py --model=gpt2-small-random --layer=6 --t_text=10 --ctx=128 \
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
import functools
import time
from dataclasses import fields

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from configurator import configure
from dump import Shards
from lens import Lens, LensConfig
from model import (ByteTokenizer, blocks, check_layer, compile_blocks, frozen, load_model, max_context, pick_dtype, read_activations,
                   use_tf32)

# -----------------------------------------------------------------------------
# the keys shared with train.py, with its defaults
model = 'assets/smollm2-135m'  # also 'gpt2-small-random': GPT-2-small's shape, random weights, no hub
out_dir = 'out/austen'  # real batches from <out_dir>/acts/train when dumped for this model/layer/ctx
layer = 15
ctx = 64
seed = 1337
device = 'cpu'
dtype = 'auto'  # the frozen LM's storage: 'auto' is bfloat16 on CUDA and on CPUs with bf16 units, else 'float32'
trust_remote_code = False
batch_size = 8
t_text = 8
encoder_layer = -1  # block the encoder reads; -1: the same block as layer
decoder_prompt = '<|endoftext|><embed>'  # <embed> last: the decoder continues the text from A
# the prompt repeated after the words: the last position re-reads them from their start (docs/experiments.md)
encoder_prompt = '<|endoftext|>Summary of the text:<text>\nSummary of the text:'
compile = False  # torch.compile each block's norms and MLP, as train.py does
unfreeze_at = -1  # >= 0: time the step of an unfrozen run, whose lens trains its own copies of the LM (train.py's from unfreeze_at on)
grad_checkpointing = False  # the copies recompute their activations in backward (needs unfreeze_at >= 0)
lora_rank = 0  # the copies train rank-r updates of their linear maps instead of every weight (needs unfreeze_at >= 0)
# bench only
bench = 'train'  # 'train': a training step; 'dump': dump.py's early-exit forward against a full forward
warmup_steps = 3  # untimed steps first: allocator, caches, compilation
num_steps = 5  # timed steps
compare_naive = False  # also time the straightforward path and check its losses equal the fast path's
# -----------------------------------------------------------------------------
configure(globals())
dtype = pick_dtype(dtype, device)
lens_config = LensConfig(**{f.name: globals()[f.name] for f in fields(LensConfig) if f.name in globals()})

PEAK_FLOPS = {'H100 PCIe': 756e12, 'H100': 989e12, 'H200': 989e12, 'A100': 312e12}  # bf16 dense, first match wins
WEIGHTS = dict(w_kl=1.0, w_lm=1.0, w_entropy=0.01, w_mse=0.0)  # every loss term in the graph (alpha fully ramped)
TAU = 1.0
cuda = device.startswith('cuda')
if cuda and not torch.cuda.is_available():
    raise SystemExit(f"device={device!r} but CUDA is not available on this machine: pass --device=cpu")
for key in ('grad_checkpointing', 'lora_rank'):
    if globals()[key] and unfreeze_at < 0:
        raise SystemExit(f"{key}={globals()[key]} acts on the unfrozen LM copies, and unfreeze_at=-1 makes none: "
                         f"pass --unfreeze_at=0 too")
if bench not in ('train', 'dump'):
    raise SystemExit(f"bench={bench!r}: use 'train' (a training step) or 'dump' (dump.py's forward)")
if cuda:
    use_tf32()


def sync():
    if cuda:
        torch.cuda.synchronize()


def load():
    if model != 'gpt2-small-random':
        return load_model(model, device, trust_remote_code, dtype)
    from transformers import GPT2Config, GPT2LMHeadModel
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        lm = GPT2LMHeadModel(GPT2Config())  # 12 blocks, d 768, vocab 50257; byte ids (< 257) are valid ids
    return frozen(lm, device, dtype), ByteTokenizer()


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
        with torch.no_grad():
            batches.append([read_activations(lm, layer, tokens, pos).float(), tokens, pos])
    return batches


def rss(field):
    """VmRSS (now) or VmHWM (the peak) of this process in MiB, from Linux's /proc/self/status."""
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field)) / 1024


def reset_peak_rss():
    """Restart the peak RSS from the current RSS (Linux: '5' to clear_refs), to measure the steps, not loading."""
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')
    return rss('VmRSS')


def peak_flops():
    """The GPU's bf16 dense peak from PEAK_FLOPS; on a CPU, what a 2048^3 matmul in the LM's dtype reaches
    here (no table knows every CPU, and a measured peak also counts the threads this run has)."""
    if not cuda:
        a = torch.randn(2048, 2048, dtype=getattr(torch, dtype))
        a @ a
        t0 = time.perf_counter()
        for _ in range(5):
            a @ a
        peak = 5 * 2 * 2048 ** 3 / (time.perf_counter() - t0)
        print(f"\nCPU peak, measured: a 2048^3 {dtype} matmul runs at {peak / 1e9:.0f} GFLOP/s")
        return peak
    name = torch.cuda.get_device_name(device)
    peak = next((v for k, v in PEAK_FLOPS.items() if k in name), None)
    if peak is None:
        print(f"MFU: n/a, {name!r} is not in PEAK_FLOPS in bench.py (add its bf16 dense peak there)")
    return peak


def run_train(lm, tokenizer):
    """Time train.py's step (Lens.forward, backward, grad clip, AdamW) and, with compare_naive, the
    straightforward reference of tests/naive_lens.py on the same batches and Gumbel noise. The time
    split comes from one extra profiled step (the profiler's own overhead kept out of the timings)."""
    batches = make_batches(lm, warmup_steps + num_steps)
    paths = ['fast', 'naive'] if compare_naive else ['fast']
    lenses = {path: Lens(lens_config, lm, tokenizer).to(device) for path in paths}  # identical inits
    for lens in lenses.values():
        lens.stats.set(torch.cat([acts for acts, _, _ in batches]))
        if unfreeze_at >= 0:
            lens.unfreeze(grad_checkpointing)
    optimizers = {path: torch.optim.AdamW(lenses[path].parameters(), lr=1e-3, weight_decay=0.0, fused=True) for path in paths}  # as train.py's
    forwards = {'fast': lenses['fast']}
    if compare_naive:
        from tests.naive_lens import naive_forward
        forwards['naive'] = functools.partial(naive_forward, lenses['naive'])

    def step(path, acts, tokens, pos, seed_offset):
        torch.manual_seed(seed + seed_offset)  # the same Gumbel noise for both paths
        out = forwards[path](acts, tokens, pos, tau=TAU, **WEIGHTS)
        out['loss'].backward()
        torch.nn.utils.clip_grad_norm_(lenses[path].parameters(), 1.0)
        optimizers[path].step()
        optimizers[path].zero_grad(set_to_none=True)
        return {k: v.item() for k, v in out.items()}

    rss_before, flops = reset_peak_rss(), {}
    for path in paths:  # an extra step, before any compilation: the matmuls of its forward and backward as run
        with FlopCounterMode(display=False) as counter:  # (the KL prefix's padding included; attention only on CUDA,
            step(path, *batches[0], -1)                  # where FlopCounterMode knows its kernels)
        flops[path] = counter.get_total_flops()
    for model in (lm, lenses['fast'].decoder.lm, lenses['fast'].encoder.lm) if compile else ():
        compile_blocks(model)
    seconds, outs, peak_mem = {path: 0.0 for path in paths}, {path: [] for path in paths}, {}
    for i, (acts, tokens, pos) in enumerate(batches):
        for path in paths:  # interleaved, so both paths see the same load on a shared machine
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            sync()
            t0 = time.perf_counter()
            outs[path].append(step(path, acts, tokens, pos, i))
            sync()
            if i >= warmup_steps:
                seconds[path] += time.perf_counter() - t0
            peak_mem[path] = max(peak_mem.get(path, 0), torch.cuda.max_memory_allocated(device) if cuda else 0)
        sync()
        t0 = time.perf_counter()
        with torch.no_grad():  # what acts_source='tokens' adds to a step: A from the early-exit forward
            read_activations(lm, layer, tokens, pos)
        sync()
        seconds['A'] = seconds.get('A', 0.0) + (time.perf_counter() - t0) * (i >= warmup_steps)
    peak_rss_steps = rss('VmHWM')  # before the profiled step: the profiler's own records would count
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=activities) as profile:
        step('fast', *batches[-1], len(batches))
    events = {e.key: e for e in profile.key_averages() if e.key.startswith('lens.')}
    split = {k[5:]: (e.device_time_total if cuda else e.cpu_time_total) / 1e6 for k, e in events.items()}

    peak, rate = peak_flops(), {}
    for path in paths:
        rate[path] = batch_size * num_steps / seconds[path]
        memory = (f"peak CUDA memory {peak_mem[path] / 2**20:.0f} MiB" if cuda else
                  f"peak RSS of the process during the steps {peak_rss_steps:.0f} MiB ({peak_rss_steps - rss_before:.0f} above "
                  f"the model and lens before them{', both paths' if compare_naive else ''})")
        achieved = flops[path] * num_steps / seconds[path]
        print(f"\n{path} path: {rate[path]:.2f} samples/s, {rate[path] * t_text:.1f} explanation tokens/s, "
              f"{seconds[path] / num_steps * 1000:.0f} ms/step, {memory}")
        if path == 'fast':
            print("  time split of one profiled step (forward parts; backward and optimizer are the rest):")
            for part, part_seconds in split.items():
                print(f"  {part:<12}{part_seconds * 1000:>9.0f} ms")
        print(f"  {achieved / 1e9:.1f} GFLOP/s achieved" + (f", {100 * achieved / peak:.1f}% of the peak ({'MFU' if cuda else 'utilisation'})"
                                                           if peak else ''))
    print(f"\ncomputing A in the step (acts_source='tokens'): {seconds['A'] / num_steps * 1000:.0f} ms/batch, "
          f"{100 * seconds['A'] / seconds['fast']:.0f}% of the fast step")
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
        with torch.no_grad():
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
lens_shape = f", encoder_layer {lens_config.encoder_layer}, t_text {t_text}" if bench == 'train' else ''
print(f"bench {bench}: {model} ({sum(p.numel() for p in lm.parameters()) / 1e6:.1f}M parameters, {len(blocks(lm))} blocks, "
      f"d {text.hidden_size}, vocab {text.vocab_size}), layer {layer}{lens_shape}, ctx {ctx}, batch {batch_size}, "
      f"{device} {dtype} ({torch.cuda.get_device_name(device) if cuda else f'CPU threads: {torch.get_num_threads()}'}), "
      f"{warmup_steps} warm-up + {num_steps} timed steps")
try:
    run_train(lm, tokenizer) if bench == 'train' else run_dump(lm)
except (torch.cuda.OutOfMemoryError, RuntimeError) as e:
    if 'out of memory' not in str(e) and "can't allocate memory" not in str(e):
        raise
    raise SystemExit(f"out of memory at batch_size={batch_size} on {device}: lower --batch_size") from None
