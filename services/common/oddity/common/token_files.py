"""Bearer tokens kept in files (e.g. mounted Kubernetes Secrets), re-read when they change.

One token per line, as `name:token` (the name is who the audit log says called) or a bare
token (named by a hash of it); blank lines and `#` comments are skipped.

Reason to change: the format of token files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from oddity.common.logging import get_logger
from oddity.common.watched_files import CHECK_SECONDS as CHECK_SECONDS
from oddity.common.watched_files import WatchedFiles

log = get_logger("oddity.common.token_files")


class TokenFile:
    """The tokens of one file, re-read when its content changes (watched_files.py: a rotation
    that keeps the size and mtime, as `cp -p` or `rsync -a` do, is seen too). A file that
    cannot be read or decoded keeps the last good tokens and is logged once per change."""

    def __init__(self, path: Path, admin: bool) -> None:
        self.path = path
        self.admin = admin
        self._watch = WatchedFiles(path)
        self._tokens: list[tuple[bytes, str]] = []

    def tokens(self) -> list[tuple[bytes, str]]:
        try:
            changed = self._watch.changed()
        except OSError as exc:
            log.warning("cannot read the tokens file; the last tokens read stay", path=str(self.path), error=str(exc))
            return self._tokens
        if changed is not None:
            (raw,) = changed
            self._reload(raw)
        return self._tokens

    def _reload(self, raw: bytes | None) -> None:
        if raw is None:
            self._tokens = []  # a Secret being re-mounted: no token matches meanwhile
            return
        try:
            self._tokens = list(_parse(raw.decode("utf-8")))
        except UnicodeDecodeError as exc:
            log.warning(
                "the tokens file is not UTF-8 text; the last tokens read stay", path=str(self.path), error=str(exc)
            )


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
