"""
How the lens trains on many processes: DDP over the trainable lens only, FSDP2 over the unfrozen LM copies (a
group per copied block), the AdamW groups and their state carried over when unfreezing adds parameters, and
the full state dicts that checkpoints hold (gathered from FSDP's shards onto rank 0). train.py's loop uses
these; with one process and no fsdp they reduce to the plain module and optimizer.
"""
import torch
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.nn.parallel import DistributedDataParallel as DDP

from model import DTYPES, compile_blocks

FULL_STATE = StateDictOptions(full_state_dict=True, cpu_offload=True)  # under fsdp: gathered whole, on rank 0 only


def unfreeze(lens, grad_checkpointing, fsdp, dtype):
    """Each side trains its own copy of the LM from now on. With fsdp each copied block becomes an FSDP
    group as it is made (computing in the LM's dtype, fp32 master weights and gradient reduction), and
    the lens (its maps and prompts, the copies' embeddings, final norms and heads) the root group."""
    policy = MixedPrecisionPolicy(param_dtype=DTYPES[dtype], reduce_dtype=torch.float32)
    lens.unfreeze(grad_checkpointing, (lambda block: fully_shard(block, mp_policy=policy)) if fsdp else None)
    if fsdp:
        fully_shard(lens, mp_policy=MixedPrecisionPolicy(reduce_dtype=torch.float32))
        register_fsdp_forward_method(lens, 'explain')  # the periodic eval's way in: FSDP gathers the root group


def make_optimizer(lens, learning_rate, betas, lm_lr_mult, weight_decay):
    """AdamW with a group for the lens's own maps and prompts and, once unfrozen, one for the LM copies; lr_mult
    scales each group's learning rate. Fused on CPU too: over whole unfrozen copies it is several times faster."""
    own = [p for n, p in lens.named_parameters() if '.lm_copy.' not in n]
    copies = [p for n, p in lens.named_parameters() if '.lm_copy.' in n and p.requires_grad]
    groups = [dict(params=own, lr_mult=1.0, weight_decay=0.0)]
    groups += [dict(params=copies, lr_mult=lm_lr_mult, weight_decay=weight_decay)] if copies else []
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=True)


def rebuilt_optimizer(lens, old, params_before, *settings):
    """make_optimizer(lens, *settings) for the lens's parameters now, the AdamW state of those it had before (by
    name, params_before) carried over, sharded as FSDP sharded its parameter."""
    new = make_optimizer(lens, *settings)
    for name, p in lens.named_parameters():
        state = old.state.get(params_before.get(name), {})
        if state:
            new.state[p] = {k: distribute_tensor(v, p.device_mesh, p.placements) if isinstance(p, DTensor) and v.dim() else v
                            for k, v in state.items()}
    return new


def wrap(lens, lm, compile, device):
    """compile the blocks of every LM the lens runs, then DDP over the trainable lens only when distributed (an
    FSDP-sharded lens syncs itself); redone when unfreezing adds parameters."""
    for model in (lm, lens.decoder.lm, lens.encoder.lm) if compile else ():
        compile_blocks(model)
    if not torch.distributed.is_initialized() or isinstance(lens, FSDPModule):
        return lens
    # low-rank copies hold the frozen LM's own weights: every rank loaded them, nothing to broadcast
    DDP._set_params_and_buffers_to_ignore_for_model(lens, [n for n, p in lens.named_parameters() if not p.requires_grad])
    return DDP(lens, device_ids=[torch.device(device).index] if device.startswith('cuda') else None)


def full_states(lens, optimizer, fsdp):
    """(lens, optimizer) state dicts as one process holds them. Under fsdp they are gathered from the
    shards onto rank 0's CPU: every rank must call this, and the others get empty dicts."""
    if not fsdp:
        return lens.state_dict(), optimizer.state_dict()
    return get_model_state_dict(lens, options=FULL_STATE), get_optimizer_state_dict(lens, optimizer, options=FULL_STATE)


def load_states(lens, optimizer, checkpoint, fsdp):
    """A checkpoint's lens and optimizer state into them; under fsdp every rank reads the whole file (mmap: the
    page cache is shared) and keeps its shard."""
    if fsdp:
        set_model_state_dict(lens, checkpoint['lens'], options=FULL_STATE)
        set_optimizer_state_dict(lens, optimizer, checkpoint['optimizer'], options=FULL_STATE)
    else:
        lens.load_state_dict(checkpoint['lens'])
        optimizer.load_state_dict(checkpoint['optimizer'])


def replica_drift(lens):
    """The largest difference between a replicated trainable parameter and rank 0's copy of it, one parameter at a
    time (FSDP's shards have no replicas to drift from): 0 when DDP kept the ranks in step."""
    drift = torch.zeros((), device=next(lens.parameters()).device)
    for p in lens.parameters():
        if p.requires_grad and not isinstance(p, DTensor):
            reference = p.detach().clone()
            torch.distributed.broadcast(reference, 0)
            drift = torch.maximum(drift, (p.detach() - reference).abs().max())
    torch.distributed.all_reduce(drift, op=torch.distributed.ReduceOp.MAX)
    return drift.item()
