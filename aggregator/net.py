"""Listening sockets opened before anything else starts, and what to say when that fails.

The aggregator binds its HTTP port itself and hands the sockets to uvicorn, and probes the
embedded broker's port before amqtt binds it: a port in use then ends the start with one
sentence instead of uvicorn's ``sys.exit(3)`` after the whole lifespan ran, or amqtt's
logged traceback.
"""

from __future__ import annotations

import errno
import socket

__all__ = ["bind_problem", "listen"]


def listen(host: str, port: int, backlog: int = 2048) -> list[socket.socket]:
    """Bound, listening TCP sockets on every address ``host`` resolves to.

    The same sockets ``asyncio``'s ``create_server(host=..., port=...)`` would open
    (SO_REUSEADDR, IPv6-only IPv6 sockets), so handing them to uvicorn changes nothing but
    the moment of failure. Raises ``OSError`` (``socket.gaierror`` for a name that does not
    resolve); on failure no socket is left open.
    """
    infos = socket.getaddrinfo(
        host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _name, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                # Linux makes an IPv6 socket dual-stack by default; asyncio turns that off,
                # so an IPv4 socket on the same port does not collide with it.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            if port == 0:
                # With port 0 every family would get its own random port; one is enough.
                break
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def bind_problem(exc: OSError, host: str, port: int, *, host_key: str, port_key: str) -> str:
    """One sentence for a failed ``listen``: what is wrong, and which setting changes it.

    >>> e = OSError(errno.EADDRINUSE, "Address already in use")
    >>> bind_problem(e, "127.0.0.1", 8000, host_key="H", port_key="P")
    'port 8000 on 127.0.0.1 is in use: set P or stop the other process'
    """
    if isinstance(exc, socket.gaierror):
        return f"host {host!r} does not resolve ({exc.strerror}): set {host_key}"
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is in use: set {port_key} or stop the other process"
    if exc.errno == errno.EACCES:
        return (f"port {port} on {host} needs privileges this process lacks: "
                f"set {port_key} to 1024 or above")
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{host} is not an address of this machine: set {host_key}"
    reason = exc.strerror or exc
    return f"cannot listen on {host}:{port} ({reason}): check {host_key} and {port_key}"
