"""train.py end to end on tiny-gpt2: resume exactness, SIGTERM, DDP, unfreezing, user errors.
Run: pytest -q tests/test_train.py"""
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, make_corpus, run_inline, run_script

SHARED = dict(model='tiny-gpt2', layer=2, ctx=32, dtype='float32')
TRAIN = SHARED | dict(t_text=3, batch_size=4, max_iters=12, eval_interval=6, periodic_eval_samples=8, log_interval=2,
                      ckpt_interval=100, warmup_iters=2, alpha_warmup_iters=4, tau_hold_iters=3, tau_decay_iters=6,
                      num_print_samples=1, unfreeze_at=-1, lora_rank=0, encoder_init='zero', w_current_token=0.0)  # frozen, the cheapest step, unless a test unfreezes
TWO_RANKS = pytest.mark.xdist_group('two_ranks')  # test.sh's processes: one of them runs the module's torchrun pair


def args(settings):
    return [f'--{k}={v}' for k, v in settings.items()]


@pytest.fixture(scope='module')
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp('train')
    corpus, out = make_corpus(folder / 'corpus'), folder / 'out'
    run_script('dump.py', *args(SHARED | dict(data_dir=corpus, out_dir=out, num_train_samples=200, num_val_samples=20)))
    return out


def train(out, run_name, **change):
    return run_script('train.py', *args(TRAIN | dict(out_dir=out, run_name=run_name) | change))


def final_params(out, run_name):
    return torch.load(os.path.join(out, run_name, 'ckpt.pt'), weights_only=True)['lens']


def test_sigterm_then_resume_equals_an_uninterrupted_run(shards):
    train(shards, 'whole')
    command = [sys.executable, 'train.py', *args(TRAIN | dict(out_dir=shards, run_name='cut'))]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, 'OMP_NUM_THREADS': '1'})
    for line in proc.stdout:
        if line.startswith('iter 4:'):
            proc.send_signal(signal.SIGTERM)
            break
    output = line + proc.stdout.read()
    assert proc.wait() == 0 and 'stopped by signal at iteration' in output, output[-2000:]
    stopped_at = torch.load(os.path.join(shards, 'cut', 'ckpt.pt'), weights_only=True)['iter_num']
    assert 4 <= stopped_at < 12
    resumed = run_script('train.py', *args(TRAIN | dict(out_dir=shards, init_from='resume'))).stdout
    assert f'resuming cut from iteration {stopped_at}' in resumed
    whole, cut = final_params(shards, 'whole'), final_params(shards, 'cut')
    assert whole.keys() == cut.keys()
    for key in whole:
        torch.testing.assert_close(cut[key], whole[key], rtol=0, atol=1e-6)
    assert any((whole[k] - torch.eye(len(whole[k]))).abs().max() > 1e-4 for k in whole if k.endswith('proj.weight'))


def read_log(out, run_name):
    with open(os.path.join(out, run_name, 'log.jsonl')) as f:
        return [json.loads(line) for line in f]


TIMING = ('samples_per_s', 'ms_per_iter', 'peak_memory_mib')


def test_log_jsonl_of_a_run_killed_and_resumed_equals_an_uninterrupted_runs(shards):
    settings = TRAIN | dict(out_dir=shards, ckpt_interval=4)
    train(shards, 'log_whole', ckpt_interval=4)
    whole = read_log(shards, 'log_whole')
    # a row per log_interval steps and per eval (iterations 0, 6, 12), each with what the issue asks for
    assert [(r['split'], r['iter']) for r in whole] == [('val', 0), ('train', 2), ('train', 4), ('train', 6), ('val', 6),
                                                         ('train', 8), ('train', 10), ('train', 12), ('val', 12)]
    assert {'loss', 'kl', 'entropy', 'fve', 'lr', 'tau', 'alpha', *TIMING} <= set(whole[1])
    assert {'kl', 'kl_text_shuffled', 'kl_mean', 'kl_text_top_tokens', 'kl_text_current_token', 'kl_downstream', 'kl_downstream_mean',
            'kl_text_prev_tokens', 'kl_text_prev_tokens_frozen', 'kl_lens_words_frozen', 'kl_control', 'kl_downstream_control',
            'lens_beats_control', 'explanations_unique', 'fve'} <= set(whole[0])
    assert whole[0]['kl_control'] == min(whole[0]['kl_text_prev_tokens'], whole[0]['kl_text_prev_tokens_frozen'])
    assert whole[0]['kl'] == pytest.approx(whole[0]['kl_mean'])  # iteration 0 is mean ablation
    proc = subprocess.Popen([sys.executable, 'train.py', *args(settings | dict(run_name='log_cut'))], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    for line in proc.stdout:
        if line.startswith('iter 10:'):  # ckpt.pt of iteration 8 is written: the rows after it are stale
            proc.kill()
            break
    proc.wait()
    path = os.path.join(shards, 'log_cut', 'log.jsonl')
    assert '"iter": 10, "split": "train"' in open(path).read()  # a stale row, written after the checkpoint
    with open(path, 'a') as f:
        f.write('{"iter": 11, "split": "tra')  # a row cut off by the kill
    run_script('train.py', *args(settings | dict(run_name='log_cut', init_from='resume')))
    resumed = read_log(shards, 'log_cut')
    assert [(r['split'], r['iter']) for r in resumed] == [(r['split'], r['iter']) for r in whole]
    for got, want in zip(resumed, whole):
        assert set(got) == set(want)
        assert [got[k] for k in want if k not in TIMING + ('split',)] == pytest.approx(
            [want[k] for k in want if k not in TIMING + ('split',)], rel=1e-4, abs=1e-6)


UNFREEZING = dict(max_iters=4, unfreeze_at=2, ckpt_interval=3, keep_last=2,  # ckpt_3.pt: a step after unfreezing,
                  w_pg=1.0, pg_k=2, pg_from=3)  # where the policy gradient's samples follow the sample, not the rank


def torchrun(out, **settings):
    proc = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', 'train.py',
                           *args(TRAIN | dict(out_dir=out) | UNFREEZING | settings)],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope='module')
def two_rank_runs(shards):
    """Through unfreezing at iteration 2: 2 ranks with DDP, 2 ranks with FSDP, 1 rank with 2 accumulation steps."""
    logs = {sharding: torchrun(shards, run_name=sharding, fsdp=sharding == 'fsdp') for sharding in ('ddp', 'fsdp')}
    logs['ddp_lora'] = torchrun(shards, run_name='ddp_lora', lora_rank=2)
    return logs | dict(accumulated=train(shards, 'accumulated', **UNFREEZING | dict(gradient_accumulation_steps=2)).stdout)


def eval_lines(log):
    return [list(map(float, re.findall(r'\d+\.\d+', line))) for line in log.splitlines() if line.startswith('eval iter')]


@TWO_RANKS
@pytest.mark.parametrize('sharding', ['ddp', 'fsdp'])
def test_two_ranks_equal_one_rank_with_two_micro_steps_through_unfreezing(shards, two_rank_runs, sharding):
    """DDP, and FSDP with the copies sharded per block, train as 1 rank does with 2 accumulation steps (fp32:
    parameters within 2e-5); the periodic eval, its shuffled baseline included (sample i+1's explanation over
    the whole eval set, not within a rank's slice), gives the same numbers on 1 and 2 ranks. The keys' bias is
    left out: softmax ignores a constant added to every score, so its exact gradient is zero and AdamW turns
    what rounding leaves of it, which differs between any two orders of summation, into updates."""
    log = two_rank_runs[sharding]
    assert '(2 ranks x 1 accumulation x 2)' in log and 'iter 2: unfroze' in log
    assert 'max parameter difference across 2 ranks: 0' in log and re.search(r'peak RSS [\d,]+ MiB per rank', log)
    two_ranks, accumulated = final_params(shards, sharding), final_params(shards, 'accumulated')
    assert two_ranks.keys() == accumulated.keys()
    for key in two_ranks:
        got, want = two_ranks[key], accumulated[key]
        if key.endswith('attn.c_attn.bias'):  # GPT-2's queries, keys and values: the keys' third left out
            d = len(got) // 3
            got, want = torch.cat([got[:d], got[2 * d:]]), torch.cat([want[:d], want[2 * d:]])
        torch.testing.assert_close(got, want, rtol=0, atol=2e-5)
    evals, expected = eval_lines(log), eval_lines(two_rank_runs['accumulated'])
    assert len(evals) == 2 and evals[1][1] != evals[1][0]  # trained: the shuffled baseline is not the lens
    for got, want in zip(evals, expected):
        assert got == pytest.approx(want, rel=1e-3, abs=1e-4)


@TWO_RANKS
def test_low_rank_copies_train_in_step_on_two_ranks(two_rank_runs):
    log = two_rank_runs['ddp_lora']
    assert 'iter 2: unfroze the decoder\'s and encoder\'s copies of the LM (rank-2 updates' in log
    assert 'max parameter difference across 2 ranks: 0' in log


@TWO_RANKS
def test_fsdp_resume_equals_the_uninterrupted_run_and_its_lens_folder_explains_in_one_process(shards, two_rank_runs):
    import shutil
    import numpy as np
    from dump import Shards
    from checkpoint import load_checkpoint, load_lens
    from model import load_model
    (shards / 'fsdp_cut').mkdir()
    shutil.copyfile(shards / 'fsdp' / 'ckpt_3.pt', shards / 'fsdp_cut' / 'ckpt.pt')  # saved gathered, one file
    log = torchrun(shards, run_name='fsdp_cut', fsdp=True, init_from='resume')
    assert 'resuming fsdp_cut from iteration 3' in log
    whole, cut = final_params(shards, 'fsdp'), final_params(shards, 'fsdp_cut')
    assert whole.keys() == cut.keys() and any('.lm_copy.' in k for k in whole)
    for key in whole:
        torch.testing.assert_close(cut[key], whole[key], rtol=0, atol=1e-6)
    lm, tokenizer = load_model('tiny-gpt2')
    folder = load_checkpoint(str(shards / 'fsdp' / 'lens'))  # written by the final eval, gathered from the shards
    lens = load_lens(folder, lm, tokenizer, 'tiny-gpt2')
    for key, value in lens.state_dict().items():
        torch.testing.assert_close(value, whole[key], rtol=0, atol=0)
    explanations, ids, recon = lens.explain(Shards(shards, 'val').get(np.arange(4))[0])
    assert len(explanations) == 4 and ids.shape == (4, 3) and torch.isfinite(recon).all()
    proc = run_inline('train.py', *args(TRAIN | dict(out_dir=shards, run_name='fsdp', init_from='resume')))
    assert proc.returncode == 1 and 'was saved with fsdp=True: resume it with --fsdp=True' in proc.stderr


def test_unfreeze_at_trains_the_lm_copies_from_that_iteration(shards):
    from model import load_model
    base = load_model('tiny-gpt2')[0].state_dict()
    log = train(shards, 'unfreeze', max_iters=3, unfreeze_at=3).stdout
    assert 'iter 3: unfroze' in log
    at_unfreeze = final_params(shards, 'unfreeze')
    copies = [k for k in at_unfreeze if '.lm_copy.' in k]
    assert {k.split('.')[0] for k in copies} == {'decoder', 'encoder'}
    assert all(torch.equal(at_unfreeze[k], base[k.split('lm_copy.')[1]]) for k in copies)
    train(shards, 'unfreeze', max_iters=5, unfreeze_at=3, init_from='resume', grad_checkpointing=True)
    later = final_params(shards, 'unfreeze')
    assert any(not torch.equal(later[k], base[k.split('lm_copy.')[1]]) for k in copies)
    measured = run_script('eval.py', f'--out_dir={shards}', f'--ckpt={shards}/unfreeze/ckpt.pt', '--eval_samples=8', '--best_of_k=1',
                          '--dtype=float32').stdout  # the trained copies explain, not the frozen LM
    assert 'checkpoint: ' in measured and 'iteration 5' in measured and 'KL mean' in measured


def test_low_rank_copies_resume_exactly_and_their_lens_holds_only_the_updates(shards):
    import shutil
    lora = dict(max_iters=4, unfreeze_at=1, lora_rank=2, ckpt_interval=2, keep_last=2)
    assert 'iter 1: unfroze the decoder\'s and encoder\'s copies of the LM (rank-2 updates' in train(shards, 'lora', **lora).stdout
    (shards / 'lora_cut').mkdir()
    shutil.copyfile(shards / 'lora' / 'ckpt_2.pt', shards / 'lora_cut' / 'ckpt.pt')
    train(shards, 'lora_cut', **lora, init_from='resume')
    whole, cut = final_params(shards, 'lora'), final_params(shards, 'lora_cut')
    copies = [k for k in whole if '.lm_copy.' in k]
    assert whole.keys() == cut.keys() and copies and all(k.endswith(('.down', '.up')) for k in copies)
    for key in whole:
        torch.testing.assert_close(cut[key], whole[key], rtol=0, atol=1e-6)
    assert any(whole[k].abs().max() > 0 for k in copies if k.endswith('.up'))
    measured = run_script('eval.py', f'--out_dir={shards}', f'--lens={shards}/lora/lens', '--eval_samples=8', '--best_of_k=1',
                          '--dtype=float32').stdout
    assert 'iteration 4' in measured and 'KL mean' in measured


def test_two_runs_of_one_seed_are_equal_from_their_low_rank_start(shards):
    """torch starts from another seed in every process: the low-rank updates' random start must come from the seed."""
    lora = dict(max_iters=2, unfreeze_at=0, lora_rank=2)
    for name, seed in (('seed_a', 1337), ('seed_b', 1337), ('seed_c', 7)):
        train(shards, name, **lora, seed=seed)
    first, second, other = (final_params(shards, name) for name in ('seed_a', 'seed_b', 'seed_c'))
    downs = [k for k in first if k.endswith('.down')]
    assert downs and all(torch.equal(first[k], second[k]) for k in first)
    assert not any(torch.equal(first[k], other[k]) for k in downs)


def test_schedules_by_value(shards):
    log = train(shards, 'schedules', max_iters=12, log_interval=1, warmup_iters=2, learning_rate=1e-3, min_lr=1e-4,
                tau_hold_iters=3, tau_decay_iters=6, tau_start=1.0, tau_end=0.2, alpha_warmup_iters=4).stdout
    logged = re.findall(r'^iter (\d+):.*\| tau (\S+) alpha (\S+) lr (\S+) \|', log, re.M)
    tau, alpha, lr = ({int(k) - 1: float(v[i]) for k, *v in logged} for i in range(3))  # 'iter k' logs step k-1
    assert lr[0] < lr[1] < lr[2] == pytest.approx(1e-3)  # warmup reaches the peak, then cosine to min_lr
    assert lr[11] == pytest.approx(1e-4 + 0.5 * (1 + math.cos(math.pi * 0.9)) * 9e-4, rel=1e-2)
    assert tau[0] == tau[3] == 1.0 and tau[6] == pytest.approx(0.6) and tau[9] == tau[11] == pytest.approx(0.2)
    assert alpha[0] == 0.0 and alpha[2] == 0.5 and alpha[4] == alpha[11] == 1.0


@pytest.mark.parametrize('schedule, expected', [  # lr at steps 2..11, after 2 warmup steps, by the formula
    (dict(lr_schedule='cosine_with_restarts', lr_restart_iters=3, lr_restart_mult=2.0),  # cycles at steps 2, 5, 11
     [1e-4 + 0.5 * (1 + math.cos(math.pi * x)) * 9e-4 for x in (0, 1 / 3, 2 / 3, 0, 1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 0)]),
    (dict(lr_schedule='polynomial', lr_power=2.0), [1e-4 + (1 - k / 10) ** 2 * 9e-4 for k in range(10)]),
    (dict(lr_schedule='exponential', lr_gamma=0.7), [max(1e-4, 1e-3 * 0.7 ** k) for k in range(10)]),
])
def test_lr_schedules_by_value(shards, schedule, expected):
    log = train(shards, 'lr_' + schedule['lr_schedule'], max_iters=12, log_interval=1, eval_interval=100, warmup_iters=2,
                learning_rate=1e-3, min_lr=1e-4, **schedule).stdout
    lr = {int(k) - 1: float(v) for k, v in re.findall(r'^iter (\d+):.* lr (\S+) \|', log, re.M)}
    assert [lr[k] for k in range(2, 12)] == pytest.approx(expected, rel=1e-2)


def test_keep_last_keeps_the_newest_numbered_checkpoints_and_resume_continues_the_newest(shards):
    train(shards, 'numbered', max_iters=8, ckpt_interval=2, keep_last=2, eval_interval=100)
    run = shards / 'numbered'
    assert sorted(f.name for f in run.glob('ckpt*.pt')) == ['ckpt.pt', 'ckpt_6.pt', 'ckpt_8.pt']
    newest = torch.load(run / 'ckpt_8.pt', weights_only=True)
    assert newest['iter_num'] == 8 and torch.load(run / 'ckpt_6.pt', weights_only=True)['iter_num'] == 6
    for key, value in final_params(shards, 'numbered').items():
        assert torch.equal(value, newest['lens'][key])
    resumed = train(shards, 'numbered', max_iters=10, ckpt_interval=2, keep_last=2, eval_interval=100, init_from='resume')
    assert 'resuming numbered from iteration 8' in resumed.stdout
    assert sorted(f.name for f in run.glob('ckpt*.pt')) == ['ckpt.pt', 'ckpt_10.pt', 'ckpt_8.pt']


def test_wandb_offline_logs_into_the_given_run_id_and_records_the_job(shards, tmp_path):
    log = run_script('train.py', *args(TRAIN | dict(out_dir=shards, run_name='logged', max_iters=4, wandb_log=True,
                                                   wandb_mode='offline', wandb_run_id='cl-test-run')),
                     env=dict(WANDB_DIR=str(tmp_path), SLURM_JOB_ID='4242')).stdout
    assert 'SLURM job 4242' in log
    run_files = list(tmp_path.glob('wandb/offline-run-*-cl-test-run/run-cl-test-run.wandb'))  # config inside, protobuf
    assert len(run_files) == 1 and b'slurm_job_id' in run_files[0].read_bytes() and b'4242' in run_files[0].read_bytes()
    assert torch.load(shards / 'logged' / 'ckpt.pt', weights_only=True)['wandb_id'] == 'cl-test-run'


def test_training_from_tokens_equals_training_from_the_dump(shards, tmp_path):
    """acts_source='tokens' draws the dump's windows and computes A in the step: the same samples, A within
    the dump's float16 rounding, and the same losses."""
    import numpy as np
    from dump import Shards, TokenWindows
    from model import load_model
    corpus, index = shards.parent / 'corpus', np.array([5, 0, 199, 17])
    dumped = Shards(shards, 'train').get(index)
    computed = TokenWindows(load_model('tiny-gpt2')[0], corpus, 'train', 200, 2, 32, 8, 1337).get(index)
    assert torch.equal(computed[1], dumped[1]) and torch.equal(computed[2], dumped[2])
    torch.testing.assert_close(computed[0], dumped[0], rtol=1e-3, atol=1e-3)  # float16 storage
    losses = {source: re.findall(r'^iter \d+: loss (\S+)', train(shards, f'from_{source}', acts_source=source,
                                 data_dir=corpus, num_train_samples=200, num_val_samples=20, max_iters=6).stdout, re.M)
              for source in ('shards', 'tokens')}
    assert len(losses['tokens']) == 3
    assert list(map(float, losses['tokens'])) == pytest.approx(list(map(float, losses['shards'])), rel=1e-3)
    # eval.py takes acts_source and the corpus from the checkpoint: no shards needed there either
    out = run_script('eval.py', '--dtype=float32', f"--ckpt={shards / 'from_tokens' / 'ckpt.pt'}", f'--out_dir={tmp_path}',
                     '--eval_samples=8', '--best_of_k=1').stdout
    assert re.search(r'^KL mean \(nats\)\s+\d', out, re.M), out


@pytest.mark.parametrize('change, message', [
    (dict(batch_size=5, gradient_accumulation_steps=2), 'batch_size=5 does not divide across 1 ranks x 2'),
    (dict(decoder_prompt='Explain this:'), "must contain '<embed>' exactly once"),
    (dict(t_text=0), 't_text=0'),
    (dict(encoder_layer=7), 'encoder_layer=7 is out of range'),
    (dict(layer=1), 'dumped with layer=2, but this run has layer=1'),
    (dict(model='tiny-llama'), "dumped with model='tiny-gpt2', but this run has model='tiny-llama'"),
    (dict(init_from='resume', run_name='never-trained'), "init_from='resume' but there is no checkpoint"),
    (dict(dtype='float16'), "float16 would need loss scaling"),
    (dict(dtype='int8'), "dtype='int8' loads the frozen LM with bitsandbytes, which needs a CUDA GPU"),
    (dict(warm_start_target='later'), "warm_start_target='later'"),
    (dict(w_current_token=1.0, warm_start_target='next'), "and 'next' (the tokens after p) has none"),
    (dict(grad_checkpointing=True), "grad_checkpointing=True recomputes the activations of the unfrozen LM copies"),
    (dict(acts_source='memory'), "acts_source='memory': use 'shards' (run dump.py first) or 'tokens'"),
    (dict(lr_schedule='step'), "lr_schedule='step': use one of cosine, linear, polynomial"),
    (dict(fsdp=True), "fsdp=True shards the LM copies over the ranks of torchrun"),
    (dict(fsdp=True, unfreeze_at=0, lora_rank=2), "drop fsdp (DDP), or set lora_rank=0"),
    (dict(lora_rank=2), "lora_rank=2 sets what the unfrozen LM copies train, and unfreeze_at=-1 makes none"),
    (dict(w_pg=1.0, pg_k=1), "pg_k=1: the policy gradient's baseline is the mean KL of a group of samples"),
    (dict(downstream_positions=0), "downstream_positions=0: the periodic eval's KL after p needs 1 to ctx - 1 = 31"),
])
def test_user_errors(shards, change, message):
    proc = run_inline('train.py', *args(TRAIN | dict(out_dir=shards, run_name='bad') | change))
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-1000:]


def test_a_run_whose_steps_are_all_non_finite_stops_with_a_message(shards, tmp_path):
    import shutil
    import numpy as np
    broken = tmp_path / 'out'
    shutil.copytree(shards / 'acts', broken / 'acts')
    for acts in (broken / 'acts' / 'train').glob('acts_*.bin'):
        np.full(acts.stat().st_size // 2, np.nan, np.float16).tofile(acts)
    proc = run_script('train.py', *args(TRAIN | dict(out_dir=broken, run_name='nan', max_iters=30, eval_interval=100)),
                      check=False)
    assert proc.returncode == 1 and proc.stdout.count('non-finite loss, update skipped') == 10, proc.stdout[-2000:]
    assert 'the last 10 steps all had a non-finite loss' in proc.stderr


def test_resume_takes_the_lens_from_the_checkpoint_and_refuses_a_contradicting_setting(shards):
    train(shards, 'keep', max_iters=2)
    proc = run_inline('train.py', *args(TRAIN | dict(out_dir=shards, run_name='keep', init_from='resume', t_text=4,
                                                      max_iters=3)))
    assert proc.returncode == 1 and "was trained with t_text=3, but this run has t_text=4" in proc.stderr, proc.stderr[-800:]
    bare = {k: v for k, v in TRAIN.items() if k not in ('model', 'layer', 'ctx', 't_text')}  # all from dump and checkpoint
    log = run_script('train.py', *args(bare | dict(out_dir=shards, run_name='keep', init_from='resume', max_iters=3))).stdout
    assert 'resuming keep from iteration 2' in log
    assert torch.load(os.path.join(shards, 'keep', 'ckpt.pt'), weights_only=True)['lens_config']['t_text'] == 3


def test_model_layer_and_ctx_come_from_the_dump(shards):
    bare = {k: v for k, v in TRAIN.items() if k not in ('model', 'layer', 'ctx')}
    log = run_script('train.py', *args(bare | dict(out_dir=shards, run_name='bare', max_iters=1,
                                                    dump_batch_size=4))).stdout
    assert 'config: --dump_batch_size is a setting of dump.py, not of train.py: ignored here' in log
    assert torch.load(os.path.join(shards, 'bare', 'ckpt.pt'), weights_only=True)['config']['model'] == 'tiny-gpt2'


def test_the_lens_words_carry_each_activations_own_information(tmp_path):
    """A tiny task a working lens solves: explain block 0 of tiny-gpt2 in one token. A lens whose Â
    ignores A (collapsed explanations, a constant reconstruction) has the KL of a shuffled explanation,
    so the trained lens must beat its shuffled baseline, as train.py's periodic eval measures it."""
    corpus, out = make_corpus(tmp_path / 'corpus'), tmp_path / 'out'
    shared = dict(model='tiny-gpt2', data_dir=corpus, out_dir=out, layer=0, ctx=32, dtype='float32')
    run_script('dump.py', *args(shared | dict(num_train_samples=2000, num_val_samples=200, min_pos=2)))
    log = run_script('train.py', *args(shared | dict(
        t_text=1, max_iters=120, batch_size=16, learning_rate=3e-3, warmup_iters=5, eval_interval=120,
        periodic_eval_samples=100, run_name='tiny', w_lm=0.01, unfreeze_at=-1, lora_rank=0, encoder_init='zero',
        # the defaults are for a pretrained LM on real text: random bytes have no next token to warm-start on,
        # and a random model has no induction heads to re-read the words with, so they go last
        warm_start_weight=0.0, w_current_token=0.0, encoder_prompt='Summary: <text>'))).stdout
    final = read_log(out, 'tiny')[-1]
    assert final['split'] == 'val' and final['iter'] == 120 and re.search(r"text_top_tokens \d", log)
    assert final['kl'] < 0.92 * final['kl_text_shuffled'], log[-1500:]
