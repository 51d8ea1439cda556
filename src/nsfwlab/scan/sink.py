"""The one result sink of every engine (local, GPU, Ray): what to skip, which content to score,
and what goes into the store.

The engine's workers hand it one :class:`~nsfwlab.scan.worker.Prepared` per file (:meth:`Sink.add`).
The sink records errors and cached scores at once, and answers ``True`` for the first file of each
content that has no score yet: the engine scores that content and reports back (:meth:`Sink.scored`,
:meth:`Sink.failed`), and the sink records it and every identical file that arrived in between.
Records are written one transaction per batch; the run is recorded in the store's ``runs`` table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import Label
from .config import ScanConfig, ScanModel
from .store import Decision, FileRecord, ResultStore, Status
from .walk import WalkedFile, walk
from .worker import Prepared

__all__ = ["ProgressFn", "ScanSummary", "Sink"]

ProgressFn = Callable[[int, int], None]


@dataclass
class ScanSummary:
    """What a scan did. ``scored``: files the model ran on; ``reused``: files whose identical
    content already had a score; ``skipped``: unchanged files already in the store."""

    model_version: str
    preprocess_version: str
    mode: str
    engine: str
    seen: int = 0
    skipped: int = 0
    scored: int = 0
    reused: int = 0
    errors: int = 0
    labels: dict[str, int] = field(default_factory=lambda: {label.value: 0 for label in Label})
    error_codes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def processed(self) -> int:
        return self.scored + self.reused + self.errors

    @property
    def files_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_version": self.model_version, "preprocess_version": self.preprocess_version,
            "mode": self.mode, "engine": self.engine, "seen": self.seen, "skipped": self.skipped,
            "scored": self.scored, "reused": self.reused, "errors": self.errors, "labels": dict(self.labels),
            "error_codes": dict(self.error_codes), "seconds": round(self.seconds, 3),
            "files_per_second": round(self.files_per_second, 2),
        }


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

    # -- the run ------------------------------------------------------------------------------

    def start(self, roots: list[str]) -> int:
        return self.store.start_run(model_version=self.model.model_version,
                                    preprocess_version=self.model.preprocess_version, mode=self.model.mode.value,
                                    engine=self.run_engine, roots=roots)

    def finish(self, run_id: int) -> ScanSummary:
        self.flush()
        s = self.summary
        self.store.finish_run(run_id, scored=s.scored, reused=s.reused, skipped=s.skipped, errors=s.errors)
        return s

    def planned(self, roots: list[str]) -> Iterator[WalkedFile]:
        """The walk, less the files the store says to skip (unchanged, or failed too often)."""
        for f in walk(roots, self.config.walk):
            self.summary.seen += 1
            if self.store.decide(f.path, f.size, f.mtime_ns, self.model.model_version,
                                 self.model.preprocess_version, max_attempts=self.config.max_attempts) is Decision.SKIP:
                self.summary.skipped += 1
                self._skip()
                continue
            yield f

    # -- results ------------------------------------------------------------------------------

    def add(self, p: Prepared) -> bool:
        """Take one worker result; ``True`` when its content is new and the caller must score it."""
        new = False
        if p.failed:
            self._record(p.file, p.sha256, error_code=p.error_code, error=p.error)
        elif p.cached is not None:
            self._record(p.file, p.sha256, score=p.cached, reused=True)
        elif (sha := p.sha256 or "") in self.waiting:
            self.waiting[sha].append(p.file)
        elif (known := self.store.cached_score(sha, self.model.model_version,
                                               self.model.preprocess_version)) is not None:
            self._record(p.file, sha, score=known, reused=True)
        else:
            self.waiting[sha] = [p.file]
            new = True
        if len(self.records) >= 4 * self.config.batch_size:
            self.flush()
        return new

    def scored(self, shas: Sequence[str], scores: Sequence[float]) -> None:
        """Scores of contents :meth:`add` asked for: record them, and write the batch."""
        for sha, score in zip(shas, scores, strict=True):
            first, *twins = self.waiting.pop(sha)
            self._record(first, sha, score=float(score))
            for twin in twins:
                self._record(twin, sha, score=float(score), reused=True)
        self.flush()

    def failed(self, p: Prepared) -> None:
        """A content :meth:`add` asked for could not be scored after all (``p`` carries the error)."""
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

    def _record(self, file: WalkedFile, sha: str | None, *, score: float | None = None,
                error_code: str | None = None, error: str | None = None, reused: bool = False) -> None:
        m, s = self.model, self.summary
        if score is not None:
            label = self.config.thresholds.label(score).value
            s.labels[label] += 1
            if reused:
                s.reused += 1
            else:
                s.scored += 1
            self.records.append(FileRecord(file.path, file.size, file.mtime_ns, sha, Status.OK, m.model_version,
                                           m.preprocess_version, m.mode.value, score=score, label=label,
                                           reused=reused))
            return
        code = error_code or "error"
        s.errors += 1
        s.error_codes[code] = s.error_codes.get(code, 0) + 1
        self.records.append(FileRecord(file.path, file.size, file.mtime_ns, sha, Status.ERROR, m.model_version,
                                       m.preprocess_version, m.mode.value, error_code=code, error=error))
