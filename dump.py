"""
Token memmaps -> activation shards: the output of block `layer` at one random position p of
random `ctx`-token windows, for a train and a val split.

    $ python dump.py config/austen_smollm2.py
    $ torchrun --standalone --nproc_per_node=8 dump.py config/gpt2_frozen.py

Format (<out_dir>/acts/<split>/, readable with numpy alone):
    acts_<rank>_<k>.bin    float16 [n, d_model] (or bfloat16 bits stored as uint16, acts_dtype='bfloat16')
    tokens_<rank>_<k>.bin  uint16/uint32 [n, ctx], the window the activation was computed on
    pos_<rank>_<k>.bin     int32 [n], the position p inside the window
    meta.json              model, layer, d_model, ctx, dtypes, num_samples, the list of shards, the config
Shard k holds samples [k * samples_per_shard, ...) of the split; ranks take shards k = rank, rank + world, ...
A shard exists for readers only once meta.json lists it, and every file is written to a temporary
name and renamed, so a killed dump re-run picks up where it stopped and never writes a shard twice.
"""
import fcntl
import functools
import json
import math
import os
import time

import numpy as np
import torch

from model import read_activations

# -----------------------------------------------------------------------------
# the settings shared by dump.py, train.py and eval.py; defaults: the embedded default (CPU)
model = 'assets/smollm2-135m'  # HF hub name, local HF directory, or tiny-gpt2 / tiny-llama
data_dir = 'data/austen'  # train.bin / val.bin / meta.json from data/<name>/prepare.py
out_dir = 'out/austen'  # shards go to <out_dir>/acts/{train,val}/
layer = 15  # explain the output of this block (0-indexed) = HF hidden_states[layer + 1]
ctx = 64  # tokens per window
min_pos = 8  # p is uniform in [min_pos, ctx - 1]: early positions carry outlier norms and little context
num_train_samples = 8000
num_val_samples = 500
seed = 1337
device = 'cpu'  # 'cpu', 'cuda', 'cuda:1'; under torchrun 'cuda' means this rank's GPU
dtype = 'auto'  # the frozen LM's storage: 'auto' is bfloat16 on CUDA and on CPUs with bf16 units, else 'float32'
trust_remote_code = False
# dump only
dump_batch_size = 32  # windows per forward
samples_per_shard = 10000
acts_dtype = 'float16'  # or 'bfloat16' for models whose residual stream exceeds float16's 65504
# -----------------------------------------------------------------------------

SPLITS = ('train', 'val')
FORMAT_KEYS = ('model', 'layer', 'ctx', 'min_pos', 'seed', 'num_samples', 'samples_per_shard', 'data_dir', 'dtype')


def split_dir(out_dir, split):
    return os.path.join(out_dir, 'acts', split)


def read_tokens(data_dir, split):
    """The token memmap of a split and the corpus's meta.json, with a clear error when missing."""
    meta_path, bin_path = os.path.join(data_dir, 'meta.json'), os.path.join(data_dir, f'{split}.bin')
    if not (os.path.exists(meta_path) and os.path.exists(bin_path)):
        raise SystemExit(f"no corpus in {data_dir} ({bin_path} or meta.json missing): "
                         f"run `python {data_dir}/prepare.py` first")
    meta = json.load(open(meta_path))
    tokens = np.memmap(bin_path, dtype=meta['dtype'], mode='r')
    if len(tokens) == 0:
        raise SystemExit(f"{bin_path} is empty: re-run `python {data_dir}/prepare.py`")
    return tokens, meta


def sample_windows(num_tokens, n, split, seed, ctx, min_pos):
    """Window starts (distinct) and positions p of a split's n samples, the same on every rank."""
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    if n > num_tokens - ctx + 1:
        raise SystemExit(f"the {split} corpus has {num_tokens - ctx + 1} distinct {ctx}-token windows, fewer than "
                         f"the {n} samples asked for: lower num_{split}_samples or ctx")
    return rng.choice(num_tokens - ctx + 1, size=n, replace=False), rng.integers(min_pos, ctx, size=n)


def write_atomic(path, array):
    array.tofile(path + '.tmp')
    os.replace(path + '.tmp', path)


def update_meta(folder, change):
    """Read meta.json, apply change(meta), write it back atomically, under a lock shared by all ranks."""
    with open(os.path.join(folder, 'meta.lock'), 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = os.path.join(folder, 'meta.json')
        meta = json.load(open(path)) if os.path.exists(path) else None
        meta = change(meta)
        with open(path + '.tmp', 'w') as f:
            json.dump(meta, f, indent=1)
        os.replace(path + '.tmp', path)
        return meta


def same_setting(a, b):
    """Equal settings, with paths compared normalised: './assets/smollm2-135m/' is 'assets/smollm2-135m'."""
    if isinstance(a, str) and isinstance(b, str):
        return os.path.normpath(a) == os.path.normpath(b)
    return a == b


def check_same_dump(found, wanted, folder):
    diff = [k for k in FORMAT_KEYS if not same_setting(found.get(k), wanted[k])]
    if diff:
        have = ', '.join(f'{k}={found.get(k)!r}' for k in diff)
        want = ', '.join(f'{k}={wanted[k]!r}' for k in diff)
        raise SystemExit(f"{folder} holds a dump made with {have}, but this run asks for {want}: "
                         f"use another out_dir, or delete {folder} to dump again")


def start_ranks(device):
    """(rank, world, device): under torchrun, join the process group with each rank on its own GPU (also for
    --device=cuda:0), bound before NCCL starts; run alone, (0, 1, device)."""
    if 'RANK' not in os.environ:
        return 0, 1, device
    if device.startswith('cuda'):
        device = f"cuda:{os.environ['LOCAL_RANK']}"
        torch.cuda.set_device(device)
    cuda = device.startswith('cuda')  # device_id: NCCL binds this rank's GPU now, not at its first collective
    torch.distributed.init_process_group('nccl' if cuda else 'gloo', device_id=torch.device(device) if cuda else None)
    return int(os.environ['RANK']), int(os.environ['WORLD_SIZE']), device


@functools.lru_cache(maxsize=4)
def epoch_permutation(seed, epoch, n):
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_indices(seed, n, batch_size, it, micro_step=0, rank=0, world=1, accumulation=1):
    """The samples (of n) that a rank takes at optimizer step `it`, micro-step `micro_step`. The training
    stream is one seeded permutation of all n per epoch, and step `it` takes its positions
    [it * batch_size, (it + 1) * batch_size), split over micro-steps and ranks: every sample is drawn
    exactly once per epoch, wherever a batch crosses an epoch's end."""
    micro_batch = batch_size // (world * accumulation)
    start = it * batch_size + (micro_step * world + rank) * micro_batch
    epochs, offsets = np.divmod(np.arange(start, start + micro_batch), n)
    return np.array([epoch_permutation(seed, e, n)[o] for e, o in zip(epochs.tolist(), offsets.tolist())])


class Shards:
    """The activation shards of one split, read through numpy memmaps, in sample order."""

    def __init__(self, out_dir, split, **expect):
        """expect: settings (model, layer, ctx) the dump must have been made with; a mismatch is an error."""
        folder = split_dir(out_dir, split)
        path = os.path.join(folder, 'meta.json')
        if not os.path.exists(path):
            raise SystemExit(f"no activation shards in {folder}: run `python dump.py <config>` first")
        self.meta = meta = json.load(open(path))
        for key, value in expect.items():
            if not same_setting(meta[key], value):
                raise SystemExit(f"the shards in {folder} were dumped with {key}={meta[key]!r}, but this run has "
                                 f"{key}={value!r}: point out_dir at a dump for this {key}, or run dump.py again")
        done = sum(s['n'] for s in meta['shards'])
        if done < meta['num_samples']:
            raise SystemExit(f"the dump in {folder} is incomplete ({done} of {meta['num_samples']} samples): "
                             f"re-run `python dump.py` with the same config to finish it")
        self.d_model, self.ctx = meta['d_model'], meta['ctx']
        acts_np = np.uint16 if meta['dtype'] == 'bfloat16' else np.float16
        self.acts, self.tokens, self.pos = [], [], []
        for shard in sorted(meta['shards'], key=lambda s: s['first']):
            for kind, dt, width, arrays in (('acts', acts_np, self.d_model, self.acts),
                                            ('tokens', meta['token_dtype'], self.ctx, self.tokens),
                                            ('pos', np.int32, 1, self.pos)):
                file = os.path.join(folder, f"{kind}_{shard['name']}.bin")
                expected = shard['n'] * width * np.dtype(dt).itemsize
                if not os.path.exists(file) or os.path.getsize(file) != expected:
                    found = os.path.getsize(file) if os.path.exists(file) else 'missing'
                    raise SystemExit(f"shard file {file} is truncated or missing ({found} bytes, expected {expected}): "
                                     f"delete {folder} and run dump.py again")
                arrays.append(np.memmap(file, dtype=dt, mode='r', shape=(shard['n'], width) if width > 1 else (shard['n'],)))
        self.first = np.cumsum([0] + [len(p) for p in self.pos])

    def __len__(self):
        return int(self.first[-1])

    def get(self, index):
        """Samples `index` (array of ints) as (acts float32 [B, d], tokens long [B, ctx], pos long [B])."""
        index = np.asarray(index)
        shard = np.searchsorted(self.first, index, side='right') - 1
        row = index - self.first[shard]
        acts = np.empty((len(index), self.d_model), self.acts[0].dtype)
        tokens = np.empty((len(index), self.ctx), np.int64)
        pos = np.empty(len(index), np.int64)
        for s in np.unique(shard):
            mask = shard == s
            acts[mask], tokens[mask], pos[mask] = self.acts[s][row[mask]], self.tokens[s][row[mask]], self.pos[s][row[mask]]
        acts = torch.from_numpy(acts)
        acts = acts.view(torch.bfloat16) if self.meta['dtype'] == 'bfloat16' else acts
        return acts.float(), torch.from_numpy(tokens), torch.from_numpy(pos)


class TokenWindows:
    """The windows dump.py would write for a split, with A computed by the early-exit forward when a
    batch is read (acts_source='tokens': no dump needed). get() is Shards.get: the same samples in the
    same order, so the batch stream, resume and the ranks' slices are those of training from a dump."""

    def __init__(self, lm, data_dir, split, n, layer, ctx, min_pos, seed, batch_size=32):
        self.lm, self.layer, self.ctx, self.batch_size = lm, layer, ctx, batch_size
        self.data = read_tokens(data_dir, split)[0]
        self.starts, self.pos = sample_windows(len(self.data), n, split, seed, ctx, min_pos)

    def __len__(self):
        return len(self.pos)

    @torch.no_grad()
    def get(self, index):
        index = np.asarray(index)
        tokens = torch.from_numpy(np.stack([self.data[s:s + self.ctx] for s in self.starts[index]]).astype(np.int64))
        pos = torch.from_numpy(self.pos[index])
        device = self.lm.get_input_embeddings().weight.device
        acts = torch.cat([read_activations(self.lm, self.layer, tokens[i:i + self.batch_size].to(device),
                                           pos[i:i + self.batch_size].to(device)).float()
                          for i in range(0, len(index), self.batch_size)])
        return acts, tokens.to(device), pos.to(device)


if __name__ == '__main__':
    from configurator import configure
    from model import check_layer, load_model, max_context, pick_dtype
    config = configure(globals())
    dtype = pick_dtype(dtype, device)
    rank, world, device = start_ranks(device)
    corpora = {split: read_tokens(data_dir, split) for split in SPLITS}
    lm, tokenizer = load_model(model, device, trust_remote_code, dtype)
    check_layer(lm, layer)
    if ctx > max_context(lm):
        raise SystemExit(f"ctx={ctx} is longer than the model's context of {max_context(lm)} tokens: lower --ctx")
    if not 0 <= min_pos < ctx:
        raise SystemExit(f"min_pos={min_pos} must be in [0, ctx-1={ctx - 1}]")
    vocab = corpora['train'][1]['vocab_size']
    if vocab > lm.get_input_embeddings().num_embeddings:
        raise SystemExit(f"{data_dir} was tokenized with a vocabulary of {vocab} ids, larger than {model}'s: "
                         f"prepare the corpus with this model's tokenizer")
    d_model = lm.get_input_embeddings().embedding_dim
    print(f"dump: {model} block {layer} (d_model {d_model}), ctx {ctx}, rank {rank}/{world}, device {device}, {dtype}")

    for split, num_samples in (('train', num_train_samples), ('val', num_val_samples)):
        data, corpus_meta = corpora[split]
        starts, positions = sample_windows(len(data), num_samples, split, seed, ctx, min_pos)
        folder = split_dir(out_dir, split)
        os.makedirs(folder, exist_ok=True)
        wanted = dict(model=model, layer=layer, ctx=ctx, min_pos=min_pos, seed=seed, num_samples=num_samples,
                      samples_per_shard=samples_per_shard, data_dir=data_dir, dtype=acts_dtype, d_model=d_model,
                      token_dtype=corpus_meta['dtype'], corpus=corpus_meta, dump_config=config, shards=[])
        meta = update_meta(folder, lambda found: check_same_dump(found, wanted, folder) or found if found else wanted)
        done = {s['first'] for s in meta['shards']}
        todo = [k for k in range(rank, math.ceil(num_samples / samples_per_shard), world)
                if k * samples_per_shard not in done]
        total, t0 = sum(min(samples_per_shard, num_samples - k * samples_per_shard) for k in todo), time.time()
        written = 0
        print(f"{split}: {num_samples} samples in {math.ceil(num_samples / samples_per_shard)} shards, "
              f"{len(done)} already done, this rank writes {len(todo)} ({total} samples)")
        for k in todo:
            first, last = k * samples_per_shard, min((k + 1) * samples_per_shard, num_samples)
            acts = np.empty((last - first, d_model), np.uint16 if acts_dtype == 'bfloat16' else np.float16)
            windows = np.stack([data[s:s + ctx] for s in starts[first:last]])
            for b in range(0, last - first, dump_batch_size):
                tokens = torch.from_numpy(windows[b:b + dump_batch_size].astype(np.int64)).to(device)
                pos = torch.from_numpy(positions[first + b:min(first + b + dump_batch_size, last)]).to(device)
                with torch.no_grad():
                    a = read_activations(lm, layer, tokens, pos).float()
                if acts_dtype == 'bfloat16':
                    acts[b:b + len(a)] = a.bfloat16().view(torch.uint16).cpu().numpy()
                else:
                    if not torch.isfinite(a.half()).all():
                        raise SystemExit(f"block {layer} of {model} has activations beyond float16's range "
                                         f"(max |a| = {a.abs().max():.0f}): dump with --acts_dtype=bfloat16")
                    acts[b:b + len(a)] = a.half().cpu().numpy()
                written += len(a)
                if (b // dump_batch_size) % 20 == 0:
                    rate = written / (time.time() - t0)
                    print(f"{split} shard {rank}_{k}: {written}/{total} samples, {rate:.1f} samples/s, "
                          f"ETA {(total - written) / rate:.0f}s", flush=True)
            name = f"{rank}_{k}"
            write_atomic(os.path.join(folder, f'acts_{name}.bin'), acts)
            write_atomic(os.path.join(folder, f'tokens_{name}.bin'), windows)
            write_atomic(os.path.join(folder, f'pos_{name}.bin'), positions[first:last].astype(np.int32))
            update_meta(folder, lambda m: {**m, 'shards': sorted(m['shards'] + [dict(name=name, n=last - first, first=first)],
                                                                 key=lambda s: s['first'])})
        if written:
            print(f"{split}: wrote {written} samples in {time.time() - t0:.1f}s "
                  f"({written / (time.time() - t0):.1f} samples/s)")
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
