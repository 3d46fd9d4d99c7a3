"""model.py hooks and dump.py shards on tiny random models. Run: pytest -q tests/test_dump.py"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import ROOT, run_inline, run_script
from dump import Shards
from model import TINY_MODELS, block_output, blocks, embed, load_model, patched, read_activations

LAYER, CTX = 2, 32


def dump_args(corpus, out, model='tiny-gpt2', **extra):
    args = dict(model=model, data_dir=corpus, out_dir=out, layer=LAYER, ctx=CTX, num_train_samples=300,
                num_val_samples=60, samples_per_shard=64, dump_batch_size=16, dtype='float32') | extra
    return ['dump.py'] + [f'--{k}={v}' for k, v in args.items()]


def local_tiny_dir(tmp_path, embedding_scale=1.0):
    """tiny-llama saved as a local HF directory with a 257-token word-level tokenizer; embedding_scale
    multiplies its input embeddings (1e5 gives a residual stream beyond float16's range)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast
    lm, _ = load_model('tiny-llama')
    with torch.no_grad():
        lm.get_input_embeddings().weight.mul_(embedding_scale)
    folder = tmp_path / f'tiny-llama-dir-{embedding_scale:g}'
    lm.save_pretrained(folder)
    vocab = {f'<{i}>': i for i in range(256)} | {'<|endoftext|>': 256}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token='<0>')),
                                        eos_token='<|endoftext|>')
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_tiny_models_are_tiny():
    models = {name: load_model(name)[0] for name in TINY_MODELS}
    assert {name: sum(p.numel() for p in lm.parameters()) for name, lm in models.items()} == {
        'tiny-gpt2': 224_704, 'tiny-llama': 180_928, 'tiny-qwen2': 164_992, 'tiny-gemma2': 164_992, 'tiny-neox': 166_912}
    # both kinds, so the tests of trainable_copy see a tied LM head stay trainable and an untied one frozen
    tied = [name for name, lm in models.items() if lm.get_output_embeddings().weight is lm.get_input_embeddings().weight]
    assert tied == ['tiny-gpt2', 'tiny-qwen2', 'tiny-gemma2']


@pytest.mark.parametrize('name', TINY_MODELS)
def test_one_hot_rows_embed_like_their_ids(name):
    """The decoder feeds its words back as one-hot rows, which must get the embedding layer's own scale."""
    lm, _ = load_model(name)
    ids = torch.arange(257)
    expected = lm.get_input_embeddings().weight * (8.0 if name == 'tiny-gemma2' else 1.0)  # Gemma scales by sqrt(d)
    assert torch.equal(embed(lm, ids), expected)
    assert torch.equal(embed(lm, torch.nn.functional.one_hot(ids).float()), expected)


@pytest.mark.parametrize('name, acts_dtype', [('tiny-gpt2', 'float16'), ('tiny-llama', 'float16'), ('local-dir', 'float16'),
                                              ('tiny-llama', 'bfloat16'), ('tiny-gemma2', 'float16')])
def test_dumped_activations_equal_a_fresh_forward(name, acts_dtype, corpus, tmp_path):
    model = local_tiny_dir(tmp_path) if name == 'local-dir' else name
    out = tmp_path / 'out'
    run_script(*dump_args(corpus, out, model=model, acts_dtype=acts_dtype))
    lm, _ = load_model(model)
    for split, n in (('train', 300), ('val', 60)):
        shards = Shards(str(out), split, model=model, layer=LAYER, ctx=CTX)
        assert len(shards) == n
        acts, tokens, pos = shards.get(np.arange(n))
        assert ((pos >= 8) & (pos < CTX)).all()
        with torch.no_grad():
            hidden = lm(tokens, output_hidden_states=True).hidden_states[LAYER + 1]
        fresh = hidden[torch.arange(n), pos]
        # float16 keeps 11 significant bits, bfloat16 8: one unit in the last place is at most |x| / 2^(bits-1)
        ulp = fresh.abs() / (1024 if acts_dtype == 'float16' else 128)
        assert ((acts - fresh).abs() <= ulp + 1e-5).all() and (acts != fresh.half().float()).any() == (acts_dtype == 'bfloat16')


@pytest.mark.parametrize('name', TINY_MODELS)
def test_early_exit_and_patch(name):
    lm, _ = load_model(name)
    tokens = torch.randint(0, 256, (3, 20))
    pos = torch.tensor([4, 11, 19])
    with torch.no_grad():
        full = lm(tokens, output_hidden_states=True)
        assert torch.equal(block_output(lm, LAYER, input_ids=tokens), full.hidden_states[LAYER + 1])
        values = torch.randn(3, lm.config.hidden_size)
        captured = []
        handle = blocks(lm)[LAYER + 1].register_forward_pre_hook(lambda m, a: captured.append(a[0]))
        with patched(lm, LAYER, pos, values):
            logits = lm(tokens).logits
        handle.remove()
    rows = torch.arange(3)
    changed = (captured[0] != full.hidden_states[LAYER + 1]).any(-1)
    assert changed.tolist() == [[t == p for t in range(20)] for p in pos.tolist()]
    assert torch.equal(captured[0][rows, pos], values)
    logits_changed = (logits - full.logits).abs().amax(-1) > 1e-6
    assert logits_changed.tolist() == [[t >= p for t in range(20)] for p in pos.tolist()]
    assert torch.equal(read_activations(lm, LAYER, tokens, pos), full.hidden_states[LAYER + 1][rows, pos])


def test_interrupted_dump_resumes_to_identical_shards(corpus, tmp_path):
    whole, broken = tmp_path / 'whole', tmp_path / 'broken'
    run_script(*dump_args(corpus, whole))
    args = dump_args(corpus, broken, num_train_samples=3000, samples_per_shard=200, dump_batch_size=2)
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    meta = broken / 'acts' / 'train' / 'meta.json'
    while proc.poll() is None and not (meta.exists() and json.load(open(meta))['shards']):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(json.load(open(meta))['shards'])
    assert 0 < done < 15, 'the kill should land mid-dump'
    run_script(*args)
    run_script(*dump_args(corpus, whole / 'big', num_train_samples=3000, samples_per_shard=200))
    a, b = Shards(str(broken), 'train'), Shards(str(whole / 'big'), 'train')
    assert len(a) == len(b) == 3000
    for x, y in zip(a.get(np.arange(3000)), b.get(np.arange(3000))):
        assert torch.equal(x, y)
    assert not [f for f in os.listdir(broken / 'acts' / 'train') if f.endswith('.tmp') and 'meta' in f]


def test_torchrun_two_ranks_split_the_work(corpus, tmp_path):
    out = tmp_path / 'out'
    proc = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                           *dump_args(corpus, out, num_train_samples=500)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert proc.returncode == 0, proc.stderr[-2000:]
    shards = Shards(str(out), 'train')
    assert {s['name'].split('_')[0] for s in shards.meta['shards']} == {'0', '1'}
    acts, tokens, pos = shards.get(np.arange(len(shards)))
    assert len(shards) == 500
    windows = {(tuple(t), p) for t, p in zip(tokens.tolist(), pos.tolist())}
    assert len(windows) == 500


def test_user_errors(corpus, tmp_path):
    out = tmp_path / 'out'
    cases = [
        (dict(data_dir=tmp_path / 'nope'), 'no corpus in'),
        (dict(model='assets/not-there'), "model directory 'assets/not-there' not found"),
        (dict(layer=4), 'layer=4 is out of range: this model has blocks 0..3'),
        (dict(ctx=4096), 'longer than the model\'s context of 128'),
        (dict(num_train_samples=10 ** 6), 'fewer than the 1000000 samples'),
    ]
    for change, message in cases:
        proc = run_inline(*dump_args(corpus, out, **change))
        assert proc.returncode != 0 and message in proc.stderr, (change, proc.stderr[-500:])
    run_script(*dump_args(corpus, out))
    proc = run_inline(*dump_args(corpus, out, model='tiny-llama'))
    assert "holds a dump made with model='tiny-gpt2'" in proc.stderr
    shard = out / 'acts' / 'train' / 'acts_0_1.bin'
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(SystemExit, match='acts_0_1.bin is truncated'):
        Shards(str(out), 'train')
    with pytest.raises(SystemExit, match="dumped with layer=2, but this run has layer=3"):
        Shards(str(out), 'val', layer=3)


def test_activations_beyond_float16_stop_the_dump_unless_stored_as_bfloat16(corpus, tmp_path):
    model = local_tiny_dir(tmp_path, embedding_scale=1e5)
    proc = run_inline(*dump_args(corpus, tmp_path / 'f16', model=model))
    assert proc.returncode == 1 and "beyond float16's range" in proc.stderr and '--acts_dtype=bfloat16' in proc.stderr
    assert not (tmp_path / 'f16' / 'acts' / 'train' / 'acts_0_0.bin').exists()  # nothing stored as inf
    run_script(*dump_args(corpus, tmp_path / 'bf16', model=model, acts_dtype='bfloat16'))
    acts = Shards(str(tmp_path / 'bf16'), 'train').get(np.arange(300))[0]
    assert torch.isfinite(acts).all() and acts.abs().max() > 65504


@pytest.mark.parametrize('world, accumulation', [(1, 1), (2, 1), (1, 3), (2, 3)])
def test_batch_stream_draws_every_sample_once_per_epoch(world, accumulation):
    from dump import batch_indices
    n, batch_size = 101, 12  # 101 is not a multiple of any micro-batch: batches cross the epoch boundary
    steps = -(-2 * n // batch_size)
    drawn = [i for it in range(steps) for micro in range(accumulation) for rank in range(world)
             for i in batch_indices(7, n, batch_size, it, micro, rank, world, accumulation)]
    assert sorted(drawn[:n]) == list(range(n)) and sorted(drawn[n:2 * n]) == list(range(n))
    assert drawn[:n] != drawn[n:2 * n]  # each epoch has its own order
    assert drawn == [i for it in range(steps) for i in batch_indices(7, n, batch_size, it)]


def test_settings_compare_paths_normalised():
    from dump import same_setting
    assert same_setting('./assets/smollm2-135m/', 'assets/smollm2-135m') and same_setting('data/austen/', 'data/austen')
    assert not same_setting('assets/smollm2-135m', 'assets/other') and not same_setting(15, 16) and same_setting(15, 15)


@pytest.mark.parametrize('name', TINY_MODELS)
def test_bfloat16_load_keeps_fp32_buffers_and_reads_what_hfs_own_bfloat16_forward_gives(name, tmp_path):
    """load_model stores the parameters in bf16 and leaves the buffers as from_pretrained(dtype=bf16) does
    (rotary inv_freq in fp32: rounded to bf16 its angle error grows with the position); the activations
    dump.py reads equal HF's own bf16 forward of the same weights, bit for bit."""
    from transformers import AutoModelForCausalLM
    folder = local_tiny_dir(tmp_path) if name == 'tiny-llama' else load_model(name)[0].save_pretrained(tmp_path) or tmp_path
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
    loaded = [load_model(name, dtype='bfloat16')[0]] + ([load_model(folder, dtype='bfloat16')[0]] if name == 'tiny-llama' else [])
    for lm in loaded:  # built from its config, and (tiny-llama) from a local directory as a hub model loads
        assert {p.dtype for p in lm.parameters()} == {torch.bfloat16}
        inv_freq = {n: b.dtype for n, b in lm.named_buffers() if 'inv_freq' in n}
        assert (name == 'tiny-gpt2') == (not inv_freq) and set(inv_freq.values()) <= {torch.float32}
        tokens, pos = torch.randint(0, 256, (3, 20)), torch.tensor([4, 11, 19])
        with torch.no_grad():
            expected = hf(tokens, output_hidden_states=True).hidden_states[LAYER + 1][torch.arange(3), pos]
        assert torch.equal(read_activations(lm, LAYER, tokens, pos), expected)


@pytest.mark.parametrize('name', TINY_MODELS)
def test_full_precision_logits_are_the_lms_logits_in_fp32(name):
    """The KL's logits from the final hidden states through an fp32 head (Gemma-2's soft cap included)
    equal HF's own logits in fp32, and stay fp32 (not bf16-rounded) when the LM is stored in bf16."""
    from model import full_precision_logits
    tokens = torch.randint(0, 256, (2, 12))
    for dtype in ('float32', 'bfloat16'):
        lm, _ = load_model(name, dtype=dtype)
        with torch.no_grad():
            logits = full_precision_logits(lm, lm.base_model(tokens).last_hidden_state)
            if dtype == 'float32':
                torch.testing.assert_close(logits, lm(tokens).logits, rtol=1e-5, atol=1e-5)
        assert logits.dtype == torch.float32 and not torch.equal(logits, logits.bfloat16().float())


def test_tf32_is_set_through_fp32_precision_not_the_deprecated_flags():
    """torch 2.9+ deprecates allow_tf32, and raises when it is mixed with fp32_precision: use_tf32 sets only
    the new API (it runs on a CPU too: the settings are global flags, read by CUDA kernels)."""
    import warnings
    from model import use_tf32
    matmul, conv = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('error')  # a deprecated setter would warn
            use_tf32()
        assert torch.backends.cuda.matmul.fp32_precision == 'tf32' and torch.backends.cudnn.conv.fp32_precision == 'tf32'
    finally:
        torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = matmul, conv
