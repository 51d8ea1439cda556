"""The self-contained HTML report: numbers with confidence intervals, recommended thresholds,
the curves, data hygiene, and galleries of false positives and false negatives whose thumbnails
are blurred until clicked. Images are embedded as data URIs, so the file can be mailed as is."""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

from ..config import DecodeLimits
from ..errors import ConfigError
from .evaluation import Evaluation, ScoredItem

__all__ = ["MAX_GALLERY", "check_gallery", "data_uri", "render_report", "thumbnail"]


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def thumbnail(path: str | os.PathLike, size: int = 160, limits: DecodeLimits | None = None) -> bytes | None:
    """A JPEG thumbnail (longest side ``size``) of an image file, or ``None`` if it cannot be decoded.

    Decoding goes through the core's safe loader (:func:`nsfwlab.imageio.load_image`)."""
    from ..errors import NsfwlabError
    from ..imageio import load_image

    try:
        img = load_image(path, limits)
    except NsfwlabError:
        return None
    img = img.copy()
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


#: The report pages' style sheet and the script that blurs gallery thumbnails until clicked; the
#: model comparison report uses them too.
REPORT_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#212529;background:#f8f9fa}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px}
h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #dee2e6;padding-bottom:4px}
.sub{color:#868e96;margin:0 0 16px}
table{border-collapse:collapse;background:#fff;margin:6px 0 12px}
td,th{border:1px solid #dee2e6;padding:4px 10px;text-align:right}
th{background:#f1f3f5}
td.l,th.l{text-align:left}
.cards{display:flex;gap:12px;flex-wrap:wrap}
.card{background:#fff;border:1px solid #dee2e6;border-radius:8px;padding:12px 16px;min-width:180px}
.card b{display:block;font-size:26px}
.card span{color:#868e96;font-size:12px}
.plots{display:flex;flex-wrap:wrap;gap:12px}
.plots img{background:#fff;border:1px solid #dee2e6;border-radius:6px;max-width:calc(50% - 8px)}
.gallery{display:flex;flex-wrap:wrap;gap:10px}
figure.thumb{margin:0;width:170px;background:#fff;border:1px solid #dee2e6;border-radius:6px;padding:5px;
  font-size:11px;overflow:hidden}
figure.thumb .frame{width:160px;height:160px;overflow:hidden;display:flex;align-items:center;
  justify-content:center;background:#e9ecef;cursor:pointer}
figure.thumb img{max-width:160px;max-height:160px;filter:blur(14px);transition:filter .15s}
figure.thumb.revealed img{filter:none}
figure.thumb figcaption{word-break:break-all;margin-top:4px}
.hint{color:#868e96;font-size:12px}
button{font:inherit;padding:3px 10px;cursor:pointer}
.ok{color:#2b8a3e}
.bad{color:#c92a2a}
"""

GALLERY_JS = """
document.querySelectorAll('figure.thumb .frame').forEach(function (f) {
  f.addEventListener('click', function () { f.parentElement.classList.toggle('revealed'); });
});
var all = document.getElementById('reveal-all');
if (all) all.addEventListener('click', function () {
  var figs = document.querySelectorAll('figure.thumb');
  var reveal = !Array.prototype.every.call(figs, function (f) { return f.classList.contains('revealed'); });
  figs.forEach(function (f) { f.classList.toggle('revealed', reveal); });
  all.textContent = reveal ? 'Blur all' : 'Reveal all';
});
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _confusion_table(c: dict[str, Any], title: str) -> str:
    return (f"<table><tr><th class=l colspan=3>{_e(title)}: flagged when {_e(c['rule'])}</th></tr>"
            "<tr><th></th><th>flagged</th><th>not flagged</th></tr>"
            f"<tr><th class=l>nsfw</th><td>{c['tp']} (TP)</td><td>{c['fn']} (FN)</td></tr>"
            f"<tr><th class=l>safe</th><td>{c['fp']} (FP)</td><td>{c['tn']} (TN)</td></tr>"
            f"<tr><td class=l colspan=3>recall {_pct(c['recall'])} · FPR {_pct(c['fpr'])} · "
            f"precision {_pct(c['precision'])}</td></tr></table>")


def _gallery(items: Sequence[ScoredItem], thumbs: Mapping[str, bytes | None], empty: str) -> str:
    if not items:
        return f"<p class=hint>{_e(empty)}</p>"
    figs = []
    for it in items:
        data = thumbs.get(it.path)
        inner = (f'<img alt="thumbnail" src="{data_uri(data, "image/jpeg")}">' if data
                 else "<span class=hint>no preview</span>")
        figs.append(f'<figure class=thumb><div class=frame title="click to reveal">{inner}</div>'
                    f"<figcaption><b>{it.score:.4f}</b> · {_e(it.path)}</figcaption></figure>")
    return '<div class="gallery">' + "".join(figs) + "</div>"


def _count_note(n: int, shown: int, order: str) -> str:
    note = f"{n}, {order} first" if n else "0"
    return note + (f", first {shown} shown" if n > shown else "")


#: The most thumbnails per error gallery: each is a ~10 KB data URI inside the one HTML file.
MAX_GALLERY = 1000


def check_gallery(max_gallery: int) -> None:
    """ConfigError unless ``0 <= max_gallery <= MAX_GALLERY``."""
    if isinstance(max_gallery, bool) or not isinstance(max_gallery, int) or not 0 <= max_gallery <= MAX_GALLERY:
        raise ConfigError(f"max_gallery must be an integer in [0, {MAX_GALLERY}], got {max_gallery!r}",
                          param="max_gallery")


def render_report(evaluation: Evaluation, plots: Mapping[str, bytes], thumbs: Mapping[str, bytes | None], *,
                  max_gallery: int = 48, title: str = "nsfwlab evaluation",
                  calibration: Mapping[str, Any] | None = None) -> str:
    """The report as one HTML string. ``plots`` maps ``roc``/``pr``/``histogram`` (and, with a
    ``calibration`` summary ``{method, folds, brier_before, brier_after}``, ``reliability_before`` /
    ``reliability_after``) to PNG bytes; ``thumbs`` maps gallery paths to JPEG thumbnails (see
    :func:`thumbnail`)."""
    check_gallery(max_gallery)
    d = evaluation.to_dict()
    m = evaluation.metrics
    rec = m.recommended
    parts: list[str] = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{REPORT_CSS}</style></head><body><main>",
        f"<h1>{_e(title)}</h1>",
        f"<p class=sub>{_e(evaluation.source)} · model {_e(d['model'].get('model_version'))} · "
        f"preprocessing {_e(d['model'].get('preprocess_version'))} · backend {_e(d['model'].get('backend'))}</p>",
        '<div class="cards">',
        f"<div class=card id=auc><span>ROC AUC ({int(100 * m.roc_auc.level)}% CI)</span><b>{m.roc_auc.value:.4f}</b>"
        f"[{m.roc_auc.low:.4f}, {m.roc_auc.high:.4f}]</div>",
        f"<div class=card id=ap><span>Average precision ({int(100 * m.average_precision.level)}% CI)</span>"
        f"<b>{m.average_precision.value:.4f}</b>[{m.average_precision.low:.4f}, {m.average_precision.high:.4f}]</div>",
        f"<div class=card><span>images scored</span><b>{m.n}</b>{m.n_neg} safe · {m.n_pos} nsfw</div>",
        f"<div class=card><span>recommended bands</span><b>{rec.safe_below:.4g} / {rec.nsfw_above:.4g}</b>"
        "safe_below / nsfw_above</div>",
        "</div>",
        f"<p class=hint>Confidence intervals: stratified bootstrap, {m.roc_auc.n_boot} resamples.</p>",
        *([f"<div id=warnings><h2>Warnings: figures resting on too few images</h2><ul>"
           f"{''.join(f'<li class=bad>{_e(w)}</li>' for w in m.warnings)}</ul></div>"] if m.warnings else []),
        "<h2>Recommended thresholds</h2>",
        "<table id=recommendations><tr><th class=l>target</th><th class=l>sets</th><th>threshold</th>"
        "<th>met here</th><th>demonstrated</th><th>rate interval</th><th>demonstrated at</th><th>needs</th>"
        "<th>recall</th><th>FPR</th><th>precision</th></tr>",
    ]
    for r in m.recommendations:
        a = r.achieved
        met = "<span class=ok>yes</span>" if r.met else "<span class=bad>no</span>"
        shown = "<span class=ok>yes</span>" if r.demonstrated else "<span class=bad>no</span>"
        interval = "n/a" if r.rate is None else f"[{_pct(r.rate.low)}, {_pct(r.rate.high)}]"
        at = "-" if r.demonstrated_threshold is None else f"{r.demonstrated_threshold:.6g}"
        needs = "-" if r.min_examples is None else f"&ge; {r.min_examples} {_e(r.to_dict()['examples'])}"
        parts.append(f"<tr><td class=l>{_e(r.target.name)}</td><td class=l>{_e(r.sets)}</td>"
                     f"<td>{r.threshold:.6g}</td><td>{met}</td><td>{shown}</td><td>{interval}</td><td>{at}</td><td>{needs}</td>"
                     f"<td>{_pct(a.to_dict()['recall'])}</td>"
                     f"<td>{_pct(a.to_dict()['fpr'])}</td><td>{_pct(a.to_dict()['precision'])}</td></tr>")
    parts.append("</table><p class=hint>A false-positive-rate or precision target sets <code>nsfw_above</code> "
                 "(flagged without review); a recall target sets <code>safe_below</code> (passed without "
                 "review). <i>Demonstrated</i>: the whole exact (Clopper-Pearson) interval of the achieved rate "
                 "meets the target, so this data supports it; <i>demonstrated at</i>: the least strict threshold at "
                 "which it is; <i>needs</i>: the fewest images with which a perfect result would be. "
                 "Thresholds are fitted to this data: check them on a held-out set.</p>")
    parts.append(f"<h2>At the current thresholds ({m.current.safe_below:g} / {m.current.nsfw_above:g})</h2>")
    parts.append(_confusion_table(d["confusion_at_nsfw_above"], "nsfw_above"))
    parts.append(_confusion_table(d["confusion_at_safe_below"], "safe_below"))
    parts.append("<table><tr><th class=l>true class</th><th>safe band</th><th>review band</th>"
                 "<th>nsfw band</th></tr>")
    for cls, row in m.bands.items():
        parts.append(f"<tr><th class=l>{cls}</th><td>{row['safe']}</td><td>{row['review']}</td>"
                     f"<td>{row['nsfw']}</td></tr>")
    parts.append("</table><h2>Curves</h2><div class=plots>")
    for name in ("roc", "pr", "histogram"):
        if name in plots:
            parts.append(f'<img id="plot-{name}" alt="{name}" src="{data_uri(plots[name], "image/png")}">')
    parts.append("</div>")
    if calibration is not None:
        parts.append(f"<h2 id=calibration>Calibration ({_e(calibration['method'])})</h2><p>Brier score "
                     f"{calibration['brier_before']:.4f} before, {calibration['brier_after']:.4f} after "
                     f"({int(calibration['folds'])}-fold cross-validated; lower is better). "
                     "<code>calibration.json</code> applies it: <code>nsfwlab score --calibration</code>.</p>"
                     + "".join(f"<p class=bad>{_e(w)}</p>" for w in calibration.get("warnings", ()))
                     + "<div class=plots>")
        for name in ("reliability_before", "reliability_after"):
            if name in plots:
                parts.append(f'<img id="plot-{name}" alt="{name}" src="{data_uri(plots[name], "image/png")}">')
        parts.append("</div>")
    fp_items = evaluation.false_positives()[:max_gallery]
    fn_items = evaluation.false_negatives()[:max_gallery]
    n_fp, n_fn = len(evaluation.false_positives()), len(evaluation.false_negatives())
    parts.append('<h2>Error galleries</h2><p class=hint>Thumbnails are blurred; click one to reveal it. '
                 '<button id="reveal-all" type="button">Reveal all</button></p>')
    parts.append(f"<h3>False positives: safe images with score &gt; {rec.nsfw_above:.4g} "
                 f"({_count_note(n_fp, max_gallery, 'highest')})</h3>")
    parts.append(_gallery(fp_items, thumbs, "None at the recommended nsfw_above."))
    parts.append(f"<h3>False negatives: NSFW images with score &lt; {rec.safe_below:.4g} "
                 f"({_count_note(n_fn, max_gallery, 'lowest')})</h3>")
    parts.append(_gallery(fn_items, thumbs, "None at the recommended safe_below."))
    h = evaluation.hygiene
    parts.append(f"<h2>Data hygiene</h2><p>{len(h.unreadable)} unreadable file(s), {len(h.duplicates)} group(s) of "
                 f"identical files ({len(h.conflicting)} with conflicting labels)"
                 + (f", {evaluation.excluded_duplicates} duplicate(s) left out of the metrics"
                    if evaluation.excluded_duplicates else "")
                 + ". Nothing was modified or deleted.</p>")
    if h.unreadable:
        parts.append("<table id=unreadable><tr><th class=l>file</th><th class=l>label</th>"
                     "<th class=l>problem</th></tr>")
        for p in h.unreadable:
            parts.append(f"<tr><td class=l>{_e(p.path)}</td><td class=l>{'nsfw' if p.label else 'safe'}</td>"
                         f"<td class=l>{_e(p.code)}: {_e(p.message)}</td></tr>")
        parts.append("</table>")
    if h.duplicates:
        parts.append("<table id=duplicates><tr><th class=l>identical files</th><th class=l>labels</th></tr>")
        for g in h.duplicates:
            labels = ", ".join("nsfw" if v else "safe" for v in g.labels)
            cls = " class=bad" if g.conflicting else ""
            parts.append(f"<tr><td class=l>{'<br>'.join(_e(p) for p in g.paths)}</td><td class=l><span{cls}>"
                         f"{labels}</span></td></tr>")
        parts.append("</table>")
    parts.append(f"</main><script>{GALLERY_JS}</script></body></html>")
    return "\n".join(parts)
