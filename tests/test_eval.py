"""eval.py: each metric against its formula, then dump -> train -> eval on tiny-gpt2 (results.json, the
HTML reports, the lens against its baselines) and every error that must stop it early.
Run: pytest -q tests/test_eval.py"""
import ast
import base64
import html
import json
import math
import os
import re
import shutil

import pytest
import torch
import torch.nn.functional as F

import baselines
import eval as ev
from checkpoint import load_checkpoint, load_lens, save_lens_folder
from conftest import make_corpus, run_inline, run_script
from lens import Lens, LensConfig, kl_div, patched_kls, reconstruction_metrics
from model import frozen, load_model, next_token_logits, read_activations

pytestmark = pytest.mark.xdist_group('eval')  # test.sh's processes: one of them trains the module's run

REQUIRED = ['explanations_unique', 'kl_lens', 'kl_zero', 'kl_mean', 'kl_resample', 'kl_text_prev_tokens', 'kl_text_next_tokens', 'kl_text_current_token', 'kl_text_shuffled', 'kl_text_empty',
            'fve', 'nll_explanation', 'nll_real_text', 'edit_rises', 'edit_rises_other', 'edit_logp_gain', 'edit_logp_gain_other']
BASELINES = ['zero', 'mean', 'resample', 'text_prev_tokens', 'text_prev_tokens_frozen', 'lens_words_frozen', 'text_next_tokens', 'text_current_token', 'text_shuffled', 'text_empty',
             'text_top_tokens', 'text_model_continuation', 'text_current_and_top_tokens', 'text_current_and_continuation']
HOSTILE = 'Hi <script>alert(1)</script> & "quotes"\nline two'


def test_kl_div_is_the_kl_of_the_softmaxes():
    p, q = torch.tensor([[0.5, 0.5], [0.9, 0.1]]), torch.tensor([[0.25, 0.75], [0.5, 0.5]])
    expected = (p * (p / q).log()).sum(-1)
    torch.testing.assert_close(kl_div(p.log() + 3.0, q.log() - 1.0), expected)  # logits: any shift
    assert abs(expected[0].item() - (0.5 * math.log(2) + 0.5 * math.log(2 / 3))) < 1e-6


def test_reconstruction_metrics_match_their_formulas():
    acts = torch.tensor([[1.0, 0.0], [3.0, 0.0]])  # mean [2, 0]: total variance 2
    recon = torch.tensor([[1.0, 1.0], [3.0, 0.0]])  # squared error 1
    m = reconstruction_metrics(recon, acts)
    assert m['mse'] == pytest.approx(1 / 4)
    assert m['fve'] == pytest.approx(1 - 1 / 2)
    assert m['cos'] == pytest.approx((1 / math.sqrt(2) + 1) / 2)
    assert m['norm_ratio'] == pytest.approx((math.sqrt(2) + 1) / 2)
    assert reconstruction_metrics(acts.mean(0).expand_as(acts), acts)['fve'] == pytest.approx(0.0)  # mean ablation


def test_kl_recovered_and_distinct_ratio():
    assert ev.kl_recovered(0.25, 1.0) == pytest.approx(0.75)
    assert ev.kl_recovered(2.0, 1.0) == pytest.approx(-1.0)  # worse than the baseline
    assert ev.kl_recovered(0.0, 0.0) is None
    assert ev.distinct_ratio(torch.tensor([[1, 1, 2, 3], [5, 5, 5, 5]])) == pytest.approx((3 / 4 + 1 / 4) / 2)


def test_nll_is_the_mean_next_token_loss_after_the_prefix():
    lm, _ = load_model('tiny-gpt2')
    prefix, ids = torch.tensor([256, 72, 105]), torch.tensor([[10, 20, 30, 40], [7, 7, 7, 7]])
    expected = torch.zeros(2)
    for b in range(2):
        for t in range(4):  # one forward per token: an independent path to the same number
            logits = lm(torch.cat([prefix, ids[b, :t]])[None]).logits[0, -1]
            expected[b] -= F.log_softmax(logits, -1)[ids[b, t]] / 4
    torch.testing.assert_close(ev.nll(lm, prefix, ids), expected, rtol=1e-5, atol=1e-5)


def test_kl_in_batches_sorted_by_position_equals_one_call():
    lm, tokenizer = load_model('tiny-gpt2')
    generator = torch.Generator().manual_seed(0)
    tokens, pos = torch.randint(0, 256, (8, 20), generator=generator), torch.randint(0, 20, (8,), generator=generator)
    acts = read_activations(lm, 1, tokens, pos)
    patch = acts + torch.randn(acts.shape, generator=generator)
    logits_a, logits_r = next_token_logits(lm, 1, tokens, pos, patch)
    expected = kl_div(logits_a, logits_r)
    kls, got_a, got_r = patched_kls(lm, 1, tokens, pos, dict(lens=patch, zero=torch.zeros_like(patch)), batch_size=3)
    torch.testing.assert_close(kls['lens'], expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got_a, logits_a, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_r, logits_r, rtol=1e-4, atol=1e-4)
    assert (kls['zero'] > kls['lens']).float().mean() > 0.5  # the zero vector is the larger perturbation


@pytest.mark.parametrize('name', ['tiny-gpt2', 'tiny-llama'])
def test_model_continuation_is_greedy_generation_from_each_windows_own_prefix(name):
    lm, _ = load_model(name)
    generator = torch.Generator().manual_seed(0)
    tokens, pos = torch.randint(0, 256, (7, 20), generator=generator), torch.tensor([3, 19, 0, 10, 7, 15, 3])
    ids, logits_at_p = baselines.model_continuation(lm, tokens, pos, 5, batch_size=3)  # padded batches, in order of p
    for b in range(7):  # one sample at a time, no padding, no cache: an independent path to the same tokens
        sequence = tokens[b, :pos[b] + 1]
        for _ in range(5):
            sequence = torch.cat([sequence, lm(sequence[None]).logits[0, -1].argmax()[None]])
        assert torch.equal(ids[b], sequence[pos[b] + 1:]), b
    torch.testing.assert_close(logits_at_p, next_token_logits(lm, 1, tokens, pos)[0], rtol=1e-4, atol=1e-4)


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    """A random byte corpus, a tiny-gpt2 dump at block 2, a lens trained for 60 iterations, and the
    output of eval.py in both modes."""
    root = tmp_path_factory.mktemp('eval')
    corpus = make_corpus(root / 'corpus')
    out = root / 'out'
    common = ['--model=tiny-gpt2', f'--data_dir={corpus}', f'--out_dir={out}', '--layer=2', '--ctx=32', '--dtype=float32']
    run_script('dump.py', *common, '--num_train_samples=2000', '--num_val_samples=200', '--min_pos=2',
               '--samples_per_shard=1000')
    run_script('train.py', *common, '--encoder_layer=2', '--t_text=4', '--max_iters=60', '--batch_size=16',
               '--learning_rate=3e-3', '--warmup_iters=5', '--alpha_warmup_iters=20', '--tau_hold_iters=20',
               '--tau_decay_iters=40', '--eval_interval=30', '--periodic_eval_samples=100', '--ckpt_interval=60',
               '--run_name=r1', '--unfreeze_at=-1', '--lora_rank=0', '--encoder_init=zero', '--warm_start_target=next', '--w_current_token=0',
               '--warm_start_iters=100')
    shards = run_script('eval.py', *common, '--eval_samples=500', '--best_of_k=3')
    text = run_script('eval.py', *common, f'--text={HOSTILE}')
    return dict(root=root, out=out, common=common, run_dir=out / 'r1', shards=shards.stdout, text=text.stdout)


def test_the_model_baselines_read_its_own_top_tokens_and_continuation_after_the_token_at_p():
    lm, tokenizer = load_model('tiny-llama')
    tokens = torch.randint(0, 200, (5, 16), generator=torch.Generator().manual_seed(1))
    pos = torch.tensor([3, 9, 4, 15, 7])
    acts = read_activations(lm, 1, tokens, pos)
    lens = Lens(LensConfig(layer=1, t_text=4, encoder_init='identity'), lm, tokenizer)
    lens.stats.set(acts)
    patches = baselines.baseline_patches(lens, lm, acts, tokens, pos, torch.zeros(5, 4, dtype=torch.long), acts, 2)
    continuation = baselines.model_continuation(lm, tokens, pos, 4, 2)[0]
    top = next_token_logits(lm, 1, tokens, pos)[0].topk(4, -1).indices  # the LM's own logits at p, another path
    current = tokens[torch.arange(5), pos][:, None]
    expected = dict(text_top_tokens=top, text_model_continuation=continuation, text_current_token=current,
                    text_current_and_top_tokens=torch.cat([current, top[:, :3]], 1),
                    text_current_and_continuation=torch.cat([current, continuation[:, :3]], 1))
    for name, words in expected.items():
        torch.testing.assert_close(patches[name], lens.encoder(words).float(), msg=name)
    assert not torch.allclose(patches['text_current_and_top_tokens'], patches['text_top_tokens'])


def test_best_of_k_picks_each_samples_lowest_score_among_its_first_k():
    from eval import best_of_k_kl
    kls = torch.tensor([[1.0, 4.0], [2.0, 3.0], [0.5, 9.0]])  # [K=3 explanations, n=2 samples]
    errors = torch.tensor([[5.0, 2.0], [1.0, 1.0], [9.0, 0.0]])
    assert best_of_k_kl(kls, kls, 2) == pytest.approx((1.0 + 3.0) / 2) and best_of_k_kl(kls, kls, 3) == pytest.approx((0.5 + 3.0) / 2)
    assert best_of_k_kl(kls, errors, 2) == pytest.approx((2.0 + 3.0) / 2) and best_of_k_kl(kls, errors, 3) == pytest.approx((2.0 + 9.0) / 2)


def test_results_json_holds_every_metric_and_baseline(run):
    assert 'checkpoint: ' in run['shards'] and 'r1/best.pt' in run['shards']  # found the only run by itself
    assert 'the val split has 200 samples: measuring all 200' in run['shards']
    results = json.load(open(run['run_dir'] / 'results.json'))
    m = results['metrics']
    assert results['num_samples'] == 200 and results['iter_num'] > 0 and results['config']['model'] == 'tiny-gpt2'
    for key in REQUIRED + [f'kl_{b}_{s}' for b in ['lens'] + BASELINES for s in ('median', 'p90')]:
        assert isinstance(m[key], float) and math.isfinite(m[key]), key
    for b in BASELINES:
        assert {f'kl_{b}_recovered', f'mse_{b}', f'fve_{b}', f'cos_{b}', f'norm_ratio_{b}'} <= set(m)
    assert m['kl_recovered_zero'] == m['kl_zero_recovered'] == pytest.approx(1 - m['kl_lens'] / m['kl_zero'])
    for b in ['lens'] + BASELINES:  # summed over p+1..p+4, and per offset
        assert len(m[f'kl_downstream_{b}_per_offset']) == 4 and m[f'kl_downstream_{b}'] == pytest.approx(sum(m[f'kl_downstream_{b}_per_offset']))
    assert m['downstream_positions'] == 4 and m['downstream_samples'] + m['downstream_left_out'] == 200
    assert 0 < m['downstream_left_out'] < 200  # ctx 32, p from 2 to 31: some windows end within 4 tokens of p
    assert m['fve_mean'] == pytest.approx(0.0, abs=0.05)  # the train mean on val data
    assert len(results['explanations']) == len(results['kl_lens_per_sample']) == 200
    assert m['explanations_unique'] == len(set(results['explanations'])) / 200  # over every sample, not the report's
    assert set(m['kl_best_of_k']) == set(m['kl_best_of_k_by_reconstruction']) == {'1', '2', '3'}  # 1, 2 and best_of_k itself
    assert m['kl_best_of_k']['1'] == m['kl_best_of_k_by_reconstruction']['1']
    assert all(m['kl_best_of_k'][k] <= m['kl_best_of_k_by_reconstruction'][k] for k in ('2', '3'))  # the oracle bounds it
    readings = {name: m[f'kl_{name}'] for name in ('text_prev_tokens', 'text_prev_tokens_frozen')}
    assert m['control'] == min(readings, key=readings.get) and m['kl_control'] == min(readings.values())
    assert m['kl_downstream_control'] == min(m['kl_downstream_text_prev_tokens'], m['kl_downstream_text_prev_tokens_frozen'])
    assert m['lens_vs_control'] == pytest.approx(m['kl_lens'] / m['kl_control'])
    assert m['lens_vs_control_downstream'] == pytest.approx(m['kl_downstream_lens'] / m['kl_downstream_control'])
    per_sample = torch.tensor(results['kl_lens_per_sample'])
    assert 0 < m['lens_beats_control'] < 1 and (per_sample < m['kl_control']).float().mean() > 0
    for key in ('first_word_is_top_token', 'first_word_is_current_token', 'last_word_is_current_token',
                'lens_beats_current_token', 'lens_beats_model_continuation', 'lens_beats_current_and_continuation'):
        assert 0 <= m[key] <= 1, key
    assert max(m['first_word_is_current_token'], m['last_word_is_current_token']) <= m['words_include_current_token']
    for label in ('the control: the lower KL', 'lens / control at p', 'KL mean', 'KL recovered by lens', 'KL p+1..p+4 summed', 'KL at p+4', 'FVE', 'NLL/token of real text',
                  'best of 3', 'SAELens kl_div_score'):
        assert label in run['shards']
    assert run['shards'].strip().splitlines()[-1].endswith('report.html')


def test_the_trained_lens_beats_resample_and_mean_ablation(run):
    m = json.load(open(run['run_dir'] / 'results.json'))['metrics']
    assert m['kl_lens'] < m['kl_resample'], m
    assert m['kl_lens'] < m['kl_mean'], m


def test_shard_report_shows_the_table_and_samples(run):
    page = (run['run_dir'] / 'report.html').read_text()
    assert page.count('<script>') == 1 and 'http' not in page  # offline, one inline script
    images = re.findall(r'<img alt="([^"]+)" src="([^"]*)"', page)
    assert [alt for alt, _ in images] == ['learning curve', 'per-sample KL distributions', 'KL per offset after p']
    assert page.count('src=') == 3 and all(src.startswith('data:image/png;base64,') for _, src in images)
    for _, src in images:  # each a real PNG, inline
        assert base64.b64decode(src.split(',', 1)[1])[:8] == b'\x89PNG\r\n\x1a\n'
    for name in ['lens'] + BASELINES:
        assert f'<th>{name}</th>' in page
    assert page.count('class="sample"') == 40
    assert 'next with A' in page and 'data-expl=' in page


def test_text_report_holds_every_token_and_explanation_escaped(run):
    assert run['text'].strip().splitlines()[-1].endswith('report_text.html')
    rows = [line for line in run['text'].splitlines() if re.match(r'\s*\d+\s{2}', line)]
    assert len(rows) == len(HOSTILE.encode())  # one byte token per position, every one explained
    page = (run['run_dir'] / 'report_text.html').read_bytes().decode()  # read_text would turn a '\r' into '\n'
    assert '<script>alert' not in page and page.count('<script>') == 1
    text_div = re.search(r'<div class="text">(.*?)</div>', page, re.S).group(1)
    assert html.unescape(re.sub(r'<[^>]+>', '', text_div)).replace('\u21b5\n', '\n') == HOSTILE
    for line in rows:
        explanation = ast.literal_eval(re.search(r"\d+\.\d{4}  (.*)$", line).group(1))  # printed with repr
        shown = html.escape(explanation.replace('\n', '\u21b5'))  # newlines made visible
        assert f'data-expl="{shown}"' in page and f'<td>{shown}</td>' in page


@pytest.mark.parametrize('args, message', [
    (['--layer=1'], 'explains block 2, but this run has layer=1'),
    (['--model=tiny-llama', '--text=Hi'], 'this lens was trained on tiny-gpt2 (fingerprint='),
    (['--text='], 'the text to explain is empty'),
    ([f'--text={"x" * 129}'], "longer than tiny-gpt2's context of 128"),
    (['--text_file=/no/such/file.txt'], 'not found'),
    (['--edit= the ball'], 'an edit replaces the explanation of a token of a text'),
    (['--downstream_positions=32'], 'downstream_positions=32: the KL after p needs 1 to ctx - 1 = 31 positions'),
    (['--pick_k=0'], "pick_k=0: the lens's words are greedy (1) or the one nearest A of K >= 2 sampled"),
])
def test_errors_name_cause_and_fix(run, args, message):
    proc = run_inline('eval.py', *run['common'], *args)
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr
    assert message in proc.stderr.strip().splitlines()[-1], proc.stderr


def test_missing_checkpoint_and_missing_shards(run, tmp_path):
    common = [c for c in run['common'] if not c.startswith('--out_dir')]
    proc = run_inline('eval.py', *common, f'--out_dir={tmp_path}')
    assert proc.returncode == 1 and 'no checkpoint (best.pt or ckpt.pt) in' in proc.stderr and 'train.py' in proc.stderr
    proc = run_inline('eval.py', *common, f'--out_dir={tmp_path}', f"--ckpt={run['run_dir'] / 'best.pt'}")
    assert proc.returncode == 1 and 'no activation shards' in proc.stderr and 'dump.py' in proc.stderr


@pytest.fixture(scope='module')
def shared(run):
    """The lens folder train.py wrote beside best.pt: the same lens, without the optimizer or a pickle."""
    folder, best = run['run_dir'] / 'lens', torch.load(run['run_dir'] / 'best.pt', weights_only=True)
    shared = load_checkpoint(str(folder))
    assert shared['iter_num'] == best['iter_num'] and shared['lens_config'] == best['lens_config']
    assert set(shared['lens']) == set(best['lens']) and all(torch.equal(shared['lens'][k], v) for k, v in best['lens'].items())
    return folder


def test_a_lens_folder_explains_and_measures_as_its_checkpoint(run, shared):
    no_model = [c for c in run['common'] if not c.startswith(('--model', '--layer'))]  # the folder names them
    text = run_script('eval.py', f'--lens={shared}', f'--text={HOSTILE}', '--dtype=float32').stdout  # no run, no shards
    rows = lambda out: [line for line in out.splitlines() if re.match(r'\s*\d+\s{2}', line)]
    assert rows(text) == rows(run['text']) and len(rows(text)) == len(HOSTILE.encode())
    run_script('eval.py', *no_model, f'--lens={shared}', '--eval_samples=500', '--best_of_k=3')
    got, want = (json.load(open(folder / 'results.json')) for folder in (shared, run['run_dir']))
    assert got['metrics'] == want['metrics'] and got['explanations'] == want['explanations']
    assert {'config.json', 'lens.safetensors', 'report.html', 'report_text.html'} <= set(os.listdir(shared))
    assert '<img alt="learning curve"' in (shared / 'report.html').read_text()  # from <run dir>/log.jsonl, above the folder
    proc = run_inline('eval.py', *run['common'], f'--lens={shared}', '--layer=1')
    assert proc.returncode == 1 and "explains block 2, but this run has layer=1" in proc.stderr
    assert 'or pass another --lens' in proc.stderr


def test_picked_words_are_each_activations_nearest_of_its_samples_and_eval_measures_them(run, shared, tmp_path):
    from lens import explain_all
    lm, tokenizer = load_model('tiny-gpt2')
    lens = load_lens(load_checkpoint(str(shared)), lm, tokenizer, 'tiny-gpt2').eval()
    acts = torch.load(run['run_dir'] / 'best.pt', weights_only=True)['lens']['stats.mean'] + torch.randn(5, 64)
    torch.manual_seed(0)
    texts, ids, recon = explain_all(lens, acts, 8, pick_k=4)
    torch.manual_seed(0)  # the same draws, one explanation per row of A repeated 4 times
    all_texts, all_ids, all_recon = lens.explain(acts.repeat(4, 1), 'sample')
    errors = (all_recon.float() - acts.repeat(4, 1)).pow(2).sum(-1).view(4, 5)
    for b, k in enumerate(errors.argmin(0).tolist()):
        assert texts[b] == all_texts[k * 5 + b] and torch.equal(ids[b], all_ids[k * 5 + b])
    assert len(set(errors.argmin(0).tolist())) > 1  # not always the same draw
    folder = shutil.copytree(shared, tmp_path / 'lens')  # eval.py writes its results beside the lens
    no_model = [c for c in run['common'] if not c.startswith(('--model', '--layer'))]
    picked = run_script('eval.py', *no_model, f'--lens={folder}', '--eval_samples=50', '--best_of_k=2', '--pick_k=4').stdout
    assert "the lens's words picked from 4 sampled by their reconstruction of A" in picked
    results = json.load(open(folder / 'results.json'))
    assert results['config']['pick_k'] == 4 and results['num_samples'] == 50


@pytest.mark.parametrize('name, shape, differs', [
    ('tiny-llama', None, 'fingerprint'),
    ('tiny-gpt2', dict(n_embd=32), 'd_model'),
    ('tiny-gpt2', dict(vocab_size=300), 'vocab_size'),
    ('tiny-gpt2', dict(n_layer=2), 'num_blocks'),  # block 2 out of range
    ('tiny-gpt2', dict(), 'fingerprint'),  # the same shape, other weights: another model under the lens's model name
])
def test_a_lens_is_refused_on_another_model_naming_both(shared, name, shape, differs):
    from transformers import GPT2Config, GPT2LMHeadModel
    lm, tokenizer = load_model(name)
    if shape is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(7)
            lm = frozen(GPT2LMHeadModel(GPT2Config(**dict(vocab_size=257, n_positions=128, n_embd=64, n_layer=4, n_head=4) | shape)), 'cpu')
    checkpoint = load_checkpoint(str(shared))
    with pytest.raises(SystemExit) as refused:
        load_lens(checkpoint, lm, tokenizer, name)
    message = str(refused.value)
    assert f"this lens was trained on tiny-gpt2 ({differs}={checkpoint[differs]}" in message
    assert f"but the model given is {name} ({differs}=" in message and message.endswith('load it onto tiny-gpt2')


def test_a_lens_loads_onto_its_model_from_any_folder(shared):
    """The folder's config.json names the model by its shape and weights: the same weights under another path load."""
    lm, tokenizer = load_model('tiny-gpt2')
    checkpoint = load_checkpoint(str(shared))
    assert len(checkpoint['fingerprint']) == 16 and checkpoint['hub_name'] == 'tiny-gpt2'
    lens = load_lens(checkpoint, lm, tokenizer, '/elsewhere/my-copy-of-tiny-gpt2')
    assert torch.equal(lens.encoder.proj.weight, checkpoint['lens']['encoder.proj.weight'])


def test_a_folder_without_a_lens_is_refused(tmp_path):
    with pytest.raises(SystemExit, match='is not a lens folder \\(config.json and lens.safetensors\\): pass the folder'):
        load_checkpoint(str(tmp_path))


def test_an_unfrozen_lens_is_shared_whole(tmp_path):
    lm, tokenizer = load_model('tiny-gpt2')  # tied embeddings: each LM copy holds one tensor under two names
    lens = Lens(LensConfig(layer=2, t_text=4), lm, tokenizer)
    lens.stats.set(torch.randn(16, 64) * 3 + 1)
    lens.unfreeze()
    with torch.no_grad():
        for p in lens.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_lens_folder(lens, str(tmp_path / 'lens'), 'tiny-gpt2')
    modes = {name: (tmp_path / 'lens' / name).stat().st_mode for name in ('config.json', 'lens.safetensors')}
    assert modes['lens.safetensors'] == modes['config.json']  # readable by whoever may read the user's other files
    loaded = load_lens(load_checkpoint(str(tmp_path / 'lens')), lm, tokenizer, 'tiny-gpt2')
    want, got = lens.state_dict(), loaded.state_dict()
    assert loaded.decoder.lm_copy is not None and set(got) == set(want) and any('lm_copy' in k for k in got)
    assert all(torch.equal(got[k], want[k]) for k in want)
    acts = torch.randn(5, 64) * 3
    (words, ids, recon), (words2, ids2, recon2) = lens.explain(acts), loaded.explain(acts)
    assert words == words2 and torch.equal(recon, recon2)


def test_edit_shows_three_predictions_and_moves_the_edited_one(run, shared):
    out = run_script('eval.py', f'--lens={shared}', '--text=Hello world', '--edit=zq zq zq', '--dtype=float32').stdout
    rows = [line for line in out.splitlines() if re.match(r'\s*\d+\s{2}', line)]
    assert len(rows) == 1 and rows[0].split()[0] == '10'  # the last token only
    tops = {line.split(':')[0].strip(): line.split(':', 1)[1] for line in out.splitlines() if line.strip().startswith('next with')}
    assert set(tops) == {'next with A', 'next with Â', 'next with edit'}
    assert tops['next with edit'].split('(KL')[0].strip() != tops['next with Â'].strip()
    page = (shared / 'report_text.html').read_text()
    assert '<th>next with the edit</th>' in page and 'zq zq zq' in page and 'data-edit=' in page


def test_the_control_reads_the_real_tokens_ending_at_p_with_the_encoder_and_with_the_frozen_lm_bare():
    """control_patches against an independent path: the encoder on tokens p-3..p (fewer at the window's start), and the
    frozen LM's block output at the last of [end-of-text, those tokens], no prompt."""
    from baselines import control_patches
    lm, tokenizer = load_model('tiny-llama')
    tokens = torch.randint(0, 200, (5, 16), generator=torch.Generator().manual_seed(2))
    pos = torch.tensor([3, 9, 1, 15, 0])
    lens = Lens(LensConfig(layer=1, t_text=4), lm, tokenizer)
    lens.stats.set(read_activations(lm, 1, tokens, pos))
    torch.nn.init.normal_(lens.encoder.proj.weight, std=0.05)
    patches = control_patches(lens, tokens, pos, batch_size=2)
    for b, p in enumerate(pos.tolist()):
        words = tokens[b, max(0, p - 3):p + 1][None]
        bare = lm.base_model(torch.cat([torch.tensor([[tokenizer.eot_id]]), words], 1), output_hidden_states=True)
        torch.testing.assert_close(patches['text_prev_tokens'][b], lens.encoder(words)[0].float(), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(patches['text_prev_tokens_frozen'][b], bare.hidden_states[2][0, -1], rtol=1e-4, atol=1e-4)
