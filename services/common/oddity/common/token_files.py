"""Bearer tokens kept in files (e.g. mounted Kubernetes Secrets), re-read when they change.

One token per line, as `name:token` (the name is who the audit log says called) or a bare
token (named by a hash of it); blank lines and `#` comments are skipped.

Reason to change: the format of token files.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path


class TokenFile:
    """The tokens of one file, re-read when its size or mtime changes."""

    def __init__(self, path: Path, admin: bool) -> None:
        self.path = path
        self.admin = admin
        self._signature: tuple[int, int] | None = None
        self._tokens: list[tuple[bytes, str]] = []

    def tokens(self) -> list[tuple[bytes, str]]:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return []  # a Secret being re-mounted: no token matches meanwhile
        signature = (stat.st_size, stat.st_mtime_ns)
        if signature != self._signature:
            self._tokens = list(_parse(self.path.read_text()))
            self._signature = signature
        return self._tokens


def _parse(text: str) -> Iterable[tuple[bytes, str]]:
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, token = line.rpartition(":") if ":" in line else ("", "", line)
        token = token.strip()
        if token:
            yield token.encode(), name.strip() or f"token-{hashlib.sha256(token.encode()).hexdigest()[:8]}"


def read_token(path: Path) -> str:
    """The token a client presents: the first one in its file (`name:token` or a bare token)."""
    for token, _ in _parse(path.read_text()):
        return token.decode()
    raise ValueError(f"{path} holds no token")


