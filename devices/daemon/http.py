"""The daemon's HTTP server (standard library, one thread per connection) with registrable routes.

The daemon registers ``/metrics``, ``/healthz``, ``/api/status`` and ``POST /api/reload``; the live
view adds its pages with ``server.route(...)``. A handler gets a ``Request`` and returns a
``Response``, or None when it wrote to ``request.handler`` itself (a streaming response such as
MJPEG).
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from devices.errors import ConfigError

log = logging.getLogger(__name__)

#: Request bodies larger than this are refused (the API takes small JSON documents only).
MAX_BODY = 1 << 20


@dataclass(frozen=True)
class Request:
    """One HTTP request.

    Attributes:
        method: ``GET``, ``POST``, ...
        path: The path without the query (``/api/status``).
        query: Parsed query string.
        headers: Request headers.
        body: The request body (empty for GET).
        handler: The underlying handler, for responses that stream (write to ``handler.wfile``).
    """

    method: str
    path: str
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]
    body: bytes
    handler: BaseHTTPRequestHandler = field(repr=False)


@dataclass(frozen=True)
class Response:
    """A complete response."""

    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(cls, data: Any, status: int = 200) -> Response:
        return cls(status, json.dumps(data, indent=1, default=str).encode() + b"\n", "application/json")

    @classmethod
    def text(cls, text: str, status: int = 200) -> Response:
        return cls(status, text.encode() + (b"" if text.endswith("\n") else b"\n"))


Handler = Callable[[Request], "Response | None"]


class HttpServer:
    """A threaded HTTP server whose routes are added at run time.

    Args:
        host: Bind address (``127.0.0.1`` keeps it on this machine).
        port: TCP port; 0 picks a free one (see ``port`` after ``start``).
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.requested_port = port
        self._routes: dict[tuple[str, str], tuple[Handler, bool]] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def route(self, method: str, path: str, handler: Handler, prefix: bool = False) -> None:
        """Serve ``method path`` with ``handler``; ``prefix=True`` also serves every path below it."""
        key = (method.upper(), path)
        if key in self._routes:
            raise ValueError(f"route {method} {path} is already registered")
        self._routes[key] = (handler, prefix)

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server else self.requested_port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        """Bind and serve in a background thread.

        Raises:
            ConfigError: The address cannot be bound (in use, not this machine's, privileged port).
        """
        try:
            server = ThreadingHTTPServer((self.host, self.requested_port), _make_handler(self))
        except OSError as exc:
            raise ConfigError(
                f"http: cannot listen on {self.host}:{self.requested_port} ({exc.strerror or exc})",
                "pick another port (http.port in the config, or --http 127.0.0.1:PORT; port 0 picks a free one), "
                "or stop the program that holds it",
            ) from exc
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="http", daemon=True)
        self._thread.start()
        log.info("http: serving on %s (%s)", self.url, ", ".join(sorted({p for _, p in self._routes})))

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def dispatch(self, request: Request) -> Response | None:
        """Find the route for a request (exact path first, then the longest prefix)."""
        exact = self._routes.get((request.method, request.path))
        if exact is not None:
            return exact[0](request)
        prefixed = [(path, handler) for (method, path), (handler, prefix) in self._routes.items()
                    if prefix and method == request.method and request.path.startswith(path.rstrip("/") + "/")]
        if prefixed:
            return max(prefixed, key=lambda item: len(item[0]))[1](request)
        if any(path == request.path for _, path in self._routes):
            return Response.text(f"method {request.method} not allowed on {request.path}", 405)
        return Response.text(f"no such page: {request.path}", 404)


def bearer_token_ok(request: Request, token: str | None) -> Response | None:
    """None when the request carries ``Authorization: Bearer <token>``, else the refusal to send."""
    if token is None:
        return Response.json({"error": "state-changing calls are disabled: no token is configured",
                              "fix": "set http.token_file in the config to a file holding a secret token"}, 403)
    given = request.headers.get("Authorization", "")
    if not given.startswith("Bearer ") or not hmac.compare_digest(given[7:].strip().encode(), token.encode()):
        return Response.json({"error": "missing or wrong token",
                              "fix": "send the header 'Authorization: Bearer <the token in http.token_file>'"}, 401)
    return None


def _make_handler(server: HttpServer) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "edgesight"

        def _handle(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._send(Response.text(f"request body over {MAX_BODY} bytes", 413))
                return
            body = self.rfile.read(length) if length else b""
            request = Request(self.command, parts.path, parse_qs(parts.query), dict(self.headers.items()), body, self)
            try:
                response = server.dispatch(request)
            except Exception:
                log.exception("http: %s %s failed", self.command, parts.path)
                response = Response.text("internal error (see the daemon's log)", 500)
            if response is not None:
                self._send(response)

        def _send(self, response: Response) -> None:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            self.send_header("Cache-Control", "no-store")
            for name, value in response.headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(response.body)

        do_GET = do_POST = do_PUT = do_DELETE = _handle

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("http: %s %s", self.address_string(), format % args)

    return _Handler
