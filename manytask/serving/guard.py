"""The server's edge, before FastAPI sees a request (pure ASGI middleware).

- Body size: a declared ``Content-Length`` over the limit is refused at once; the body is then counted as
  it arrives, whatever the headers say, and reading stops at the limit (413). A request carrying both
  ``Content-Length`` and ``Transfer-Encoding`` is refused (400): the two disagree about where it ends.
- A body must arrive within ``body_timeout`` seconds (408), so a trickled body cannot hold a worker.
- Admin calls are authenticated before their body is read (401 before 422).
- Requests in flight are limited (503 beyond ``max_in_flight``), separately from connections: idle sockets are
  the protocol's to limit (``protocol``), so they cannot starve requests; health probes are never refused.
- Any unexpected failure becomes a JSON 500 (``{"error": ...}``), logged here, counted like every response.
- Prometheus counts requests by route template (``/v1/tasks/{name}``), one label for unmatched paths,
  so the metrics cannot grow with the paths clients invent.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from typing import Callable, Optional

from starlette.routing import Match

log = logging.getLogger(__name__)

UNMATCHED = "unmatched"


def route_label(routes: list, scope: dict) -> str:
    """The template of the route a request matches (also on a wrong method), or ``unmatched``."""
    for route in routes:
        match, _ = route.matches(scope)
        if match in (Match.FULL, Match.PARTIAL):
            return getattr(route, "path", UNMATCHED)
    return UNMATCHED


class RequestGuard:
    def __init__(self, app, routes: list, max_body_bytes: int, admin_token: Optional[str],
                 is_admin: Callable[[str, str], bool], observe: Callable[[str, int, float], None],
                 body_timeout: float = 30.0, max_in_flight: Optional[int] = None, exempt: tuple[str, ...] = ()):
        self.app = app
        self.max_in_flight = max_in_flight
        self.exempt = exempt
        self.in_flight = 0
        self.body_timeout = body_timeout
        self.routes = routes
        self.max_body = max_body_bytes
        self.token = admin_token
        self.is_admin = is_admin
        self.observe = observe

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        label = route_label(self.routes, scope)
        state = {"status": 500, "started": False}

        async def send_tracked(message):
            if message["type"] == "http.response.start":
                state["status"], state["started"] = message["status"], True
            await send(message)

        async def reply(status: int, error: str):
            body = json.dumps({"error": error}).encode()
            await send_tracked({"type": "http.response.start", "status": status,
                                "headers": [(b"content-type", b"application/json"),
                                            (b"content-length", str(len(body)).encode())]})
            await send_tracked({"type": "http.response.body", "body": body})

        counted = scope.get("path", "") not in self.exempt
        try:
            if counted and self.max_in_flight is not None and self.in_flight >= self.max_in_flight:
                await reply(503, f"server busy: {self.in_flight} requests in flight (limit {self.max_in_flight}); "
                                 "retry shortly")
                return
            self.in_flight += counted
            try:
                await self._handle(scope, receive, send_tracked, reply)
            finally:
                self.in_flight -= counted
            if not state["started"]:
                state["status"] = 499  # the client went away before an answer (nginx's "client closed")
        except Exception:
            log.exception("unexpected failure on %s %s", scope.get("method"), label)
            if not state["started"]:
                await reply(500, "internal error (logged on the server)")
            state["status"] = 500
        finally:
            self.observe(label, state["status"], time.perf_counter() - start)

    async def _handle(self, scope, receive, send, reply):
        headers: dict[bytes, list[bytes]] = {}
        for k, v in scope.get("headers", []):
            headers.setdefault(k.lower(), []).append(v)
        method, path = scope.get("method", "GET"), scope.get("path", "")
        if self.is_admin(method, path):
            if not self.token:
                return await reply(403, "admin calls are disabled: start the server with an admin token")
            given = b"".join(headers.get(b"authorization", [b""])[:1]).decode("latin-1")
            if not given.startswith("Bearer ") or not hmac.compare_digest(given[7:].encode(), self.token.encode()):
                return await reply(401, "admin call needs a valid 'Authorization: Bearer <token>' header")
        length, chunked = headers.get(b"content-length"), headers.get(b"transfer-encoding")
        if length is not None and chunked is not None:
            return await reply(400, "send either Content-Length or Transfer-Encoding, not both")
        if length is not None:
            declared = length[0].decode("latin-1").strip()
            if len(length) > 1 or not declared.isdigit():
                return await reply(400, "Content-Length must be one number")
            if int(declared) > self.max_body:
                return await reply(413, f"request body too large ({declared} bytes; limit {self.max_body})")
        if length is None and chunked is None:
            return await self.app(scope, receive, send)  # no body
        body = bytearray()
        try:
            async with asyncio.timeout(self.body_timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    body.extend(message.get("body", b""))
                    if len(body) > self.max_body:
                        return await reply(413, f"request body too large (over {self.max_body} bytes)")
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            return await reply(408, f"request body not received within {self.body_timeout:g} s")
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
