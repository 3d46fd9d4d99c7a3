"""
Train a Consistency Lens on activation shards written by dump.py. Runs on one CPU or GPU, or under
torchrun with DDP:

    $ python train.py config/austen_smollm2.py
    $ python train.py config/gpt2_frozen.py --batch_size=32 --compile=False
    $ torchrun --standalone --nproc_per_node=8 train.py config/gpt2_frozen.py

The batch stream, Gumbel noise and schedules are pure functions of (seed, rank, iteration), so a run
resumed with init_from='resume' continues exactly as if it had never stopped.
"""
import gc
import json
import math
import os
import re
import resource
import shutil
import signal
import socket
import time
from dataclasses import asdict, fields

import numpy as np
import torch
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.nn.parallel import DistributedDataParallel as DDP

from configurator import configure, given_keys
from dump import Shards, TokenWindows, batch_indices, read_tokens, same_setting, start_ranks
from lens import (Lens, LensConfig, bare_reading, control_patches, explain_all, format_sample, load_checkpoint, newest_run,
                  patched_kls, reconstruction_metrics, save_lens_folder)
from model import DTYPES, check_layer, compile_blocks, load_model, next_token_logits, pick_dtype, use_tf32

# -----------------------------------------------------------------------------
# data and model (shared with dump.py and eval.py)
model = 'assets/smollm2-135m'
data_dir = 'data/austen'
out_dir = 'out/austen'  # reads <out_dir>/acts, writes <out_dir>/<run_name>/{ckpt,best}.pt
layer = 15
ctx = 64
seed = 1337
acts_source = 'shards'  # 'shards' (dump.py's) or 'tokens': the windows dump.py would write, A computed in the step
num_train_samples = 8000  # acts_source='tokens': windows per split, drawn as dump.py draws them
num_val_samples = 500
min_pos = 8
device = 'cpu'
dtype = 'auto'  # the frozen LM's storage: 'auto' is bfloat16 on CUDA and on CPUs with bf16 units, else 'float32'
trust_remote_code = False
# run
init_from = 'scratch'  # 'scratch' or 'resume' (the run named run_name, else the newest run in out_dir)
run_name = ''  # '' names it {dataset}_{model}_L{layer}_t{t_text}_lr{lr}_{timestamp}
max_iters = 1000  # 1,000 x 8 = 8,000 samples, one epoch of the embedded dump (config/austen_smollm2.py trains 500)
batch_size = 8  # samples per optimizer step, over all ranks and accumulation steps
gradient_accumulation_steps = 1
compile = False  # torch.compile each block's norms and MLP (a few graphs serve all blocks; attention stays eager)
fsdp = False  # under torchrun: the unfrozen LM copies sharded over the ranks (FSDP2, a group per block) instead of DDP
# lens (these are config/austen_next_words.py's; config/austen_smollm2.py sets the embedded default's)
encoder_layer = -1  # block the encoder reads; -1: the same block as layer
t_text = 8
decoder_prompt = '<|endoftext|><embed>'  # <embed> last: the decoder continues the text from A
# the prompt repeated after the words: the last position re-reads them from their start (docs/experiments.md)
encoder_prompt = '<|endoftext|>Summary of the text:<text>\nSummary of the text:'
patch_first_k = 0  # also overwrite the decoder's slot at the input of the first k blocks
patch_at_layer = True  # also write A at the decoder's slot where the LM reads block `layer`'s output
encoder_init = 'zero'  # the encoder's map at the start: 'identity' (Â = h) or 'zero' (Â = the mean A)
encoder_reads = 'last'  # or 'first_and_last': Â also reads the first word's hidden state (a map starting as the identity)
# loss weights and their schedules, in iterations
w_kl = 1.0
w_lm = 0.01  # fluency weight, times alpha: its target ignores A, and at 1.0 it pulled the words away from A (docs/experiments.md)
alpha_warmup_iters = 100  # alpha rises linearly from 0 to 1 so fluency arrives after the KL signal
w_entropy = 0.0  # entropy bonus, linearly decayed to 0 over entropy_decay_iters (0: constant)
entropy_decay_iters = 0
w_mse = 0.0  # MSE of Â - A in units of A's scale (about 1 - FVE): keeps Â near A where the next token does not look
kl_positions = 0  # also the KL at the K positions after p, only p patched: later tokens read p through attention
w_downstream = 1.0  # weight of that KL, summed over the K positions
w_current_token = 0.0  # the decoder's cross-entropy for the token at p in the word where warm_start_target puts it
# (the first for 'current', the last for 'previous'), the whole run
w_search = 0.0  # expert iteration: the decoder's cross-entropy for the lowest-KL of search_k sampled explanations,
search_k = 8  # its training sample and the warm start's real tokens (lens.py's Lens.forward), the whole run
warm_start_weight = 1.0  # the decoder's cross-entropy for writing the real tokens after p (and the encoder's KL
warm_start_iters = 100  # reading them), decayed linearly to 0 over these iterations: a per-sample signal from step 0
warm_start_target = 'next'  # the real tokens it writes and reads: 'next' (after p), 'current' (from p), 'previous' (ending at p) or 'around' p
resample_ablation = False  # patch Â + (A' - Â') with A' another sample of the batch
tau_start = 1.0  # Gumbel-softmax temperature: held for tau_hold_iters, then decays to tau_end
tau_end = 0.1
tau_hold_iters = 100
tau_decay_iters = 900
tau_decay = 'linear'  # 'linear' or 'cosine'
# optimizer
learning_rate = 1e-3
lr_schedule = 'cosine'  # after warmup: 'cosine', 'linear', 'polynomial' (to min_lr at max_iters), 'cosine_with_restarts',
# 'exponential' (floored at min_lr) or 'constant'
warmup_iters = 20
min_lr = 1e-5
lr_power = 1.0  # polynomial: lr falls as (1 - progress) ** lr_power
lr_restart_iters = 250  # cosine_with_restarts: the first cycle's length; each next one is lr_restart_mult x longer
lr_restart_mult = 1.0
lr_gamma = 0.999  # exponential: lr x lr_gamma per iteration
beta1 = 0.9
beta2 = 0.999
weight_decay = 0.01  # only on the unfrozen LM copies: decaying the identity-initialised maps would pull them to 0
grad_clip = 1.0
unfreeze_at = -1  # from this iteration the decoder and encoder train their own copies of the LM (-1: never)
grad_checkpointing = False  # the LM copies recompute their blocks in backward: less memory (-15% at batch 32), +6% time
lora_rank = 0  # what the copies train: 0, every weight; r > 0, rank-r updates of the blocks' linear maps (LoRA)
lm_lr_mult = 0.1  # learning rate of the LM copies relative to learning_rate
encoder_lr_mult = 1.0  # learning rate of the encoder's maps and prompts relative to learning_rate
# eval, logging, checkpoints
eval_interval = 100
periodic_eval_samples = 96  # the LAST val samples: best.pt is not picked on eval.py's (the first eval_samples)
downstream_positions = 4  # the periodic eval's downstream KL at p+1..p+K, only p patched (as eval.py's)
num_print_samples = 3
log_interval = 10
ckpt_interval = 100  # ckpt.pt, the newest, is what init_from='resume' continues from
keep_last = 0  # also keep the last keep_last periodic checkpoints as ckpt_<iter>.pt (0: only ckpt.pt and best.pt)
wandb_log = False
wandb_project = 'consistency-lens'
wandb_mode = 'online'  # or 'offline': logs to ./wandb, `wandb sync` later
wandb_run_id = ''  # log into this wandb run (e.g. one started elsewhere); '' takes the checkpoint's or starts one
# -----------------------------------------------------------------------------
config = configure(globals())
dtype = pick_dtype(dtype, device)

if fsdp and lora_rank:
    raise SystemExit(f"fsdp=True shards whole LM copies, and lora_rank={lora_rank} trains low-rank updates that share "
                     f"the frozen LM's weights (a few MB per rank): drop fsdp (DDP), or set lora_rank=0")
if lora_rank and unfreeze_at < 0:
    raise SystemExit(f"lora_rank={lora_rank} sets what the unfrozen LM copies train, and unfreeze_at=-1 makes none: "
                     f"set unfreeze_at (0: from the start), or drop lora_rank")

rank, world, device = start_ranks(device)  # the same script runs under python or torchrun
ddp, master = torch.distributed.is_initialized(), rank == 0
if fsdp and not ddp:
    raise SystemExit("fsdp=True shards the LM copies over the ranks of torchrun: run `torchrun --standalone "
                     "--nproc_per_node=N train.py ...` (N=1 on one GPU), or drop fsdp")
if periodic_eval_samples % world:  # each rank explains an equal slice: the shuffled baseline and FSDP need it
    raise SystemExit(f"periodic_eval_samples={periodic_eval_samples} does not divide across {world} ranks: "
                     f"make it a multiple of {world}")
if batch_size % (world * gradient_accumulation_steps):
    raise SystemExit(f"batch_size={batch_size} does not divide across {world} ranks x {gradient_accumulation_steps} "
                     f"accumulation steps: make it a multiple of {world * gradient_accumulation_steps}")
micro_batch = batch_size // (world * gradient_accumulation_steps)
LR_SCHEDULES = ('cosine', 'linear', 'polynomial', 'cosine_with_restarts', 'exponential', 'constant')
if lr_schedule not in LR_SCHEDULES:
    raise SystemExit(f"lr_schedule={lr_schedule!r}: use one of {', '.join(LR_SCHEDULES)}")
if dtype == 'int8' and unfreeze_at >= 0:
    raise SystemExit(f"unfreeze_at={unfreeze_at} trains copies of the LM, which an int8 LM cannot give: "
                     f"use dtype='bfloat16' to unfreeze, or unfreeze_at=-1")
if grad_checkpointing and unfreeze_at < 0:
    raise SystemExit("grad_checkpointing=True recomputes the activations of the unfrozen LM copies, and with "
                     "unfreeze_at=-1 there are none (the frozen LM stores no weight gradients): set unfreeze_at, "
                     "or drop grad_checkpointing")
if warm_start_target not in ('previous', 'current', 'next', 'around'):
    raise SystemExit(f"warm_start_target={warm_start_target!r}: use 'previous' (the tokens ending at p), 'current' (from p), "
                     f"'next' (after p) or 'around' (p in the middle)")
if w_current_token > 0 and warm_start_target == 'next':
    raise SystemExit(f"w_current_token={w_current_token} asks for the token at p in the word where warm_start_target puts "
                     f"it, and 'next' (the tokens after p) has none: use 'current' (the first word), 'previous' (the last) "
                     f"or 'around', or w_current_token=0")
if w_search > 0 and search_k < 1:
    raise SystemExit(f"w_search={w_search} picks the best of search_k sampled explanations, and search_k={search_k} samples "
                     f"none: pass e.g. --search_k=8, or w_search=0")
if device.startswith('cuda'):
    use_tf32()


MAX_SKIPPED = 10  # non-finite steps in a row before training stops with a message


def reseed(*keys):
    torch.manual_seed(int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0]))


def print0(*args):
    if master:
        print(*args, flush=True)


# data: check the shards before loading anything heavy. model, layer and ctx come from the dump unless
# the config or the command line sets them, and then they must agree with it
given = given_keys()
if acts_source == 'shards':
    train_data = Shards(out_dir, 'train', **{k: globals()[k] for k in ('model', 'layer', 'ctx') if k in given})
    model, layer, ctx = (train_data.meta[k] for k in ('model', 'layer', 'ctx'))
    config.update(model=model, layer=layer, ctx=ctx)
    val_data = Shards(out_dir, 'val', model=model, layer=layer, ctx=ctx)
elif acts_source == 'tokens':
    for split in ('train', 'val'):
        read_tokens(data_dir, split)  # the corpus exists: checked before the model loads
else:
    raise SystemExit(f"acts_source={acts_source!r}: use 'shards' (run dump.py first) or 'tokens' (no dump)")
num_val = num_val_samples if acts_source == 'tokens' else len(val_data)
if not 0 <= kl_positions < ctx:
    raise SystemExit(f"kl_positions={kl_positions}: the KL after p reaches at most ctx - 1 = {ctx - 1} positions past p "
                     f"and 0 turns it off, pass e.g. --kl_positions=4")
if not 1 <= downstream_positions < ctx:
    raise SystemExit(f"downstream_positions={downstream_positions}: the periodic eval's KL after p needs 1 to ctx - 1 = "
                     f"{ctx - 1} positions, pass e.g. --downstream_positions=4")
if periodic_eval_samples > num_val:
    raise SystemExit(f"periodic_eval_samples={periodic_eval_samples} but the val split has {num_val}: "
                     f"lower --periodic_eval_samples")

# the run folder and its checkpoint
if init_from == 'resume':
    run_name = run_name or newest_run(out_dir, ['ckpt.pt'])
    ckpt_path = os.path.join(out_dir, run_name, 'ckpt.pt')
    if not run_name or not os.path.exists(ckpt_path):
        raise SystemExit(f"init_from='resume' but there is no checkpoint {ckpt_path if run_name else 'in ' + out_dir}: "
                         f"train with init_from='scratch' first, or pass --run_name of a run in {out_dir}")
    checkpoint = load_checkpoint(ckpt_path)
    if checkpoint['config'].get('fsdp', False) != fsdp:  # FSDP's optimizer state is keyed by name, DDP's by index
        raise SystemExit(f"{ckpt_path} was saved with fsdp={not fsdp}: resume it with --fsdp={not fsdp}")
    # the checkpoint's lens is the truth: its settings are taken, and a setting given that contradicts them is an error
    trained = checkpoint['lens_config'] | dict(model=checkpoint['config']['model'])
    clash = [k for k in trained if (k in given or k == 'model') and not same_setting(globals()[k], trained[k])]
    if clash:
        raise SystemExit(f"{ckpt_path} was trained with {', '.join(f'{k}={trained[k]!r}' for k in clash)}, but this run has "
                         f"{', '.join(f'{k}={globals()[k]!r}' for k in clash)}: drop those settings to resume it, "
                         f"or start a new run with init_from='scratch'")
    globals().update(checkpoint['lens_config'])
    config.update(checkpoint['lens_config'])
elif init_from == 'scratch':
    run_name = run_name or (f"{os.path.basename(os.path.normpath(data_dir))}_{os.path.basename(model)}_L{layer}_t{t_text}"
                            f"_lr{learning_rate:g}_{time.strftime('%m%d_%H%M%S')}")
    checkpoint = None
else:
    raise SystemExit(f"init_from={init_from!r}: use 'scratch' or 'resume'")
if ddp:  # ranks may start in different seconds: all take rank 0's timestamped name
    names = [run_name]
    torch.distributed.broadcast_object_list(names, 0)
    run_name = names[0]
run_dir = os.path.join(out_dir, run_name)
# the machines and the scheduler's job that ran it go to the log, the checkpoint and wandb
nodes = [socket.gethostname()] * world
if ddp:
    torch.distributed.all_gather_object(nodes, socket.gethostname())
config.update(nodes=', '.join(sorted(set(nodes))), slurm_job_id=os.environ.get('SLURM_JOB_ID', ''))

# the frozen LM and the lens
lm, tokenizer = load_model(model, device, trust_remote_code, dtype)
if acts_source == 'tokens':
    check_layer(lm, layer)
    train_data, val_data = (TokenWindows(lm, data_dir, split, n, layer, ctx, min_pos, seed, micro_batch)
                            for split, n in (('train', num_train_samples), ('val', num_val_samples)))
lens_config = LensConfig(**{field.name: globals()[field.name] for field in fields(LensConfig)})
lens = raw_lens = Lens(lens_config, lm, tokenizer).to(device)
if not checkpoint:
    lens.stats.set(train_data.get(np.arange(min(8192, len(train_data))))[0].to(device))


def unfreeze():
    """Each side trains its own copy of the LM from now on. With fsdp each copied block becomes an FSDP
    group as it is made (computing in the LM's dtype, fp32 master weights and gradient reduction), and
    the lens (its maps and prompts, the copies' embeddings, final norms and heads) the root group."""
    policy = MixedPrecisionPolicy(param_dtype=DTYPES[dtype], reduce_dtype=torch.float32)
    raw_lens.unfreeze(grad_checkpointing, (lambda block: fully_shard(block, mp_policy=policy)) if fsdp else None)
    if fsdp:
        fully_shard(raw_lens, mp_policy=MixedPrecisionPolicy(reduce_dtype=torch.float32))
        register_fsdp_forward_method(raw_lens, 'explain')  # the periodic eval's way in: FSDP gathers the root group


if checkpoint and checkpoint['unfrozen']:
    unfreeze()


def lm_copy_parameters(lens):
    return [p for n, p in lens.named_parameters() if '.lm_copy.' in n and p.requires_grad]


def make_optimizer():
    """AdamW with a group for the lens's own maps and prompts and, once unfrozen, one for the LM copies."""
    own = [(n, p) for n, p in lens.named_parameters() if '.lm_copy.' not in n]
    groups = [dict(params=[p for n, p in own if not n.startswith('encoder.')], lr_mult=1.0, weight_decay=0.0),
              dict(params=[p for n, p in own if n.startswith('encoder.')], lr_mult=encoder_lr_mult, weight_decay=0.0)]
    if lm_copy_parameters(lens):
        groups.append(dict(params=lm_copy_parameters(lens), lr_mult=lm_lr_mult, weight_decay=weight_decay))
    # fused on CPU too: on 2 cores its step over the unfrozen copies' 220M parameters takes 0.13 s, foreach's 1.3 s
    return torch.optim.AdamW(groups, lr=learning_rate, betas=(beta1, beta2), fused=True)


def rebuilt_optimizer(old, params_before):
    """make_optimizer() for the lens's parameters now, the AdamW state of those it had before (by name,
    params_before) carried over, sharded as FSDP sharded its parameter."""
    new = make_optimizer()
    for name, p in raw_lens.named_parameters():
        state = old.state.get(params_before.get(name), {})
        if state:
            new.state[p] = {k: distribute_tensor(v, p.device_mesh, p.placements) if isinstance(p, DTensor) and v.dim() else v
                            for k, v in state.items()}
    return new


optimizer = make_optimizer()
iter_num, best_val_kl, wandb_id = 0, float('inf'), None
FULL_STATE = StateDictOptions(full_state_dict=True, cpu_offload=True)  # under fsdp: gathered whole, on rank 0 only
if checkpoint:
    if fsdp:  # every rank reads the file (mmap: the page cache is shared) and keeps its shard
        set_model_state_dict(raw_lens, checkpoint['lens'], options=FULL_STATE)
        set_optimizer_state_dict(raw_lens, optimizer, checkpoint['optimizer'], options=FULL_STATE)
    else:
        lens.load_state_dict(checkpoint['lens'])
        optimizer.load_state_dict(checkpoint['optimizer'])
    iter_num, best_val_kl, wandb_id = checkpoint['iter_num'], checkpoint['best_val_kl'], checkpoint['wandb_id']
    print0(f"resuming {run_name} from iteration {iter_num}")


def wrap(module):
    """compile the blocks of every LM the lens runs (bench.py: compile vs eager), then DDP over the trainable
    lens only (an FSDP-sharded lens syncs itself); redone when unfreezing adds parameters."""
    for model in (lm, module.decoder.lm, module.encoder.lm) if compile else ():
        compile_blocks(model)
    if not ddp or isinstance(module, FSDPModule):
        return module
    # low-rank copies hold the frozen LM's own weights: every rank loaded them, nothing to broadcast
    DDP._set_params_and_buffers_to_ignore_for_model(module, [n for n, p in module.named_parameters() if not p.requires_grad])
    return DDP(module, device_ids=[torch.device(device).index] if device.startswith('cuda') else None)


lens = wrap(raw_lens)


# schedules, all functions of the iteration
def get_lr(it):
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    it -= warmup_iters
    if lr_schedule == 'constant':
        return learning_rate
    if lr_schedule == 'exponential':
        return max(min_lr, learning_rate * lr_gamma ** it)
    if lr_schedule == 'cosine_with_restarts':  # SGDR: back to learning_rate at the start of every cycle
        cycle = lr_restart_iters
        while it >= cycle:
            it, cycle = it - cycle, cycle * lr_restart_mult
        progress = it / cycle
    else:
        progress = min(1.0, it / max(1, max_iters - warmup_iters))
    decay = dict(linear=1 - progress, polynomial=(1 - progress) ** lr_power).get(lr_schedule, 0.5 * (1 + math.cos(math.pi * progress)))
    return min_lr + decay * (learning_rate - min_lr)


def get_tau(it):
    progress = min(1.0, max(0.0, (it - tau_hold_iters) / max(1, tau_decay_iters)))
    decay = 0.5 * (1 + math.cos(math.pi * progress)) if tau_decay == 'cosine' else 1 - progress
    return tau_end + decay * (tau_start - tau_end)


def get_alpha(it):
    return min(1.0, it / alpha_warmup_iters) if alpha_warmup_iters > 0 else 1.0


def get_w_warm(it):
    return warm_start_weight * max(0.0, 1 - it / warm_start_iters) if warm_start_iters > 0 else 0.0


def get_w_entropy(it):
    return w_entropy * max(0.0, 1 - it / entropy_decay_iters) if entropy_decay_iters > 0 else w_entropy


def get_batch(it, micro_step):
    index = batch_indices(seed, len(train_data), batch_size, it, micro_step, rank, world, gradient_accumulation_steps)
    return [t.to(device, non_blocking=True) for t in train_data.get(index)]


@torch.no_grad()
def evaluate():
    """eval.py's measurement on the last periodic_eval_samples val samples, greedy explanations: the
    lens's KL at p beside the text-inversion control (the real tokens ending at p read by the lens's encoder and
    by the frozen LM bare, the lower of the two: 'control'), the lens's words read bare, the KL of the encoder
    reading the frozen LM's own top t_text next tokens (a lens
    that only ties it writes down the model's output), of the encoder reading the token at p alone (a lens
    whose words start at p must beat it), of a shuffled explanation (sample i+1's Â: equal
    means the words carry nothing about A) and of mean ablation (the scale); the same patches' KL summed
    over p+1..p+downstream_positions (only p patched, over the samples with that many tokens after p); the
    fraction of distinct explanations, MSE and FVE. Each rank takes a slice; the results are gathered on
    every rank."""
    acts, tokens, pos = (t.to(device) for t in val_data.get(np.arange(len(val_data) - periodic_eval_samples + rank, len(val_data), world)))
    explanations, ids, recon = explain_all(raw_lens, acts, micro_batch)
    chunks = lambda fn: torch.cat([fn(i, i + micro_batch) for i in range(0, len(acts), micro_batch)])
    logits_own = chunks(lambda i, j: next_token_logits(lm, layer, tokens[i:j], pos[i:j])[0])
    top = chunks(lambda i, j: raw_lens.encoder(logits_own[i:j].topk(t_text, -1).indices)).float()
    current = chunks(lambda i, j: raw_lens.encoder(tokens[i:j].gather(1, pos[i:j, None]))).float()
    shuffled = recon.roll(-1, 0)  # sample i+1's Â, i+1 over the whole eval set: the same baseline on any number of ranks
    if ddp:  # rank r holds samples r, r + world, ...: its i+1 is the next rank's i (the first rank's i+1 for the last)
        everyone = [torch.empty_like(recon) for _ in range(world)]
        torch.distributed.all_gather(everyone, recon.contiguous())
        shuffled = everyone[(rank + 1) % world] if rank + 1 < world else everyone[0].roll(-1, 0)
    words_frozen = chunks(lambda i, j: bare_reading(lm, layer, tokenizer.eot_id, ids[i:j]))
    patches = dict(lens=recon, shuffled=shuffled, mean_ablation=raw_lens.stats.mean.expand_as(acts), text_top_tokens=top,
                   text_current_token=current, lens_words_frozen=words_frozen,
                   **control_patches(raw_lens, tokens, pos, micro_batch))
    kls, logits_a, logits_recon = patched_kls(lm, layer, tokens, pos, patches, micro_batch, after=downstream_positions)
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


def full_states():
    """(lens, optimizer) state dicts as one process holds them. Under fsdp they are gathered from the
    shards onto rank 0's CPU: every rank must call this, and the others get empty dicts."""
    if not fsdp:
        return raw_lens.state_dict(), optimizer.state_dict()
    return get_model_state_dict(raw_lens, options=FULL_STATE), get_optimizer_state_dict(raw_lens, optimizer, options=FULL_STATE)


def save(path, states):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(dict(lens=states[0], optimizer=states[1], iter_num=iter_num,
                    best_val_kl=best_val_kl, config=config, lens_config=asdict(lens_config),
                    unfrozen=raw_lens.decoder.lm_copy is not None, wandb_id=wandb_id), path + '.tmp')
    os.replace(path + '.tmp', path)


def save_latest():
    """ckpt.pt and, with keep_last, its numbered twin ckpt_<iter>.pt (a hard link where the filesystem has
    them: no second copy on disk), removing the numbered ones older than the last keep_last. Every rank
    calls it (full_states); rank 0 writes."""
    latest, states = os.path.join(run_dir, 'ckpt.pt'), full_states()
    if not master:
        return
    save(latest, states)
    if keep_last > 0:
        numbered = os.path.join(run_dir, f'ckpt_{iter_num}.pt')
        if os.path.exists(numbered):
            os.remove(numbered)
        try:
            os.link(latest, numbered)
        except OSError:
            shutil.copyfile(latest, numbered)
        kept = sorted(int(m[1]) for m in map(re.compile(r'ckpt_(\d+)\.pt$').match, os.listdir(run_dir)) if m)
        for old in kept[:-keep_last]:
            os.remove(os.path.join(run_dir, f'ckpt_{old}.pt'))


def peak_memory_mib():
    """The peak memory so far: allocated on the GPU, the process's resident set on a CPU."""
    if device.startswith('cuda'):
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def open_log():
    """<run dir>/log.jsonl, one JSON row per logged step and per periodic eval, for plots without wandb. A
    resumed run keeps the rows its checkpoint has seen (train rows up to its iteration, evals before it:
    the eval at that iteration runs again) and drops the rest, a line cut off by a kill included."""
    path, kept = os.path.join(run_dir, 'log.jsonl'), []
    if checkpoint and os.path.exists(path):
        for line in open(path):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # the last line of a killed run
                continue
            if row['iter'] < iter_num or row['iter'] == iter_num and row['split'] == 'train':
                kept.append(json.dumps(row) + '\n')
    os.makedirs(run_dir, exist_ok=True)
    with open(path + '.tmp', 'w') as f:
        f.writelines(kept)
    os.replace(path + '.tmp', path)
    return open(path, 'a')


log_file = open_log() if master else None


def log_row(**row):
    """A row of log.jsonl, flushed at once: what a run measured is on disk whatever stops it."""
    if master:
        log_file.write(json.dumps(dict(iter=iter_num, **row)) + '\n')
        log_file.flush()


if wandb_log and master:
    import wandb
    run = wandb.init(project=wandb_project, name=run_name, config=config, mode=wandb_mode, id=wandb_run_id or wandb_id,
                     resume='allow')
    wandb_id = run.id

stop_requested = False


def request_stop(signum, frame):
    global stop_requested
    stop_requested = True


signal.signal(signal.SIGTERM, request_stop)
signal.signal(signal.SIGINT, request_stop)

print0(f"run {run_name} on {config['nodes']}{', SLURM job ' + config['slurm_job_id'] if config['slurm_job_id'] else ''}: "
       f"{len(train_data)} train / {len(val_data)} val samples, batch {batch_size} "
       f"({world} ranks x {gradient_accumulation_steps} accumulation x {micro_batch}), frozen LM in {dtype} on {device}, "
       f"{sum(p.numel() for p in raw_lens.parameters() if p.requires_grad):,} trainable parameters")
t0, step_times, skipped_in_a_row = time.time(), [], 0
while True:
    last_step = iter_num == max_iters
    if iter_num == unfreeze_at and raw_lens.decoder.lm_copy is None:
        params_before = dict(raw_lens.named_parameters())
        unfreeze()
        optimizer = rebuilt_optimizer(optimizer, params_before)
        lens = wrap(raw_lens)
        print0(f"iter {iter_num}: unfroze the decoder's and encoder's copies of the LM "
               f"({f'rank-{lora_rank} updates, ' if lora_rank else ''}lr x {lm_lr_mult})")

    if iter_num % eval_interval == 0 or last_step:
        metrics, samples = evaluate()
        log_row(split='val', **metrics)  # on disk before the console shows it
        print0(f"eval iter {iter_num}: val KL {metrics['kl']:.4f} against the control {metrics['kl_control']:.4f} (the real "
               f"tokens ending at p: the lens's encoder {metrics['kl_text_prev_tokens']:.4f}, the frozen LM bare "
               f"{metrics['kl_text_prev_tokens_frozen']:.4f}; the lens beats it on {metrics['lens_beats_control']:.0%}), "
               f"the lens's words read bare {metrics['kl_lens_words_frozen']:.4f}, the LM's top tokens "
               f"{metrics['kl_text_top_tokens']:.4f}, the token at p {metrics['kl_text_current_token']:.4f}, shuffled explanation "
               f"{metrics['kl_shuffled']:.4f}, mean ablation {metrics['kl_mean_ablation']:.4f} | KL p+1..p+{downstream_positions} "
               f"{metrics['kl_downstream']:.4f}, control {metrics['kl_downstream_control']:.4f}, mean ablation "
               f"{metrics['kl_downstream_mean_ablation']:.4f} | distinct explanations "
               f"{metrics['explanations_unique']:.2f} | MSE {metrics['mse']:.4f} FVE {metrics['fve']:.4f}")
        for sample in samples:
            print0(sample)
        if wandb_log and master:
            wandb.log({f'val/{k}': v for k, v in metrics.items()} | {
                'val/samples': wandb.Table(columns=['sample'], data=[[s] for s in samples])}, step=iter_num)
        if metrics['kl'] < best_val_kl and iter_num > 0:
            best_val_kl, states = metrics['kl'], full_states()
            if master:
                save(os.path.join(run_dir, 'best.pt'), states)  # and the lens to share: no optimizer, no pickle
                save_lens_folder(raw_lens, os.path.join(run_dir, 'lens'), model, iter_num, config, states[0])
    if last_step or iter_num > 0 and iter_num % ckpt_interval == 0:
        save_latest()
    if last_step:
        break

    lr, tau, alpha = get_lr(iter_num), get_tau(iter_num), get_alpha(iter_num)
    w_ent, w_warm = get_w_entropy(iter_num), get_w_warm(iter_num)
    for group in optimizer.param_groups:
        group['lr'] = lr * group['lr_mult']
    t_step = time.time()
    parts = {}
    for micro_step in range(gradient_accumulation_steps):
        reseed(iter_num, micro_step * world + rank)  # the noise follows the sample: 2 ranks equal 1 rank x 2 micro-steps
        acts, tokens, pos = get_batch(iter_num, micro_step)
        if isinstance(lens, DDP):
            lens.require_backward_grad_sync = micro_step == gradient_accumulation_steps - 1
        out = lens(acts, tokens, pos, tau=tau, w_kl=w_kl, w_lm=alpha * w_lm, w_entropy=w_ent, w_mse=w_mse,
                   w_warm=w_warm, warm_target=warm_start_target, resample=resample_ablation,
                   kl_positions=kl_positions, w_downstream=w_downstream, w_current_token=w_current_token,
                   w_search=w_search, search_k=search_k)
        (out['loss'] / gradient_accumulation_steps).backward()
        parts = {k: parts.get(k, 0) + v.detach() / gradient_accumulation_steps for k, v in out.items()}
    flags = torch.tensor([float(not torch.isfinite(parts['loss'])), float(stop_requested)], device=device)
    if ddp:
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
    if flags[0]:
        skipped_in_a_row += 1
        print0(f"iter {iter_num}: non-finite loss, update skipped")
        if skipped_in_a_row == MAX_SKIPPED:
            raise SystemExit(f"the last {MAX_SKIPPED} steps all had a non-finite loss: training cannot recover by "
                             f"skipping. Lower learning_rate, check the shards for inf/NaN, or run with dtype='float32'; "
                             f"resume from {run_dir}/ckpt.pt (never overwritten by a non-finite step)")
    else:
        skipped_in_a_row = 0
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(raw_lens.parameters(), grad_clip)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    iter_num += 1
    step_times.append(time.time() - t_step)

    if iter_num % log_interval == 0:
        parts = {k: v.item() for k, v in parts.items()}
        step_time = np.mean(step_times[-log_interval:])
        optional = ''.join(f"{k} {parts[k]:.4f} " for k in ('lm', 'warm', 'kl_real_text', 'kl_downstream', 'current_token', 'search', 'kl_search') if k in parts)
        memory = torch.tensor(peak_memory_mib(), device=device)
        if ddp:
            torch.distributed.all_reduce(memory, op=torch.distributed.ReduceOp.MAX)
        log_row(split='train', **parts, lr=lr, tau=tau, alpha=alpha, samples_per_s=batch_size / step_time,
                ms_per_iter=step_time * 1000, peak_memory_mib=memory.item())
        print0(f"iter {iter_num}: loss {parts['loss']:.4f} kl {parts['kl']:.4f} {optional}"
               f"ent {parts['entropy']:.3f} fve {parts['fve']:.3f} | tau {tau:.3f} alpha {alpha:.2f} lr {lr:.2e} | "
               f"{batch_size / step_time:.1f} samples/s, {step_time * 1000:.0f} ms/iter, "
               f"peak {'CUDA memory' if device.startswith('cuda') else 'RSS'} {memory.item():,.0f} MiB per rank, "
               f"ETA {(max_iters - iter_num) * step_time / 60:.1f} min")
        if wandb_log and master:
            wandb.log({f'train/{k}': v for k, v in parts.items()} | dict(tau=tau, alpha=alpha, lr=lr,
                      samples_per_s=batch_size / step_time), step=iter_num)
    if flags[1]:
        save_latest()
        print0(f"stopped by signal at iteration {iter_num}: checkpoint saved, resume with "
               f"--init_from=resume --run_name={run_name}")
        break

print0(f"done: {run_name}, best val KL {best_val_kl:.4f}, checkpoints in {run_dir} ({time.time() - t0:.0f}s)")
if ddp:  # a lens whose ranks drifted apart would be a silent bug: check the replicated parameters still agree,
    drift = torch.zeros((), device=device)  # one at a time (FSDP's shards have no replicas to drift from)
    for p in raw_lens.parameters():
        if p.requires_grad and not isinstance(p, DTensor):
            reference = p.detach().clone()
            torch.distributed.broadcast(reference, 0)
            drift = torch.maximum(drift, (p.detach() - reference).abs().max())
    torch.distributed.all_reduce(drift, op=torch.distributed.ReduceOp.MAX)
    print0(f"max parameter difference across {world} ranks: {drift.item():.3g}")
    del lens  # DDP's reducer must go before its process group, or a rank can abort at exit
    gc.collect()
    torch.distributed.destroy_process_group()
