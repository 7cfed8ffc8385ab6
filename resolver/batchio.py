"""Batched datagram I/O for the UDP listener and the upstream sockets: C speedups or Python.

`recv_batch` reads up to n datagrams waiting on a non-blocking UDP socket and
`send_batch` sends a list of (bytes, address) from an index; both keep the
semantics of the system calls they stand for, recvmmsg(2) and sendmmsg(2):

- `recv_batch(sock, n, size)` returns a list of (data, address), each datagram
  truncated to `size` bytes as `sock.recvfrom(size)` truncates it; [] when none
  is waiting; an OSError (an ICMP error queued on the socket, a closed
  descriptor) is raised only when nothing was read before it.
- `send_batch(sock, items, start)` sends items[start:] in order and returns how
  many went; when the first of them cannot go it raises what `sock.sendto`
  raises (BlockingIOError for a full send buffer), and the caller keeps the rest.
  An address of None sends to a connected socket's peer, as `sock.send` does
  (the upstream sockets, resolver/upstream.py).

With `resolver._batchio` (resolver/_batchio.c, built by setup.py when a compiler
is there) each is one system call per batch; without it, or with
SINKHOLE_NO_SPEEDUPS=1 in the environment, they are a loop of recvfrom/sendto.
The choice is made once, at import time; `IMPLEMENTATION` names it for the
server's start-up log line. The C code moves buffers and nothing else: no
datagram is looked into in C.
"""

from __future__ import annotations

import os
import socket

#: Set (to anything but "" or "0") to use the pure-Python loop even when the C
#: speedups are built.
DISABLE_ENV = "SINKHOLE_NO_SPEEDUPS"


def _load():
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return None, f"recvfrom/sendto loop ({DISABLE_ENV} is set)"
    try:
        from resolver import _batchio
    except ImportError:
        return None, "recvfrom/sendto loop (the C speedups are not built)"
    return _batchio, "recvmmsg/sendmmsg (C speedups)"


_batchio, IMPLEMENTATION = _load()
#: True when the C speedups are in use.
SPEEDUPS = _batchio is not None


def _recv_batch_py(sock: socket.socket, n: int, size: int) -> list[tuple[bytes, tuple]]:
    out: list[tuple[bytes, tuple]] = []
    recvfrom = sock.recvfrom
    for _ in range(n):
        try:
            out.append(recvfrom(size))
        except (BlockingIOError, InterruptedError):
            break
        except OSError:
            if not out:
                raise
            break  # recvmmsg reports what it read and leaves the error for the next call
    return out


def _send_batch_py(sock: socket.socket, items: list[tuple[bytes, tuple]], start: int) -> int:
    sendto = sock.sendto
    sent = 0
    for i in range(start, len(items)):
        out, addr = items[i]
        try:
            if addr is None:
                sock.send(out)
            else:
                sendto(out, addr)
        except OSError:
            if not sent:
                raise
            break  # as sendmmsg: the count so far; the next call meets the error first
        sent += 1
    return sent


if _batchio is not None:
    _recvmmsg = _batchio.recvmmsg
    _sendmmsg = _batchio.sendmmsg
    #: The most datagrams one call moves.
    MAX_BATCH: int = _batchio.MAX_BATCH

    def recv_batch(sock: socket.socket, n: int, size: int) -> list[tuple[bytes, tuple]]:
        return _recvmmsg(sock.fileno(), n, size)

    def send_batch(sock: socket.socket, items: list[tuple[bytes, tuple]], start: int) -> int:
        return _sendmmsg(sock.fileno(), sock.family, items, start)

else:
    MAX_BATCH = 1024
    recv_batch = _recv_batch_py
    send_batch = _send_batch_py
