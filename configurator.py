"""
nanoGPT's configurator with its holes closed. A script declares its settings as plain globals,
then calls configure(globals()):

    $ python train.py config/gpt2_frozen.py --batch_size=32 --compile=False

Config files are plain Python whose assignments override the globals; `--key=value` arguments
override after them. One config file serves dump.py, train.py, eval.py and bench.py, so a key that
belongs to a sibling script is accepted and ignored here; a key that no script knows is an error
naming the nearest valid key. Values are checked against the type of the default: an int is
accepted for a float, true/false for a bool, anything for a string, and a default of None accepts
any value.
"""
import ast
import difflib
import os
import sys

SCRIPTS = ['dump.py', 'train.py', 'eval.py', 'bench.py']
ROOT = os.path.dirname(os.path.abspath(__file__))


def script_settings(path):
    """The settings a script declares: its `name = literal` assignments before configure()."""
    settings = {}
    for node in ast.parse(open(path).read()).body:
        if 'configure(' in ast.unparse(node):
            break
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                settings[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return settings


def sibling_keys():
    keys = set()
    for name in SCRIPTS:
        path = os.path.join(ROOT, name)
        if os.path.exists(path):
            keys |= set(script_settings(path))
    return keys


def check_known(key, own, where):
    if key in own:
        return
    if key in sibling_keys():
        if where == 'the command line':
            users = [name for name in SCRIPTS if key in script_settings(os.path.join(ROOT, name))]
            print(f"config: --{key} is a setting of {' and '.join(users)}, not of {os.path.basename(sys.argv[0])}: ignored here")
        return
    near = difflib.get_close_matches(key, sorted(own | sibling_keys()), n=1)
    hint = f" (did you mean '{near[0]}'?)" if near else ''
    raise SystemExit(f"config error: unknown key '{key}' in {where}{hint}")


def coerce(key, value, default):
    """Turn `value` (a parsed literal or a raw string) into the type of `default`, or fail."""
    expected = type(default)
    if default is None or value is None and isinstance(default, str):
        return value
    if isinstance(default, bool):
        if isinstance(value, str) and value.lower() in ('true', 'false'):
            return value.lower() == 'true'
        if isinstance(value, bool):
            return value
    elif isinstance(default, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif isinstance(default, int) and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif isinstance(default, str):
        return value if isinstance(value, str) else str(value)
    elif isinstance(value, expected):
        return value
    raise SystemExit(f"config error: {key}={value!r} is not a valid {expected.__name__} "
                     f"(the default is {default!r})")


def given_keys(argv=None):
    """The keys that the config files and --key=value arguments of argv (default sys.argv[1:]) set; the
    others keep the script's defaults. Lets a script take a setting from a dump or a checkpoint unless
    the user chose it."""
    keys = set()
    for arg in sys.argv[1:] if argv is None else argv:
        if arg.startswith('--'):
            keys.add(arg[2:].partition('=')[0])
        elif os.path.exists(arg):
            scope = {}
            exec(open(arg).read(), scope)
            keys |= {k for k, v in scope.items() if not k.startswith('_') and type(v).__name__ != 'module'}
    return keys


def parse_literal(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def configure(settings, argv=None):
    """Apply config files and --key=value overrides in argv (default sys.argv[1:]) to `settings`,
    a script's globals(). Returns {key: value} of the script's settings, for logs and checkpoints."""
    argv = sys.argv[1:] if argv is None else argv
    own = {k: v for k, v in settings.items() if not k.startswith('_') and
           (v is None or isinstance(v, (int, float, bool, str)))}
    for arg in argv:
        if not arg.startswith('--'):
            if not os.path.exists(arg):
                raise SystemExit(f"config error: config file '{arg}' not found (configs live in config/)")
            print(f"config: {arg}")
            scope = {}
            exec(open(arg).read(), scope)
            for key, value in scope.items():
                if key.startswith('_') or type(value).__name__ == 'module':
                    continue
                check_known(key, set(own), arg)
                if key in own:
                    settings[key] = coerce(key, value, own[key])
        else:
            key, sep, text = arg[2:].partition('=')
            if not sep:
                raise SystemExit(f"config error: '{arg}' needs a value, as in --{key}=VALUE")
            check_known(key, set(own), 'the command line')
            if key in own:
                textual = own[key] is None or isinstance(own[key], str)  # keep '1e3' or '0x10' as typed
                value = None if text == 'None' else text if textual else parse_literal(text)
                settings[key] = coerce(key, value, own[key])
                print(f"config: {key} = {settings[key]!r}")
    return {k: settings[k] for k in own}
