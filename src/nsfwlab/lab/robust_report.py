"""The robustness report's pictures and page: PNG plots and a self-contained HTML page that reads as a report
(findings and warnings first, then summary tables, the plots, and one row per image with a blurred thumbnail).
The JSON stays in ``robustness.json``; nothing here is written to disk."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import NsfwlabError
from ..imageio import load_image
from .robust import RobustnessReport

__all__ = ["plot_jpeg_curve", "plot_min_eps", "render_html", "report_page", "study_sections", "thumbnail"]


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_jpeg_curve(report: RobustnessReport) -> bytes:
    """Score against JPEG quality, one line per image (the unperturbed score at quality 100)."""
    fig, ax = _pyplot().subplots(figsize=(6, 4))
    for im in report.images:
        if im.error is not None:
            continue
        pts = sorted((float(k.split(":")[1]), v) for k, v in im.perturbations.items() if k.startswith("jpeg:"))
        if pts:
            qs, ss = zip(*pts, strict=True)
            ax.plot([*qs, 100], [*ss, im.score], marker="o", label=Path(im.path).name[:24])
    ax.set_xlabel("JPEG quality (100 = unperturbed)")
    ax.set_ylabel("NSFW score")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    if len(report.images) <= 12:
        ax.legend(fontsize=7)
    return _png(fig)


def plot_min_eps(report: RobustnessReport) -> bytes:
    """The smallest verified budget that flips a label (and those behind defences), and the fewest changed
    pixels at that budget (as a share of the image): the budget alone sits at 1/255 for nearly every image."""
    series: dict[str, list[float]] = {"no defence": []}
    shares: list[float] = []
    for im in report.images:
        if im.min_eps and im.min_eps["verified"]:
            series["no defence"].append(im.min_eps["value"])
            if im.min_eps.get("pixels") is not None:
                shares.append(100 * im.min_eps["pixels"] / max(1, im.min_eps["pixels_total"]))
        for d, row in im.defences.items():
            if row["min_eps"]["verified"]:
                series.setdefault(d, []).append(row["min_eps"]["value"])
    fig, (ax, ax2) = _pyplot().subplots(1, 2, figsize=(10, 4))
    top = max([1.0, *(v for vs in series.values() for v in vs)])
    bins = [float(b) for b in np.arange(0.5, top + 1.5, 1.0)]
    for name, vals in series.items():
        if vals:
            ax.hist(vals, bins=bins, alpha=0.5, label=f"{name} (n={len(vals)})")
    ax.set_xlabel("smallest flipping L-inf budget (levels of 1/255)")
    ax.set_ylabel("images")
    if any(series.values()):
        ax.legend(fontsize=8)
    if shares:
        ax2.hist(shares, bins=min(20, max(3, len(shares))), color="tab:purple", alpha=0.7)
    ax2.set_xlabel("fewest changed pixels at that budget (% of the image)")
    ax2.set_ylabel("images")
    return _png(fig)


def thumbnail(source: str, size: int = 160, *, blur: float = 0.0) -> str | None:
    """A JPEG data URI of ``source`` shrunk to fit ``size`` pixels, or ``None`` when it cannot be read.
    ``blur`` > 0 blurs the thumbnail's own pixels (Gaussian, radius in thumbnail pixels), so the page holds no
    sharp copy at all; with 0 the page blurs it by CSS until clicked."""
    try:
        img = load_image(source)
    except (NsfwlabError, OSError):
        return None
    img.thumbnail((size, size))
    if blur > 0:
        from PIL import ImageFilter

        img = img.filter(ImageFilter.GaussianBlur(blur))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return html.escape(str(x))


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><tr>{th}</tr>{body}</table>'


_STYLE = """body{font-family:sans-serif;margin:1.5em;max-width:1200px}table{border-collapse:collapse;font-size:13px;
margin:.5em 0 1.2em}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}td:first-child,th:first-child{
text-align:left}img.t{filter:blur(12px);cursor:pointer;max-width:120px}img.t.shown{filter:none}.err{color:#b00}
.warn{background:#fff4d6;border-left:4px solid #e0a000;padding:.4em .8em;margin:.3em 0}.key{font-size:1.1em}
figure{display:inline-block;margin:0 1em 1em 0}"""


def _findings(s: Mapping[str, Any]) -> list[str]:
    out = [f"{s['images']} image(s) measured, {s['errors']} could not be read."]
    me = s.get("min_eps")
    if me:
        out.append(f"An attack flipped the label of {me['flipped']} of {me['attacked']} image(s); median smallest "
                   f"budget {_fmt(me['median'], 1)}/255, at which the median attack changed "
                   f"{_fmt(me['median_pixels'], 0)} pixel(s) (L2 {_fmt(me['median_l2'], 2)}).")
    flips = s.get("label_flips", {})
    if flips and max(flips.values()) > 0:
        worst = max(flips, key=lambda k: flips[k])
        out.append(f"Most label changes under one everyday perturbation: {html.escape(worst)} "
                   f"({flips[worst]} image(s)).")
    elif flips:
        out.append("No everyday perturbation changed a label.")
    auc = (s.get("auc") or {}).get("none")
    if auc:
        lo, hi = auc["ci95"]
        out.append(f"ROC AUC {auc['value']:.3f} (95% interval {lo:.2f}-{hi:.2f}) on {auc['positives']} NSFW "
                   f"and {auc['negatives']} safe image(s).")
    return out


def _summary_tables(s: Mapping[str, Any]) -> str:
    parts = []
    auc = s.get("auc") or {}
    rows = []
    for spec, change in s.get("mean_abs_change", {}).items():
        a = auc.get(spec)
        rows.append([html.escape(spec), _fmt(change), str(s["label_flips"][spec]),
                     "-" if a is None else f"{a['value']:.3f} [{a['ci95'][0]:.2f}, {a['ci95'][1]:.2f}]"])
    parts.append("<h2>Everyday perturbations</h2>" + _table(
        ["perturbation", "mean |score change|", "label changes", "AUC [95% interval]"], rows))
    me = s.get("min_eps")
    if me:
        parts.append("<h2>Smallest flipping attack</h2>" + _table(
            ["", "value"],
            [["images attacked / flipped", f"{me['attacked']} / {me['flipped']}"],
             ["median / max budget (levels of 1/255)", f"{_fmt(me['median'], 1)} / {_fmt(me['max'], 1)}"],
             ["changed pixels at that budget: median (min-max)",
              f"{_fmt(me['median_pixels'], 0)} ({_fmt(me['min_pixels'])}-{_fmt(me['max_pixels'])})"],
             ["median L2 of the verified perturbation", _fmt(me["median_l2"], 2)]]))
        defs = s.get("defences") or {}
        if defs:
            parts.append("<h2>Behind defences (adaptive attack)</h2>" + _table(
                ["defence", "attacked", "flipped", "median budget"],
                [[html.escape(d), str(r["attacked"]), str(r["flipped"]), _fmt(r["median_min_eps"], 1)]
                 for d, r in defs.items()]))
    return "".join(parts)


def _image_rows(report: RobustnessReport, thumbnails: bool, blur: float = 0.0) -> str:
    rows = []
    for im in report.images:
        name = html.escape(im.path)
        if im.error is not None:
            rows.append([name, f'<span class="err">{html.escape(im.error)}</span>', "", "", "", "", ""])
            continue
        src = thumbnail(im.path, blur=blur) if thumbnails else None
        if not src:
            thumb = ""
        elif blur > 0:
            thumb = f'<img src="{src}" alt="blurred thumbnail" style="max-width:120px"><br>'
        else:
            thumb = f'<img class="t" src="{src}" alt="thumbnail" onclick="this.classList.toggle(\'shown\')"><br>'

        eps = im.min_eps or {}
        worst = max(im.perturbations.items(), key=lambda kv: abs(kv[1] - (im.score or 0.0)), default=None)
        defs = "; ".join(f"{d}: {_fmt(r['min_eps']['value'], 0)}" for d, r in im.defences.items())
        where = f"<br><small>worked on {html.escape(im.working_copy)}</small>" if im.working_copy else ""
        rows.append([f"{thumb}{name}{where}", f"{_fmt(im.score)} ({html.escape(im.label or '')})",
                     _fmt(eps.get("value"), 0), _fmt(eps.get("pixels")), _fmt(eps.get("l2"), 2),
                     "-" if worst is None else f"{html.escape(worst[0])}: {worst[1]:.4f}", html.escape(defs)])
    return "<h2>Images</h2>" + _table(
        ["image" if blur > 0 else "image (click a thumbnail to unblur)", "score", "min budget", "changed pixels", "L2",
         "largest change (perturbation: score)", "behind defences (budget)"], rows, cls="images")


def study_sections(report: RobustnessReport, plots: Mapping[str, bytes], *, thumbnails: bool = True,
                   blur: float = 0.0) -> str:
    """The per-image study as HTML sections (no page around them): findings and warnings, summary tables,
    plots, a row per image. ``blur`` > 0: thumbnails blurred in their pixels (:func:`thumbnail`), with no
    click to unblur; 0: blurred by CSS until clicked."""
    s = report.summary
    findings = "".join(f"<li>{f}</li>" for f in _findings(s))
    warns = "".join(f'<div class="warn">warning: {html.escape(w)}</div>' for w in s.get("warnings", []))
    figs = "".join(f'<figure><img src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}" '
                   f'alt="{html.escape(k)}"><figcaption>{html.escape(k)}</figcaption></figure>'
                   for k, png in plots.items())
    return (f'<ul class="key">{findings}</ul>{warns}{_summary_tables(s)}<h2>Plots</h2>{figs}'
            f"{_image_rows(report, thumbnails, blur)}")


def report_page(body: str, *, extra_style: str = "") -> str:
    """A self-contained page titled "Robustness report" around ``body``."""
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>nsfwlab robustness</title>'
            f"<style>{_STYLE}{extra_style}</style></head><body><h1>Robustness report</h1>{body}"
            f"<p><small>Every number above is the exact pipeline's score of the saved pixels; the full data is "
            f"in robustness.json.</small></p></body></html>")


def render_html(report: RobustnessReport, plots: Mapping[str, bytes], *, thumbnails: bool = True) -> str:
    """A self-contained page: findings and warnings, summary tables, plots, a row per image. Thumbnails start
    blurred; a click reveals one. The full numbers are in ``robustness.json``."""
    return report_page(study_sections(report, plots, thumbnails=thumbnails))
