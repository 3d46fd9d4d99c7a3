"""
Time train.py's training step: the very function its loop calls (train_step), on train.py's own setup, so the
config file and the --key=value arguments are train.py's and it needs what train.py needs (the dump). Reports
samples/s and ms per step, the time split of one profiled step, FLOPs, utilisation and peak memory.
--compare_naive=True also runs the straightforward path of tests/naive_lens.py (the original's costs: no KV
cache, no early exit, full-window patched forwards) from the same state on the same batches and Gumbel noise,
checks that both give the same losses and ends with `speedup_vs_naive: X.XX`. --bench=dump times dump.py's
early exit at `layer` against a full forward read through hidden_states and ends with `speedup_vs_full: X.XX`.

    $ python bench.py config/austen_smollm2.py
    $ python bench.py config/austen_smollm2.py --compare_naive=True --num_steps=2
    $ python bench.py --model=gpt2-small-random --layer=6 --ctx=128 --batch_size=8 --bench=dump

The steps start at iteration 0, as a run does (the warm start's passes included). On a CPU shared with another
job, run with OMP_NUM_THREADS=1: two threads contending for a busy core make every small op wait at a barrier.
"""
import copy
import runpy
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from configurator import configure
from model import blocks, load_model, pick_dtype, read_activations

# -----------------------------------------------------------------------------
bench = 'train'  # 'train': train.py's step; 'dump': dump.py's early-exit forward against a full forward
warmup_steps = 3  # untimed steps first: allocator, caches, compilation
num_steps = 5  # timed steps
compare_naive = False  # also time the straightforward path and check its losses equal the fast path's
# --bench=dump only (train.py reads its own settings from the same arguments)
model = 'assets/smollm2-135m'
layer = 15
ctx = 64
batch_size = 8
seed = 1337
device = 'cpu'
dtype = 'auto'
trust_remote_code = False
# -----------------------------------------------------------------------------
configure(globals())
PEAK_FLOPS = {'H100 PCIe': 756e12, 'H100': 989e12, 'H200': 989e12, 'A100': 312e12}  # bf16 dense, first match wins
if bench not in ('train', 'dump'):
    raise SystemExit(f"bench={bench!r}: use 'train' (train.py's step) or 'dump' (dump.py's forward)")
if device.startswith('cuda') and not torch.cuda.is_available():
    raise SystemExit(f"device={device!r} but CUDA is not available on this machine: pass --device=cpu")


def sync():
    if torch.cuda.is_available() and device.startswith('cuda'):
        torch.cuda.synchronize()


def rss(field):
    """VmRSS (now) or VmHWM (the peak) of this process in MiB, from Linux's /proc/self/status."""
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field)) / 1024


def reset_peak_rss():
    """Restart the peak RSS from the current RSS (Linux: '5' to clear_refs), to measure the steps, not loading."""
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')
    return rss('VmRSS')


def peak_flops(on_cuda, storage):
    """The GPU's bf16 dense peak from PEAK_FLOPS; on a CPU, what a 2048^3 matmul in the LM's dtype reaches
    here (no table knows every CPU, and a measured peak also counts the threads this run has)."""
    if not on_cuda:
        a = torch.randn(2048, 2048, dtype=getattr(torch, storage))
        a @ a
        t0 = time.perf_counter()
        for _ in range(5):
            a @ a
        peak = 5 * 2 * 2048 ** 3 / (time.perf_counter() - t0)
        print(f"CPU peak, measured: a 2048^3 {storage} matmul runs at {peak / 1e9:.0f} GFLOP/s")
        return peak
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_FLOPS.items() if k in name), None)
    if peak is None:
        print(f"MFU: n/a, {name!r} is not in PEAK_FLOPS in bench.py (add its bf16 dense peak there)")
    return peak


def run_train():
    """train.py's setup, then its train_step at iterations 0, 1, ...: warmup_steps untimed, num_steps timed, one
    more profiled for the time split and one counted for FLOPs. With compare_naive, each timed iteration also
    runs from the same state with Lens.forward swapped for the naive path."""
    sys.argv[0] = 'train.py'
    train = runpy.run_path('train.py', run_name='bench')['train_step'].__globals__  # the namespace train_step runs in
    step, on_cuda, raw_lens = train['train_step'], train['device'].startswith('cuda'), train['raw_lens']
    if compare_naive and train['w_pg']:
        raise SystemExit("compare_naive=True checks the KL, warm start and fluency terms against tests/naive_lens.py, which "
                         "has no policy gradient: drop --w_pg, or compare_naive")

    def timed(it):
        train['unfreeze_when_due'](it)  # as train.py's loop does before the step (unfreeze_at=0: the first)
        sync()
        t0 = time.perf_counter()
        parts = step(it)[0]
        sync()
        return time.perf_counter() - t0, {k: v.item() for k, v in parts.items()}

    for it in range(warmup_steps):
        timed(it)
    rss_before, seconds, naive_seconds, diff = reset_peak_rss(), 0.0, 0.0, 0.0
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    for it in range(warmup_steps, warmup_steps + num_steps):
        if compare_naive:
            from tests.naive_lens import naive_forward
            before = copy.deepcopy((raw_lens.state_dict(), train['optimizer'].state_dict()))
            fast = train['lens']
            train['lens'] = lambda *args, resample=False, pg_k=0, **kwargs: naive_forward(raw_lens, *args, **kwargs)
            naive_time, naive = timed(it)
            train['lens'] = fast
            raw_lens.load_state_dict(before[0])
            train['optimizer'].load_state_dict(before[1])
        step_time, parts = timed(it)
        seconds += step_time
        if compare_naive:
            naive_seconds += naive_time
            diff = max(diff, *(abs(parts[k] - naive[k]) / max(abs(parts[k]), abs(naive[k]), 1e-8) for k in parts))
    peak_memory = torch.cuda.max_memory_allocated() / 2 ** 20 if on_cuda else rss('VmHWM')
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if on_cuda else [])
    with torch.profiler.profile(activities=activities) as profile:
        step(warmup_steps + num_steps)
    events = {e.key: e for e in profile.key_averages() if e.key.startswith('lens.')}
    with FlopCounterMode(display=False) as counter:  # the matmuls of forward and backward as run (attention only on CUDA)
        step(warmup_steps + num_steps + 1)

    samples_per_s, achieved = train['batch_size'] * num_steps / seconds, counter.get_total_flops() * num_steps / seconds
    memory = (f"peak CUDA memory {peak_memory:.0f} MiB" if on_cuda else
              f"peak RSS of the process during the steps {peak_memory:.0f} MiB ({peak_memory - rss_before:.0f} above the setup)")
    print(f"\nfast path: {samples_per_s:.2f} samples/s, {seconds / num_steps * 1000:.0f} ms/step (train.py's ms/iter), "
          f"{memory}")
    print("  time split of one profiled step (forward parts; backward and optimizer are the rest):")
    for key, e in events.items():
        print(f"  {key[5:]:<12}{(e.device_time_total if on_cuda else e.cpu_time_total) / 1e3:>9.0f} ms")
    peak = peak_flops(on_cuda, train['dtype'])
    print(f"  {achieved / 1e9:.1f} GFLOP/s achieved" + (f", {100 * achieved / peak:.1f}% of the peak "
                                                       f"({'MFU' if on_cuda else 'utilisation'})" if peak else ''))
    if compare_naive:
        print(f"naive path: {train['batch_size'] * num_steps / naive_seconds:.2f} samples/s, "
              f"{naive_seconds / num_steps * 1000:.0f} ms/step")
        print(f"\nmax relative loss difference, fast vs naive over {num_steps} steps ({', '.join(parts)}): {diff:.2e}")
        print(f"speedup_vs_naive: {naive_seconds / seconds:.2f}")


def run_dump():
    """dump.py's forward (stop after block `layer`) against a full forward read through hidden_states, on random
    tokens."""
    lm, _ = load_model(model, device, trust_remote_code, pick_dtype(dtype, device))
    gen = torch.Generator().manual_seed(seed)
    times, diff = {'early exit': 0.0, 'full forward': 0.0}, 0.0
    for i in range(warmup_steps + num_steps):
        tokens = torch.randint(lm.config.get_text_config().vocab_size, (batch_size, ctx), generator=gen).to(device)
        pos = torch.randint(min(8, ctx - 1), ctx, (batch_size,), generator=gen).to(device)
        rows = torch.arange(batch_size, device=device)
        with torch.no_grad():
            t0 = time.perf_counter()
            early = read_activations(lm, layer, tokens, pos)
            sync()
            t1 = time.perf_counter()
            full = lm(input_ids=tokens, output_hidden_states=True).hidden_states[layer + 1][rows, pos]
            sync()
            t2 = time.perf_counter()
        if i >= warmup_steps:
            times['early exit'] += t1 - t0
            times['full forward'] += t2 - t1
            diff = max(diff, (early - full).abs().max().item())
    for name, seconds in times.items():
        print(f"{name}: {batch_size * ctx * num_steps / seconds:,.0f} tokens/s ({seconds / num_steps * 1000:.0f} ms/batch)")
    note = ' (the last block: hidden_states has the final norm applied)' if layer == len(blocks(lm)) - 1 else ''
    print(f"max |A early - A full|: {diff:.2e}{note}")
    print(f"speedup_vs_full: {times['full forward'] / times['early exit']:.2f}")


print(f"bench {bench}: {warmup_steps} warm-up + {num_steps} timed steps, "
      f"{'CPU threads: ' + str(torch.get_num_threads()) if not device.startswith('cuda') else 'CUDA'}")
try:
    run_train() if bench == 'train' else run_dump()
except (torch.cuda.OutOfMemoryError, RuntimeError) as e:
    if 'out of memory' not in str(e) and "can't allocate memory" not in str(e):
        raise
    raise SystemExit("out of memory: lower --batch_size") from None
