"""Which addresses are this machine: the only targets load tests and failure drills accept."""

from __future__ import annotations

import ipaddress


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
