"""Files that are rotated in place (mounted Secrets: certificates, keys, tokens), looked at again
at most once a second and compared by a hash of their content, so a rotation that keeps sizes
and mtimes (`cp -p`, `rsync -a`) is seen too.

Reason to change: how rotated files are noticed.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

# Often enough that a rotation applies within a second, rarely enough that a busy server does
# not read its files per call or per connection.
CHECK_SECONDS = 1.0

#: The content of each file, None for a file that does not exist (a Secret being re-mounted).
Contents = tuple[bytes | None, ...]


def read_files(*paths: Path | None) -> Contents:
    """The files' content now (None for a path not given or a file not there); OSError for a
    file that exists but cannot be read."""
    return tuple(_read(path) for path in paths)


def _read(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()  # follows the ..data symlink of a mounted Secret
    except FileNotFoundError:
        return None


def _digest(contents: Contents) -> bytes:
    digest = hashlib.sha256()
    for content in contents:
        digest.update(b"-" if content is None else len(content).to_bytes(8, "big") + content)
    return digest.digest()


class WatchedFiles:
    """A few files watched together: `changed()` hands out their content when it differs from
    the content it last handed out. Each content and each read failure is handed out once, so
    whoever finds it unusable logs once per change, not once per call."""

    def __init__(self, *paths: Path | None, check_seconds: float = CHECK_SECONDS) -> None:
        self.paths = paths
        self.check_seconds = check_seconds
        self._checked = -float("inf")
        self._digest: bytes | None = None
        self._failure = ""

    def changed(self) -> Contents | None:
        """The files' content when it changed since the last call that returned it (the first
        call always returns it); None when unchanged or looked at less than `check_seconds`
        ago. Raises the OSError of a file that cannot be read, once per distinct failure."""
        now = time.monotonic()
        if now - self._checked < self.check_seconds:
            return None
        self._checked = now
        try:
            contents = read_files(*self.paths)
        except OSError as exc:
            if str(exc) == self._failure:
                return None
            self._failure = str(exc)
            raise
        self._failure = ""
        digest = _digest(contents)
        if digest == self._digest:
            return None
        self._digest = digest
        return contents
