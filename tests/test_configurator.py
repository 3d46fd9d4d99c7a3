"""configurator.py: overrides, type checks and unknown keys. Run: pytest -q tests/test_configurator.py"""
import os

import pytest

from conftest import ROOT
from configurator import configure, given_keys


def settings():
    return dict(learning_rate=1e-3, compile=True, run_name='', max_iters=10, wandb_id=None, layer=6)


def test_overrides_and_coercions():
    s = settings()
    config = configure(s, ['--learning_rate=0', '--compile=false', '--run_name=123', '--max_iters=20', '--wandb_id=None'])
    assert s['learning_rate'] == 0.0 and isinstance(s['learning_rate'], float)
    assert s['compile'] is False
    assert s['run_name'] == '123'
    assert s['max_iters'] == 20
    assert s['wandb_id'] is None
    assert set(config) == set(settings()) and config['max_iters'] == 20
    configure(s, ['--compile=True', '--wandb_id=abc', '--run_name=None'])
    assert s['compile'] is True and s['wandb_id'] == 'abc' and s['run_name'] is None
    configure(s, ['--run_name=1e3', '--wandb_id=0x10'])
    assert s['run_name'] == '1e3' and s['wandb_id'] == '0x10'


def test_config_file_applies_and_rejects_typos(tmp_path):
    good = tmp_path / 'good.py'
    good.write_text("learning_rate = 3e-4\nmax_iters = 5\nmin_pos = 4  # a dump.py key: accepted, ignored here\n")
    s = settings()
    configure(s, [str(good), '--max_iters=7'])
    assert s['learning_rate'] == 3e-4 and s['max_iters'] == 7 and 'min_pos' not in s
    bad = tmp_path / 'bad.py'
    bad.write_text("lerning_rate = 3e-4\n")
    with pytest.raises(SystemExit, match="unknown key 'lerning_rate'.*did you mean 'learning_rate'"):
        configure(settings(), [str(bad)])


@pytest.mark.parametrize('arg, message', [
    ('--lerning_rate=1', "unknown key 'lerning_rate' in the command line (did you mean 'learning_rate'?)"),
    ('--max_iters=1.5', "max_iters=1.5 is not a valid int"),
    ('--compile=maybe', "compile='maybe' is not a valid bool"),
    ('--learning_rate=fast', "learning_rate='fast' is not a valid float"),
    ('--layer', "needs a value"),
    ('nonexistent.py', "config file 'nonexistent.py' not found"),
])
def test_errors_name_key_value_and_type(arg, message):
    with pytest.raises(SystemExit) as error:
        configure(settings(), [arg])
    assert message in str(error.value)


def test_wrong_type_in_config_file(tmp_path):
    path = tmp_path / 'c.py'
    path.write_text("max_iters = 'many'\n")
    with pytest.raises(SystemExit, match="max_iters='many' is not a valid int"):
        configure(settings(), [str(path)])


def test_train_pys_lens_defaults_are_lensconfigs():
    """train.py declares the lens's settings as globals (the configurator types them by their defaults) and
    LensConfig has defaults too: both are the embedded default, so they must not drift apart."""
    from dataclasses import fields
    from configurator import script_settings
    from lens import LensConfig
    settings = script_settings(os.path.join(ROOT, 'train.py'))
    assert all(settings[f.name] == f.default for f in fields(LensConfig)), [f.name for f in fields(LensConfig)
                                                                            if settings[f.name] != f.default]


def test_given_keys_are_the_ones_set_by_files_and_flags(tmp_path, capsys):
    path = tmp_path / 'c.py'
    path.write_text("import math\nmax_iters = 5\n_private = 1\n")
    assert given_keys([str(path), '--layer=3']) == {'max_iters', 'layer'}
    configure(settings(), ['--min_pos=4'])  # a dump.py setting on train.py's command line
    assert "--min_pos is a setting of dump.py" in capsys.readouterr().out


@pytest.mark.parametrize('name', sorted(os.listdir(os.path.join(ROOT, 'config'))))
def test_every_config_file_sets_only_settings_that_train_py_has(name):
    """A config file with a misspelt key would stop train.py at its first line: caught here instead."""
    from configurator import script_settings
    settings = script_settings(os.path.join(ROOT, 'train.py'))
    configure(settings, [os.path.join(ROOT, 'config', name)])

