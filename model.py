"""
The language model and everything the lens does to it: loading (into the storage dtype on the rank's device),
blocks, embeddings, trainable copies; reading a block's output at per-sample positions, replacing it there,
stopping a forward after a block; the next-token logits at p with a patch, in fp32 (full_precision_logits).

"Layer L" everywhere in this project means the OUTPUT OF BLOCK L (0-indexed), which is what HF
returns as hidden_states[L + 1]. hidden_states[0] is the embedding output and hidden_states[-1] has
the final norm applied, so we never read activations through hidden_states: a forward hook on
block L gives its output exactly, for every architecture.
"""
import contextlib
import copy
import inspect
import os
import weakref

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from transformers import Cache, DynamicCache

TINY_MODELS = ('tiny-gpt2', 'tiny-llama', 'tiny-qwen2', 'tiny-gemma2', 'tiny-neox')
RANDOM_MODELS = TINY_MODELS + ('gpt2-small-random',)  # and GPT-2 small's shape (124M): benchmarks without the hub
CACHE_ARGUMENTS = {'past_key_values', 'past_key_value', 'layer_past'}  # what a block's attention takes the KV cache as
BLOCK_PATHS = ('transformer.h', 'model.layers', 'model.language_model.layers', 'gpt_neox.layers', 'model.decoder.layers')


class ByteTokenizer:
    """The tiny models' tokenizer: one token per UTF-8 byte, plus <|endoftext|> as id 256."""
    name, vocab_size, eot_id, eot = 'bytes', 257, 256, '<|endoftext|>'

    def encode(self, text):
        parts = text.split(self.eot)
        ids = list(parts[0].encode())
        for part in parts[1:]:
            ids += [self.eot_id] + list(part.encode())
        return ids

    def decode(self, ids):
        return b''.join(self.eot.encode() if i == self.eot_id else bytes([i]) for i in ids).decode(errors='replace')


class HFTokenizer:
    """A Hugging Face tokenizer behind the same four names: encode, decode, eot_id, vocab_size."""
    def __init__(self, name, tokenizer):
        self.name, self.tok = name, tokenizer
        self.vocab_size = len(tokenizer)
        self.eot_id = tokenizer.get_vocab().get('<|endoftext|>', tokenizer.eos_token_id)

    def encode(self, text):
        return self.tok(text, add_special_tokens=False)['input_ids']

    def decode(self, ids):
        return self.tok.decode(ids)


def tiny_model(name):
    """Seeded random-init models: the tiny ones (a few hundred thousand parameters, for tests and smoke runs) draw
    their weights 15x wider than HF's default so the predictions are sharp and a lens has something to learn."""
    import transformers
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if name == 'gpt2-small-random':  # HF's own initialisation; byte ids (< 257) are valid ids
            return transformers.GPT2LMHeadModel(transformers.GPT2Config())
        if name == 'tiny-gpt2':  # tied embeddings, learned positions
            config = transformers.GPT2Config(vocab_size=257, n_positions=128, n_embd=64, n_layer=4, n_head=4,
                                             initializer_range=0.3, bos_token_id=256, eos_token_id=256)
            return transformers.GPT2LMHeadModel(config)
        architecture, settings = {  # each adds a way of embedding, attending or tying that the tests must cover
            'tiny-llama': ('Llama', dict(num_key_value_heads=2, tie_word_embeddings=False)),  # RoPE, grouped-query
            'tiny-qwen2': ('Qwen2', dict(num_key_value_heads=2, tie_word_embeddings=True)),  # q/k/v biases
            # tied; sqrt(d)-scaled embeddings, soft-capped logits, a window of 8 on blocks 0, 2 (below the tests' ctx)
            'tiny-gemma2': ('Gemma2', dict(num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, sliding_window=8)),
            'tiny-neox': ('GPTNeoX', dict(tie_word_embeddings=False)),  # parallel residual, rotary on 1/4 of a head
        }[name]
        config = getattr(transformers, f'{architecture}Config')(
            vocab_size=257, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
            max_position_embeddings=128, initializer_range=0.3, bos_token_id=256, eos_token_id=256, pad_token_id=None,
            **settings)
        return getattr(transformers, f'{architecture}ForCausalLM')(config)


def load_model(name, device='cpu', trust_remote_code=False, dtype='float32'):
    """(model, tokenizer) for a HF hub name, a local HF directory, or one of RANDOM_MODELS, frozen,
    its blocks stored in `dtype` ('float32', 'bfloat16' or 'int8'; resolve 'auto' with pick_dtype first)."""
    if name in RANDOM_MODELS and dtype == 'int8':
        raise SystemExit(f"dtype='int8' quantizes a pretrained model as it loads; {name} is built from a config: "
                         f"use dtype='float32' or 'bfloat16'")
    if name in RANDOM_MODELS:
        model, tokenizer = tiny_model(name), ByteTokenizer()
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
        from transformers.utils import logging
        logging.disable_progress_bar()  # one bar per load fills the logs of every script and rank
        if name.startswith(('.', '/', '~', 'assets/')) and not os.path.isdir(name):
            raise SystemExit(f"model directory '{name}' not found: for the embedded default run "
                             f"`python data/austen/prepare.py`, or pass --model=path/to/hf_dir or a hub name")
        try:  # straight into the storage dtype on the rank's device: no fp32 copy on the host
            settings = dict(dtype=DTYPES[dtype], device_map={'': device})
            if dtype == 'int8':  # bitsandbytes' LLM.int8() blocks on the GPU, the LM head kept in full precision for the KL
                settings['quantization_config'] = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=['lm_head'])
            model = AutoModelForCausalLM.from_pretrained(name, trust_remote_code=trust_remote_code, **settings)
            tokenizer = HFTokenizer(name, AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code))
        except OSError as e:
            raise SystemExit(f"could not load model '{name}': not a local model directory, and the hub said "
                             f"'{str(e).splitlines()[0]}'. For the embedded default run `python data/austen/prepare.py`; "
                             f"otherwise pass --model=path/to/hf_dir or a hub name where the hub is reachable")
    return frozen(model, device, dtype), tokenizer


DTYPES = dict(float32=torch.float32, bfloat16=torch.bfloat16, int8=torch.bfloat16)  # int8: the dtype it computes in


def cpu_has_bf16():
    """True on CPUs with bf16 matrix instructions (AMX or AVX-512-BF16), where a bf16 matmul is several
    times faster than fp32; elsewhere bf16 is emulated and slower."""
    try:
        flags = open('/proc/cpuinfo').read()
    except OSError:
        return False
    return 'amx_bf16' in flags or 'avx512_bf16' in flags


def pick_dtype(dtype, device):
    """The storage dtype of the frozen LM: 'auto' is bfloat16 on CUDA and on CPUs with bf16 units."""
    if dtype == 'auto':
        dtype = 'bfloat16' if device.startswith('cuda') or cpu_has_bf16() else 'float32'
    if dtype not in DTYPES:
        hint = " (float16 would need loss scaling, which this code does not do)" if dtype == 'float16' else ''
        raise SystemExit(f"dtype={dtype!r} is not supported{hint}: use 'auto', 'bfloat16', 'float32' or 'int8' (GPU)")
    if dtype == 'int8':
        if not device.startswith('cuda'):
            raise SystemExit(f"dtype='int8' loads the frozen LM with bitsandbytes, which needs a CUDA GPU, and the device "
                             f"is {device!r}: use dtype='auto' here, or --device=cuda on a GPU machine")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise SystemExit("dtype='int8' needs bitsandbytes: `pip install bitsandbytes`, or use dtype='auto'")
    return dtype


def use_tf32():
    """TF32 matmuls and convolutions for what runs in fp32 on CUDA (the fp32 LM copies, the KL's head), set
    through fp32_precision: allow_tf32 is deprecated since torch 2.9, and mixing the two raises."""
    torch.backends.cuda.matmul.fp32_precision = 'tf32'
    torch.backends.cudnn.conv.fp32_precision = 'tf32'


def frozen(model, device, dtype='float32'):
    """The model on `device` with its parameters in `dtype`, in eval mode (a model built from a config
    starts with dropout on), frozen. Buffers keep their dtype, as from_pretrained(dtype=...) leaves
    them: rotary inv_freq stays fp32, whose rounding to bf16 would put an angle error that grows with
    the position into every long context. A model from_pretrained loaded is already there."""
    if dtype != 'int8':  # bitsandbytes placed and typed the int8 blocks as they loaded (the head in bf16)
        model.to(device)
        for p in model.parameters():
            p.data = p.data.to(DTYPES[dtype])
    # logits_to_keep hands the LM head a non-contiguous slice, for which PyTorch falls back to a slow batched matmul
    model.get_output_embeddings().register_forward_pre_hook(lambda module, args: (args[0].to(module.weight.dtype).contiguous(),))
    return model.eval().requires_grad_(False)


def compute_dtype(model):
    return model.get_input_embeddings().weight.dtype


FP32_HEADS = weakref.WeakKeyDictionary()  # LM head -> its weight in fp32, made at the first KL of a bf16 LM


def full_precision_logits(model, hidden):
    """The LM's logits from its final hidden states [..., d] (the base model's output, final norm applied),
    computed in fp32 also when the LM is stored in bf16: the KL compares two of them, and bf16 logits
    would round away differences of ~0.01. The decoder's logits only choose words and take the stored head."""
    head = model.get_output_embeddings()
    if head not in FP32_HEADS:
        FP32_HEADS[head] = head.weight.detach().float(), None if head.bias is None else head.bias.detach().float()
    logits = F.linear(hidden.float(), *FP32_HEADS[head])
    cap = getattr(model.config.get_text_config(), 'final_logit_softcapping', None)  # Gemma 2 and 3
    return logits if cap is None else torch.tanh(logits / cap) * cap


def blocks(model):
    """The list of transformer blocks, for GPT-2, Llama, Qwen2, Gemma, GPT-NeoX and OPT layouts."""
    for path in BLOCK_PATHS:
        module = model
        for attr in path.split('.'):
            module = getattr(module, attr, None)
        if isinstance(module, torch.nn.ModuleList):
            return module
    raise SystemExit(f"cannot find the transformer blocks of {type(model).__name__}: add its path to BLOCK_PATHS in model.py")


def trainable_copy(model, last_block=None, shard=None):
    """A trainable fp32 copy of the LM, built block by block: each block is copied, made fp32 and handed
    to `shard` (FSDP's fully_shard: then no rank ever holds the whole copy) before the next. With
    last_block, only what a forward stopped after that block runs: the later blocks are never copied,
    and the final norm and the LM head (the modules registered after the block list, by HF's
    convention) stay frozen, so DDP sees no parameter without a gradient."""
    def trainable(module):  # the forwards set by compile_blocks / checkpoint_blocks are copied as they
        for m in module.modules():  # are, still running the original's modules: the copy sets its own
            m.__dict__.pop('forward', None)
        return module.float().requires_grad_(True)

    # everything but the blocks at once (copy.deepcopy also copies frozen()'s LM-head hook, which the copy
    # wants too), then one block at a time
    model = copy.deepcopy(model, {id(block): block for block in blocks(model)})
    block_list = blocks(model)
    originals = list(block_list)[:None if last_block is None else last_block + 1]
    del block_list[:]  # the frozen LM's own blocks out of the copy, so trainable() does not touch them
    trainable(model)
    for block in originals:
        block_list.append((shard or (lambda b: b))(trainable(copy.deepcopy(block))))
    if last_block is not None:
        parent = next(m for m in model.modules() if any(c is block_list for c in m.children()))
        after = list(parent.children())
        after = after[next(i for i, c in enumerate(after) if c is block_list) + 1:] + [model.get_output_embeddings()]
        used = {id(p) for p in model.get_input_embeddings().parameters()}
        for module in after:
            for p in module.parameters():
                p.requires_grad_(id(p) in used)
    return model


class LowRank(torch.nn.Module):
    """A frozen linear map (nn.Linear, or GPT-2's Conv1D with its weight [in, out]) plus a trainable
    rank-r update up(down(x)), computed in fp32; `up` starts at zero, so the map starts as the frozen one."""

    def __init__(self, base, rank):
        super().__init__()
        self.base = base
        d_in, d_out = base.weight.shape if type(base).__name__ == 'Conv1D' else base.weight.shape[::-1]
        self.down = torch.nn.Parameter(torch.randn(rank, d_in, device=base.weight.device) / d_in ** 0.5)
        self.up = torch.nn.Parameter(torch.zeros(d_out, rank, device=base.weight.device))

    def forward(self, x):
        return self.base(x) + F.linear(F.linear(x.float(), self.down), self.up).to(x.dtype)


def low_rank_copy(model, rank, last_block=None):
    """A copy of the LM that shares every weight of the frozen one and trains a rank-`rank` update of each
    linear map in its blocks (LoRA): the copy costs a few MB instead of the LM's size, its forward runs
    in the LM's storage dtype, and its backward computes no gradient for the LM's own weights. With
    last_block, the later blocks are left out, as trainable_copy does."""
    copied = copy.deepcopy(model, {id(t): t for t in (*model.parameters(), *model.buffers())})
    for m in copied.modules():  # compile_blocks' forwards run the frozen LM's modules: the copy sets its own
        m.__dict__.pop('forward', None)
    block_list = blocks(copied)
    if last_block is not None:
        del block_list[last_block + 1:]
    linear = lambda m: isinstance(m, torch.nn.Linear) or type(m).__name__ == 'Conv1D'
    for parent, name, child in [(m, n, c) for m in block_list.modules() for n, c in m.named_children() if linear(c)]:
        setattr(parent, name, LowRank(child, rank))
    return copied


def compile_blocks(model):
    """torch.compile what repeats and holds no state: the parts of each block that take no KV cache (its
    norms and MLP), lengths dynamic, so a few graphs serve every block, step and length. A part that takes
    the cache (attention) stays eager: dynamo guards on the cache's list of layers, which grows by one in
    each block of a first step, and on the block's layer index, so a whole block compiled recompiled for
    each block until torch's limit of 8, and ran the rest eager. The lens's hooks are on the blocks,
    outside the compiled code, so their patches are live at every call. One code object serves the parts
    of the frozen LM and of both copies in all their variants (bf16 and fp32 weights, with and without
    grad, one token and several, ...): more than torch's default limit of 8 graphs (measured: 8 hit by 30
    iterations through unfreezing, the rest then ran eager, silently), hence a limit of 64."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    for block in blocks(model):
        for part in block.children():
            takes_cache = CACHE_ARGUMENTS & set(inspect.signature(part.forward).parameters)
            has_weights = any(True for _ in part.parameters())  # not a dropout: something to compile
            if has_weights and not takes_cache and not hasattr(part.forward, '_torchdynamo_orig_callable'):
                part.forward = torch.compile(part.forward, dynamic=True)
    return model


def checkpoint_blocks(model):
    """Gradient checkpointing for a trainable copy: each block keeps only its inputs for backward and
    recomputes the rest there. A cached decoding step also appends its keys and values to the KV cache,
    which has grown by the time backward recomputes it: the recompute is shown the cache as the step
    saw it (its layers rebind their tensors on update instead of editing them, so shallow copies taken
    at the step keep the step's state). Wraps forward, not __call__: the lens's hooks stay outside."""
    for block in blocks(model):
        block.forward = checkpointed(block.forward)
    return model


def checkpointed(forward):
    def run(*args, **kwargs):
        cache = next((a for a in (*args, *kwargs.values()) if isinstance(a, Cache)), None)
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        as_it_was = [copy.copy(layer) for layer in cache.layers] if cache is not None else []
        calls = []

        def replay(*args, **kwargs):
            calls.append(len(calls))
            if len(calls) == 1 or cache is None:  # the first call is the forward itself
                return forward(*args, **kwargs)
            grown, cache.layers = cache.layers, [copy.copy(layer) for layer in as_it_was]
            try:
                return forward(*args, **kwargs)
            finally:
                cache.layers = grown
        return torch.utils.checkpoint.checkpoint(replay, *args, use_reentrant=False, **kwargs)
    return run


def max_context(model):
    config = model.config.get_text_config()
    return getattr(config, 'n_positions', None) or config.max_position_embeddings


def check_layer(model, layer, what='layer'):
    n = len(blocks(model))
    if not 0 <= layer < n:
        raise SystemExit(f"{what}={layer} is out of range: this model has blocks 0..{n - 1}; pass --{what}=<0..{n - 1}>")


def embed(model, one_hot_or_ids):
    """Input embeddings of token ids, or of (straight-through) one-hot rows, with any scale the
    model's embedding layer applies (Gemma multiplies by sqrt(d))."""
    emb = model.get_input_embeddings()
    if one_hot_or_ids.is_floating_point():
        out = OneHotRows.apply(one_hot_or_ids, emb.weight)
        scale = getattr(emb, 'embed_scale', None)
        return out * scale.to(out.dtype) if scale is not None else out
    return emb(one_hot_or_ids)


class OneHotRows(torch.autograd.Function):
    """one_hot @ weight for rows that are one-hot in value (a hard Gumbel-softmax sample, whose gradient
    is the soft sample's): the forward takes the rows by index, V/d times less work than the matmul;
    the backward is the matmul's, so the straight-through gradient still reaches every logit."""

    @staticmethod
    def forward(ctx, one_hot, weight):
        ids = one_hot.argmax(-1)
        ctx.save_for_backward(ids, weight)
        ctx.one_hot_dtype = one_hot.dtype
        return weight[ids]

    @staticmethod
    def backward(ctx, grad):
        ids, weight = ctx.saved_tensors
        grad_one_hot = (grad.to(weight.dtype) @ weight.t()).to(ctx.one_hot_dtype) if ctx.needs_input_grad[0] else None
        grad_weight = None
        if ctx.needs_input_grad[1]:  # an unfrozen copy's embeddings: the rows that were taken
            grad_weight = torch.zeros_like(weight).index_add_(0, ids.flatten(), grad.flatten(0, -2).to(weight.dtype))
        return grad_one_hot, grad_weight


def block_tensor(output):
    """Blocks return a tensor in transformers 5.x and a tuple in older versions."""
    return output[0] if isinstance(output, tuple) else output


class _StopForward(Exception):
    pass


def block_output(model, layer, **inputs):
    """Output of block `layer`, [B, T, d], running blocks 0..layer only (no later blocks, no LM head).
    `inputs` are what the base model takes: input_ids or inputs_embeds, attention_mask, position_ids."""
    captured = []

    def stop(module, args, output):
        captured.append(block_tensor(output))
        raise _StopForward

    handle = blocks(model)[layer].register_forward_hook(stop)
    try:
        model.base_model(**inputs, use_cache=False)
    except _StopForward:
        pass
    finally:
        handle.remove()
    return captured[0]


def read_activations(model, layer, tokens, positions):
    """Block `layer`'s output at positions[b] of sample b: [B, d]. tokens [B, T], positions [B]."""
    hidden = block_output(model, layer, input_ids=tokens)
    return hidden[torch.arange(len(tokens), device=hidden.device), positions]


@contextlib.contextmanager
def patched(model, layer, positions, values):
    """Within the block, block `layer`'s output at positions[b] of sample b is replaced by values[b].
    The edit is out of place, so gradients flow from the logits back into `values`."""
    def replace(module, args, output):
        hidden = block_tensor(output)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        hidden = hidden.index_put((rows, positions), values.to(hidden.dtype))
        return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden

    handle = blocks(model)[layer].register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()


def prefix_attention_mask(pos, length, dtype, window=None):
    """The additive 4-D mask [B, 1, length, length] of a prefix left-padded so that sample b's tokens
    0..pos[b]-1 end at the last column: causal over real tokens (within the last `window` tokens if
    given), and each padded row attends to itself only. No row is fully masked: some SDPA backends
    (cuDNN) return NaN for such rows, and a NaN key would then poison every real token of its batch."""
    column = torch.arange(length, device=pos.device)
    real = column[None] >= (length - pos[:, None])  # [B, length]
    causal = (column[:, None] >= column[None, :]) & (column[:, None] - column[None, :] < (window or length))
    allowed = causal[None] & real[:, None, :] | torch.eye(length, dtype=torch.bool, device=pos.device)
    return torch.zeros(allowed.shape, dtype=dtype, device=pos.device).masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


def next_token_logits(lm, layer, tokens, pos, *patches, after=0):
    """The logits at p as the LM computes them, then with block `layer`'s output at p replaced by each of
    `patches` ([B, d] each), by the cheap exact path: the logits at p depend only on tokens 0..p, so run
    0..p once without grad (left-padded to a common length), which gives the LM's own logits at p and
    every layer's keys and values of 0..p-1, then run position p alone once per patch. Gradient flows
    into a patch through the blocks after `layer` at one position.
    after=K: the logits at p..p+K instead ([B, K + 1, V] each), p still the only position patched: the
    later tokens read p's residual through attention. The prefix pass runs over 0..p+K and each patch's
    step over p..p+K. Where p+K runs past the window the missing tokens' logits are garbage: mask them
    with positions_in_window."""
    B, P, T = len(tokens), int(pos.max()), tokens.shape[1]
    source = torch.arange(P + 1 + after, device=tokens.device)[None] - (P - pos[:, None])  # p at column P
    config, dtype = lm.config.get_text_config(), compute_dtype(lm)
    mask = prefix_attention_mask(pos + 1 + after, P + 1 + after, dtype)
    if getattr(config, 'sliding_window', None):  # HF hands a 4-D mask to every block as is, without its window
        windowed = prefix_attention_mask(pos + 1 + after, P + 1 + after, dtype, config.sliding_window)
        mask = dict(full_attention=mask, sliding_attention=windowed) if hasattr(config, 'layer_types') else windowed
    inside = source.clamp(0, T - 1)  # past the window a real token stands in, after every position that counts
    cache = DynamicCache()
    with torch.no_grad():
        hidden = lm.base_model(input_ids=tokens.gather(1, inside), position_ids=inside, attention_mask=mask,
                               past_key_values=cache, use_cache=True).last_hidden_state
        logits = [full_precision_logits(lm, hidden[:, P:])]
    cache.crop(-1 - after)  # the keys and values of 0..p-1: each patch's step adds p..p+K's own
    step = dict(input_ids=tokens.gather(1, inside[:, P:]), position_ids=inside[:, P:], past_key_values=cache,
                attention_mask=torch.cat([(source[:, :P] >= 0).long(), source.new_ones(B, 1 + after)], 1), use_cache=True)
    for patch in patches:
        with patched(lm, layer, torch.zeros_like(pos), patch):
            logits.append(full_precision_logits(lm, lm.base_model(**step).last_hidden_state))
        cache.crop(-1 - after)
    return [x[..., 0, :] for x in logits] if after == 0 else logits


def positions_in_window(pos, after, length):
    """Whether each of p..p+K lies inside a window of `length` tokens: [B, K + 1]."""
    return pos[:, None] + torch.arange(after + 1, device=pos.device) < length
