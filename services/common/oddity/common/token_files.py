"""Bearer tokens kept in files (e.g. mounted Kubernetes Secrets), re-read when they change.

One token per line, as `name:token` (the name is who the audit log says called) or a bare
token (named by a hash of it); blank lines and `#` comments are skipped.

Reason to change: the format of token files.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from pathlib import Path

from oddity.common.logging import get_logger

log = get_logger("oddity.common.token_files")


# How often a file is looked at again: often enough that a rotation applies within a second,
# rarely enough that a busy server does not read it per call.
CHECK_SECONDS = 1.0


class TokenFile:
    """The tokens of one file, re-read when its content changes (compared by hash, so a
    rotation that keeps the size and mtime, as `cp -p` or `rsync -a` do, is seen too). A file
    that cannot be read or decoded keeps the last good tokens and is logged once per content."""

    def __init__(self, path: Path, admin: bool) -> None:
        self.path = path
        self.admin = admin
        self._digest: bytes | None = None
        self._checked = -float("inf")
        self._tokens: list[tuple[bytes, str]] = []
        self._failure = ""

    def tokens(self) -> list[tuple[bytes, str]]:
        now = time.monotonic()
        if now - self._checked >= CHECK_SECONDS:
            self._checked = now
            self._reload()
        return self._tokens

    def _reload(self) -> None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            self._tokens, self._digest = [], None  # a Secret being re-mounted: no token matches meanwhile
            return
        except OSError as exc:
            if str(exc) != self._failure:  # once per failure, not once a second
                self._failure = str(exc)
                log.warning(
                    "cannot read the tokens file; the last tokens read stay", path=str(self.path), error=str(exc)
                )
            return
        self._failure = ""
        digest = hashlib.sha256(raw).digest()
        if digest == self._digest:
            return
        self._digest = digest
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
