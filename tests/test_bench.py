"""bench.py on the tiny model: the fast and naive paths agree, the dump comparison runs, a missing GPU is
a one-line message. Run: pytest -q tests/test_bench.py"""
import re

import pytest
import torch

from conftest import run_script

TINY = ['bench.py', '--model=tiny-gpt2', '--layer=2', '--encoder_layer=2', '--ctx=32', '--t_text=4', '--batch_size=2',
        '--warmup_steps=1', '--num_steps=1', '--dtype=float32']


def test_compare_naive_losses_agree(tmp_path):
    proc = run_script(*TINY, f'--out_dir={tmp_path}', '--compare_naive=True')
    lines = proc.stdout.strip().splitlines()
    assert 'random tokens' in proc.stdout  # no shards in tmp_path: says which data it used
    assert 'fast path:' in proc.stdout and 'naive path:' in proc.stdout
    assert re.search(r"computing A in the step \(acts_source='tokens'\): \d+ ms/batch, \d+% of the fast step", proc.stdout)
    diff = float(re.search(r'max relative loss difference.*: (\S+)$', proc.stdout, re.M).group(1))
    assert diff < 1e-4
    assert re.fullmatch(r'speedup_vs_naive: \d+\.\d\d', lines[-1])


def test_dump_early_exit_equals_full_forward(tmp_path):
    proc = run_script(*TINY, f'--out_dir={tmp_path}', '--bench=dump')
    assert float(re.search(r'max \|A early - A full\|: (\S+)', proc.stdout).group(1)) < 1e-5
    assert re.fullmatch(r'speedup_vs_full: \d+\.\d\d', proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has a GPU')
def test_cuda_without_gpu_names_the_fix():
    proc = run_script(*TINY, '--device=cuda', check=False)
    assert proc.returncode != 0
    assert '--device=cpu' in proc.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize('setting', ['--grad_checkpointing=True', '--lora_rank=4'])
def test_settings_of_the_lm_copies_without_unfreezing_name_the_fix(setting):
    proc = run_script(*TINY, setting, check=False)
    assert proc.returncode != 0
    assert '--unfreeze_at=0' in proc.stderr.strip().splitlines()[-1]
