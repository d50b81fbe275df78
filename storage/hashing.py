"""Digests: published checksums, streamed file hashes, and fingerprints of settings.

In: "sha256:<hex>" / "md5:<hex>" strings, files of any size, JSON-able settings. Out: a parsed
`Checksum`, lower-case hex digests (files read in 4 MB chunks, so a 3 TB tar hashes in flat
memory), and `json_digest`, the sha256 of an object's canonical JSON that keys every stage's
output to the settings that made it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHUNK_BYTES = 4 * 1024 * 1024
_HEX_LEN = {"sha256": 64, "md5": 32}


@dataclass(frozen=True)
class Checksum:
    algo: str  # "sha256" or "md5"
    hexdigest: str  # lower-case hex

    def __post_init__(self) -> None:
        algo, hexdigest = self.algo.lower(), self.hexdigest.lower()
        if algo not in _HEX_LEN:
            raise ValueError(f"checksum algorithm {self.algo!r} is not supported; use 'sha256' or 'md5'")
        if len(hexdigest) != _HEX_LEN[algo] or not re.fullmatch(r"[0-9a-f]+", hexdigest):
            raise ValueError(f"{algo} digest {self.hexdigest!r} is not {_HEX_LEN[algo]} hex characters")
        object.__setattr__(self, "algo", algo)
        object.__setattr__(self, "hexdigest", hexdigest)

    @classmethod
    def parse(cls, text: str) -> Checksum:
        """Parse "sha256:<64 hex>" or "md5:<32 hex>" (case-insensitive)."""
        algo, sep, hexdigest = text.strip().partition(":")
        if not sep:
            raise ValueError(f"checksum {text!r} must look like 'sha256:<64 hex>' or 'md5:<32 hex>'")
        try:
            return cls(algo, hexdigest)
        except ValueError as e:
            raise ValueError(f"checksum {text!r}: {e}") from None

    def __str__(self) -> str:
        return f"{self.algo}:{self.hexdigest}"


def parse_checksums(checksums: dict[str, str] | None) -> dict[str, Checksum]:
    """A `checksums:` setting (file name -> "sha256:<hex>"; null or empty: none) as Checksums."""
    return {name: Checksum.parse(text) for name, text in (checksums or {}).items()}


def checksum_problems(checksums: dict[str, str] | None):
    """(key, problem) for each entry of a `checksums:` setting that is not a checksum."""
    for name, text in (checksums or {}).items():
        try:
            Checksum.parse(text)
        except ValueError as err:
            yield f"checksums.{name}", f"is not a checksum: {err}"


def hash_file(path: Path, algo: str = "sha256") -> str:
    """Lower-case hex digest of a file, read in chunks (works for multi-terabyte files)."""
    try:
        h = hashlib.new(algo)
    except ValueError:
        raise ValueError(f"unknown hash algorithm {algo!r} for {path}; use 'sha256' or 'md5'") from None
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    """Lower-case hex sha256 of a file, streamed."""
    return hash_file(path, "sha256")


def json_digest(obj: Any) -> str:
    """sha256 of an object's canonical JSON: the fingerprint of a set of settings."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()
