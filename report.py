"""
The HTML report eval.py writes beside a lens: one self-contained page (inline CSS, a few lines of JS, the
plots as inline PNGs) that opens offline. report.html: the results table, the learning curve from
log.jsonl, the per-sample KL distributions of the lens and every baseline, the KL at each offset after p,
and samples; report_text.html: every token of a text coloured by its KL, its explanation on hover.
"""
import base64
import html
import io
import os
import re

from lens import top_tokens


def top_pairs(tokenizer, logits_a, logits_first):
    """The top-3 next tokens at p with A and with the first patch, per sample."""
    return [(top_tokens(tokenizer, a), top_tokens(tokenizer, r)) for a, r in zip(logits_a, logits_first)]


def show_tops(tops):
    return '  '.join(f'{t!r} {p:.2f}' for t, p in tops)


def fmt(value):
    return '-' if value is None else str(value) if isinstance(value, int) else f'{value:.4f}'


def visible(text):
    """Newlines as a visible mark: explanations often start with one, which HTML would swallow."""
    return text.replace('\n', '\u21b5')


def png(fig, alt):
    """A matplotlib figure as an <img> with its PNG inline: the report stays one file that opens offline."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format='png', dpi=80, bbox_inches='tight')
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def plot_learning_curve(rows):
    """Val KL at p of the lens, a shuffled explanation, mean ablation, the LM's top tokens and the token at p
    against iteration, and the training batches' KL."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(6.5, 3.4))
    ax = fig.subplots()
    train = [(r['iter'], r['kl']) for r in rows if r['split'] == 'train']
    if train:
        ax.plot(*zip(*train), color='0.75', lw=1, label='train batch KL')
    for key, label in (('kl', 'lens'), ('kl_control', 'the control (real tokens ending at p)'), ('kl_text_shuffled', 'shuffled explanation'), ('kl_mean', 'mean ablation'),
                       ('kl_text_top_tokens', "the LM's top tokens"), ('kl_text_current_token', 'the token at p')):
        points = [(r['iter'], r[key]) for r in rows if r['split'] == 'val' and key in r]
        if points:
            ax.plot(*zip(*points), marker='o', ms=3, label=label)
    ax.set(xlabel='iteration', ylabel='KL at p (nats)', title='learning curve (log.jsonl, periodic eval)')
    ax.legend(fontsize=8)
    return png(fig, 'learning curve')


def plot_kl_distributions(at_p):
    """Per-sample KL at p of the lens and of every baseline, one box per method (log scale)."""
    from matplotlib.figure import Figure
    names = sorted(at_p, key=lambda name: at_p[name].mean().item())
    fig = Figure(figsize=(6.5, 0.3 * len(names) + 1))
    ax = fig.subplots()
    ax.boxplot([at_p[name].clamp(min=1e-3).cpu().numpy() for name in names], vert=False, tick_labels=names,
               showmeans=True, flierprops=dict(ms=2))
    ax.set(xscale='log', xlabel='KL at p per sample (nats; mean as a triangle)', title='per-sample KL distributions')
    return png(fig, 'per-sample KL distributions')


def plot_downstream(methods):
    """Mean KL at p and at each offset after it, over the samples with K tokens after p (only p patched)."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(6.5, 3.4))
    ax = fig.subplots()
    offsets = len(methods['lens']['kl_downstream_per_offset'] or [])
    for name, m in methods.items():
        if offsets:
            ax.plot(range(offsets + 1), [m['kl']] + m['kl_downstream_per_offset'], marker='o', ms=3,
                    lw=2.5 if name == 'lens' else 1, label=name)
    ax.set_xticks(range(offsets + 1), ['p'] + [f'p+{k}' for k in range(1, offsets + 1)])
    ax.set(yscale='log', xlabel='position (only p patched)', ylabel='mean KL (nats)', title='KL at p and after it')
    ax.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1))
    return png(fig, 'KL per offset after p')


def token_span(piece, item=None, scale=1.0, mark=False):
    """One token; an explained token is coloured by its KL and carries its details for hover and click."""
    shown = html.escape(piece.replace('\n', '\u21b5\n'))
    if item is None:
        return f'<span class="t">{shown}</span>'
    alpha = min(1.0, item['kl'] / scale) ** 0.5
    data = dict(tok=repr(piece), kl=f"{item['kl']:.4f}", expl=visible(item['explanation']), a=show_tops(item['top'][0]),
                r=show_tops(item['top'][1]), **({'edit': show_tops(item['top'][2])} if len(item['top']) > 2 else {}))
    attrs = ' '.join(f'data-{k}="{html.escape(v)}"' for k, v in data.items())
    return f'<span class="t x{" p" if mark else ""}" style="background:rgba(220,40,40,{alpha:.2f})" {attrs}>{shown}</span>'


def html_table(rows):
    numeric = lambda c: re.fullmatch(r'-?[\d.]+(e-?\d+)?|-', str(c)) is not None
    cell = lambda tag, c: f'<{tag}{" class=n" if numeric(c) else ""}>{html.escape(str(c))}</{tag}>'
    return '<table>' + ''.join('<tr>' + ''.join(cell('th' if r == 0 else 'td', c) for c in row) + '</tr>'
                               for r, row in enumerate(rows)) + '</table>'


def sample_html(tokenizer, window, p, item, continuation, scale):
    """One val sample: its context with p outlined and coloured by its KL, the explanation, the LM's own
    continuation, and the top next tokens with A and with Â."""
    context = ''.join(token_span(tokenizer.decode([t]), item if i == p else None, scale, mark=True)
                      for i, t in enumerate(window[:p + 1]))
    actual = f', actual next token {tokenizer.decode([window[p + 1]])!r}' if p + 1 < len(window) else ''
    return (f'<div class="sample"><div class="note">p = {p}, KL {item["kl"]:.4f}{html.escape(actual)}</div>'
            f'<div class="text">{context}</div><div>explanation: <b class="e">{html.escape(visible(item["explanation"]))}'
            f'</b></div><div class="note">the LM\'s own continuation: {html.escape(visible(continuation))}<br>'
            f'next with A: {html.escape(show_tops(item["top"][0]))}<br>'
            f'next with Â: {html.escape(show_tops(item["top"][1]))}</div></div>')


def write_report(path, title, note, body, scale):
    """A page that opens offline: inline CSS, a few lines of JS and the plots as inline PNGs, no external
    resources. Every text reaches it through html.escape, as element text or a quoted attribute, and the JS
    only ever assigns textContent."""
    style = """body{font:14px/1.5 system-ui,sans-serif;margin:24px 24px 200px;color:#222;max-width:1100px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}.n{text-align:right}
.text{white-space:pre-wrap;font:15px/2 monospace;margin:6px 0}.t{position:relative}.x{cursor:pointer;border-radius:2px}
.p{outline:2px solid #000}.e{white-space:pre-wrap}.sample{margin:6px 0;padding:6px;border-top:1px solid #eee}
.x:hover::after{content:attr(data-expl);position:absolute;left:0;top:1.6em;z-index:2;background:#333;color:#fff;
padding:2px 6px;border-radius:3px;white-space:pre-wrap;width:max-content;max-width:360px;font-size:13px}
.note{color:#666}.legend{display:inline-block;width:160px;height:12px;vertical-align:middle;
background:linear-gradient(to right,rgba(220,40,40,0),rgba(220,40,40,1))}.plots img{margin:4px 8px 4px 0}.wide{overflow-x:auto}td:first-child{white-space:nowrap}
#panel{position:fixed;right:12px;bottom:12px;width:420px;background:#fffbe6;border:1px solid #d9c56a;padding:8px;
font-size:13px;white-space:pre-wrap}"""
    script = """document.addEventListener('click', e => { const t = e.target.closest('.x'); if (!t) return;
  document.getElementById('panel').textContent = 'token ' + t.dataset.tok + '   KL ' + t.dataset.kl + ' nats\\n' +
    'explanation: ' + t.dataset.expl + '\\nnext with A: ' + t.dataset.a + '\\nnext with \\u00c2: ' + t.dataset.r +
    (t.dataset.edit ? '\\nnext with the edit: ' + t.dataset.edit : ''); });"""
    page = (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{style}</style>'
            f'</head><body><h2>{html.escape(title)}</h2><p class="note">{html.escape(note)}. Hover a coloured token for its '
            f'explanation, click it for details. KL at p: 0 <span class="legend"></span> {scale:.3g} nats or more.</p>{body}'
            f'<div id="panel">click a coloured token</div><script>{script}</script></body></html>')
    with open(path + '.tmp', 'w', encoding='utf-8') as f:
        f.write(page)
    os.replace(path + '.tmp', path)
    print(path)


def text_report(path, note, items, pieces, summary, edit):
    scale = max(summary['kl_p90'], 1e-6)
    rows = [[p, repr(pieces[p]), fmt(it['kl']), visible(it['explanation']), *map(show_tops, it['top'])] for p, it in items.items()]
    head = ['pos', 'token', 'KL', 'explanation', 'next with A', 'next with Â'] + ['next with the edit'] * (edit is not None)
    write_report(path, 'Consistency Lens: explained text', note,
                 html_table([('positions', 'KL mean (nats)', 'KL median', 'KL p90'), (len(items), *map(fmt, summary.values()))]) +
                 ('' if edit is None else f'<p>edit: <b class="e">{html.escape(visible(edit))}</b></p>') +
                 '<div class="text">' + ''.join(token_span(t, items.get(p), scale) for p, t in enumerate(pieces)) +
                 '</div><h3>Every explained position</h3>' + html_table([head] + rows), scale)


def val_report(path, note, table, extra, methods, kls_at_p, log_rows, samples_html, scale):
    curve = plot_learning_curve(log_rows) if log_rows else '<p class="note">no log.jsonl beside the lens: no learning curve</p>'
    write_report(path, 'Consistency Lens: evaluation', note,
                 f'<div class="plots">{curve}{plot_kl_distributions(kls_at_p)}{plot_downstream(methods)}</div>' +
                 f'<div class="wide">{html_table(table)}</div>' + html_table([('more measures', 'value')] + [(l, fmt(v)) for l, v in extra]) +
                 '<h3>Samples: the token at p is outlined and coloured by its KL</h3>' + ''.join(samples_html), scale)
