"""The robustness protocol: robust accuracy against epsilon for every chosen model under an ensemble of
attacks, the worst case over them, the transfer matrix between the models and the gradient-masking sanity
checks (RobustBench's protocol; AutoAttack, Croce & Hein 2020; Carlini et al. 2019).

>>> report = robustness_protocol(paths, ["open_nsfw", "nsfwjs-mobilenetv2"], eps=(1, 2, 4, 8))  # doctest: +SKIP
>>> report.to_dict()["curves"]["open_nsfw"]["worst"][0]                                       # doctest: +SKIP
{'eps': 1, 'robust_accuracy': 0.0, 'n': 4, 'ci95': [0.0, 0.49], 'broken': 4}

Threat model: each image's working copy (longer side at most ``work_side``, Pillow-downscaled) is attacked;
``eps`` is in levels of 1/255 (L-inf: per value; L2: the RMS over all H*W*3 values, so the budget does not
grow with the image). Decision: NSFW iff the exact score is at least ``threshold``. A success counts only
when the uint8 adversarial, scored by the exact Detector as the PNG it would be saved as, is on the wrong
side. The library returns values; adversarial files are written only to ``save_adversarial``.
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Device
from ..errors import ConfigError, NsfwlabError
from ..imageio import ImageInput, describe_source, load_image
from ..progress import ProgressCallback, notify
from ..sizing import check_aspect, downscale
from .attack_options import Norm
from .options import configure
from .protocol_attacks import ATTACKS, Verifier, WhiteBox, into_ball, minimal_engine, run_blackbox, run_minimal
from .protocol_stats import (
    ImageRecord,
    ModelRecord,
    clean_accuracy,
    curves,
    few_warnings,
    query_counts,
    sanity_checks,
    transfer,
)

__all__ = ["UNBOUNDED_EPS", "ProtocolConfig", "ProtocolReport", "robustness_protocol"]

#: The "unbounded" budget of the first sanity check: far beyond any imperceptible change, so a correct
#: attack must break every image there (Carlini et al. 2019, section 5.2).
UNBOUNDED_EPS = 64.0
#: Images the stronger-APGD sanity rerun uses (seeded choice): it costs 8x an APGD run per image.
SANITY_SUBSAMPLE = 4


@dataclass(frozen=True)
class ProtocolConfig:
    """What the protocol runs. ``attacks``: any of apgd, square, hopskipjump, minimal. ``norm``: linf or l2;
    ``eps``: budgets in /255 levels (sorted). ``steps`` / ``restarts``: APGD's iterations and random starts
    (``steps`` also drives the minimal search). ``queries``: the black-box budget per run. ``work_side``: the
    working copy's longer side. ``save_adversarial``: a folder for the verified adversarial PNGs (nothing is
    written without it). ``sanity``: run the sanity reruns. ``bootstrap``: resamples per interval."""

    attacks: tuple[str, ...] = ATTACKS
    norm: Norm = Norm.LINF
    eps: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    threshold: float = 0.5
    steps: int = 50
    restarts: int = 2
    queries: int = 1000
    work_side: int = 256
    seed: int = 0
    save_adversarial: Path | None = None
    sanity: bool = True
    bootstrap: int = 1000
    max_aspect: float = 20.0
    device: str = "auto"

    def __post_init__(self) -> None:
        attacks = (self.attacks,) if isinstance(self.attacks, str) else tuple(self.attacks)
        unknown = [a for a in attacks if a not in ATTACKS]
        _check(bool(attacks) and not unknown, "attacks",
               f"attacks are {', '.join(ATTACKS)}; got {', '.join(unknown) or 'none'}")
        object.__setattr__(self, "attacks", tuple(a for a in ATTACKS if a in attacks))
        try:
            object.__setattr__(self, "norm", Norm(self.norm))
        except ValueError:
            raise ConfigError(f"norm must be linf or l2, got {self.norm!r}", param="norm") from None
        try:
            eps = tuple(sorted({float(e) for e in ((self.eps,) if isinstance(self.eps, (int, float)) else self.eps)}))
        except (TypeError, ValueError):
            raise ConfigError(f"eps must be numbers (levels of 1/255), got {self.eps!r}", param="eps") from None
        _check(bool(eps) and all(0 < e <= 255 for e in eps), "eps", f"eps values must lie in (0, 255], got {eps}")
        _check(self.norm is not Norm.LINF or all(e >= 1 for e in eps), "eps",
               f"an L-inf budget under 1 level changes no uint8 value; got {eps}")
        object.__setattr__(self, "eps", eps)
        _check(0.0 < self.threshold < 1.0, "threshold", f"threshold must lie in (0, 1), got {self.threshold}")
        _check(self.steps >= 1, "steps", f"steps must be at least 1, got {self.steps}")
        _check(self.restarts >= 1, "restarts", f"restarts must be at least 1, got {self.restarts}")
        _check(self.queries >= 10, "queries", f"queries must be at least 10, got {self.queries}")
        _check(self.work_side >= 32, "work_side", f"work_side must be at least 32, got {self.work_side}")
        _check(self.bootstrap >= 100, "bootstrap", f"bootstrap needs at least 100 resamples, got {self.bootstrap}")
        _check(self.max_aspect >= 1, "max_aspect", f"max_aspect must be at least 1, got {self.max_aspect}")
        try:
            Device(self.device)
        except ValueError:
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}", param="device") from None
        if self.save_adversarial is not None:
            folder = Path(self.save_adversarial)
            _check(not folder.exists() or folder.is_dir(), "save_adversarial",
                   f"save_adversarial must be a folder, got {folder}")
            object.__setattr__(self, "save_adversarial", folder)


def _check(ok: bool, param: str, message: str) -> None:
    if not ok:
        raise ConfigError(message, param=param)


@dataclass(frozen=True)
class ProtocolReport:
    """The protocol's sections of ``robustness.json`` (see :meth:`to_dict`) and the per-image records."""

    threat_model: dict[str, Any]
    clean_accuracy: dict[str, Any]
    curves: dict[str, Any]
    transfer: dict[str, Any]
    transfer_detail: dict[str, Any]
    queries: dict[str, Any]
    blocked_at_query: dict[str, Any] | None
    sanity: list[dict[str, Any]]
    images: tuple[ImageRecord, ...] = ()
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "threat_model": self.threat_model, "clean_accuracy": self.clean_accuracy, "curves": self.curves,
            "transfer": self.transfer, "transfer_detail": self.transfer_detail, "queries": self.queries}
        if self.blocked_at_query is not None:
            out["blocked_at_query"] = self.blocked_at_query
        out.update({"sanity": self.sanity, "protocol_images": [im.to_dict() for im in self.images],
                    "warnings": list(self.warnings)})
        return out


class _Model:
    """One model under study: its exact Detector (verification), its Scorer (gradients), the oracle the
    black-box attacks query and, when the lab Engine supports the model, the minimal search."""

    def __init__(self, model_id: str, cfg: ProtocolConfig, oracle_factory: Callable[[str], Any] | None,
                 device: str) -> None:
        from ..detector import Detector
        from .differentiable import DetectorOracle, LocalOracle, exact_score, load_scorer

        self.id = model_id
        self.device = device
        self.detector = Detector(model=model_id, device="cpu")
        self.verifier = Verifier(lambda px: exact_score(self.detector, px), cfg.threshold)
        self.scorer: Any = None
        self.notes: list[str] = []
        self.attacks = list(cfg.attacks)
        white = [a for a in self.attacks if a in ("apgd", "minimal")]
        if oracle_factory is not None and white:
            self.notes.append(f"{model_id}: {', '.join(white)} skipped: a white-box attack needs the model's "
                              "gradients, and the target is a service")
            self.attacks = [a for a in self.attacks if a not in white]
        if "apgd" in self.attacks or "minimal" in self.attacks or oracle_factory is None:
            try:
                self.scorer = load_scorer(model_id, detector=self.detector).eval()
            except ConfigError as exc:  # no differentiable form (NudeNet's detector): black-box attacks only
                self._no_gradients(str(exc))
        # the oracle answers on the CPU; APGD's gradients run on ``device`` (a copy of the scorer there)
        self.grad_scorer = self.scorer if device == "cpu" or self.scorer is None \
            else copy.deepcopy(self.scorer).to(device)
        if oracle_factory is not None:
            self.oracle = oracle_factory(model_id)
        elif self.scorer is not None:
            self.oracle = LocalOracle(self.scorer, threshold=cfg.threshold)
        else:  # the exact Detector itself answers the black-box attacks' queries
            self.oracle = DetectorOracle(self.detector, threshold=cfg.threshold)
        if getattr(self.oracle, "labels_only", False) and "square" in self.attacks:
            self.notes.append(f"{model_id}: square skipped: the target answers labels only, and Square needs "
                              "scores")
            self.attacks.remove("square")
        self.engine: Any = None
        if "minimal" in self.attacks:
            self._minimal(cfg, device)

    def _no_gradients(self, reason: str) -> None:
        white = [a for a in self.attacks if a in ("apgd", "minimal")]
        if white:
            self.notes.append(f"{self.id}: {', '.join(white)} skipped: {reason}")
        self.attacks = [a for a in self.attacks if a not in white]

    def _minimal(self, cfg: ProtocolConfig, device: str) -> None:
        if cfg.norm is not Norm.LINF:
            self.notes.append(f"{self.id}: minimal skipped: the smallest-budget search is L-inf only")
        else:
            try:
                self.engine = minimal_engine(self.detector, cfg.eps, steps=cfg.steps, seed=cfg.seed, device=device,
                                             work_side=cfg.work_side)
            except NsfwlabError as exc:
                self.notes.append(f"{self.id}: minimal skipped: {exc}")
        if self.engine is None:
            self.attacks.remove("minimal")

    def close(self) -> None:
        """The Detector, and the oracle when it holds a connection (a service oracle from the factory)."""
        self.detector.close()
        closer = getattr(self.oracle, "close", None)
        if callable(closer):
            closer()


def robustness_protocol(sources: Sequence[ImageInput], models: Sequence[str] = ("open_nsfw",),
                        config: ProtocolConfig | None = None, *, labels: Mapping[str, int] | None = None,
                        oracle_factory: Callable[[str], Any] | None = None,
                        starts: Sequence[ImageInput] = (),
                        progress: ProgressCallback | None = None, **overrides: Any) -> ProtocolReport:
    """Run the protocol on ``sources`` for every model of ``models`` (zoo ids, ensembles).

    ``labels`` maps a source's name (:func:`describe_source`, e.g. its path) to 1 (NSFW) or 0; an image
    without one takes the model's own clean decision. ``oracle_factory(model_id)`` gives the oracle the
    black-box attacks query (default: the local model; the CLI passes a service for a live target, and then
    the white-box attacks are skipped). ``progress`` gets one ``protocol`` event per image and model, its
    record as the item. Bad images are reported in ``protocol_images`` and the rest go on. ``starts``: more
    images HopSkipJump may start from (an attacker's images of the other class, not attacked or reported
    themselves); a label-only attack on a set of one class has no start without them.
    """
    cfg = configure(ProtocolConfig, config, overrides)
    if not models:
        raise ConfigError("give at least one model", param="models")
    models = list(dict.fromkeys(models))
    from ..backends import resolve_device

    device = resolve_device(cfg.device)
    loaded: list[_Model] = []
    try:
        for model_id in models:
            loaded.append(_Model(model_id, cfg, oracle_factory, device))
        images = _run(sources, loaded, cfg, labels, progress, _start_pool(starts, loaded, cfg))
    finally:
        for m in loaded:
            m.close()
    return _report(images, loaded, cfg, labels, oracle_factory is not None)


#: A candidate start of HopSkipJump: its clean score per model and its working copy.
_Start = tuple[dict[str, float], np.ndarray]


def _start_pool(starts: Sequence[ImageInput], loaded: list[_Model], cfg: ProtocolConfig) -> list[_Start]:
    """The given start images' working copies and clean scores (a start that cannot be read is a one-line
    error: the caller chose it)."""
    pool: list[_Start] = []
    for src in starts:
        try:
            work, _ = _working_copy(src, loaded[0].detector, cfg)
        except NsfwlabError as exc:
            raise exc.with_source(f"start image {describe_source(src)}") from None
        pool.append(({m.id: float(m.verifier.score(work)) for m in loaded}, work))
    return pool


def _run(sources: Sequence[ImageInput], loaded: list[_Model], cfg: ProtocolConfig,
         labels: Mapping[str, int] | None, progress: ProgressCallback | None,
         extra_starts: Sequence[_Start] = ()) -> list[ImageRecord]:
    """Load every working copy and score it clean on every model first (cheap: the exact score), so that
    HopSkipJump can start from an image of the other class; then attack image by image."""
    rng = np.random.default_rng(cfg.seed)
    subsample = set(rng.choice(len(sources), size=min(SANITY_SUBSAMPLE, len(sources)), replace=False).tolist())
    images: list[ImageRecord] = []
    works: list[np.ndarray | None] = []
    for src in sources:
        name = describe_source(src)
        record = ImageRecord(name, None if labels is None or name not in labels else int(labels[name]))
        work = None
        try:
            work, record.working_copy = _working_copy(src, loaded[0].detector, cfg)
            for m in loaded:
                record.models[m.id] = _clean(work, record.label, m)
        except NsfwlabError as exc:
            record.error, record.models = str(exc.with_source(name)), {}
        images.append(record)
        works.append(work)
    pool: list[tuple[int | None, _Start]] = [
        (k, ({m: r.clean_score for m, r in im.models.items()}, w))
        for k, (im, w) in enumerate(zip(images, works, strict=True)) if w is not None and im.error is None]
    pool += [(None, start) for start in extra_starts]
    total = len(sources) * len(loaded)
    for i, (record, work) in enumerate(zip(images, works, strict=True)):
        for j, m in enumerate(loaded):
            if record.error is None and work is not None:
                rec = record.models[m.id]
                try:
                    _attack(rec, work, m, cfg, i in subsample, len(loaded) > 1,
                            _start(pool, i, work, m.id, rec.label, cfg.threshold))
                except NsfwlabError as exc:
                    record.error = str(exc.with_source(record.path))
            notify(progress, "protocol", i * len(loaded) + j + 1, total,
                   {"source": record.path, "model": m.id, "record": record.models.get(m.id),
                    "error": record.error})
        if record.error is None:
            _transfer_flips(record, loaded)
            _save(record, i, cfg)
    return images


def _working_copy(src: ImageInput, detector: Any, cfg: ProtocolConfig) -> tuple[np.ndarray, str | None]:
    img = load_image(src, detector.limits)
    check_aspect(img.height, img.width, cfg.max_aspect, who="the robustness protocol")
    work = downscale(img, cfg.work_side)
    return np.array(work), (None if work is img else f"{work.width}x{work.height} of {img.width}x{img.height}")


def _clean(work: np.ndarray, given: int | None, m: _Model) -> ModelRecord:
    score = float(m.verifier.score(work))
    decision = m.verifier.decision(score)
    label = decision if given is None else given
    return ModelRecord(score, label, decision == label)


def _start(pool: Sequence[tuple[int | None, _Start]], i: int, work: np.ndarray, model: str, label: int,
           threshold: float) -> np.ndarray | None:
    """HopSkipJump's first image for image ``i``: of the set's other images and the given start images, the one
    the model decides most confidently the other way (an attacker holds images of both classes), resized to
    image ``i``'s size; ``None`` without one."""
    others = [(abs(scores[model] - threshold), n) for n, (k, (scores, _)) in enumerate(pool)
              if k != i and model in scores and int(scores[model] >= threshold) != label]
    if not others:
        return None
    from PIL import Image

    other = pool[max(others)[1]][1][1]
    h, w = work.shape[:2]
    return np.asarray(Image.fromarray(other).resize((w, h), Image.Resampling.BILINEAR))


def _attack(rec: ModelRecord, work: np.ndarray, m: _Model, cfg: ProtocolConfig, in_subsample: bool,
            for_transfer: bool, start: np.ndarray | None) -> None:
    if not rec.correct:  # a clean error is not robust at any budget: nothing to attack
        return
    label = rec.label
    white = WhiteBox(m.grad_scorer, work, cfg.norm, m.device) if "apgd" in m.attacks else None
    apgd = {"steps": cfg.steps, "restarts": cfg.restarts, "seed": cfg.seed}
    for a in m.attacks:
        t0 = time.perf_counter()
        if a == "apgd" and white is not None:
            rec.attacks[a] = white.ladder(cfg.eps, m.verifier, label, **apgd)
        elif a == "minimal":
            rec.attacks[a] = run_minimal(m.engine, work, label, cfg.eps, m.verifier, cfg.threshold)
        else:
            rec.attacks[a] = run_blackbox(a, m.oracle, work, label, cfg.eps, m.verifier, norm=cfg.norm,
                                          queries=cfg.queries, seed=cfg.seed, start=start)
        rec.attacks[a].seconds = time.perf_counter() - t0
    if white is not None:
        _apgd_extras(rec, white, m.verifier, cfg, in_subsample, for_transfer)
    if rec.transfer_from is None:  # without APGD: the worst case's adversarial (within the largest ball)
        found = [o for o in rec.attacks.values() if o.adversarial is not None]
        rec.transfer_from = min(found, key=lambda o: o.broken_at or 0.0).adversarial if found else None


def _apgd_extras(rec: ModelRecord, white: WhiteBox, verifier: Verifier, cfg: ProtocolConfig, in_subsample: bool,
                 for_transfer: bool) -> None:
    """The transfer adversarial (APGD at the largest budget) and the sanity reruns: APGD at the unbounded
    budget for an image that survived the largest, and 4x steps / 2x restarts at the middle budget."""
    out = rec.attacks["apgd"]
    top = cfg.eps[-1]
    if out.broken_at == top or (out.broken_at is not None and not for_transfer):
        rec.transfer_from = out.adversarial
    elif out.broken_at is not None:  # broken below the largest budget: craft again at it for the matrix
        again = _verified(white, top, rec.label, verifier, cfg, cfg.steps, cfg.restarts)
        rec.transfer_from = out.adversarial if again is None else again
    if not cfg.sanity:
        return
    if out.broken_at is None:
        rec.unbounded = _verified(white, max(UNBOUNDED_EPS, 2 * top), rec.label, verifier, cfg, cfg.steps,
                                  cfg.restarts) is not None
    if in_subsample:
        mid = cfg.eps[len(cfg.eps) // 2]
        if out.broken_at is not None and out.broken_at <= mid:
            rec.stronger = True
        else:
            rec.stronger = _verified(white, mid, rec.label, verifier, cfg, 4 * cfg.steps,
                                     2 * cfg.restarts) is not None


def _verified(white: WhiteBox, eps: float, label: int, verifier: Verifier, cfg: ProtocolConfig, steps: int,
              restarts: int) -> np.ndarray | None:
    adv = white.craft(eps, label, steps=steps, restarts=restarts, seed=cfg.seed + 1)
    if adv is None:
        return None
    adv = into_ball(white.image, adv, cfg.norm, eps)
    return adv if verifier.check(adv, label)[0] else None


def _transfer_flips(record: ImageRecord, loaded: list[_Model]) -> None:
    """For each ordered pair: whether the source's adversarial flips the target (only where the target got
    the clean image right, and the source has a verified adversarial)."""
    for s in loaded:
        adv = record.models[s.id].transfer_from
        if adv is None:
            continue
        for t in loaded:
            target = record.models[t.id]
            if t is not s and target.correct:
                record.transfer[(s.id, t.id)] = t.verifier.check(adv, target.label)[0]


def _save(record: ImageRecord, index: int, cfg: ProtocolConfig) -> None:
    """Write each verified adversarial as a PNG in ``save_adversarial`` (only there; kept in memory otherwise)."""
    if cfg.save_adversarial is None:
        return
    from PIL import Image

    from ..outputs import atomic_output

    cfg.save_adversarial.mkdir(parents=True, exist_ok=True)
    stem = _safe(Path(record.path).stem) or "image"
    for model, rec in record.models.items():
        for attack, out in rec.attacks.items():
            if out.adversarial is None:
                continue
            path = cfg.save_adversarial / f"{index:04d}-{stem}-{_safe(model)}-{attack}-eps{out.broken_at:g}.png"
            with atomic_output(path, binary=True, what="adversarial image") as fh:
                Image.fromarray(out.adversarial).save(fh, format="PNG")
            out.saved = str(path)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:80]


def _report(images: list[ImageRecord], loaded: list[_Model], cfg: ProtocolConfig,
            labels: Mapping[str, int] | None, service: bool) -> ProtocolReport:
    ids = [m.id for m in loaded]
    ran = {m.id: list(m.attacks) for m in loaded}
    seed, b = cfg.seed, cfg.bootstrap
    clean = clean_accuracy(images, ids, b, seed)
    curve = curves(images, ids, ran, cfg.eps, b, seed)
    queries, blocked = query_counts(images, ids, list(ATTACKS), service)
    share, detail = transfer(images, ids, cfg.eps[-1], b, seed)
    checks = sanity_checks(images, ids, curve, ran, cfg.eps, max(UNBOUNDED_EPS, 2 * cfg.eps[-1])) \
        if cfg.sanity else []
    notes = [n for m in loaded for n in m.notes]
    notes += [f"{im.path}: {im.error}" for im in images if im.error is not None]
    notes += few_warnings(clean, detail)
    notes += [f"sanity check failed: {c['check']} ({c['detail']})" for c in checks if c["passed"] is False]
    notes += _rejected(images)
    return ProtocolReport(_threat_model(cfg, loaded, labels, service), clean, curve, share, detail, queries,
                          blocked if service else None, checks, tuple(images), notes)


def _rejected(images: Sequence[ImageRecord]) -> list[str]:
    counts: dict[str, int] = {}
    for im in images:
        for m, rec in im.models.items():
            for a, out in rec.attacks.items():
                if out.rejected:
                    counts[f"{m}/{a}"] = counts.get(f"{m}/{a}", 0) + out.rejected
                if out.error:
                    counts.setdefault(f"{m}/{a} errors", 0)
                    counts[f"{m}/{a} errors"] += 1
    return [f"{k}: {v} claimed success(es) the exact score rejected (not counted)" if "errors" not in k
            else f"{k[:-7]}: {v} image(s) where the attack failed with an error (counted as not broken)"
            for k, v in sorted(counts.items())]


def _threat_model(cfg: ProtocolConfig, loaded: list[_Model], labels: Mapping[str, int] | None,
                  service: bool) -> dict[str, Any]:
    from importlib.metadata import version

    art = f"adversarial-robustness-toolbox {version('adversarial-robustness-toolbox')}"
    ran = {a for m in loaded for a in m.attacks}
    described = {
        "apgd": {"kind": "white-box", "library": art, "attack": "AutoProjectedGradientDescent",
                 "loss": "cross-entropy", "steps": cfg.steps, "restarts": cfg.restarts,
                 "step_size": "2 eps at first, halved by APGD's own schedule",
                 "note": "with two classes the cross-entropy (-log p of the label) and the logit margin are "
                         "monotone in each other and their gradients are positive multiples of each other, so "
                         "APGD-CE and APGD on the margin take the same steps; APGD's DLR loss needs three or "
                         "more classes. One run stands for both."},
        "square": {"kind": "black-box, score-based", "library": art, "attack": "SquareAttack",
                   "queries": cfg.queries, "note": "per eps, ascending; queries counted per run and summed"},
        "hopskipjump": {"kind": "black-box, label-only", "library": art, "attack": "HopSkipJump",
                        "queries": cfg.queries,
                        "note": "minimal-norm: run once, its result projected onto each eps-ball (uint8) and "
                                "verified there; it starts from the set's image the model decides most "
                                "confidently the other way (resized), else from random images (a safe set "
                                "rarely gives one: then it seldom finds any adversarial)"},
        "minimal": {"kind": "white-box", "library": "nsfwlab Engine (sign-gradient PGD over the exact "
                                                    "differentiable pipeline, budget search)",
                    "steps": cfg.steps, "note": "the smallest verified L-inf budget, placed on the eps ladder"},
    }
    unit = ("levels of 1/255 of the working copy's values; L-inf: max |delta| <= eps/255 per value"
            if cfg.norm is Norm.LINF else
            "levels of 1/255: the root-mean-square of delta over all H*W*3 values <= eps/255, i.e. "
            "||delta||_2 <= eps/255 * sqrt(H*W*3) in [0, 1] units (independent of the image's size)")
    return {
        "norm": cfg.norm.value, "eps": list(cfg.eps), "eps_unit": unit, "work_side": cfg.work_side,
        "threshold": cfg.threshold, "decision": "NSFW iff score >= threshold",
        "labels": "given" if labels is not None else "model's own",
        "target": "service" if service else "local",
        "attacks": {a: described[a] for a in ATTACKS if a in ran},
        "models": [m.id for m in loaded],
        "robust_accuracy": "share of images classified right clean and not flipped at that eps or below (a clean "
                           "error counts as not robust); balls nest, so a success at eps counts at every larger "
                           "eps; 'worst' is broken by any attack",
        "verification": "a success counts only when the uint8 adversarial, encoded as PNG and scored by the "
                        "model's exact Detector, is on the wrong side of the threshold",
        "intervals": f"95% percentile bootstrap over images ({cfg.bootstrap} resamples, seed {cfg.seed}); "
                     "Wilson's score interval where every image agrees (the bootstrap would collapse to a point)",
        "transfer": f"APGD adversarials crafted at eps {cfg.eps[-1]:g} on the source and verified there, scored "
                    "exactly on the target; share that flip the target's decision, over images the target got "
                    "right clean" + ("" if "apgd" in ran else "; without APGD: the worst case's adversarial"),
        "seed": cfg.seed,
    }
