"""Certificates for the TLS tests: a party's certificate, key and trusted CA as files, written
the way a mounted Secret is updated (each file replaced in one rename)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme

from oddity.common.tls import TlsFiles


@dataclass
class Identity:
    """One party's files: its certificate and key, and the CA bundle it trusts."""

    cert: Path
    key: Path
    ca: Path

    def files(self, client_auth: bool = False) -> TlsFiles:
        return TlsFiles(self.cert, self.key, self.ca, client_auth)

    def write(self, ca: trustme.CA, issued: trustme.LeafCert) -> Identity:
        # Replace each file in one rename, as a Secret update does.
        for path, pem in ((self.cert, issued.cert_chain_pems), (self.key, [issued.private_key_pem])):
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(b"".join(p.bytes() for p in pem))
            tmp.replace(path)
        tmp = self.ca.with_suffix(".tmp")
        tmp.write_bytes(ca.cert_pem.bytes())
        tmp.replace(self.ca)
        return self


def identity(folder: Path, ca: trustme.CA, *names: str) -> Identity:
    folder.mkdir(parents=True, exist_ok=True)
    return Identity(folder / "tls.crt", folder / "tls.key", folder / "ca.crt").write(ca, ca.issue_cert(*names))
