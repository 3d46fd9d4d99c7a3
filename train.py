"""
Train a Consistency Lens on activation shards written by dump.py. Runs on one CPU or GPU, or under
torchrun with DDP:

    $ python train.py config/austen_smollm2.py
    $ python train.py config/gpt2_frozen.py --batch_size=32 --compile=False
    $ torchrun --standalone --nproc_per_node=8 train.py config/gpt2_frozen.py

The low-rank updates' start, the batch stream, Gumbel noise and schedules are pure functions of (seed, rank,
iteration): two runs of one seed are one run, and one resumed with init_from='resume' continues exactly.
"""
import gc
import json
import math
import os
import resource
import signal
import socket
import time
from dataclasses import asdict, fields

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from checkpoint import checkpoint_to_resume, model_signature, open_log, save_checkpoint, save_latest, save_lens_folder
from configurator import configure, given_keys
from dump import Shards, TokenWindows, batch_indices, read_tokens, start_ranks
from baselines import periodic_eval
from lens import Lens, LensConfig
from model import check_layer, load_model, pick_dtype, use_tf32
from parallel import full_states, load_states, make_optimizer, rebuilt_optimizer, replica_drift, unfreeze, wrap

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
max_iters = 500  # 500 x 8 = 4,000 samples, half an epoch of the embedded dump
batch_size = 8  # samples per optimizer step, over all ranks and accumulation steps
gradient_accumulation_steps = 1
compile = False  # torch.compile each block's norms and MLP (a few graphs serve all blocks; attention stays eager)
fsdp = False  # under torchrun: the unfrozen LM copies sharded over the ranks (FSDP2, a group per block) instead of DDP
# lens: 4 words meant as the real tokens p-3..p, read back at the last word, where the LM holds the token at p
# in that context; both sides train rank-16 updates of the LM's linear maps from the start
encoder_layer = -1  # block the encoder reads; -1: the same block as layer
t_text = 4
decoder_prompt = '<|endoftext|><embed>'  # <embed> last: the decoder continues the text from A
encoder_prompt = '<|endoftext|>Summary of the text:<text>'
encoder_init = 'identity'  # the encoder's map at the start: 'identity' (Â = h) or 'zero' (Â = the mean A)
encoder_reads = 'last'  # or 'first_and_last': Â also reads the first word's hidden state (a map starting as the identity)
# loss weights and their schedules, in iterations
w_kl = 1.0
w_lm = 0.01  # fluency weight, times alpha: its target ignores A, and at 1.0 it pulled the words away from A (docs/experiments.md)
alpha_warmup_iters = 100  # alpha rises linearly from 0 to 1 so fluency arrives after the KL signal
w_entropy = 0.0  # entropy bonus, linearly decayed to 0 over entropy_decay_iters (0: constant)
entropy_decay_iters = 0
w_mse = 0.0  # MSE of Â - A in units of A's scale (about 1 - FVE): keeps Â near A where the next token does not look
w_current_token = 0.3  # the decoder's cross-entropy for the token at p in its word (first for 'current', last for 'previous')
warm_start_weight = 1.0  # the decoder's cross-entropy for writing real tokens (and the encoder's KL reading them),
warm_start_iters = 1000  # decayed linearly to 0 over these iterations (at half weight when the 500 end): a per-sample signal
warm_start_target = 'previous'  # the real tokens it writes and reads: 'previous' (ending at p), 'current' (from p), 'next' (after p)
w_pg = 0.0  # from iteration pg_from, the policy gradient of the KL over pg_k explanations sampled per sample
pg_k = 8  # (lens.policy_gradient): it scores the exact words the encoder reads, at pg_k more reads per sample
pg_from = 300
resample_ablation = False  # patch Â + (A' - Â') with A' another sample of the batch
tau_start = 1.0  # Gumbel-softmax temperature: held for tau_hold_iters, then decays to tau_end
tau_end = 0.1
tau_hold_iters = 100
tau_decay_iters = 900
tau_decay = 'linear'  # 'linear' or 'cosine'
# optimizer
learning_rate = 1e-3
lr_schedule = 'cosine'  # after warmup; or 'linear', 'polynomial', 'cosine_with_restarts', 'exponential', 'constant'
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
unfreeze_at = 0  # from this iteration the decoder and encoder train their own copies of the LM (-1: never)
grad_checkpointing = False  # the LM copies recompute their blocks in backward: less memory, more time
lora_rank = 16  # what the copies train: 0, every weight; r > 0, rank-r updates of the blocks' linear maps (LoRA)
lm_lr_mult = 1.0  # learning rate of the LM copies relative to learning_rate (whole copies train at 0.1)
# eval, logging, checkpoints
eval_interval = 100
periodic_eval_samples = 96  # the LAST val samples: best.pt is not picked on eval.py's (the first eval_samples)
downstream_positions = 4  # the periodic eval's KL at p+1..p+K, only p patched (as eval.py's)
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
if w_pg and pg_k < 2:
    raise SystemExit(f"pg_k={pg_k}: the policy gradient's baseline is the mean KL of a group of samples: use pg_k >= 2, e.g. 8")
if grad_checkpointing and unfreeze_at < 0:
    raise SystemExit("grad_checkpointing=True recomputes the activations of the unfrozen LM copies, and with "
                     "unfreeze_at=-1 there are none (the frozen LM stores no weight gradients): set unfreeze_at, "
                     "or drop grad_checkpointing")
if warm_start_target not in ('previous', 'current', 'next'):
    raise SystemExit(f"warm_start_target={warm_start_target!r}: use 'previous' (the tokens ending at p), 'current' (from p) "
                     f"or 'next' (after p)")
if w_current_token > 0 and warm_start_target == 'next':
    raise SystemExit(f"w_current_token={w_current_token} asks for the token at p in the word where warm_start_target puts "
                     f"it, and 'next' (the tokens after p) has none: use 'current' (the first word) or 'previous' (the last), "
                     f"or w_current_token=0")
if device.startswith('cuda'):
    use_tf32()
MAX_SKIPPED = 10  # non-finite steps in a row before training stops with a message
PERIODIC_BASELINES = ('text_prev_tokens', 'text_prev_tokens_frozen', 'lens_words_frozen', 'text_top_tokens',
                      'text_current_token', 'text_shuffled', 'mean')  # eval.py's that the periodic eval measures


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
if not 1 <= downstream_positions < ctx:
    raise SystemExit(f"downstream_positions={downstream_positions}: the periodic eval's KL after p needs 1 to ctx - 1 = "
                     f"{ctx - 1} positions, pass e.g. --downstream_positions=4")
if periodic_eval_samples > num_val:
    raise SystemExit(f"periodic_eval_samples={periodic_eval_samples} but the val split has {num_val}: "
                     f"lower --periodic_eval_samples")

# the run folder and its checkpoint
if init_from == 'resume':  # the checkpoint's lens is the truth: its settings are taken
    run_name, checkpoint = checkpoint_to_resume(out_dir, run_name, globals(), given)
    globals().update(checkpoint['lens_config'])
    config.update(checkpoint['lens_config'])
elif init_from == 'scratch':
    run_name = run_name or (f"{os.path.basename(os.path.normpath(data_dir))}_{os.path.basename(model)}_L{layer}_t{t_text}"
                            f"_lr{learning_rate:g}_{time.strftime('%m%d_%H%M%S')}")
    checkpoint = None
else:
    raise SystemExit(f"init_from={init_from!r}: use 'scratch' or 'resume'")
if ddp:  # ranks may start in different seconds: all take rank 0's timestamped name
    torch.distributed.broadcast_object_list(names := [run_name], 0)
    run_name = names[0]
run_dir = os.path.join(out_dir, run_name)
nodes = [socket.gethostname()] * world  # the machines and the scheduler's job go to the log, checkpoint and wandb
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
raw_lens = Lens(lens_config, lm, tokenizer).to(device)
if not checkpoint:
    raw_lens.stats.set(train_data.get(np.arange(min(8192, len(train_data))))[0].to(device))
if checkpoint and checkpoint['unfrozen']:
    unfreeze(raw_lens, grad_checkpointing, fsdp, dtype)
optimizer_settings = (learning_rate, (beta1, beta2), lm_lr_mult, weight_decay)
optimizer = make_optimizer(raw_lens, *optimizer_settings)
iter_num, best_val_kl, wandb_id = 0, float('inf'), None
if checkpoint:
    load_states(raw_lens, optimizer, checkpoint, fsdp)
    iter_num, best_val_kl, wandb_id = checkpoint['iter_num'], checkpoint['best_val_kl'], checkpoint['wandb_id']
    print0(f"resuming {run_name} from iteration {iter_num}")
lens = wrap(raw_lens, lm, compile, device)  # what the step runs: raw_lens, compiled, under DDP when distributed


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


def payload(states):
    """A checkpoint: what resume needs to continue exactly, and what eval.py needs to rebuild the lens."""
    return dict(lens=states[0], optimizer=states[1], iter_num=iter_num, best_val_kl=best_val_kl, config=config,
                lens_config=asdict(lens_config), unfrozen=raw_lens.decoder.lm_copy is not None, wandb_id=wandb_id,
                **model_signature(lm, model))


def save_newest():
    """ckpt.pt, what init_from='resume' continues from (and keep_last's numbered twins). Every rank calls it
    (full_states); rank 0 writes."""
    states = full_states(raw_lens, optimizer, fsdp)
    if master:
        save_latest(run_dir, payload(states), iter_num, keep_last)


def peak_memory_mib():
    """The peak memory so far: allocated on the GPU, the process's resident set on a CPU."""
    if device.startswith('cuda'):
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def unfreeze_when_due(it):
    """At iteration unfreeze_at the decoder and encoder start training their own LM copies: the optimizer is rebuilt
    with the state it had and the lens wrapped again."""
    global lens, optimizer
    if it == unfreeze_at and raw_lens.decoder.lm_copy is None:
        params_before = dict(raw_lens.named_parameters())
        torch.manual_seed(seed)  # the low-rank updates' random start: torch starts from another seed in every process
        unfreeze(raw_lens, grad_checkpointing, fsdp, dtype)
        optimizer = rebuilt_optimizer(raw_lens, optimizer, params_before, *optimizer_settings)
        lens = wrap(raw_lens, lm, compile, device)
        print0(f"iter {it}: unfroze the decoder's and encoder's copies of the LM "
               f"({f'rank-{lora_rank} updates, ' if lora_rank else ''}lr x {lm_lr_mult})")


def train_step(it):
    """The optimizer step of iteration it, what bench.py times: the loss terms weighed and summed, backward over the
    micro-steps, the gradient clipped, AdamW. Returns the terms averaged over the micro-steps and the flags [a
    non-finite loss, a stop requested] of any rank; a non-finite step is not applied."""
    w_warm = get_w_warm(it)
    weights = dict(kl=w_kl, lm=get_alpha(it) * w_lm, entropy=-get_w_entropy(it), mse=w_mse, warm=w_warm, kl_real_text=w_warm,
                   current_token=w_current_token, pg=w_pg if it >= pg_from else 0.0)
    for group in optimizer.param_groups:
        group['lr'] = get_lr(it) * group['lr_mult']
    parts = {}
    for micro_step in range(gradient_accumulation_steps):
        reseed(it, micro_step * world + rank)  # the noise follows the sample: 2 ranks equal 1 rank x 2 micro-steps
        acts, tokens, pos = get_batch(it, micro_step)
        if isinstance(lens, DDP):
            lens.require_backward_grad_sync = micro_step == gradient_accumulation_steps - 1
        out = lens(acts, tokens, pos, tau=get_tau(it), terms=[k for k, w in weights.items() if w],
                   warm_target=warm_start_target, resample=resample_ablation, pg_k=pg_k)
        out['loss'] = sum(w * out[k] for k, w in weights.items() if w)
        (out['loss'] / gradient_accumulation_steps).backward()
        parts = {k: parts.get(k, 0) + v.detach() / gradient_accumulation_steps for k, v in out.items()}
    flags = torch.tensor([float(not torch.isfinite(parts['loss'])), float(stop_requested)], device=device)
    if ddp:
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
    if not flags[0]:
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(raw_lens.parameters(), grad_clip)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return parts, flags


stop_requested = False


def request_stop(signum, frame):
    global stop_requested
    stop_requested = True


def log_row(**row):
    """A row of log.jsonl, flushed at once: what a run measured is on disk whatever stops it."""
    if master:
        log_file.write(json.dumps(dict(iter=iter_num, **row)) + '\n')
        log_file.flush()


if __name__ == '__main__':  # bench.py runs the setup above to time train_step, without this loop
    log_file = open_log(run_dir, iter_num if checkpoint else None) if master else None
    if wandb_log and master:
        import wandb
        run = wandb.init(project=wandb_project, name=run_name, config=config, mode=wandb_mode, id=wandb_run_id or wandb_id,
                         resume='allow')
        wandb_id = run.id

    for stop_signal in (signal.SIGTERM, signal.SIGINT):  # a pre-empted job saves and stops cleanly
        signal.signal(stop_signal, request_stop)

    print0(f"run {run_name} on {config['nodes']}{', SLURM job ' + config['slurm_job_id'] if config['slurm_job_id'] else ''}: "
           f"{len(train_data)} train / {len(val_data)} val samples, batch {batch_size} "
           f"({world} ranks x {gradient_accumulation_steps} accumulation x {micro_batch}), frozen LM in {dtype} on {device}, "
           f"{sum(p.numel() for p in raw_lens.parameters() if p.requires_grad):,} trainable parameters")
    t0, step_times, skipped_in_a_row = time.time(), [], 0
    while True:
        last_step = iter_num == max_iters
        unfreeze_when_due(iter_num)
        if iter_num % eval_interval == 0 or last_step:
            val_slice = np.arange(len(val_data) - periodic_eval_samples + rank, len(val_data), world)
            metrics, samples = periodic_eval(raw_lens, lm, tokenizer, *(t.to(device) for t in val_data.get(val_slice)),
                                             PERIODIC_BASELINES, micro_batch, downstream_positions, num_print_samples)
            log_row(split='val', **metrics)  # on disk before the console shows it
            print0(f"eval iter {iter_num}: val KL {metrics['kl']:.4f}, the control {metrics['kl_control']:.4f} (the lens beats it "
                   f"on {metrics['lens_beats_control']:.0%}) | " + ', '.join(f"{name} {metrics['kl_' + name]:.4f}" for name in PERIODIC_BASELINES)
                   + f" | KL p+1..p+{downstream_positions} {metrics['kl_downstream']:.4f}, control {metrics['kl_downstream_control']:.4f}, "
                   f"mean {metrics['kl_downstream_mean']:.4f} | distinct explanations {metrics['explanations_unique']:.2f} | "
                   f"MSE {metrics['mse']:.4f} FVE {metrics['fve']:.4f}")
            for sample in samples:
                print0(sample)
            if wandb_log and master:
                wandb.log({f'val/{k}': v for k, v in metrics.items()} | {
                    'val/samples': wandb.Table(columns=['sample'], data=[[s] for s in samples])}, step=iter_num)
            if metrics['kl'] < best_val_kl and iter_num > 0:
                best_val_kl, states = metrics['kl'], full_states(raw_lens, optimizer, fsdp)
                if master:
                    save_checkpoint(os.path.join(run_dir, 'best.pt'), payload(states))  # and the lens to share: no optimizer, no pickle
                    save_lens_folder(raw_lens, os.path.join(run_dir, 'lens'), model, iter_num, config, states[0])
        if last_step or iter_num > 0 and iter_num % ckpt_interval == 0:
            save_newest()
        if last_step:
            break

        t_step = time.time()
        parts, flags = train_step(iter_num)
        if flags[0]:
            skipped_in_a_row += 1
            print0(f"iter {iter_num}: non-finite loss, update skipped")
            if skipped_in_a_row == MAX_SKIPPED:
                raise SystemExit(f"the last {MAX_SKIPPED} steps all had a non-finite loss: training cannot recover by "
                                 f"skipping. Lower learning_rate, check the shards for inf/NaN, or run with dtype='float32'; "
                                 f"resume from {run_dir}/ckpt.pt (never overwritten by a non-finite step)")
        else:
            skipped_in_a_row = 0
        iter_num += 1
        step_times.append(time.time() - t_step)

        if iter_num % log_interval == 0:
            parts = {k: v.item() for k, v in parts.items()}
            step_time = np.mean(step_times[-log_interval:])
            lr, tau, alpha = get_lr(iter_num - 1), get_tau(iter_num - 1), get_alpha(iter_num - 1)
            optional = ''.join(f"{k} {parts[k]:.4f} " for k in ('lm', 'warm', 'kl_real_text', 'current_token', 'pg', 'pg_kl') if k in parts)
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
            save_newest()
            print0(f"stopped by signal at iteration {iter_num}: checkpoint saved, resume with "
                   f"--init_from=resume --run_name={run_name}")
            break

    print0(f"done: {run_name}, best val KL {best_val_kl:.4f}, checkpoints in {run_dir} ({time.time() - t0:.0f}s)")
    if ddp:  # a lens whose ranks drifted apart would be a silent bug
        print0(f"max parameter difference across {world} ranks: {replica_drift(raw_lens):.3g}")
        del lens  # DDP's reducer must go before its process group, or a rank can abort at exit
        gc.collect()
        torch.distributed.destroy_process_group()
