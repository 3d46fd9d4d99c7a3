"""
What a run leaves on disk and reads back: train.py's checkpoints (ckpt.pt to resume from, best.pt, the
numbered ckpt_<iter>.pt of keep_last), log.jsonl, and the lens folder to share (config.json and
lens.safetensors: no pickle, so a lens from anyone is safe to load). A lens names its model by what it
is, not by the folder it lay in: its hub name where known, its shape and a fingerprint of its weights.
"""
import hashlib
import json
import os
import re
import shutil
from dataclasses import asdict

import torch
from safetensors.torch import load_file, save_file

from dump import same_setting
from lens import Lens, LensConfig
from model import blocks

FINGERPRINT_VALUES = 64  # the first and last values of every weight tensor: a fine-tune of the same shape moves them


def fingerprint(lm):
    """A hash of the frozen LM's weights, the same in any folder and storage dtype: a few values of every
    parameter, rounded to bfloat16 (a model loaded in bf16 or fp32 from the same file agrees)."""
    digest = hashlib.sha256()
    for name, p in sorted(lm.named_parameters()):
        flat = p.detach().flatten()
        picked = torch.cat([flat[:FINGERPRINT_VALUES], flat[-FINGERPRINT_VALUES:]]).to('cpu', torch.bfloat16)
        digest.update(name.encode() + picked.view(torch.int16).numpy().tobytes())
    return digest.hexdigest()[:16]


def model_signature(lm, model):
    """What a lens must match in the model it is loaded onto. hub_name: `model` when it is no local folder
    (a hub id), else the name the folder's config.json records, if any."""
    emb = lm.get_input_embeddings()
    hub_name = model if not os.path.isdir(model) else (lm.config.name_or_path or None)
    hub_name = None if hub_name and os.path.isdir(hub_name) else hub_name
    return dict(hub_name=hub_name, d_model=emb.embedding_dim, vocab_size=emb.num_embeddings, num_blocks=len(blocks(lm)),
                fingerprint=fingerprint(lm))


def save_checkpoint(path, payload):
    """torch.save through a temporary file renamed into place: a reader never sees half a checkpoint."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(payload, path + '.tmp')
    os.replace(path + '.tmp', path)


def save_latest(run_dir, payload, iter_num, keep_last):
    """ckpt.pt and, with keep_last, its numbered twin ckpt_<iter>.pt (a hard link where the filesystem has
    them: no second copy on disk), removing the numbered ones older than the last keep_last."""
    latest = os.path.join(run_dir, 'ckpt.pt')
    save_checkpoint(latest, payload)
    if keep_last > 0:
        numbered = os.path.join(run_dir, f'ckpt_{iter_num}.pt')
        if os.path.exists(numbered):
            os.remove(numbered)
        try:
            os.link(latest, numbered)
        except OSError:
            shutil.copyfile(latest, numbered)
        kept = sorted(int(m[1]) for m in map(re.compile(r'ckpt_(\d+)\.pt$').match, os.listdir(run_dir)) if m)
        for old in kept[:-keep_last]:
            os.remove(os.path.join(run_dir, f'ckpt_{old}.pt'))


def save_lens_folder(lens, folder, model, iter_num=None, train_config=None, state=None):
    """Share a trained lens as <folder>/config.json (its settings and the model it explains) and
    <folder>/lens.safetensors (its trainable parameters and activation statistics). A lens with unfrozen LM
    copies is saved whole, the copies included. state: the lens's state dict when lens.state_dict() would not
    give it whole (gathered from FSDP's shards)."""
    os.makedirs(folder, exist_ok=True)
    # cloned: the tied weights of an LM copy share memory, which safetensors refuses to write
    state = lens.state_dict() if state is None else state
    save_file({k: v.detach().cpu().clone(memory_format=torch.contiguous_format) for k, v in state.items()},
              os.path.join(folder, 'lens.safetensors.tmp'))
    with open(os.path.join(folder, 'config.json.tmp'), 'w') as f:
        json.dump(dict(model=model, **model_signature(lens.lm, model), unfrozen=lens.decoder.lm_copy is not None,
                       iter_num=iter_num, lens_config=asdict(lens.cfg), config=dict(train_config or {}, model=model)), f, indent=1)
    # safetensors writes its files readable by their owner alone, whatever the umask: given the json's mode, a
    # lens folder on a shared disk is as readable as any other file its user writes
    shutil.copymode(os.path.join(folder, 'config.json.tmp'), os.path.join(folder, 'lens.safetensors.tmp'))
    for name in ('lens.safetensors', 'config.json'):  # renamed into place: a reader never sees half a file
        os.replace(os.path.join(folder, name + '.tmp'), os.path.join(folder, name))


def load_checkpoint(path):
    """A checkpoint of train.py, or a lens folder of save_lens_folder as the same dict (less the optimizer)."""
    if os.path.isdir(path):
        config, tensors = os.path.join(path, 'config.json'), os.path.join(path, 'lens.safetensors')
        if not (os.path.exists(config) and os.path.exists(tensors)):
            raise SystemExit(f"{path} is not a lens folder (config.json and lens.safetensors): pass the folder "
                             f"that train.py writes next to best.pt, <run dir>/lens")
        return json.load(open(config)) | dict(lens=load_file(tensors))
    if not os.path.exists(path):
        raise SystemExit(f"checkpoint {path} not found: train one with train.py, or pass --ckpt=path/to/ckpt.pt "
                         f"or --lens=path/to/lens_folder")
    return torch.load(path, map_location='cpu', weights_only=True, mmap=True)  # mmap: ranks share the page cache


def newest_run(out_dir, files):
    """The run folder in out_dir that saved one of `files` most recently, or '' when none did."""
    saved = [(os.path.getmtime(path), run) for run in (os.listdir(out_dir) if os.path.isdir(out_dir) else [])
             for path in (os.path.join(out_dir, run, f) for f in files) if os.path.exists(path)]
    return max(saved, default=(0, ''))[1]


def checkpoint_to_resume(out_dir, run_name, settings, given):
    """(run name, checkpoint) that init_from='resume' continues: run_name's ckpt.pt, else the newest in out_dir.
    A setting given (`given`, its value in `settings`) that contradicts the checkpoint's lens is refused."""
    run_name = run_name or newest_run(out_dir, ['ckpt.pt'])
    path = os.path.join(out_dir, run_name, 'ckpt.pt')
    if not run_name or not os.path.exists(path):
        raise SystemExit(f"init_from='resume' but there is no checkpoint {path if run_name else 'in ' + out_dir}: "
                         f"train with init_from='scratch' first, or pass --run_name of a run in {out_dir}")
    checkpoint = load_checkpoint(path)
    if checkpoint['config'].get('fsdp', False) != settings['fsdp']:  # FSDP's optimizer state is keyed by name, DDP's by index
        raise SystemExit(f"{path} was saved with fsdp={not settings['fsdp']}: resume it with --fsdp={not settings['fsdp']}")
    trained = checkpoint['lens_config'] | dict(model=checkpoint['config']['model'])
    clash = [k for k in trained if (k in given or k == 'model') and not same_setting(settings[k], trained[k])]
    if clash:
        raise SystemExit(f"{path} was trained with {', '.join(f'{k}={trained[k]!r}' for k in clash)}, but this run has "
                         f"{', '.join(f'{k}={settings[k]!r}' for k in clash)}: drop those settings to resume it, "
                         f"or start a new run with init_from='scratch'")
    return run_name, checkpoint


def find_checkpoint(lens_folder, ckpt, run_name, out_dir):
    """--lens or --ckpt, else best.pt (or ckpt.pt) of run_name, else of the run in out_dir saved most recently."""
    if lens_folder and ckpt:
        raise SystemExit(f"lens={lens_folder!r} and ckpt={ckpt!r} both name the lens to load: pass one of them")
    if lens_folder or ckpt:
        return lens_folder or ckpt
    run = run_name or newest_run(out_dir, ['best.pt', 'ckpt.pt'])
    for name in ('best.pt', 'ckpt.pt'):
        if run and os.path.exists(os.path.join(out_dir, run, name)):
            return os.path.join(out_dir, run, name)
    where = os.path.join(out_dir, run_name) if run_name else out_dir
    raise SystemExit(f"no checkpoint (best.pt or ckpt.pt) in {where}: train one with `python train.py <config>`, "
                     f"or pass --ckpt=path/to/best.pt")


def load_lens(checkpoint, lm, tokenizer, model):
    """The trained lens of a checkpoint (from load_checkpoint) on the frozen LM `lm`, loaded from `model`.
    A lens works only on the model it was trained on, wherever that lies: another model, of the same shape
    or not, is refused before anything is built."""
    found = model_signature(lm, model)
    saved = {k: checkpoint[k] for k in found if checkpoint.get(k) is not None}
    wrong = [k for k in saved if k != 'hub_name' and saved[k] != found[k]]
    if wrong:
        describe = lambda name, sig: f"{name} ({', '.join(f'{k}={sig[k]}' for k in wrong)})"
        raise SystemExit(f"this lens was trained on {describe(checkpoint.get('hub_name') or checkpoint['config']['model'], saved)}, "
                         f"but the model given is {describe(model, found)}: a lens works only on the model it was "
                         f"trained on, load it onto {checkpoint.get('hub_name') or checkpoint['config']['model']}")
    lens = Lens(LensConfig(**checkpoint['lens_config']), lm, tokenizer)
    if checkpoint['unfrozen']:
        lens.unfreeze()
    lens.load_state_dict(checkpoint['lens'])
    return lens.to(lm.device)


def open_log(run_dir, resumed_iter=None):
    """<run dir>/log.jsonl for appending, one JSON row per logged step and per periodic eval, for plots without
    wandb. A run resumed at resumed_iter keeps the rows its checkpoint has seen (train rows up to that
    iteration, evals before it: the eval at that iteration runs again) and drops the rest, a line cut off by a
    kill included; a new run starts it empty."""
    path, kept = os.path.join(run_dir, 'log.jsonl'), []
    if resumed_iter is not None and os.path.exists(path):
        for line in open(path):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # the last line of a killed run
                continue
            if row['iter'] < resumed_iter or row['iter'] == resumed_iter and row['split'] == 'train':
                kept.append(json.dumps(row) + '\n')
    os.makedirs(run_dir, exist_ok=True)
    with open(path + '.tmp', 'w') as f:
        f.writelines(kept)
    os.replace(path + '.tmp', path)
    return open(path, 'a')


def read_log(path):
    """The rows of a run's log.jsonl, [] when there is none."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
