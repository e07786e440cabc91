"""Results of finished batches, appended to a JSONL file so a killed run resumes where it stopped.

Line 1 is a header with the run's fingerprint (inputs and settings); each later line holds the results
of some batches as {"rows": {index: output}}. Lines are written whole and fsync'd; a line cut short by a
kill is ignored on reading. A file with another fingerprint belongs to another run and is not used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

log = logging.getLogger("kaggle_kit")


def fingerprint(*parts) -> str:
    """A short stable hash of JSON-able parts (token ids, settings, model path)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _to_json(out):
    if isinstance(out, np.ndarray):
        return out.astype(float).tolist()  # float32 -> float64 -> repr round-trips exactly
    return out


class Checkpoint:
    """A resumable results file for one run (or one shard of it)."""

    def __init__(self, path, run_id: str, every: int = 4, meta: dict | None = None):
        self.path, self.run_id, self.every = Path(path), run_id, every
        self.meta = meta or {}
        self._pending: dict[int, object] = {}
        self._batches = 0
        self._warned = False
        self._torn = False  # the last failed write left part of a line that could not be cut off

    def load(self) -> dict[int, object]:
        """Results saved by an earlier run with the same fingerprint ({} if none)."""
        results = read_results(self.path, self.run_id)
        if results is None:
            if self.path.exists():
                log.info("%s belongs to another run; starting afresh", self.path)
            self._write_header()
            return {}
        if results:
            log.info("resuming: %d rows already done in %s", len(results), self.path)
        # Rewrite as header + one clean line, so a line cut short by the kill is not glued to the next.
        self._write_header()
        self._pending = dict(results)
        self.flush()
        return results

    def _write_header(self):
        self._torn = False  # the file is replaced whole
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"run": self.run_id, **self.meta}) + "\n")
        os.replace(tmp, self.path)

    def add(self, rows: dict[int, object]):
        """Queue one batch's results; written every `every` batches."""
        self._pending.update(rows)
        self._batches += 1
        if self._batches % self.every == 0:
            self.flush()

    def flush(self):
        """Append queued results as one whole line and fsync it."""
        if not self._pending:
            return
        line = json.dumps({"rows": {str(i): _to_json(o) for i, o in self._pending.items()}}) + "\n"
        if self._torn:
            line = "\n" + line  # a partial line from an earlier failed write stays on its own line
        start = None
        try:
            with open(self.path, "a", encoding="utf-8") as fh:
                start = fh.tell()
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            # Part of the line may have landed: cut it off, or the next line would be glued to it and lost.
            if start is not None:
                try:
                    os.truncate(self.path, start)
                except OSError:
                    self._torn = True
            # A full disk must not cost the predictions held in memory: keep them, retry at the next flush,
            # and let the run finish (only a kill before then would redo these rows).
            if not self._warned:
                log.warning("checkpoint %s not written (%s); the run goes on", self.path, exc.strerror or exc)
                self._warned = True
            return
        self._torn = False
        self._pending.clear()


def read_results(path, run_id: str | None = None) -> dict[int, object] | None:
    """{row index: output} from a checkpoint file; None if missing or (given run_id) another run's."""
    path = Path(path)
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    try:
        header = json.loads(lines[0])
    except json.JSONDecodeError:
        return None
    if run_id is not None and header.get("run") != run_id:
        return None
    results = {}
    for line in lines[1:]:
        try:
            rows = json.loads(line)["rows"]
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # the last line of a killed run may be cut short
        results.update({int(i): (np.asarray(o) if isinstance(o, list) else o) for i, o in rows.items()})
    return results


def read_header(path) -> dict:
    """The header line of a checkpoint / shard file."""
    with open(path, encoding="utf-8") as fh:
        return json.loads(fh.readline())
