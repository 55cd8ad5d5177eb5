"""Which addresses are this machine: the only targets load tests and failure drills accept."""

from __future__ import annotations

import ipaddress
import socket


def is_loopback(address: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1 (also written [::1] or ::ffff:127.x.y.z)."""
    host = address.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _bindable(address: str) -> bool:
    # The kernel accepts a bind only to an address of one of this machine's
    # interfaces: no interface listing to keep in step.
    try:
        infos = socket.getaddrinfo(address, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return False
    for family, _, _, _, sockaddr in infos:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.bind((sockaddr[0], 0))
            return True
        except OSError:
            continue
    return False


def is_this_machine(name: str, address: str, connection: str = "") -> bool:
    """Whether an inventory host is the machine running this: declared local
    (ansible_connection: local), a loopback address, this machine's hostname,
    or an address of one of its interfaces."""
    if connection == "local" or is_loopback(address):
        return True
    me = socket.gethostname()
    if name in (me, me.split(".")[0]) or address in (me, me.split(".")[0]):
        return True
    return _bindable(address.strip("[]"))
