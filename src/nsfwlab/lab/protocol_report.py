"""The robustness protocol's pictures and page: one PNG of robust accuracy against epsilon per model, and
HTML sections that read as the results section of a paper -- the threat model first, then the warnings, the
curves, the transfer matrix, the everyday evasions (and what tiled scoring recovers), the sanity checks, the
query counts against a service and one card per image with a blurred thumbnail. The sections are drawn from
the ``robustness.json`` dict (the protocol's sections, the evasions' sections), so a saved file can be
re-rendered; the per-image study of :mod:`nsfwlab.lab.robust_report` joins them on the same page. Every string
that came from data is escaped; nothing here is written to disk."""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Any

from .robust import RobustnessReport
from .robust_report import report_page, study_sections, thumbnail

__all__ = ["curve_file", "plot_curves", "protocol_plots", "protocol_sections", "render_html"]

#: Radius (thumbnail pixels) of the blur applied to the cards' thumbnails themselves: a 160-pixel thumbnail
#: keeps its colours and layout and loses every detail. The page holds no sharp copy and offers no unblur.
CARD_BLUR = 8.0
#: The attack every curve and table shows last and strongest: broken by any attack.
WORST = "worst"

_STYLE = """.card{display:inline-block;vertical-align:top;border:1px solid #ccc;border-radius:4px;padding:.5em;
margin:0 .6em .6em 0;font-size:13px;max-width:520px}.card img{max-width:160px;display:block}
.card table{margin:.3em 0;font-size:12px}.tm td,.tm th{text-align:left}.ok{color:#070}.bad{color:#b00;font-weight:bold}
.warn.big{font-size:1.05em}"""


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _num(x: Any, digits: int = 2) -> str:
    """A number as text (escaped if it is not one); ``-`` for a missing value."""
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return f"{x:.{digits}f}" if math.isfinite(x) else _esc(x)
    return _esc(x)


def _eps(x: Any) -> str:
    """An epsilon in levels of 1/255, as short as it reads: 1, 0.5, 2.25."""
    if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x):
        return f"{x:g}"
    return _num(x)


def _ci(ci: Any, digits: int = 2) -> str:
    if isinstance(ci, Sequence) and not isinstance(ci, str) and len(ci) == 2:
        return f"[{_num(ci[0], digits)}, {_num(ci[1], digits)}]"
    return ""


def _table(head: Sequence[str], rows: Sequence[Sequence[str | tuple[str, str]]], cls: str = "") -> str:
    """Cells are HTML already (escaped by the caller), or (HTML, style attribute) for a coloured cell; the
    headings are escaped here; no headings, no heading row."""
    th = "<tr>" + "".join(f"<th>{_esc(h)}</th>" for h in head) + "</tr>" if head else ""
    body = "".join("<tr>" + "".join(f"<td{c[1]}>{c[0]}</td>" if isinstance(c, tuple) else f"<td>{c}</td>"
                                    for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}">{th}{body}</table>'


def _shade(value: Any, rgb: tuple[int, int, int], scale: float = 1.0) -> str:
    """A table cell's style: ``rgb`` at an opacity of ``|value| / scale`` (capped at 1); none for a non-number."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return ""
    alpha = min(1.0, abs(value) / scale) * 0.75
    return f' style="background:rgba({rgb[0]},{rgb[1]},{rgb[2]},{alpha:.2f})"'


def curve_file(model: str) -> str:
    """The file name of a model's curve plot: ``curves-<model>.png`` with every character outside
    ``[A-Za-z0-9._-]`` replaced by ``_`` (ensemble ids hold ``:`` and ``+``)."""
    return "curves-" + re.sub(r"[^A-Za-z0-9._-]", "_", model) + ".png"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(model: str, curves: Mapping[str, Sequence[Mapping[str, Any]]], *,
                clean: Mapping[str, Any] | None = None, norm: str = "linf") -> bytes:
    """Robust accuracy against epsilon for one model: a line per attack with its 95% interval as a band, the
    worst case (broken by any attack) in black, and the clean accuracy as a dashed line."""
    import io

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    names = [a for a in curves if a != WORST] + ([WORST] if WORST in curves else [])
    for name in names:
        pts = sorted((p for p in curves[name] if isinstance(p.get("eps"), (int, float))
                      and isinstance(p.get("robust_accuracy"), (int, float))), key=lambda p: p["eps"])
        if not pts:
            continue
        xs = [p["eps"] for p in pts]
        ys = [p["robust_accuracy"] for p in pts]
        style = {"color": "black", "linewidth": 2.5} if name == WORST else {}
        line = ax.plot(xs, ys, marker="o", label=name, **style)[0]
        cis = [p.get("ci95") for p in pts]
        if all(isinstance(c, Sequence) and len(c) == 2 for c in cis):
            ax.fill_between(xs, [c[0] for c in cis], [c[1] for c in cis],  # type: ignore[index]
                            color=line.get_color(), alpha=0.12)
    if clean and isinstance(clean.get("value"), (int, float)):
        ax.axhline(clean["value"], color="grey", linestyle="--", linewidth=1, label="clean")
    all_eps = sorted({p["eps"] for pts in curves.values() for p in pts if isinstance(p.get("eps"), (int, float))})
    if all_eps and all_eps[0] > 0 and all_eps[-1] / all_eps[0] >= 4:
        ax.set_xscale("log", base=2)
        ax.set_xticks(all_eps, [f"{e:g}" for e in all_eps])
    ax.set_xlabel(f"epsilon ({norm}, levels of 1/255)")
    ax.set_ylabel("robust accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(model)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def protocol_plots(data: Mapping[str, Any]) -> dict[str, bytes]:
    """One curve plot per model of ``data["curves"]``, keyed by model id."""
    norm = str((data.get("threat_model") or {}).get("norm", "linf"))
    clean = data.get("clean_accuracy") or {}
    return {model: plot_curves(model, curves, clean=clean.get(model), norm=norm)
            for model, curves in (data.get("curves") or {}).items() if curves}


#: The order of an attack's fields in the threat model's table (others follow; the note comes last).
_ATTACK_FIELDS = ("kind", "library", "attack", "loss", "steps", "restarts", "queries", "step_size")


def _threat_model(tm: Mapping[str, Any]) -> str:
    eps = ", ".join(_eps(e) for e in tm.get("eps", []))
    rows = [["norm", _esc(tm.get("norm", "-"))],
            ["epsilon", f"{eps} ({_esc(tm.get('eps_unit', 'levels of 1/255'))})"],
            ["working size", f"longer side at most {_num(tm.get('work_side'))} pixels (a larger image is "
                             "downscaled first; the attack changes that copy)"],
            ["decision", _esc(tm["decision"]) + f" (threshold {_num(tm.get('threshold'))})" if tm.get("decision")
             else f"NSFW when the score is at least {_num(tm.get('threshold'))}"],
            ["labels", _esc(tm.get("labels", "-"))],
            ["target", _esc(tm.get("target", "local"))],
            ["models", _esc(", ".join(str(m) for m in tm.get("models", [])))],
            ["verification", _esc(tm.get("verification", "-"))]]
    shown = {"norm", "eps", "eps_unit", "work_side", "threshold", "decision", "labels", "target", "models",
             "verification", "attacks"}
    rows += [[_esc(k), _esc(v)] for k, v in tm.items() if k not in shown]
    attacks = {k: a for k, a in (tm.get("attacks") or {}).items() if isinstance(a, Mapping)}
    present = {k for a in attacks.values() for k in a}
    keys = [k for k in _ATTACK_FIELDS if k in present] + sorted(present - {*_ATTACK_FIELDS, "note"})
    keys += ["note"] if "note" in present else []
    arows = [[f"<b>{_esc(name)}</b>", *(_esc(a.get(k, "")) for k in keys)] for name, a in attacks.items()]
    return ("<h2>Threat model</h2>" + _table([], rows, cls="tm")
            + (_table(["--attacks", *(k.replace("_", " ") for k in keys)], arows, cls="tm") if arows else ""))


def _warnings(data: Mapping[str, Any]) -> str:
    notes = [str(w) for w in data.get("warnings", [])]
    for check in data.get("sanity", []):
        if isinstance(check, Mapping) and check.get("passed") is False:
            text = f"sanity check failed: {check.get('check', '?')}: {check.get('detail', '')}"
            if not any(str(check.get("check", "")) in n and "sanity" in n for n in notes):
                notes.insert(0, text)
    return "".join(f'<div class="warn big">warning: {_esc(w)}</div>' for w in notes)


def _at_largest(points: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    pts = [p for p in points if isinstance(p.get("eps"), (int, float))]
    return max(pts, key=lambda p: p["eps"]) if pts else None


def _findings(data: Mapping[str, Any]) -> list[str]:
    tm = data.get("threat_model") or {}
    out = []
    clean = data.get("clean_accuracy") or {}
    for model, curves in (data.get("curves") or {}).items():
        parts = []
        c = clean.get(model)
        if c:
            parts.append(f"clean accuracy {_num(c.get('value'))} {_ci(c.get('ci95'))} on {_num(c.get('n'))} "
                         "image(s)")
        worst = _at_largest(curves.get(WORST, []))
        if worst:
            parts.append(f"worst-case robust accuracy {_num(worst.get('robust_accuracy'))} "
                         f"{_ci(worst.get('ci95'))} at {_eps(worst.get('eps'))}/255 ({_esc(tm.get('norm', ''))})")
        if parts:
            out.append(f"<b>{_esc(model)}</b>: " + "; ".join(parts) + ".")
    return out


def _curve_tables(data: Mapping[str, Any], plots: Mapping[str, bytes]) -> str:
    parts = []
    for model, curves in (data.get("curves") or {}).items():
        names = [a for a in curves if a != WORST] + ([WORST] if WORST in curves else [])
        eps = sorted({p["eps"] for pts in curves.values() for p in pts if isinstance(p.get("eps"), (int, float))})
        rows = []
        for e in eps:
            row = [_eps(e)]
            for name in names:
                p = next((q for q in curves[name] if q.get("eps") == e), None)
                row.append("-" if p is None else
                           f"{_num(p.get('robust_accuracy'))} {_ci(p.get('ci95'))}<br><small>n {_num(p.get('n'))}, "
                           f"broken {_num(p.get('broken'))}</small>")
            rows.append(row)
        png = plots.get(model)
        fig = (f'<figure><img src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}" '
               f'alt="robust accuracy of {_esc(model)}"></figure>' if png else "")
        parts.append(f"<h3>{_esc(model)}</h3>{fig}" + _table(["eps (1/255)", *names], rows))
    if not parts:
        return ""
    return ("<h2>Robust accuracy against epsilon</h2><p>Robust accuracy: the share of images classified correctly "
            "and not flipped by the attack at that budget, with a 95% bootstrap interval; <i>worst</i> counts an "
            "image broken by any attack.</p>" + "".join(parts))


def _transfer(data: Mapping[str, Any]) -> str:
    matrix = data.get("transfer") or {}
    if not matrix:
        return ""
    detail = data.get("transfer_detail") or {}
    targets = sorted({t for row in matrix.values() for t in row})
    rows = []
    for source, row in matrix.items():
        cells: list[str | tuple[str, str]] = [f"<b>{_esc(source)}</b>"]
        for target in targets:
            share = row.get(target)
            d = (detail.get(source) or {}).get(target) or {}
            text = "-" if share is None else _num(share)
            if d:
                text += (f"<br><small>{_num(d.get('succeeded'))}/{_num(d.get('n'))} {_ci(d.get('ci95'))}"
                         + (f" at {_eps(d['eps'])}/255" if "eps" in d else "") + "</small>")
            cells.append((text, _shade(share, (200, 40, 40))))
        rows.append(cells)
    return ("<h2>Transfer</h2><p>Rows: the model the adversarial images were crafted on (verified there); columns: "
            "the model they were then scored on. A cell is the share that also changed that model's decision "
            "(of the images it classified correctly clean); '-' when the source had no success.</p>"
            + _table(["crafted on \\ scored on", *targets], rows))


def _evasions(data: Mapping[str, Any]) -> str:
    table = data.get("evasions") or {}
    if not table:
        return ""
    detail = data.get("evasions_detail") or {}
    models = sorted({m for row in table.values() for m in row})
    rows = []
    for name, row in table.items():
        cells: list[str | tuple[str, str]] = [_esc(name)]
        for model in models:
            change = row.get(model)
            d = (detail.get(name) or {}).get(model) or {}
            text = "-" if change is None else f"{change:+.3f}" if isinstance(change, float) else _num(change)
            if d:
                text += f"<br><small>{_ci(d.get('ci95'), 3)} n {_num(d.get('n'))}, flips {_num(d.get('flips'))}"
                if d.get("tiled_mean_change") is not None:
                    text += f"; tiled {_num(d.get('tiled_mean_change'), 3)}"
                text += "</small>"
            rgb = (40, 90, 200) if isinstance(change, (int, float)) and change < 0 else (230, 140, 20)
            cells.append((text, _shade(change, rgb, scale=0.5)))
        rows.append(cells)
    out = ("<h2>Everyday evasions</h2><p>Mean change of the NSFW score when the image is edited as named (blue: "
           "down, orange: up), its 95% interval, the images counted and how many changed decision.</p>"
           + _table(["evasion", *models], rows))
    tiles = {m: t for m, t in (data.get("tiles") or {}).items() if isinstance(t, Mapping)}
    if tiles:
        # one column per model (few), one row per figure (many): the table stays narrow
        flat = {model: _flatten(t) for model, t in tiles.items()}
        names = list(dict.fromkeys(n for t in tiles.values() for n in (t.get("recovered") or {})))
        figures = list(dict.fromkeys(k for f in flat.values() for k in f))
        trows = [[_esc(k.replace("_", " ")), *(_num(flat[m].get(k)) for m in tiles)] for k in figures]
        trows += [[f"recovered: {_esc(n)}", *(_num((tiles[m].get("recovered") or {}).get(n)) for m in tiles)]
                  for n in names]
        out += ("<h3>Tiled scoring (max over tiles)</h3><p>Its cost, and the share of the score lost to each "
                "evasion that tiled scoring wins back.</p>" + _table(["", *tiles], trows))
    return out


def _flatten(row: Mapping[str, Any]) -> dict[str, Any]:
    """A tiles row's plain figures, one level of nesting spelt ``key: sub`` (recovered shares are shown on their
    own)."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        if k.startswith("recovered"):
            continue
        if isinstance(v, Mapping):
            out.update({f"{k}: {sub}": x for sub, x in v.items() if not isinstance(x, (Mapping, list))})
        elif not isinstance(v, list):
            out[k] = v
    return out


def _sanity(data: Mapping[str, Any]) -> str:
    checks = [c for c in data.get("sanity", []) if isinstance(c, Mapping)]
    if not checks:
        return ""
    verdict = {True: '<span class="ok">passed</span>', False: '<span class="bad">FAILED</span>'}
    rows = [[verdict[c["passed"]] if isinstance(c.get("passed"), bool) else "not run", _esc(c.get("check", "")),
             _esc(c.get("detail", ""))] for c in checks]
    return ("<h2>Sanity checks</h2><p>After Carlini et al. (2019): a failed check points to gradient masking or "
            "too weak an attack, and the curves above then overstate robustness.</p>"
            + _table(["", "check", "detail"], rows))


def _queries(data: Mapping[str, Any]) -> str:
    queries = data.get("queries") or {}
    blocked = data.get("blocked_at_query")
    if not queries and not blocked:
        return ""
    blocked = blocked or {}
    service = "blocked_at_query" in data
    rows = []
    for model in sorted({*queries, *blocked}):
        for attack in sorted({*(queries.get(model) or {}), *(blocked.get(model) or {})}):
            q = (queries.get(model) or {}).get(attack) or {}
            row = [_esc(model), _esc(attack), _num(q.get("median"), 0), _num(q.get("max"), 0)]
            if service:
                per_image = (blocked.get(model) or {}).get(attack) or []
                at = [x for x in per_image if isinstance(x, int)]
                row.append(f"{len(at)} of {len(per_image)} image(s), first at query {min(at)}" if at
                           else f"never ({len(per_image)} image(s))" if per_image else "-")
            rows.append(row)
    head = ["model", "attack", "median queries", "max queries"] + (["blocked by the service"] if service else [])
    return ("<h2>Queries</h2><p>Queries each black-box attack spent per image"
            + (", and where the service blocked it" if service else "") + ".</p>" + _table(head, rows))


def _cards(data: Mapping[str, Any], thumbnails: bool) -> str:
    images = [im for im in data.get("protocol_images", []) if isinstance(im, Mapping)]
    if not images:
        return ""
    cards = []
    for im in images:
        path = str(im.get("path", ""))
        src = thumbnail(path, blur=CARD_BLUR) if thumbnails else None
        head = (f'<img src="{src}" alt="blurred thumbnail">' if src else "") + f"<b>{_esc(path)}</b>"
        if im.get("label") is not None:
            head += f"<br>label {_esc(im['label'])}"
        if im.get("error"):
            cards.append(f'<div class="card">{head}<br><span class="err">{_esc(im["error"])}</span></div>')
            continue
        body = []
        for model, m in (im.get("models") or {}).items():
            if not isinstance(m, Mapping):
                continue
            rows = [[_esc(attack), _eps(a.get("broken_at")) if a.get("broken_at") is not None else "not broken",
                     _num(a.get("score"), 3), _num(a.get("queries"), 0),
                     _esc(PurePath(str(a["saved"])).name) if a.get("saved") else ""]
                    for attack, a in (m.get("attacks") or {}).items() if isinstance(a, Mapping)]
            correct = m.get("correct")
            body.append(f"<div>{_esc(model)}: clean score {_num(m.get('clean_score'), 3)}"
                        + ("" if correct is None else " (correct)" if correct else ' <span class="bad">(wrong)</span>')
                        + (f'<br><span class="err">{_esc(m["error"])}</span>' if m.get("error") else "")
                        + "</div>" + (_table(["attack", "broken at", "score", "queries", "saved as"], rows) if rows
                                      else "<small>not attacked (classified wrong clean)</small>"
                                      if correct is False else ""))
        cards.append(f'<div class="card">{head}{"".join(body)}</div>')
    return ("<h2>Images under attack</h2><p>Thumbnails are blurred in their pixels; 'broken at' is the smallest "
            "budget (1/255) whose verified adversarial changed the decision.</p>" + "".join(cards))


def protocol_sections(data: Mapping[str, Any], plots: Mapping[str, bytes], *, thumbnails: bool = True) -> str:
    """The protocol's sections of ``robustness.json`` as HTML: threat model, warnings (failed sanity checks
    first), findings, curves (``plots``: model id -> PNG), transfer, evasions and tiles, sanity checks, queries,
    image cards. A section whose data is absent is left out."""
    findings = "".join(f"<li>{f}</li>" for f in _findings(data))
    parts = [_threat_model(data["threat_model"]) if data.get("threat_model") else "", _warnings(data),
             f'<ul class="key">{findings}</ul>' if findings else "",
             _curve_tables(data, plots), _transfer(data), _evasions(data), _sanity(data), _queries(data),
             _cards(data, thumbnails)]
    return "".join(parts)


def render_html(data: Mapping[str, Any], plots: Mapping[str, bytes], *, study: RobustnessReport | None = None,
                study_plots: Mapping[str, bytes] | None = None, thumbnails: bool = True) -> str:
    """One self-contained page: the protocol's sections (:func:`protocol_sections`), then the per-image study
    (:func:`nsfwlab.lab.robust_report.study_sections`) when ``study`` is given."""
    body = protocol_sections(data, plots, thumbnails=thumbnails)
    if study is not None:
        body += ("<h2>Per-image study: everyday perturbations and the smallest flipping budget</h2>"
                 + study_sections(study, study_plots or {}, thumbnails=thumbnails, blur=CARD_BLUR))
    return report_page(body, extra_style=_STYLE)
