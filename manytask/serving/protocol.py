"""uvicorn's HTTP/1.1 protocol with limits on idle connections, apart from requests:

- a header timeout: a connection must send a complete request head within ``header_timeout`` seconds of
  opening (or of its previous response), or it is closed. uvicorn times out idle keep-alive connections only
  after a first response and has no limit on how long a client may take to send its headers;
- at most ``max_idle`` idle connections (open, no request in flight: a fresh socket, a keep-alive one, one
  whose request head never finishes). One more closes the oldest, so a client that sends a whole request is
  served while hundreds of half-open sockets wait out their timeout. uvicorn's ``limit_concurrency`` counts
  connections and requests together (300 half-open sockets made every request a 503): requests in flight are
  limited by the app instead (``guard.RequestGuard``).
"""

from __future__ import annotations

import os
from collections import OrderedDict

from uvicorn.protocols.http.h11_impl import H11Protocol


class GuardedH11Protocol(H11Protocol):
    # $MANYTASK_HEADER_TIMEOUT and $MANYTASK_MAX_IDLE reach worker processes (`serve --workers`), which rebuild
    # this class by name
    header_timeout: float = float(os.environ.get("MANYTASK_HEADER_TIMEOUT", "10"))
    max_idle: int = int(os.environ.get("MANYTASK_MAX_IDLE", "512"))

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.limit_concurrency = None  # connections are limited here, requests in flight by the app
        # the server's idle connections, oldest first (one dict per server, shared by its connections)
        self._idle: OrderedDict = self.server_state.__dict__.setdefault("manytask_idle", OrderedDict())

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()
        self._note_state()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._note_state()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_header_timer()
        self._note_state()

    def connection_lost(self, exc) -> None:
        self._idle.pop(self, None)
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
        super().connection_lost(exc)

    def _in_flight(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _note_state(self) -> None:
        """Idle connections are kept oldest first; beyond ``max_idle``, the oldest is closed."""
        if self._in_flight() or self.transport.is_closing():
            self._idle.pop(self, None)
            return
        if self not in self._idle:
            self._idle[self] = None
        while len(self._idle) > self.max_idle:
            oldest, _ = self._idle.popitem(last=False)
            oldest.transport.close()

    def _arm_header_timer(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
        self._header_timer = self.loop.call_later(self.header_timeout, self._header_timer_expired)

    def _header_timer_expired(self) -> None:
        if not self._in_flight() and not self.transport.is_closing():
            self.transport.close()


def protocol_with(header_timeout: float, max_idle: int = 512) -> type[GuardedH11Protocol]:
    return type("ManytaskH11Protocol", (GuardedH11Protocol,), {"header_timeout": header_timeout, "max_idle": max_idle})
