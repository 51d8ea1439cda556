"""The comparison's figures and self-contained HTML report: every model's ROC and precision-recall
curve on one plot each (AUC / AP with bootstrap intervals in the legend), the table of models, the
per-class confusion of multi-class models, the kappa matrix, the speed, a gallery of the images the
models disagree on most (thumbnails blurred until clicked) and the judge card. Images are embedded
as data URIs, so the file can be mailed as is."""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from .compare import Comparison
from .plots import figure, png_bytes, unit_square
from .report import GALLERY_JS, REPORT_CSS, check_gallery, data_uri

__all__ = ["pr_overlay_png", "render_compare_report", "roc_overlay_png"]

_COLOURS = ("#1c7ed6", "#e8590c", "#2b8a3e", "#7048e8", "#c2255c", "#0c8599", "#5c940d", "#868e96")


def _finish(fig: Any, ax: Any, xlabel: str, ylabel: str, title: str, loc: str) -> bytes:
    unit_square(ax, xlabel, ylabel, title, loc)
    return png_bytes(fig)


def roc_overlay_png(comparison: Comparison) -> bytes:
    """Every model's ROC curve, with its operating point at the target false-positive rate."""
    from sklearn.metrics import roc_curve

    fig, ax = figure()
    for i, m in enumerate(comparison.models):
        colour = _COLOURS[i % len(_COLOURS)]
        fpr, tpr, _ = roc_curve(comparison.labels, m.scores)
        auc = m.metrics.roc_auc
        ax.plot(fpr, tpr, color=colour, lw=2, label=f"{m.id} AUC {auc.value:.3f} [{auc.low:.3f}, {auc.high:.3f}]")
        a = m.at_fpr.achieved
        ax.plot([a.fpr], [a.recall], "o", color=colour, ms=6)
    ax.plot([0, 1], [0, 1], color="#adb5bd", lw=1, ls="--", label="chance")
    return _finish(fig, ax, "false positive rate (safe images flagged)", "true positive rate (NSFW images caught)",
                   f"ROC (dots: threshold at FPR {comparison.params.get('fpr', 0):g})", "lower right")


def pr_overlay_png(comparison: Comparison) -> bytes:
    """Every model's precision-recall curve, with the prevalence as the chance line."""
    from sklearn.metrics import precision_recall_curve

    fig, ax = figure()
    for i, m in enumerate(comparison.models):
        precision, recall, _ = precision_recall_curve(comparison.labels, m.scores)
        ap = m.metrics.average_precision
        ax.step(recall, precision, where="post", color=_COLOURS[i % len(_COLOURS)], lw=2,
                label=f"{m.id} AP {ap.value:.3f} [{ap.low:.3f}, {ap.high:.3f}]")
    prevalence = float(np.mean(comparison.labels == 1))
    ax.axhline(prevalence, color="#adb5bd", lw=1, ls="--", label=f"chance (prevalence {prevalence:.2f})")
    return _finish(fig, ax, "recall (NSFW images caught)", "precision (flagged images truly NSFW)",
                   "Precision-recall", "lower left")


# The evaluation report's page, wider for a table per model, with the judge card's <pre>.
_CSS = REPORT_CSS + """
main{max-width:1200px}
pre{background:#fff;border:1px solid #dee2e6;padding:8px;overflow:auto;max-height:400px;font-size:12px}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _pct(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:.1f}%"


def _models_table(c: Comparison) -> str:
    fpr = c.params.get("fpr", 0.0)
    rows = ["<table id=models><tr><th class=l>model</th><th>ROC AUC</th><th>AUC interval</th><th>average precision</th>"
            f"<th>AP interval</th><th>nsfw_above at FPR {fpr:g}</th><th>recall there</th><th>FPR there</th>"
            "<th>demonstrated</th><th>images/s (backend)</th></tr>"]
    for m in c.models:
        auc, ap, a = m.metrics.roc_auc, m.metrics.average_precision, m.at_fpr
        shown = "yes" if a.demonstrated else "<span class=bad>no</span>"
        rows.append(f"<tr><th class=l>{_e(m.id)}</th><td>{auc.value:.4f}</td><td>[{auc.low:.4f}, {auc.high:.4f}]</td>"
                    f"<td>{ap.value:.4f}</td><td>[{ap.low:.4f}, {ap.high:.4f}]</td><td>{a.threshold:.6g}</td>"
                    f"<td>{_pct(a.achieved.recall)}</td><td>{_pct(a.achieved.fpr)}</td><td>{shown}</td>"
                    f"<td>{m.images_per_second:.1f} ({_e(m.judge.get('backend', ''))})</td></tr>")
    first = c.models[0].metrics.roc_auc if c.models else None
    intervals = f"Intervals: stratified bootstrap, {first.n_boot} resamples, {100 * first.level:g}%. " if first else ""
    rows.append("</table><p class=hint>" + intervals
                + "The threshold at the target FPR is fitted to this data (flagged when score &gt; it); "
                "<i>demonstrated</i>: the exact interval of the achieved FPR stays within the target. "
                f"Images/s: each model's own time on already decoded images (decoding, done once for all "
                f"models, took {c.decode_seconds:.2f} s).</p>")
    return "".join(rows)


def _kappa_table(c: Comparison) -> str:
    basis = ("each model flags an image when its score is above its own threshold at the target FPR"
             if c.agreement == "fpr" else "each model's label at its card's bands (safe / review / nsfw)")
    head = "".join(f"<th>{_e(m.id)}</th>" for m in c.models)
    rows = [f"<table id=kappa><tr><th class=l>Cohen's kappa</th>{head}</tr>"]
    for m, row in zip(c.models, c.kappa, strict=True):
        cells = "".join(f"<td>{'n/a' if k is None else f'{k:.3f}'}</td>" for k in row)
        rows.append(f"<tr><th class=l>{_e(m.id)}</th>{cells}</tr>")
    rows.append(f"</table><p class=hint>Labels compared: {_e(basis)}. 1 is full agreement, 0 what chance "
                "gives; n/a where both models label every image alike.</p>")
    return "".join(rows)


def _class_tables(c: Comparison) -> str:
    parts = []
    for m in c.models:
        if m.class_confusion is None:
            continue
        rows = [f"<table class=classes><tr><th class=l colspan=3>{_e(m.id)}: top class by true label</th></tr>"
                "<tr><th class=l>top class</th><th>safe</th><th>nsfw</th></tr>"]
        for cls, counts in m.class_confusion.items():
            rows.append(f"<tr><th class=l>{_e(cls)}</th><td>{counts['safe']}</td><td>{counts['nsfw']}</td></tr>")
        parts.append("".join(rows) + "</table>")
    return "".join(parts) or "<p class=hint>No multi-class model in this comparison.</p>"


def _gallery(c: Comparison, thumbs: Mapping[str, bytes | None], max_gallery: int) -> str:
    items = c.disagreements(max_gallery)
    if not items:
        return "<p class=hint>No images.</p>"
    figs = []
    for d in items:
        data = thumbs.get(d.path)
        inner = (f'<img alt="thumbnail" src="{data_uri(data, "image/jpeg")}">' if data
                 else "<span class=hint>no preview</span>")
        scores = "<br>".join(f"{_e(k)} {v:.4f}" for k, v in d.scores.items())
        figs.append(f'<figure class=thumb><div class=frame title="click to reveal">{inner}</div>'
                    f"<figcaption><b>spread {d.spread:.4f}</b> · {'nsfw' if d.label else 'safe'} · "
                    f"{_e(d.path)}<br>{scores}</figcaption></figure>")
    return '<div class="gallery">' + "".join(figs) + "</div>"


def render_compare_report(comparison: Comparison, plots: Mapping[str, bytes], thumbs: Mapping[str, bytes | None], *,
                          max_gallery: int = 48, title: str = "nsfwlab model comparison") -> str:
    """The report as one HTML string. ``plots`` maps ``roc`` / ``pr`` to PNG bytes
    (:func:`roc_overlay_png`, :func:`pr_overlay_png`); ``thumbs`` maps image paths to JPEG
    thumbnails (:func:`nsfwlab.evaluate.report.thumbnail`) of the disagreement gallery."""
    check_gallery(max_gallery)
    c = comparison
    n_pos = int(c.labels.sum())
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>",
        f"<h1>{_e(title)}</h1>",
        f"<p class=sub>{_e(c.source)} · {len(c.paths)} images ({len(c.paths) - n_pos} safe, {n_pos} nsfw) · "
        f"{len(c.models)} models · nsfwlab {_e(c.judge.get('versions', {}).get('nsfwlab', '?'))}</p>",
    ]
    if c.warnings:
        parts.append("<div id=warnings><h2>Warnings: figures resting on too few images</h2><ul>"
                     + "".join(f"<li class=bad>{_e(w)}</li>" for w in c.warnings) + "</ul></div>")
    parts += ["<h2>Models</h2>", _models_table(c), "<h2>Curves</h2><div class=plots>"]
    for name in ("roc", "pr"):
        if name in plots:
            parts.append(f'<img id="plot-{name}" alt="{name}" src="{data_uri(plots[name], "image/png")}">')
    parts += ["</div>", "<h2>Agreement</h2>", _kappa_table(c), "<h2>Per-class confusion</h2>", _class_tables(c)]
    parts.append("<h2>Where the models disagree most</h2><p class=hint>Images by the spread of the models' NSFW "
                 "scores (highest minus lowest). Thumbnails are blurred; click one to reveal it. "
                 '<button id="reveal-all" type="button">Reveal all</button></p>')
    parts.append(_gallery(c, thumbs, max_gallery))
    h = c.hygiene
    parts.append(f"<h2>Data</h2><p>{len(h.unreadable)} unreadable file(s) left out, {len(h.duplicates)} group(s) "
                 f"of identical files ({len(h.conflicting)} with conflicting labels). Nothing was modified.</p>")
    if h.unreadable:
        parts.append("<table id=unreadable><tr><th class=l>file</th><th class=l>problem</th></tr>"
                     + "".join(f"<tr><td class=l>{_e(p.path)}</td><td class=l>{_e(p.code)}: {_e(p.message)}</td></tr>"
                               for p in h.unreadable) + "</table>")
    parts.append("<h2>Judge card</h2><p class=hint>Every model's card, weights sha256 and thresholds, the versions "
                 "and parameters, and the data's fingerprint: what a published figure needs to be reproduced "
                 "(also in <code>compare.json</code>).</p>")
    parts.append(f"<pre id=judge>{_e(json.dumps(c.judge, indent=2))}</pre>")
    parts.append(f"</main><script>{GALLERY_JS}</script></body></html>")
    return "\n".join(parts)
