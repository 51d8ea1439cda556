"""The one result sink of every engine (local, GPU, Ray): what to skip, which content to score,
and what goes into the store.

The engine's workers hand it one :class:`~nsfwlab.scan.worker.Prepared` per file (:meth:`Sink.add`).
The sink records errors and cached scores at once, and answers ``True`` for the first file of each
content that has no score yet: the engine scores that content and reports back (:meth:`Sink.scored`,
:meth:`Sink.failed`), and the sink records it and every identical file that arrived in between.
Records are written one transaction per batch; the run is recorded in the store's ``runs`` table.

Every answer (score, label, bank match, segments) comes from :mod:`nsfwlab.verdict`, from the raw
model output the store keeps. A scored, unchanged file whose row follows another policy (other
thresholds, calibration, bank or aggregation) is derived again from that raw output, without the
model: :attr:`~nsfwlab.scan.store.ScanAction.REDERIVE`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import verdict
from ..config import Label
from ..errors import ConfigError, NsfwlabError
from ..frames import FrameOptions
from ..verdict import Kind, Policy, Verdict
from .config import ScanConfig, ScanModel
from .store import FileRecord, ResultStore, ScanAction, Status, StoredRaw
from .walk import WalkedFile, WalkIssue, walk
from .worker import Prepared, pdq_of

__all__ = ["ProgressFn", "ScanSummary", "Sink"]

ProgressFn = Callable[[int, int], None]

#: Separates a content's sha256 from a frame's index in the keys the model's batches carry.
_FRAME_KEY = "#"


@dataclass
class _Sampled:
    """A video or animation being scored: its frames' times and durations, their raw scores so far."""

    kind: str
    times: list[float]
    durations: list[float]
    raws: list[float | None]


@dataclass
class ScanSummary:
    """What a scan did. ``scored``: files the model ran on; ``reused``: files whose identical
    content already had a score; ``skipped``: unchanged files already in the store; ``errors``
    include paths the walk could not scan (unreadable folders, dangling links, special files);
    ``missing``: rows whose file was deleted since, marked by this scan; ``matched``: files labelled
    by a hash bank's human decision; ``rederived``: unchanged files whose answer was derived again
    from their stored raw output because the policy changed (``changed``: which parts of it)."""

    model_version: str
    preprocess_version: str
    mode: str
    engine: str
    seen: int = 0
    skipped: int = 0
    scored: int = 0
    reused: int = 0
    errors: int = 0
    missing: int = 0
    matched: int = 0
    rederived: int = 0
    changed: list[str] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=lambda: {label.value: 0 for label in Label})
    error_codes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def processed(self) -> int:
        """Files this scan wrote a row for (scored, reused, re-derived or failed)."""
        return self.scored + self.reused + self.rederived + self.errors

    @property
    def files_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_version": self.model_version, "preprocess_version": self.preprocess_version,
            "mode": self.mode, "engine": self.engine, "seen": self.seen, "skipped": self.skipped,
            "scored": self.scored, "reused": self.reused, "errors": self.errors,
            "missing": self.missing, "matched": self.matched, "rederived": self.rederived,
            "changed": list(self.changed), "labels": dict(self.labels),
            "error_codes": dict(self.error_codes), "seconds": round(self.seconds, 3),
            "files_per_second": round(self.files_per_second, 2),
        }


def _open_bank(config: ScanConfig) -> Any:
    if config.bank is None:
        return None
    from ..bank import Bank

    if not os.path.isfile(config.bank):
        raise ConfigError(f"bank {config.bank} does not exist (create one with `nsfwlab bank import`)", param="bank")
    return Bank(config.bank, limits=config.limits)


def _policy_parts(policy: str | None) -> dict[str, Any]:
    try:
        parts = json.loads(policy) if policy else {}
    except ValueError:
        return {}
    return parts if isinstance(parts, dict) else {}


class Sink:
    """Dedupes identical content, reuses cached scores, records results and the run."""

    def __init__(self, store: ResultStore, model: ScanModel, config: ScanConfig, engine: str,
                 progress: ProgressFn | None = None, *, run_engine: str | None = None) -> None:
        self.store, self.model, self.config, self.progress = store, model, config, progress
        self.run_engine = run_engine or engine
        self.summary = ScanSummary(model.model_version, model.preprocess_version, model.mode.value, engine)
        self.records: list[FileRecord] = []
        self.waiting: dict[str, list[WalkedFile]] = {}  # content being scored -> its files, first one first
        self.pending_skips = 0
        self.roots: list[str] = []
        self.sampled: dict[str, _Sampled] = {}  # videos and animations being scored, by content
        self.hashes: dict[str, Any] = {}  # PDQ hashes of the contents being scored (bank matching)
        self.bank = _open_bank(config)
        self.policy = Policy(config.thresholds, config.calibration, config.frames or FrameOptions(),
                             config.match_distance)
        bank_id = None if self.bank is None else f"{os.path.abspath(config.bank or '')}#{len(self.bank)}"
        #: The policy as stored next to each derived answer (a change of any part re-derives the row).
        self.policy_key = json.dumps(self.policy.describe(bank_id), sort_keys=True)
        #: Records written per transaction: four model batches.
        self.flush_every = 4 * config.model_batch(model.backend.device)

    def close(self) -> None:
        if self.bank is not None:
            self.bank.close()
            self.bank = None

    # -- the run ------------------------------------------------------------------------------

    def start(self, roots: list[str]) -> int:
        self.roots = [os.path.abspath(r) for r in roots]
        return self.store.start_run(model_version=self.model.model_version,
                                    preprocess_version=self.model.preprocess_version, mode=self.model.mode.value,
                                    engine=self.run_engine, roots=roots)

    def finish(self, run_id: int) -> ScanSummary:
        self.flush()
        s = self.summary
        s.missing = self.store.mark_missing(self.roots)
        self.store.finish_run(run_id, scored=s.scored, reused=s.reused, skipped=s.skipped, errors=s.errors)
        return s

    def planned(self, roots: list[str]) -> Iterator[WalkedFile]:
        """The walk, less the files the store says to skip (unchanged, or failed too often)."""
        for f in walk(roots, self.config.walk, on_issue=self._issue):
            self.summary.seen += 1
            action = self.store.decide(f.path, f.size, f.mtime_ns, self.model.model_version,
                                       self.model.preprocess_version, max_attempts=self.config.max_attempts,
                                       policy=self.policy_key)
            if action is ScanAction.SKIP:
                self.summary.skipped += 1
                self._skip()
            elif action is ScanAction.REDERIVE and self._rederive(f):
                pass
            else:
                yield f

    def _rederive(self, file: WalkedFile) -> bool:
        """Derive an unchanged file's answer again from its stored raw output under this scan's
        policy (its PDQ hash computed now when a bank needs one the row lacks). False when the row
        has no raw output to derive from: then the file is scanned."""
        raw = self.store.stored_raw(file.path, self.model.model_version, self.model.preprocess_version)
        if raw is None:
            return False
        old, new = _policy_parts(raw.policy), _policy_parts(self.policy_key)
        changed = ["policy (not recorded before)"] if raw.policy is None else \
            [part for part in sorted(new) if old.get(part) != new[part]]
        self.summary.changed.extend(part for part in changed if part not in self.summary.changed)
        pdq = self._stored_pdq(file, raw)
        if raw.times:
            self._record_frames(file, raw.sha256 or "", raw.kind, raw.times, raw.durations, raw.raws,
                                reused=raw.reused, rederived=True)
        else:
            self._record(file, raw.sha256, raw=raw.raw_score, reused=raw.reused, pdq=pdq, rederived=True)
        if len(self.records) >= self.flush_every:
            self.flush()
        return True

    def _stored_pdq(self, file: WalkedFile, raw: StoredRaw) -> Any:
        if self.bank is None or raw.kind != Kind.IMAGE.value:
            return None
        from ..bank import PdqHash
        from ..imageio import read_bytes

        if raw.pdq is not None:
            return PdqHash(raw.pdq, raw.pdq_quality)
        try:
            return pdq_of(read_bytes(file.path, self.config.limits), self.config.limits)
        except NsfwlabError:
            return None

    def _issue(self, issue: WalkIssue) -> None:
        """A path the walk cannot scan: an error row, so that it is reported, never silently skipped."""
        self.summary.seen += 1
        self._record(WalkedFile(issue.path, 0, 0), None, error_code=issue.code, error=issue.message)

    # -- results ------------------------------------------------------------------------------

    def add(self, p: Prepared) -> bool:
        """Take one worker result; ``True`` when its content is new and the caller must score it
        (its :meth:`model_inputs`)."""
        new = False
        if p.failed:
            self._record(p.file, p.sha256, error_code=p.error_code, error=p.error)
        elif p.cached is not None:
            self._reuse(p.file, p.sha256 or "", p.cached, p.pdq)
        elif (sha := p.sha256 or "") in self.waiting:
            self.waiting[sha].append(p.file)
        elif (known := self.store.cached_score(sha, self.model.model_version,
                                               self.model.preprocess_version)) is not None:
            self._reuse(p.file, sha, known, p.pdq)
        else:
            self.waiting[sha] = [p.file]
            if p.pdq is not None:
                self.hashes[sha] = p.pdq
            if p.frames is not None:
                f = p.frames
                self.sampled[sha] = _Sampled(f.kind, f.times, f.durations, [None] * len(f.arrays))
            new = True
        if len(self.records) >= self.flush_every:
            self.flush()
        return new

    @staticmethod
    def model_inputs(p: Prepared) -> Iterator[Prepared]:
        """What the model scores for new content: the file itself, or each of its sampled frames
        (keyed ``<sha256>#<index>``, so that frames join the same batches as images)."""
        if p.frames is None:
            yield p
            return
        for i, array in enumerate(p.frames.arrays):
            yield Prepared(p.file, f"{p.sha256}{_FRAME_KEY}{i}", array=array)

    def scored(self, shas: Sequence[str], scores: Sequence[float]) -> None:
        """Raw scores of contents (or frames) :meth:`add` asked for: record them, and write the batch."""
        if self.model.guard is not None:  # fast mode: still images scored near a band boundary, again exactly
            scores = self.model.guard.review([(self.waiting[s][0].path if s in self.waiting else None, s)
                                              for s in shas], scores)
        for sha, score in zip(shas, scores, strict=True):
            if _FRAME_KEY in sha:
                self._frame_scored(sha, float(score))
                continue
            first, *twins = self.waiting.pop(sha)
            pdq = self.hashes.pop(sha, None)
            self._record(first, sha, raw=float(score), pdq=pdq)
            for twin in twins:
                self._record(twin, sha, raw=float(score), reused=True, pdq=pdq)
        self.flush()

    def _frame_scored(self, key: str, raw: float) -> None:
        sha, index = key.rsplit(_FRAME_KEY, 1)
        job = self.sampled[sha]
        job.raws[int(index)] = raw
        if any(r is None for r in job.raws):
            return
        del self.sampled[sha]
        raws = [float(r) for r in job.raws if r is not None]
        first, *twins = self.waiting.pop(sha)
        for i, f in enumerate([first, *twins]):
            self._record_frames(f, sha, job.kind, job.times, job.durations, raws, reused=i > 0)

    def failed(self, p: Prepared) -> None:
        """A content :meth:`add` asked for could not be scored after all (``p`` carries the error)."""
        self.hashes.pop(p.sha256 or "", None)
        for f in self.waiting.pop(p.sha256 or ""):
            self._record(f, p.sha256, error_code=p.error_code, error=p.error)

    def flush(self) -> None:
        done = len(self.records) + self.pending_skips
        errors = sum(1 for r in self.records if r.status is Status.ERROR)
        if self.records:
            self.store.write(self.records)
        self.records = []
        self.pending_skips = 0
        if self.progress is not None and done:
            self.progress(done, errors)

    def _skip(self) -> None:
        self.pending_skips += 1
        if self.pending_skips >= 256 and self.progress is not None:
            # Report skipped files as they go by; pending records are reported when written.
            self.progress(self.pending_skips, 0)
            self.pending_skips = 0

    def _reuse(self, file: WalkedFile, sha: str, raw: float, pdq: Any) -> None:
        """Identical content already scored: its raw score, or its frames' raw scores (combined again
        with this scan's options), without decoding or model work."""
        cached = self.store.cached_frames(sha, self.model.model_version, self.model.preprocess_version)
        if cached is None:
            self._record(file, sha, raw=raw, reused=True, pdq=pdq)
        else:
            kind, times, durations, raws = cached
            self._record_frames(file, sha, kind, times, durations, raws, reused=True)

    def _record_frames(self, file: WalkedFile, sha: str, kind: str, times: Sequence[float],
                       durations: Sequence[float], raws: Sequence[float], *, reused: bool,
                       rederived: bool = False) -> None:
        """A video or animation: its frames' raw scores through the verdict."""
        check = verdict.check_bank(self.bank, None, Kind(kind), self.config.match_distance)
        v = verdict.decide_frames(kind, times, durations, raws, self.policy, check)
        frames = tuple((t, d, r, s) for t, d, r, (_, s) in zip(times, durations, raws, v.frame_scores, strict=True))
        self._write_ok(file, sha, v, reused=reused, rederived=rederived, frames=frames)

    def _record(self, file: WalkedFile, sha: str | None, *, raw: float | None = None,
                error_code: str | None = None, error: str | None = None, reused: bool = False,
                pdq: Any = None, rederived: bool = False) -> None:
        """A still image's raw score through the verdict (its PDQ hash matched against the bank), or an error."""
        if raw is not None:
            check = verdict.check_bank(self.bank, pdq, Kind.IMAGE, self.config.match_distance)
            self._write_ok(file, sha, verdict.decide_still(raw, self.policy, check), reused=reused,
                           rederived=rederived, pdq=pdq)
            return
        m, s = self.model, self.summary
        code = error_code or "error"
        s.errors += 1
        s.error_codes[code] = s.error_codes.get(code, 0) + 1
        self.records.append(FileRecord(file.path, file.size, file.mtime_ns, sha, Status.ERROR, m.model_version,
                                       m.preprocess_version, m.mode.value, error_code=code, error=error,
                                       model=m.model_id))

    def _write_ok(self, file: WalkedFile, sha: str | None, v: Verdict, *, reused: bool, rederived: bool,
                  frames: tuple[tuple[float, float, float, float], ...] | None = None, pdq: Any = None) -> None:
        m, s = self.model, self.summary
        s.labels[v.label.value] += 1
        s.matched += v.match is not None
        if rederived:
            s.rederived += 1
        elif reused:
            s.reused += 1
        else:
            s.scored += 1
        match = v.match
        self.records.append(FileRecord(
            file.path, file.size, file.mtime_ns, sha, Status.OK, m.model_version, m.preprocess_version, m.mode.value,
            score=v.score, label=v.label.value, reused=reused, kind=v.kind.value, frames=frames,
            segments=v.segments if frames is not None else None, raw_score=v.raw_score,
            match_decision=match.decision.value if match else None, match_distance=match.distance if match else None,
            match_source=match.source if match else None, model=m.model_id, match_skipped=v.match_skipped,
            pdq=getattr(pdq, "hex", None), pdq_quality=getattr(pdq, "quality", None), policy=self.policy_key))
