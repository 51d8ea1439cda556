"""The scan store's schema, declared once: :data:`RESULT_COLUMNS` names every column of the
``results`` table with its SQL type and meaning, and the schema version that added it. The DDL,
the insert/update statement, the export columns and the migrations of older stores are derived
from it (:mod:`nsfwlab.scan.store` runs them).

What the store keeps is raw model output (``raw_score``, each frame's raw score, the PDQ hash);
``score``, ``label``, ``match_*`` and the segments are derived from it by :mod:`nsfwlab.verdict`
under the policy recorded in ``policy``, and derived again when a scan runs with another policy.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "COLUMNS",
    "FRAME_COLUMNS",
    "KEY",
    "RESULT_COLUMNS",
    "SCHEMA_VERSION",
    "Column",
    "migration_script",
    "results_ddl",
    "upsert_sql",
]

#: 2: status 'missing'. 3: videos and animations (``kind``, ``frames``, the frames and segments
#: tables), calibration (``raw_score``), the hash bank (``match_*``). 4: ``model``, ``raw_score`` on
#: every row, the PDQ hash, ``match_skipped`` and the ``policy`` the derived columns follow.
SCHEMA_VERSION = 4


@dataclass(frozen=True)
class Column:
    """One column of ``results``: its name, SQL type (with constraints), meaning, and the schema
    version that added it."""

    name: str
    sql: str
    meaning: str
    since: int = 1


RESULT_COLUMNS: tuple[Column, ...] = (
    Column("path", "TEXT NOT NULL", "the file's path (bytes that are not UTF-8 as \\xNN escapes)"),
    Column("size", "INTEGER NOT NULL", "file size in bytes when scanned"),
    Column("mtime_ns", "INTEGER NOT NULL", "modification time (ns) when scanned"),
    Column("sha256", "TEXT", "sha256 of the content (identical content is scored once)"),
    Column("score", "REAL", "the reported score: calibrated when the policy has a calibration (derived)"),
    Column("label", "TEXT", "safe, review or nsfw, or the bank's human decision (derived)"),
    Column("status", "TEXT NOT NULL CHECK (status IN ('ok', 'error', 'missing'))",
           "ok, error, or missing (the file was deleted since it was scanned)"),
    Column("error_code", "TEXT", "the error's stable code"),
    Column("error", "TEXT", "the error's message"),
    Column("attempts", "INTEGER NOT NULL DEFAULT 1", "failed attempts on unchanged content"),
    Column("reused", "INTEGER NOT NULL DEFAULT 0", "1 when identical content's score was reused"),
    Column("model_version", "TEXT NOT NULL", "the exact model (weights) that scored it"),
    Column("preprocess_version", "TEXT NOT NULL", "the preprocessing pipeline"),
    Column("mode", "TEXT NOT NULL", "exact or fast"),
    Column("first_seen", "REAL NOT NULL", "when the row was first written (Unix time)"),
    Column("scored_at", "REAL NOT NULL", "when the row was last written or derived (Unix time)"),
    Column("kind", "TEXT", "image, animation or video", 3),
    Column("frames", "INTEGER", "frames scored (videos and animations; NULL for a still image)", 3),
    Column("raw_score", "REAL", "the model's score (of a video or animation: its raw frame scores aggregated)", 3),
    Column("match_decision", "TEXT", "the hash bank's human decision, which is then the label (derived)", 3),
    Column("match_distance", "INTEGER", "differing PDQ bits to the banked hash (derived)", 3),
    Column("match_source", "TEXT", "where the banked decision came from (derived)", 3),
    Column("model", "TEXT NOT NULL DEFAULT 'open_nsfw'", "the model's id in the zoo", 4),
    Column("match_skipped", "TEXT", "why the bank was not consulted or could not match (derived)", 4),
    Column("pdq", "TEXT", "the still image's PDQ hash (64 hex digits), when a bank was used", 4),
    Column("pdq_quality", "INTEGER", "the PDQ hash's quality (0-100)", 4),
    Column("policy", "TEXT", "the policy (JSON) the derived columns follow", 4),
)

#: One row per file, model version and preprocessing.
KEY = ("path", "model_version", "preprocess_version")
#: Columns of the ``results`` table, in export order.
COLUMNS = tuple(c.name for c in RESULT_COLUMNS)
#: What an exported record adds: a video's or animation's ``(t, score)`` frames and ``(start, end, max)`` segments.
FRAME_COLUMNS = ("frame_scores", "segments")
#: Columns an insert writes (``attempts`` is counted by the upsert itself).
WRITTEN = tuple(c for c in COLUMNS if c != "attempts")

#: Data changes that go with a schema step (after its columns exist).
_DATA_STEPS = {
    # Before 4, raw_score was kept only beside a calibrated score: otherwise the score was the raw one.
    3: "UPDATE results SET raw_score = score WHERE raw_score IS NULL AND status = 'ok';\n",
}


def results_ddl(version: int = SCHEMA_VERSION, table: str = "results") -> str:
    """``CREATE TABLE`` for the ``results`` table of schema ``version``."""
    cols = [f"    {c.name} {c.sql}" for c in RESULT_COLUMNS if c.since <= version]
    return (f"CREATE TABLE IF NOT EXISTS {table} (\n    id INTEGER PRIMARY KEY,\n" + ",\n".join(cols)
            + f",\n    UNIQUE ({', '.join(KEY)})\n);\n")


def upsert_sql() -> str:
    """Insert one row (the values of :data:`WRITTEN`, in order), or update the row of the same key.

    ``attempts`` grows by one per failed attempt on unchanged content and restarts at 1 when the
    file changed; ``first_seen`` keeps the first write's time."""
    updated = [c for c in WRITTEN if c not in KEY and c != "first_seen"]
    return (
        f"INSERT INTO results ({', '.join(WRITTEN)})\nVALUES ({', '.join('?' * len(WRITTEN))})\n"
        f"ON CONFLICT ({', '.join(KEY)}) DO UPDATE SET\n"
        "    attempts = CASE\n"
        "        WHEN results.size = excluded.size AND results.mtime_ns = excluded.mtime_ns\n"
        "             AND results.status = 'error' THEN results.attempts + 1\n"
        "        WHEN results.size = excluded.size AND results.mtime_ns = excluded.mtime_ns\n"
        "             THEN results.attempts\n"
        "        ELSE 1 END,\n    "
        + ",\n    ".join(f"{c} = excluded.{c}" for c in updated) + "\n"
    )


def _step(version: int) -> str:
    """SQL that brings schema ``version`` to ``version + 1``."""
    if version == 1:
        # status may be 'missing'; SQLite cannot change a CHECK constraint, so the table is rebuilt.
        return ("ALTER TABLE results RENAME TO results_v1;\n" + results_ddl(2)
                + "INSERT INTO results SELECT * FROM results_v1;\nDROP TABLE results_v1;\n")
    added = "".join(f"ALTER TABLE results ADD COLUMN {c.name} {c.sql};\n"
                    for c in RESULT_COLUMNS if c.since == version + 1)
    return added + _DATA_STEPS.get(version, "")


def migration_script(version: int) -> str:
    """SQL that brings a store of schema ``version`` up to :data:`SCHEMA_VERSION` (rows kept)."""
    return "".join(_step(v) for v in range(version, SCHEMA_VERSION))
