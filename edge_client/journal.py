"""Append-only JSON-lines journal of certified test inputs, one row per input, fsynced as it completes.

The first line is a header with the run's configuration; resuming with another configuration is refused.
A row cut short by a kill is discarded on reopen, and ``done`` tells the caller which indices to skip, so a
resumed run repeats no queries and writes no duplicate rows.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


class JournalError(RuntimeError):
    """The journal file does not belong to this run."""


class Journal:
    """One JSON object per line: a header ``{"header": config}`` then rows with an integer ``index``."""

    def __init__(self, path: str | os.PathLike, header: dict[str, Any]):
        self.path = Path(path)
        self.header = json.loads(json.dumps(header))
        self._rows: dict[int, dict[str, Any]] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self.path.stat().st_size > 0:
            self._load()
        else:
            self._write_line({"header": self.header}, mode="w")

    @classmethod
    def keyed(cls, directory: str | os.PathLike, prefix: str, header: dict[str, Any]) -> Journal:
        """The journal of this configuration: ``<directory>/<prefix>-<10 hex of the header's sha256>.jsonl``.

        Another configuration gets a file of its own (and resumes it later) instead of a refusal.
        """
        tag = hashlib.sha256(repr(sorted(header.items())).encode()).hexdigest()[:10]
        return cls(Path(directory) / f"{prefix}-{tag}.jsonl", header)

    def _load(self) -> None:
        raw = self.path.read_bytes()
        complete = raw[: raw.rfind(b"\n") + 1]  # a kill may leave a partial last line: drop it
        lines = complete.decode("utf-8").splitlines()
        if not lines:
            raise JournalError(f"{self.path}: no header line")
        first = json.loads(lines[0])
        if first.get("header") != self.header:
            raise JournalError(f"{self.path}: written by a run with another configuration:\n"
                               f"  file: {first.get('header')}\n  this run: {self.header}")
        for line in lines[1:]:
            row = json.loads(line)
            self._rows.setdefault(int(row["index"]), row)
        if len(complete) != len(raw):
            with open(self.path, "r+b") as handle:
                handle.truncate(len(complete))
                handle.flush()
                os.fsync(handle.fileno())

    def _write_line(self, obj: dict[str, Any], mode: str = "a") -> None:
        with open(self.path, mode, encoding="utf-8") as handle:
            handle.write(json.dumps(obj, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    @property
    def done(self) -> set[int]:
        """Indices already journaled."""
        return set(self._rows)

    def append(self, row: dict[str, Any]) -> None:
        """Write one row (must carry a new integer ``index``) and fsync it."""
        index = int(row["index"])
        if index in self._rows:
            raise JournalError(f"index {index} is already journaled")
        row = json.loads(json.dumps(row))
        self._write_line(row)
        self._rows[index] = row

    def rows(self) -> list[dict[str, Any]]:
        """All rows, sorted by index."""
        return [self._rows[i] for i in sorted(self._rows)]
