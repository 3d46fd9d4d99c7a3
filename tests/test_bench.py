"""bench.py on a tiny model: it times train.py's own step, the fast and naive paths agree from the same state,
the dump comparison runs, user errors name the fix. Run: pytest -q tests/test_bench.py"""
import re

import pytest
import torch

from conftest import make_corpus, run_inline, run_script

TINY = ['--model=tiny-gpt2', '--layer=2', '--ctx=32', '--dtype=float32', '--warmup_steps=1', '--num_steps=2']
TRAIN = TINY + ['--t_text=4', '--batch_size=2', '--periodic_eval_samples=8']


@pytest.fixture(scope='module')
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp('bench')
    run_script('dump.py', *TINY[:4], f"--data_dir={make_corpus(folder / 'corpus')}", f'--out_dir={folder}',
               '--num_train_samples=64', '--num_val_samples=16')
    return folder


def test_compare_naive_losses_agree_on_train_pys_step(shards):
    """The default's step (low-rank copies from iteration 0, the warm start): the naive path from the same state
    gives the same loss terms, and the step time is reported as train.py's ms/iter."""
    proc = run_script('bench.py', *TRAIN, f'--out_dir={shards}', '--compare_naive=True')
    lines = proc.stdout.strip().splitlines()
    assert 'iter 0: unfroze the decoder' in proc.stdout  # train.py's own setup and step
    assert re.search(r"^fast path: [\d.]+ samples/s, \d+ ms/step \(train.py's ms/iter\)", proc.stdout, re.M)
    assert re.search(r'^  warm_start +\d+ ms', proc.stdout, re.M) and 'naive path:' in proc.stdout
    terms = re.search(r'max relative loss difference.*\((.*)\): (\S+)$', proc.stdout, re.M)
    assert {'kl', 'lm', 'warm', 'kl_real_text', 'loss'} <= set(terms.group(1).split(', ')) and float(terms.group(2)) < 1e-3
    assert re.fullmatch(r'speedup_vs_naive: \d+\.\d\d', lines[-1])


def test_compare_naive_with_the_policy_gradient_names_the_fix(shards):
    proc = run_inline('bench.py', *TRAIN, f'--out_dir={shards}', '--compare_naive=True', '--w_pg=1')
    assert proc.returncode != 0 and 'has no policy gradient: drop --w_pg' in proc.stderr, proc.stderr[-800:]


def test_bench_times_the_policy_gradients_step(shards):
    """--w_pg with pg_from=0: the timed steps run the policy gradient, and the time split shows its pass."""
    proc = run_script('bench.py', *TRAIN, f'--out_dir={shards}', '--w_pg=1', '--pg_k=2', '--pg_from=0')
    assert re.search(r'^  policy_gradient +\d+ ms', proc.stdout, re.M), proc.stdout[-2000:]


def test_dump_early_exit_equals_full_forward():
    proc = run_script('bench.py', *TINY, '--batch_size=2', '--bench=dump')
    assert float(re.search(r'max \|A early - A full\|: (\S+)', proc.stdout).group(1)) < 1e-5
    assert re.fullmatch(r'speedup_vs_full: \d+\.\d\d', proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has a GPU')
def test_cuda_without_gpu_names_the_fix():
    proc = run_inline('bench.py', *TRAIN, '--device=cuda')
    assert proc.returncode != 0
    assert '--device=cpu' in proc.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize('setting', ['--grad_checkpointing=True', '--lora_rank=4'])
def test_settings_of_the_lm_copies_without_unfreezing_name_the_fix(setting):
    proc = run_inline('bench.py', *TRAIN, '--unfreeze_at=-1', '--lora_rank=0', setting)
    assert proc.returncode != 0 and 'unfreeze_at' in proc.stderr.strip().splitlines()[-1]
