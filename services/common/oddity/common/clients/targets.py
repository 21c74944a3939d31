"""Where a client's calls go: an address setting turned into a gRPC target, and whether calls
are spread over several servers.

- `host:port`: one server, as gRPC dials it by default (the name resolved, the first address
  that answers takes every call).
- `dns:///name:port`: every address the name resolves to (a Kubernetes headless Service has
  one per ready pod), each call to the next ready one (gRPC's `round_robin` policy). gRPC
  resolves the name again when a connection closes (a replica gone, or the server's
  max_connection_age_seconds passed), so replicas added later are found.
- `10.0.0.5:50051,10.0.0.6:50051` (or a list): those servers, round robin; IP addresses only
  (gRPC's `ipv4:`/`ipv6:` schemes take several addresses, its `dns:` scheme one name), all of
  one family.
- Any other target with a scheme (`ipv4:`, `ipv6:`, `unix:`, ...) is dialled as written,
  round robin.

With TLS, a server is checked against the name dialled (the certificate must carry it): a
DNS name works, an address list has no name to check and is refused.

A server that goes away leaves the rotation: round_robin picks only ready connections, and a
call that failed UNAVAILABLE on it is retried (the retry policy) on another one.

Reason to change: how address settings map to gRPC targets and load balancing.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

# A target that starts with a URI scheme gRPC resolves: "dns:", "ipv4:", "unix:", ...
# ("dns:50051" is the host "dns" and a port, not a scheme.)
_SCHEME = re.compile(r"^(dns|ipv4|ipv6|unix|unix-abstract|vsock|xds|google-c2p):(?!\d+$)", re.IGNORECASE)


class AddressError(ValueError):
    """An address setting gRPC cannot dial; the message says which part and why."""


@dataclass(frozen=True)
class Target:
    """A gRPC target and whether its calls are spread (round_robin) over its addresses."""

    uri: str
    balanced: bool


def _split(address: str | Sequence[str]) -> list[str]:
    """The addresses of a setting: a string (one address, a comma-separated list, or a JSON
    list as an env var gives it) or a list."""
    if isinstance(address, str):
        text = address.strip()
        if _SCHEME.match(text):
            return [text]  # a gRPC target as written ("ipv4:a:1,b:2" is one target)
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = None  # "[::1]:50051": an IPv6 address, not a list
            if isinstance(parsed, list):
                return _split([str(item) for item in parsed])
        return [part.strip() for part in text.split(",") if part.strip()]
    return [part for item in address for part in _split(str(item))]


def normalize(address: str | Sequence[str]) -> str:
    """The setting as one string (a list joined by commas), after checking gRPC can dial it;
    AddressError otherwise."""
    parts = _split(address)
    text = ",".join(parts)
    if parts:
        grpc_target(text)
    return text


def grpc_target(address: str) -> Target:
    """The gRPC target of an address setting (see the module docstring)."""
    parts = _split(address)
    if not parts:
        raise AddressError("no address given")
    if len(parts) == 1:
        (only,) = parts
        return Target(only, balanced=bool(_SCHEME.match(only)))  # one address: dialled as written
    ips = [_ip_port(part) for part in parts]
    versions = {ip.version for ip, _ in ips}
    if len(versions) > 1:
        raise AddressError(f"{address!r} mixes IPv4 and IPv6 addresses; one list takes one family")
    if versions == {4}:
        return Target("ipv4:" + ",".join(f"{ip}:{port}" for ip, port in ips), balanced=True)
    return Target("ipv6:" + ",".join(f"[{ip}]:{port}" for ip, port in ips), balanced=True)


def check_verifiable(address: str) -> None:
    """AddressError when TLS could not check the servers of `address`: an address list."""
    uri = grpc_target(address).uri
    if uri.startswith(("ipv4:", "ipv6:")) and "," in uri:
        raise AddressError(
            f"{address!r}: with TLS each server is checked against the name dialled, and a list of addresses "
            "names none; give one DNS name that the certificates carry, as dns:///name:port"
        )


def first_host_port(address: str) -> tuple[str, int] | None:
    """The host and port of the first server `address` names, to reach it outside gRPC; None
    for a target with no host and port (a unix socket, ...)."""
    uri = grpc_target(address).uri
    scheme = _SCHEME.match(uri)
    if scheme is None:
        first = uri
    elif scheme.group(1).lower() == "dns":
        first = re.sub(r"^dns:(//[^/]*/)?", "", uri, flags=re.IGNORECASE)  # dns:[//authority/]host:port
    elif scheme.group(1).lower() in ("ipv4", "ipv6"):
        first = uri[scheme.end() :].split(",")[0]
    else:
        return None
    try:
        host, port = _host_port(first)
    except AddressError:
        return None
    return host.removeprefix("[").removesuffix("]"), port


def _host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise AddressError(f"{address!r} is not host:port (e.g. 127.0.0.1:50051)")
    return host, int(port)


def _ip_port(address: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    if _SCHEME.match(address):
        raise AddressError(f"{address!r}: a list of addresses takes ip:port items, not targets with a scheme")
    host, port = _host_port(address)
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]")), port
    except ValueError:
        raise AddressError(
            f"{address!r}: a list of addresses takes IP addresses; for a name that resolves to every "
            "server, give that one name as dns:///name:port"
        ) from None
