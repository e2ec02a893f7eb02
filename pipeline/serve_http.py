"""textclf-serve's connections: uvicorn's h11 protocol with the time and connection bounds nginx keeps.

uvicorn alone times out only idle keep-alive connections: a connection that sends nothing, or sends its
headers or body a byte at a time (slowloris), stays for ever, and its `limit_concurrency` counts such
connections, so a few hundred of them made every other client get a plain-text 503. And a client that
sends a body the server refuses (413) while it still writes it had its connection closed under it: the
kernel answers its next bytes with a reset, and a client that reads the answer only after sending the whole
body (urllib, requests) saw "connection reset by peer", never the 413. Here, per connection:

- headers must arrive within `header_timeout` seconds of the connection opening, or of the previous answer
  on a keep-alive connection (nginx's client_header_timeout, but a total deadline, not one per read):
  past it, a 408 if part of a request came, else the connection is closed quietly;
- a request's body must arrive within `body_timeout` seconds of its headers (client_body_timeout, again
  a total deadline): past it, a 408 (a refused body still being sent is cut there too);
- a connection closed while the client may still be sending (a refused body, a timed-out request) is
  closed the way nginx's lingering_close does: the answer is sent, then our side of the connection is shut
  (FIN), and what the client still sends is read and dropped for at most `linger_seconds` (and
  `linger_read_timeout` between reads) before the socket is closed, so the client reads the answer;
- a client that does not read its answers has `send_timeout` seconds to start again once the buffers are
  full, and an answer still unread `send_timeout` seconds after the connection is closed is dropped
  (nginx's send_timeout), so a client that never reads cannot hold a socket, its buffer or its request;
- at most `max_connections` connections are open: past that, the oldest ones that have not delivered a
  complete request (idle keep-alive, headers or body still coming, lingering) are closed to make room
  (nginx reuses such connections the same way), and only when every connection has a request being
  answered is a new one refused, with a JSON 503. Requests are no longer counted by connection at all:
  the model's queue bounds the work (pipeline/serve.py, Batcher).
"""

from __future__ import annotations

import asyncio
import json
import resource
from dataclasses import dataclass

import h11
from h11._connection import DEFAULT_MAX_INCOMPLETE_EVENT_SIZE  # as uvicorn imports it
from uvicorn.protocols.http.h11_impl import H11Protocol


@dataclass(frozen=True)
class ConnectionBounds:
    header_timeout: float = 10.0       # the request's line and headers, from the connection's start or last answer
    body_timeout: float = 30.0         # the whole body, from the end of the headers
    keep_alive: float = 5.0            # an idle keep-alive connection (uvicorn's timeout_keep_alive)
    linger_seconds: float = 5.0        # reading and dropping what a refused client still sends
    linger_read_timeout: float = 1.0   # ... between two reads
    send_timeout: float = 10.0         # an unread answer, after the connection is closed
    max_connections: int = 2048        # open at once; past it, the oldest without a complete request go
    graceful_shutdown: float = 10.0    # SIGTERM: requests in flight get this long to be answered


def raise_open_files_limit(need: int) -> int:
    """Raise this process's soft limit on open files (ulimit -n) toward `need`, up to the hard limit; the
    limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def _raw_answer(status: int, reason: str, field: str, message: str) -> bytes:
    body = json.dumps({"error": f"{field}: {message}", "field": field}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\nx-content-type-options: nosniff\r\ncache-control: no-store\r\n\r\n").encode() + body


class _ClosingTransport:
    """The connection's transport as uvicorn sees it: close() goes through the protocol's bounded close."""

    def __init__(self, transport: asyncio.Transport, protocol: "BoundedH11Protocol"):
        self._transport, self._protocol = transport, protocol

    def __getattr__(self, name):
        return getattr(self._transport, name)

    def close(self) -> None:
        self._protocol.close_connection()

    def is_closing(self) -> bool:
        return self._protocol.phase in ("closing", "closed") or self._transport.is_closing()


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with header and body deadlines, lingering close, a send timeout and a
    connection cap that never counts the connections that have not sent a complete request."""

    bounds = ConnectionBounds()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.limit_concurrency = None  # requests are bounded by the model's queue, not by connections
        self.phase: str | None = None  # "head", "body", None (a request being answered), "closing"
        self.phase_since = 0.0
        self.phase_bytes = 0
        self.deadline: asyncio.TimerHandle | None = None
        self.raw: asyncio.Transport | None = None
        self.lingering_until = 0.0
        self.refused = False
        self.write_timer: asyncio.TimerHandle | None = None

    # -- the connection's life

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.raw = transport
        super().connection_made(_ClosingTransport(transport, self))
        self._update_phase()
        if len(self.connections) > self.bounds.max_connections:
            self._make_room()

    def connection_lost(self, exc) -> None:
        self._cancel_deadline()
        if self.write_timer is not None:
            self.write_timer.cancel()
        self.phase = "closed"
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.phase in ("closing", "closed"):  # lingering: read and dropped
            self.phase_bytes += len(data)
            self._linger_wait()
            return
        self.phase_bytes += len(data)
        super().data_received(data)
        self._update_phase()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._update_phase()

    def eof_received(self):
        if self.phase == "closing":  # the client is done sending: the lingering close ends
            self._finish_close()
        return None

    # -- deadlines

    def _cancel_deadline(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _update_phase(self) -> None:
        if self.phase in ("closing", "closed") or self.raw is None or self.raw.is_closing():
            return
        state = self.conn.their_state
        phase = "head" if state is h11.IDLE else "body" if state is h11.SEND_BODY else None
        if phase == self.phase:
            return
        self._cancel_deadline()
        self.phase, self.phase_since = phase, self.loop.time()
        if phase == "head":
            self.phase_bytes = 0
            self.deadline = self.loop.call_later(self.bounds.header_timeout, self._timed_out)
        elif phase == "body":
            self.deadline = self.loop.call_later(self.bounds.body_timeout, self._timed_out)

    def _timed_out(self) -> None:
        self.deadline = None
        if self.phase == "head":
            if self.phase_bytes == 0:  # nothing came: nothing to answer
                self._abort()
                return
            self._answer_and_close(408, "Request Timeout", "request", "the request line and headers did not "
                                   f"arrive within {self.bounds.header_timeout:g} s (the header timeout)")
        elif self.phase == "body":
            self._answer_and_close(408, "Request Timeout", "body", "the body did not arrive within "
                                   f"{self.bounds.body_timeout:g} s of the headers (the body timeout)")

    def _answer_and_close(self, status: int, reason: str, field: str, message: str) -> None:
        """Answer (when no answer has started on this request) and close, lingering."""
        cycle, answered = self.cycle, False
        if self.phase == "body" and cycle is not None:
            answered = cycle.response_started  # a refusal (413, 401) sent before the body ended: nothing more
            if not cycle.response_complete:
                cycle.disconnected = True  # the app's receive() says the client went away; its answer is dropped
                cycle.message_event.set()
        if not answered:
            self.raw.write(_raw_answer(status, reason, field, message))
        self.refused = True
        self.close_connection()

    # -- closing

    def close_connection(self) -> None:
        """Close, lingering when the client may still be sending (nginx's lingering_close), and drop an
        unread answer after send_timeout."""
        if self.phase in ("closing", "closed"):
            return
        self._cancel_deadline()
        self._unset_keepalive_if_required()
        sending = self.conn.their_state in (h11.SEND_BODY, h11.ERROR) or \
            (self.conn.their_state is h11.IDLE and self.phase_bytes > 0 and self.refused)
        self.phase, self.phase_since = "closing", self.loop.time()
        if not sending or not self.raw.can_write_eof():
            self._finish_close()
            return
        self.phase_bytes = 0
        self.lingering_until = self.loop.time() + self.bounds.linger_seconds
        try:
            self.raw.resume_reading()
            self.raw.write_eof()  # after the answer already written: the client reads it, then our FIN
        except OSError:  # the client is gone already
            self._abort()
            return
        self._linger_wait()

    def _linger_wait(self) -> None:
        self._cancel_deadline()
        left = self.lingering_until - self.loop.time()
        if left <= 0:
            self._finish_close()
        else:
            self.deadline = self.loop.call_later(min(left, self.bounds.linger_read_timeout), self._finish_close)

    def _finish_close(self) -> None:
        self._cancel_deadline()
        self.phase = "closed"
        raw = self.raw
        raw.close()
        if raw.get_write_buffer_size():  # an answer the client does not read: dropped in the end
            self.loop.call_later(self.bounds.send_timeout, raw.abort)

    def _abort(self) -> None:
        self._cancel_deadline()
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self.phase = "closed"
        self.raw.abort()

    def _make_room(self) -> None:
        """Over max_connections: close the oldest connections without a complete request (at most 32 at a
        time, as nginx does), or, when every one has a request being answered, refuse this one."""
        idle = sorted((c for c in self.connections if c is not self and getattr(c, "phase", None) in
                       ("head", "body", "closing")), key=lambda c: c.phase_since)
        excess = len(self.connections) - self.bounds.max_connections
        if not idle:
            self.raw.write(_raw_answer(503, "Service Unavailable", "server",
                                       f"{len(self.connections) - 1} connections open, each with a request being "
                                       "answered; retry later"))
            self.connections.discard(self)
            self._finish_close()
            return
        for connection in idle[:max(excess, min(32, len(idle)))]:
            connection._abort()

    def shutdown(self) -> None:
        """SIGTERM: idle connections close now, a request whose head or body is still coming gets a 503,
        and a request being answered is answered first (within its deadline; uvicorn waits at most
        graceful_shutdown seconds)."""
        if self.phase in ("closing", "closed"):
            return
        if self.phase == "body" and self.cycle is not None and not self.cycle.response_started:
            self._answer_and_close(503, "Service Unavailable", "server", "shutting down (the body was not all "
                                   "sent yet)")
        elif self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
        elif self.phase == "head" and self.phase_bytes:
            self._answer_and_close(503, "Service Unavailable", "server", "shutting down")
        else:
            self._finish_close()

    def pause_writing(self) -> None:
        """The client reads slower than answers are written (or not at all): it has send_timeout seconds to
        take them, or the connection is dropped (nginx's send_timeout); else an answer waiting to be written
        would hold its request for ever."""
        super().pause_writing()
        if self.write_timer is None:
            self.write_timer = self.loop.call_later(self.bounds.send_timeout, self._abort)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.write_timer is not None:
            self.write_timer.cancel()
            self.write_timer = None

    def timeout_keep_alive_handler(self) -> None:
        if self.phase not in ("closing", "closed"):
            self.close_connection()

    def send_400_response(self, msg: str) -> None:
        """A request h11 cannot parse (or headers still unfinished past its 16 KiB): JSON like every other
        refusal."""
        big = self.phase_bytes > DEFAULT_MAX_INCOMPLETE_EVENT_SIZE  # h11's bound on a request's head
        status, reason = (431, "Request Header Fields Too Large") if big else (400, "Bad Request")
        what = "the headers are still unfinished after 16 KiB" if status == 431 else "not a valid HTTP/1.1 request"
        self.raw.write(_raw_answer(status, reason, "request", what))
        self.refused = True
        self.close_connection()
