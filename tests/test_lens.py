"""lens.py: the cheap KL path, gradient flow, and learning on a fixed batch. Run: pytest -q tests/test_lens.py"""
import pytest
import torch

from lens import Lens, LensConfig, gumbel_hard, kl_div
from model import (TINY_MODELS, ByteTokenizer, OneHotRows, blocks, compile_blocks, frozen, load_model, next_token_logits, patched,
                   prefix_attention_mask, read_activations)

LAYER = 1


def batch(lm, B=6, ctx=24, seed=0):
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 256, (B, ctx), generator=generator)
    pos = torch.randint(1, ctx, (B,), generator=generator)
    pos[0] = ctx - 1
    return read_activations(lm, LAYER, tokens, pos), tokens, pos


def loss(out, **weights):
    """train.py's loss from Lens.forward's terms: each weighed, the KL's weight 1 unless given, then summed."""
    return sum(w * out[k] for k, w in (dict(kl=1.0) | weights).items())


@pytest.mark.parametrize('name', TINY_MODELS)
def test_cheap_kl_equals_the_naive_patched_forward(name):
    lm, _ = load_model(name)
    acts, tokens, pos = batch(lm)
    noise = torch.randn(acts.shape, generator=torch.Generator().manual_seed(0))
    recon = (acts + 0.5 * noise).requires_grad_(True)
    kl = kl_div(*next_token_logits(lm, LAYER, tokens, pos, recon))
    grad, = torch.autograd.grad(kl.sum(), recon)
    rows = torch.arange(len(tokens))
    with torch.no_grad():
        reference = lm(tokens).logits[rows, pos]
    with patched(lm, LAYER, pos, recon):
        naive = kl_div(reference, lm(tokens).logits[rows, pos])
    naive_grad, = torch.autograd.grad(naive.sum(), recon)
    assert naive.min() > 1e-4, 'the perturbation should move the prediction'
    torch.testing.assert_close(kl, naive, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grad, naive_grad, rtol=1e-4, atol=1e-4 * naive_grad.abs().max().item())  # fp32 sums in another order


@pytest.mark.parametrize('name', TINY_MODELS)
def test_downstream_kls_equal_the_naive_patched_window_and_mark_what_is_past_it(name):
    """patched_kls(after=K): only p patched, the KL at p..p+K of the whole window's forward; NaN past the window."""
    from lens import patched_kls
    lm, _ = load_model(name)
    acts, tokens, pos = batch(lm, B=8)
    pos[1] = tokens.shape[1] - 3  # two positions after p, not three
    recon = acts + 0.5 * torch.randn(acts.shape, generator=torch.Generator().manual_seed(1))
    kls = patched_kls(lm, LAYER, tokens, pos, dict(lens=recon), batch_size=3, after=3)[0]['lens']
    with torch.no_grad():
        reference = lm(tokens).logits
        with patched(lm, LAYER, pos, recon):
            naive = kl_div(reference, lm(tokens).logits)  # [B, T]
    for b, p in enumerate(pos.tolist()):
        inside = min(4, tokens.shape[1] - p)
        torch.testing.assert_close(kls[b, :inside], naive[b, p:p + inside], rtol=1e-4, atol=1e-6)
        assert kls[b, inside:].isnan().all()
    assert kls[1, :3].isfinite().all() and kls[1, 3].isnan() and kls[0, 1:].isnan().all()
    assert kls[:, 1:].nan_to_num().sum() > 1e-4, 'later positions read p through attention: the patch must reach them'


@pytest.mark.parametrize('name', TINY_MODELS)
def test_gradients_reach_every_trainable_parameter(name):
    lm, tokenizer = load_model(name)
    acts, tokens, pos = batch(lm)
    config = LensConfig(layer=LAYER, encoder_layer=2, t_text=4, decoder_prompt='<|endoftext|>Explain <embed>:',
                        encoder_prompt='Text: <text> means')
    lens = Lens(config, lm, tokenizer)
    torch.nn.init.normal_(lens.encoder.proj.weight, std=0.01)  # as after one step: at zero it blocks every gradient but its own
    out = lens(acts, tokens, pos, terms=['lm', 'warm'], resample=True)
    loss(out, lm=1.0, entropy=-0.1, warm=1.0, kl_real_text=1.0).backward()
    names = [n for n, p in lens.named_parameters()]
    assert names == ['decoder.prompt_left', 'decoder.prompt_right', 'decoder.proj.weight', 'decoder.proj.bias',
                     'decoder.depth_proj.weight', 'decoder.depth_proj.bias',
                     'encoder.prompt_prefix', 'encoder.prompt_postfix', 'encoder.proj.weight', 'encoder.proj.bias']
    for n, p in lens.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n
    assert not any(p.requires_grad for p in lm.parameters()), 'the frozen LM must stay frozen'


def test_training_on_a_fixed_batch_halves_the_kl():
    torch.manual_seed(0)
    lm, tokenizer = load_model('tiny-gpt2')
    acts, tokens, pos = batch(lm, B=8)
    lens = Lens(LensConfig(layer=LAYER, encoder_layer=LAYER, t_text=4), lm, tokenizer)
    optimizer = torch.optim.AdamW(lens.parameters(), lr=1e-2, weight_decay=0.0)

    def greedy_kl():
        _, _, recon = lens.explain(acts)
        return kl_div(*next_token_logits(lm, LAYER, tokens, pos, recon)).mean().item()

    start = greedy_kl()
    for _ in range(40):
        loss(lens(acts, tokens, pos, tau=1.0)).backward()
        optimizer.step()
        optimizer.zero_grad()
    assert greedy_kl() < start / 2


@pytest.mark.parametrize('name', TINY_MODELS)
def test_unfreeze_copies_what_each_side_runs_and_every_copied_parameter_learns(name):
    lm, tokenizer = load_model(name)
    acts, tokens, pos = batch(lm)
    lens = Lens(LensConfig(layer=LAYER, t_text=2, lora_rank=0), lm, tokenizer)
    lens.unfreeze()
    torch.nn.init.normal_(lens.encoder.proj.weight, std=0.01)  # as after one step
    assert lens.decoder.lm is not lm and lens.encoder.lm is not lens.decoder.lm and lens.lm is lm
    assert len(blocks(lens.decoder.lm)) == len(blocks(lm)) and len(blocks(lens.encoder.lm)) == LAYER + 1
    loss(lens(acts, tokens, pos, terms=['lm']), lm=1.0).backward()
    trainable = [(n, p) for n, p in lens.named_parameters() if p.requires_grad]
    assert sum(p.numel() for n, p in trainable if 'decoder.lm_copy.' in n) == sum(p.numel() for p in lm.parameters())
    for n, p in trainable:  # DDP fails on a trainable parameter that gets no gradient
        assert p.grad is not None and p.grad.abs().sum() > 0, n
    assert not any(p.requires_grad for p in lm.parameters())


@pytest.mark.parametrize('name', TINY_MODELS)
def test_low_rank_copies_start_as_the_lm_share_its_weights_and_save_only_their_updates(name):
    """lora_rank=r: each side runs the frozen LM's own weights plus rank-r updates of every linear map in
    its blocks (up at zero: at first the copy computes what the LM does, exactly), only the updates train
    and get a gradient, and the lens's state (what checkpoints and lens folders hold) is only those."""
    lm, tokenizer = load_model(name)
    acts, tokens, pos = batch(lm)
    lens = Lens(LensConfig(layer=LAYER, t_text=2, lora_rank=3), lm, tokenizer)
    lens.unfreeze()
    with torch.no_grad():
        assert torch.equal(lens.decoder.lm(tokens).logits, lm(tokens).logits)
    torch.nn.init.normal_(lens.encoder.proj.weight, std=0.01)
    loss(lens(acts, tokens, pos, terms=['lm']), lm=1.0).backward()
    matrices = lambda model, n: [p for p in blocks(model)[:n].parameters() if p.dim() == 2]  # each block's linear maps
    updates = lambda n: sum(3 * sum(w.shape) for w in matrices(lm, n))
    copies = [(n, p) for n, p in lens.named_parameters() if '.lm_copy.' in n and p.requires_grad]
    assert sum(p.numel() for n, p in copies) == updates(len(blocks(lm))) + updates(LAYER + 1)
    assert {n.rsplit('.', 1)[1] for n, p in copies} == {'down', 'up'}
    for n, p in copies:  # down's gradient is zero while up is: DDP needs a gradient, not a non-zero one
        assert p.grad is not None and (n.endswith('.down') or p.grad.abs().sum() > 0), n
    assert not any(p.requires_grad or p.grad is not None for p in lm.parameters())
    assert {id(w) for w in matrices(lm, None)} <= {id(p) for p in lens.decoder.lm.parameters()}
    state = lens.state_dict()
    frozen_lens = Lens(LensConfig(layer=LAYER, t_text=2), lm, tokenizer).state_dict()
    assert sum(v.numel() for v in state.values()) == sum(v.numel() for v in frozen_lens.values()) + sum(p.numel() for n, p in copies)
    loaded = Lens(LensConfig(layer=LAYER, t_text=2, lora_rank=3), lm, tokenizer)
    loaded.unfreeze()
    loaded.load_state_dict(state)
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, state[key]), key
    with pytest.raises(RuntimeError, match='does not fit this lens'):
        loaded.load_state_dict(state | {'decoder.lm_copy.extra': torch.zeros(1)})


@pytest.mark.parametrize('name', TINY_MODELS)
def test_grad_checkpointing_recomputes_the_copies_and_gives_the_same_gradients(name):
    """With the copies' activations recomputed in backward, the losses and every gradient equal the stored
    path's; the decoder's recompute must see its KV cache as each decoding step saw it (Gemma-2's sliding
    layers keep only a window: the step's own state, not a prefix of the final cache)."""
    lm, tokenizer = load_model(name)
    acts, tokens, pos = batch(lm)
    results = {}
    for checkpointing in (False, True):
        lens = Lens(LensConfig(layer=LAYER, t_text=6, encoder_prompt='<|endoftext|>Text: <text> means', lora_rank=0), lm, tokenizer)
        lens.unfreeze(grad_checkpointing=checkpointing)
        torch.nn.init.normal_(lens.encoder.proj.weight, std=0.01, generator=torch.Generator().manual_seed(0))
        calls = []
        for block in blocks(lens.decoder.lm):
            block.register_forward_pre_hook(lambda module, args: calls.append(1))
        forwards = []  # a module inside the block runs again when backward recomputes the block
        next(blocks(lens.decoder.lm)[0].children()).register_forward_hook(lambda *args: forwards.append(1))
        torch.manual_seed(0)
        out = lens(acts, tokens, pos, terms=['lm', 'warm'], warm_target='next')
        loss(out, lm=1.0, warm=1.0, kl_real_text=1.0).backward()
        grads = {n: p.grad for n, p in lens.named_parameters() if p.requires_grad}
        results[checkpointing] = {k: v.detach() for k, v in out.items()}, grads, len(forwards), len(calls)
    (out, grads, forwards, calls), (out_ckpt, grads_ckpt, forwards_ckpt, calls_ckpt) = results[False], results[True]
    assert calls_ckpt == calls, 'the hooks (slot writes, early exit) must run once per forward, not again in backward'
    assert forwards_ckpt == 2 * forwards, 'every block forward of the decoder copy is recomputed once in backward'
    for k in out:
        torch.testing.assert_close(out_ckpt[k], out[k], rtol=1e-5, atol=1e-6)
    assert grads_ckpt.keys() == grads.keys()
    for n in grads:
        torch.testing.assert_close(grads_ckpt[n], grads[n], rtol=1e-4, atol=1e-5 * grads[n].abs().max().item(), msg=n)


def test_compiled_blocks_give_the_eager_losses_and_gradients_frozen_and_unfrozen():
    """compile=True compiles each block's norms and MLP: the lens's hooks (slot writes, patches, early
    exit) stay outside and live, an unfrozen copy compiles its own modules (not the frozen LM's), and the
    losses and gradients equal eager ones (the Gumbel noise is drawn outside the compiled code)."""
    lm, tokenizer = load_model('tiny-llama')
    acts, tokens, pos = batch(lm)
    results = []
    for compiled in (False, True):
        lens = Lens(LensConfig(layer=LAYER, t_text=3), lm, tokenizer)
        torch.nn.init.normal_(lens.encoder.proj.weight, std=0.01, generator=torch.Generator().manual_seed(0))
        steps = []
        for unfrozen in (False, True):
            if unfrozen:
                lens.unfreeze()
            for model in (lm, lens.decoder.lm, lens.encoder.lm) if compiled else ():
                compile_blocks(model)
            torch.manual_seed(0)
            out = lens(acts, tokens, pos, terms=['lm', 'warm'])
            loss(out, lm=1.0, warm=1.0, kl_real_text=1.0).backward()
            steps.append(({k: v.detach() for k, v in out.items()},
                          {n: p.grad.clone() for n, p in lens.named_parameters() if p.requires_grad}))
            lens.zero_grad()
        results.append(steps)
    for (out, grads), (out_compiled, grads_compiled) in zip(*results):
        for k in out:
            torch.testing.assert_close(out_compiled[k], out[k], rtol=1e-4, atol=1e-6)
        assert grads.keys() == grads_compiled.keys()
        for n in grads:
            torch.testing.assert_close(grads_compiled[n], grads[n], rtol=1e-3, atol=1e-4 * grads[n].abs().max().item(), msg=n)
    mlp = blocks(lens.decoder.lm)[0].mlp
    assert mlp.forward._torchdynamo_orig_callable.__self__ is mlp, "the copy compiles its own modules"


def test_compiled_blocks_compile_once_for_all_blocks_and_not_again_for_a_new_batch():
    """The graphs compiled for a 2-block model serve a 6-block one and a batch of other lengths without
    compiling again, and no part reaches torch's limit of recompiles (a block compiled whole was compiled
    again for each block, guarded on the KV cache's layers, and past the limit of 8 ran eager)."""
    import transformers
    torch._dynamo.reset()
    for num_blocks, seed in ((2, 0), (6, 1)):
        config = transformers.LlamaConfig(vocab_size=257, hidden_size=32, intermediate_size=64, num_hidden_layers=num_blocks,
                                          num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
        lm = frozen(transformers.LlamaForCausalLM(config), 'cpu')
        assert sum(p.numel() for p in lm.parameters()) == 16448 + num_blocks * 9280 + 32
        lens = Lens(LensConfig(layer=1, t_text=3), compile_blocks(lm), ByteTokenizer())
        torch.compiler.set_stance('fail_on_recompile' if num_blocks == 6 else 'default')
        try:
            with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
                loss(lens(*batch(lm, seed=seed), terms=['lm']), lm=1.0).backward()
        finally:
            torch.compiler.set_stance('default')


@pytest.mark.parametrize('change, message', [
    (dict(decoder_prompt='Explain:'), "must contain '<embed>' exactly once"),
    (dict(encoder_prompt='Summary:'), "must contain '<text>' exactly once"),
    (dict(t_text=0), 't_text=0: an explanation needs at least one token'),
    (dict(layer=9), 'layer=9 is out of range: this model has blocks 0..3'),
    (dict(encoder_layer=-2), 'encoder_layer=-2 is out of range'),
    (dict(encoder_init='eye'), "encoder_init='eye': use 'identity' (Â starts as h) or 'zero'"),
    (dict(encoder_reads='first'), "encoder_reads='first': use 'last' (Â from the last position) or 'first_and_last'"),
    (dict(lora_rank=-1), 'lora_rank=-1: use 0 (unfreezing trains whole copies of the LM) or a rank'),
])
def test_bad_lens_settings(change, message):
    lm, tokenizer = load_model('tiny-gpt2')
    with pytest.raises(SystemExit, match=message.replace('(', r'\(').replace(')', r'\)')):
        Lens(LensConfig(**dict(layer=1, encoder_layer=1) | change), lm, tokenizer)


@pytest.mark.parametrize('name', TINY_MODELS)
def test_bfloat16_losses_agree_with_float32(name):
    """The frozen LM stored in bf16 (the lens's parameters stay fp32, the KL's logits come from an fp32
    copy of the LM head) gives the fp32 losses within 2% relative, with the same Gumbel draws; the KL of both is measured on
    the same words (a near-tie between two tokens may sample another word in bf16)."""
    lm32, tokenizer = load_model(name)
    acts, tokens, pos = batch(lm32)
    losses, words = {}, None
    for dtype, lm in (('float32', lm32), ('bfloat16', load_model(name, dtype='bfloat16')[0])):
        assert next(blocks(lm).parameters()).dtype == getattr(torch, dtype)
        torch.manual_seed(0)
        lens = Lens(LensConfig(layer=LAYER, t_text=4, encoder_init='identity'), lm, tokenizer)  # Â depends on the words
        out = lens(acts, tokens, pos, terms=['lm'])
        loss(out, lm=1.0, entropy=-0.1).backward()
        assert all(p.dtype == torch.float32 and p.grad is not None for p in lens.parameters())
        words = lens.explain(acts)[1] if words is None else words
        with torch.no_grad():
            out['kl'] = kl_div(*next_token_logits(lm, LAYER, tokens, pos, lens.encoder(words))).mean()
        losses[dtype] = {k: v.item() for k, v in out.items()}
        logits = next_token_logits(lm, LAYER, tokens, pos)[0]
        assert logits.dtype == torch.float32 and (dtype == 'float32' or not torch.equal(logits, logits.bfloat16().float())), \
            "the KL's logits must come from the fp32 head, not be bf16-rounded"
    assert losses['float32']['kl'] > 0.1  # the identity encoder's Â differs from A: the KL is not a trivial 0
    for key in ('kl', 'lm', 'entropy'):
        assert losses['bfloat16'][key] == pytest.approx(losses['float32'][key], rel=2e-2), key


def test_gumbel_hard_draws_from_the_softmax_and_passes_the_soft_gradient():
    torch.manual_seed(0)
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0]).repeat(40000, 1).requires_grad_(True)
    sample = gumbel_hard(logits, tau=1.0)
    torch.testing.assert_close(sample.detach(), torch.nn.functional.one_hot(sample.argmax(-1), 4).float())
    torch.testing.assert_close(sample.detach().mean(0), torch.softmax(logits[0].detach(), -1), atol=0.01, rtol=0)
    (sample[:, 0].sum()).backward()  # straight-through: the soft sample's gradient, non-zero on every logit
    assert (logits.grad[:, 0] > 0).all() and (logits.grad[:, 1:] < 0).all()


def test_one_hot_rows_by_index_equal_the_matmul_forward_and_backward():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(50, 8, generator=generator, requires_grad=True)
    logits = torch.randn(3, 4, 50, generator=generator, requires_grad=True)
    one_hot = torch.nn.functional.gumbel_softmax(logits, tau=0.5, hard=True)  # one-hot in value, soft in gradient
    upstream = torch.randn(3, 4, 8, generator=generator)
    grads = [torch.autograd.grad((rows * upstream).sum(), (logits, weight), retain_graph=True)
             for rows in (OneHotRows.apply(one_hot, weight), one_hot @ weight)]
    torch.testing.assert_close(OneHotRows.apply(one_hot, weight), one_hot @ weight)
    for by_index, by_matmul in zip(*grads):
        torch.testing.assert_close(by_index, by_matmul)


@pytest.mark.parametrize('window', [None, 2])
def test_prefix_mask_is_causal_over_real_tokens_and_never_masks_a_whole_row(window):
    pos = torch.tensor([3, 0, 5])
    allowed = prefix_attention_mask(pos, 5, torch.float32, window)[:, 0] == 0
    assert allowed.any(-1).all()  # a fully masked row is NaN on some GPU attention backends
    for b, p in enumerate(pos.tolist()):
        real = range(5 - p, 5)
        for i in range(5):
            within = [j in real and i - (window or 5) < j <= i for j in range(5)]
            expected = within if i in real else [j == i for j in range(5)]
            assert allowed[b, i].tolist() == expected


@pytest.mark.parametrize('name, warm_target, encoder_reads', [
    ('tiny-gpt2', 'previous', 'last'), ('tiny-llama', 'next', 'first_and_last'), ('tiny-qwen2', 'previous', 'last'),
    ('tiny-gemma2', 'next', 'last'), ('tiny-neox', 'previous', 'last'), ('tiny-gpt2', 'current', 'first_and_last')])
def test_lens_forward_equals_the_naive_reference(name, warm_target, encoder_reads):
    """Every cheap path of Lens.forward (KV-cached decoding, early-exit encoder, one-position KL with its
    left-padded prefix) against tests/naive_lens.py, every loss term and the gradients of their weighted sum."""
    from naive_lens import naive_forward
    lm, tokenizer = load_model(name)
    acts, tokens, pos = batch(lm)
    # a decoder prompt longer than tiny-gemma2's sliding window of 8, so cached decoding crosses it
    lens = Lens(LensConfig(layer=LAYER, encoder_layer=2, t_text=4, encoder_reads=encoder_reads,
                           decoder_prompt='<|endoftext|>In short: <embed>'), lm, tokenizer)
    lens.stats.set(acts)
    torch.nn.init.normal_(lens.encoder.proj.weight, std=0.05)
    if encoder_reads == 'first_and_last':
        torch.nn.init.normal_(lens.encoder.first_proj.weight, std=0.05)
    weights = dict(kl=1.0, lm=0.5, entropy=-0.1, mse=0.2, warm=0.3, kl_real_text=0.3,
                   current_token=0.0 if warm_target == 'next' else 0.4)  # 'next' holds no token at p
    results = []
    for forward in (lens, lambda *a, **k: naive_forward(lens, *a, **k)):
        torch.manual_seed(0)
        out = forward(acts, tokens, pos, tau=0.7, terms=[k for k, w in weights.items() if w], warm_target=warm_target)
        grads = torch.autograd.grad(sum(w * out[k] for k, w in weights.items() if w), list(lens.parameters()))
        results.append((out, grads))
    assert set(results[0][0]) == set(results[1][0])
    (fast, fast_grads), (naive, naive_grads) = results
    for key in fast:
        torch.testing.assert_close(fast[key], naive[key], rtol=1e-4, atol=1e-5, msg=key)
    for (n, _), g, h in zip(lens.named_parameters(), fast_grads, naive_grads):
        torch.testing.assert_close(g, h, rtol=1e-3, atol=1e-4 * h.abs().max().item() + 1e-9, msg=n)


def test_reading_the_first_word_starts_as_the_lm_holding_it_as_its_current_token():
    """encoder_reads='first_and_last' with the last position's map at zero: Â is block K's output at the
    first word, as if the LM had read the encoder's prefix and that word only (what the words after it
    and the postfix add comes only through the trained map of the last position)."""
    from model import block_output
    lm, tokenizer = load_model('tiny-llama')
    lens = Lens(LensConfig(layer=LAYER, encoder_reads='first_and_last', encoder_init='zero'), lm, tokenizer)
    lens.stats.set(batch(lm)[0])
    words = torch.tensor([[5, 17, 9], [11, 3, 30]])
    prefix = torch.tensor(tokenizer.encode(lens.cfg.encoder_prompt.split('<text>')[0]))
    alone = block_output(lm, LAYER, input_ids=torch.cat([prefix.expand(2, -1), words[:, :1]], 1))[:, -1]
    torch.testing.assert_close(lens.encoder(words), alone.float(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('warm_target, word', [('current', 0), ('previous', -1)])
def test_the_current_token_loss_teaches_the_decoder_to_name_the_token_at_p(warm_target, word):
    """w_current_token alone (no KL): after 60 steps on a fixed batch the decoder's greedy word where
    warm_target puts the token at p (first or last) is that token on most samples, from none at the start."""
    torch.manual_seed(0)
    lm, tokenizer = load_model('tiny-llama')
    acts, tokens, pos = batch(lm, B=8)
    lens = Lens(LensConfig(layer=LAYER, t_text=2), lm, tokenizer)
    lens.stats.set(acts)
    optimizer = torch.optim.AdamW(lens.parameters(), lr=3e-2, weight_decay=0.0)
    named = lambda: (lens.explain(acts)[1][:, word] == tokens[torch.arange(8), pos]).float().mean().item()
    assert named() <= 0.125
    for _ in range(60):
        out = lens(acts, tokens, pos, terms=['current_token'], warm_target=warm_target)
        out['current_token'].backward()
        optimizer.step()
        optimizer.zero_grad()
    assert named() >= 0.75


def test_policy_gradient_equals_reinforce_on_the_sampled_words_with_the_groups_baseline():
    """The loss from the same k samples (same seed), scored naively: each read by the encoder alone, its KL at p,
    the advantage standardised within the sample's group, its log-probability from the sampling pass's own logits."""
    lm, tokenizer = load_model('tiny-llama')
    acts, tokens, pos = batch(lm, B=4)
    lens = Lens(LensConfig(layer=LAYER, t_text=3), lm, tokenizer)
    lens.stats.set(acts)
    torch.manual_seed(0)
    out = lens(acts, tokens, pos, terms=['pg'], pg_k=5)
    loss_pg, mean_kl = out['pg'], out['pg_kl']
    torch.manual_seed(0)
    lens.decoder(acts, 1.0)  # the Gumbel words of the KL draw first
    _, logits, sampled = lens.decoder(acts.repeat(5, 1), 1.0, 'sample')
    log_prob = logits.float().log_softmax(-1).gather(-1, sampled[..., None]).sum((1, 2)).view(5, 4)
    with torch.no_grad():
        kls = torch.stack([kl_div(*next_token_logits(lm, LAYER, tokens, pos, lens.encoder(ids))) for ids in sampled.view(5, 4, 3)])
    advantage = torch.stack([(kls[:, b].mean() - kls[:, b]) / kls[:, b].std() for b in range(4)], 1)
    assert kls.std(0).min() > 1e-3, 'the samples of a group should differ in KL'
    torch.testing.assert_close(mean_kl, kls.mean())
    torch.testing.assert_close(loss_pg, -(advantage * log_prob).mean(), rtol=1e-4, atol=1e-5)


def test_policy_gradient_alone_lowers_the_kl_of_the_sampled_words():
    """w_pg alone (no KL, no warm start): 40 steps on a fixed batch lower the mean KL at p of the decoder's samples."""
    torch.manual_seed(0)
    lm, tokenizer = load_model('tiny-llama')
    acts, tokens, pos = batch(lm, B=8)
    lens = Lens(LensConfig(layer=LAYER, t_text=2), lm, tokenizer)
    lens.stats.set(acts)
    optimizer = torch.optim.AdamW(lens.decoder.parameters(), lr=3e-2, weight_decay=0.0)
    kls = []
    for _ in range(40):
        out = lens(acts, tokens, pos, terms=['pg'], pg_k=8)
        optimizer.zero_grad()
        out['pg'].backward()
        optimizer.step()
        kls.append(out['pg_kl'].item())
    assert sum(kls[-5:]) / 5 < 0.8 * sum(kls[:5]) / 5, kls


def test_real_tokens_by_value():
    from lens import real_tokens
    tokens, pos = torch.arange(10)[None].expand(2, -1) + 100, torch.tensor([1, 8])
    for which, expected in (('previous', [[-100, -100, 100, 101], [105, 106, 107, 108]]),
                            ('current', [[101, 102, 103, 104], [108, 109, -100, -100]]),
                            ('next', [[102, 103, 104, 105], [109, -100, -100, -100]])):
        rows, complete = real_tokens(tokens, pos, 4, which)
        assert rows.tolist() == expected, which
        assert complete.tolist() == [-100 not in row for row in expected], which


def test_embedding_rms_streams_the_embedding_matrix_and_equals_its_formula(monkeypatch):
    """ActivationStats reads the embeddings a few rows at a time: no fp32 tensor as large as [V, d] is made
    (2 GB at a 128k vocabulary, d 4096), and the RMS equals the whole matrix's."""
    import lens as lens_module
    from torch.utils._python_dispatch import TorchDispatchMode
    lm, tokenizer = load_model('tiny-gemma2', dtype='bfloat16')  # sqrt(d)-scaled embeddings

    class LargestFloat32(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
                    self.largest = max(self.largest, t.numel())
            return out

    monkeypatch.setattr(lens_module, 'EMBEDDING_ROWS', 64)
    with LargestFloat32() as mode:
        stats = lens_module.ActivationStats(lm)
    V, d = lm.get_input_embeddings().weight.shape
    assert 0 < mode.largest <= 64 * d < V * d
    expected = (lm.get_input_embeddings().weight.float() * 8.0).pow(2).mean().sqrt()  # Gemma scales by sqrt(d) = 8
    torch.testing.assert_close(stats.embedding_rms, expected, rtol=1e-5, atol=0)
