"""A plain socket in front of a TLS one, for the raw exec streams of an engine reached over TLS.

A hijacked ``docker exec`` stream is read by one thread while others write to it (the supervisor
channel, a long-lived command's stdin). A plain socket allows that; an ``ssl.SSLSocket`` does not:
OpenSSL forbids using one connection from two threads at once, and a read running alongside a
write can corrupt the stream. So the stream of a TLS engine is handed out as one end of a
``socketpair``, and a single relay thread moves bytes between the other end and the TLS socket:
only that thread ever touches the TLS connection. Half-closes pass through both ways (a caller's
``shutdown(SHUT_WR)`` ends the command's stdin; the engine's end of output is the caller's EOF).
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import ssl
import threading

__all__ = ["plain_end"]

_CHUNK = 1 << 16
_BUFFERED = 1 << 20  # per direction: past this, the relay stops reading that side until it drains
_WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


def plain_end(tls: ssl.SSLSocket) -> socket.socket:
    """A blocking plain socket relayed to ``tls`` by a thread of its own; closing it closes ``tls``."""
    ours, theirs = socket.socketpair()
    threading.Thread(target=_Relay(tls, theirs).run, name="pydantic-deep-tls-relay", daemon=True).start()
    return ours


class _Relay:
    def __init__(self, tls: ssl.SSLSocket, plain: socket.socket) -> None:
        self.tls, self.plain = tls, plain
        self.inbound = bytearray()  # from the engine, for the caller
        self.outbound = bytearray()  # from the caller, for the engine
        self.tls_open = self.plain_open = True  # whether each side may still send us bytes
        self.tls_write_closed = self.plain_write_closed = False

    def run(self) -> None:
        self.tls.setblocking(False)
        self.plain.setblocking(False)
        try:
            with selectors.DefaultSelector() as selector:
                while self._step():
                    # Read a side only while its buffer has room (else the poll would spin).
                    self._watch(selector, self.tls, self.tls_open and len(self.inbound) < _BUFFERED, self.outbound)
                    self._watch(selector, self.plain, self.plain_open and len(self.outbound) < _BUFFERED,
                                self.inbound)
                    # Records already decrypted wait in the TLS object, where no poll sees them.
                    selector.select(0 if self.tls.pending() else None)
        except OSError:
            pass
        finally:
            for sock in (self.plain, self.tls):
                with contextlib.suppress(OSError):
                    sock.close()

    @staticmethod
    def _watch(selector: selectors.BaseSelector, sock: socket.socket, reading: bool, pending: bytearray) -> None:
        """Wait for ``sock`` to be readable while it may send more, writable while ``pending`` waits
        for it; not at all otherwise (a socket at its end is always readable: waiting on it would spin)."""
        events = (selectors.EVENT_READ if reading else 0) | (selectors.EVENT_WRITE if pending else 0)
        registered = selector.get_map().get(sock)
        if registered is None and events:
            selector.register(sock, events)
        elif registered is not None and not events:
            selector.unregister(sock)
        elif registered is not None and registered.events != events:
            selector.modify(sock, events)

    def _step(self) -> bool:
        """Move what can move now without blocking; whether anything is left to do."""
        if self.tls_open:
            self.tls_open = self._read(self.tls, self.inbound)
        if self.inbound:
            self._write(self.plain, self.inbound)
        # Checked after the write, not instead of it: the last bytes and the end can come in one step,
        # and no poll would wake the relay for the end alone.
        if not self.inbound and not self.tls_open and not self.plain_write_closed:
            self.plain.shutdown(socket.SHUT_WR)  # the engine's output ended: the caller reads EOF
            self.plain_write_closed = True
        if self.plain_open:
            self.plain_open = self._read(self.plain, self.outbound)
        if self.outbound:
            self._write(self.tls, self.outbound)
        if not self.outbound and not self.plain_open and not self.tls_write_closed:
            with contextlib.suppress(OSError):
                # The caller's stdin ended: so does the command's, by the TCP connection's half-close.
                # Not SSLSocket.shutdown(), which drops the TLS state: what the engine sends after
                # would then be read undecrypted.
                socket.socket.shutdown(self.tls, socket.SHUT_WR)
            self.tls_write_closed = True
        return self.tls_open or bool(self.inbound) or (self.plain_open and not self.plain_write_closed)

    @staticmethod
    def _read(sock: socket.socket, into: bytearray) -> bool:
        """Read what ``sock`` has (up to the buffer's limit) into ``into``; whether it may send more."""
        while len(into) < _BUFFERED:
            try:
                data = sock.recv(_CHUNK)
            except _WOULD_BLOCK:
                return True
            except (ConnectionError, ssl.SSLError):
                return False
            if not data:
                return False
            into += data
        return True

    @staticmethod
    def _write(sock: socket.socket, data: bytearray) -> None:
        with contextlib.suppress(*_WOULD_BLOCK):
            while data:
                del data[:sock.send(data)]
