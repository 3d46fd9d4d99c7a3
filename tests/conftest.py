"""Shared fixtures: a random token corpus and ways to run the project's scripts. Run: pytest -q tests"""
import contextlib
import io
import json
import os
import runpy
import subprocess
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
torch.set_num_threads(1)  # tiny models: a second thread costs more in synchronisation than it gives


def run_script(*args, env=None, check=True):
    """Run `python <args>` from the repo root; return the CompletedProcess (stdout + stderr text)."""
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, 'OMP_NUM_THREADS': '1', **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def run_inline(*args):
    """`python <args>` run in this process (runpy, as __main__), for the scripts' user errors: the imports are paid
    once, not per run. Returns what a test reads of a CompletedProcess: returncode, stdout and stderr (where a
    SystemExit's message goes, as Python prints it)."""
    out, err, code, argv, grad = io.StringIO(), io.StringIO(), 0, sys.argv, torch.is_grad_enabled()
    sys.argv = [str(a) for a in args]
    try:  # what a script may change for its own process is restored: eval.py turns gradients off, seeds torch
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), contextlib.chdir(ROOT), \
                torch.random.fork_rng(devices=[]):
            runpy.run_path(os.path.join(ROOT, args[0]), run_name='__main__')
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
        err.write('' if isinstance(stop.code, int) or stop.code is None else f'{stop.code}\n')
    finally:
        sys.argv = argv
        torch.set_grad_enabled(grad)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def make_corpus(folder):
    """A byte-level 'corpus' of random documents for the tiny models (vocab 257, eot 256)."""
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (('train', 6000), ('val', 2000)):
        tokens = rng.integers(0, 256, n).astype(np.uint16)
        tokens[rng.integers(0, n, n // 200)] = 256
        tokens.tofile(folder / f'{split}.bin')
    json.dump(dict(tokenizer='bytes', vocab_size=257, eot_id=256, dtype='uint16'), open(folder / 'meta.json', 'w'))
    return folder


@pytest.fixture
def corpus(tmp_path):
    return make_corpus(tmp_path / 'corpus')
