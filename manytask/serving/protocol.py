"""uvicorn's HTTP/1.1 protocol with a header timeout: a connection must send a complete request head within
``header_timeout`` seconds of opening (or of its previous response), or it is closed.

uvicorn times out idle keep-alive connections only after a first response, and has no limit on how long a
client may take to send its headers, so idle and slowloris sockets would be held open indefinitely.
"""

from __future__ import annotations

import os

from uvicorn.protocols.http.h11_impl import H11Protocol


class GuardedH11Protocol(H11Protocol):
    # $MANYTASK_HEADER_TIMEOUT reaches worker processes (`serve --workers`), which rebuild this class by name
    header_timeout: float = float(os.environ.get("MANYTASK_HEADER_TIMEOUT", "10"))

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_header_timer()

    def connection_lost(self, exc) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
        self._header_timer = self.loop.call_later(self.header_timeout, self._header_timer_expired)

    def _header_timer_expired(self) -> None:
        in_flight = self.cycle is not None and not self.cycle.response_complete
        if not in_flight and not self.transport.is_closing():
            self.transport.close()


def protocol_with(header_timeout: float) -> type[GuardedH11Protocol]:
    return type("ManytaskH11Protocol", (GuardedH11Protocol,), {"header_timeout": header_timeout})
