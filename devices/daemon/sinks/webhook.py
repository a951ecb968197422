"""An HTTP webhook: one POST per event, JSON body, with retries (stdlib only).

A 2xx answer acknowledges the event. A network error, a timeout, 408, 429 or a 5xx is an outage: the
event is tried again after a doubling wait (``backoff_initial`` to ``backoff_max``), forever, and the events
behind it wait in the spool, so order is kept. Any other answer (400, 401, 404, ...) means the endpoint
refuses this event for good: it is logged with the status and the start of the answer, counted as
rejected, and the next event goes.
"""

from __future__ import annotations

import http.client
import logging
import urllib.error
import urllib.request
from collections.abc import Sequence

from devices.daemon.config import WebhookConfig
from devices.daemon.sinks import BatchSink, SinkDown
from devices.daemon.spool import Spooled

log = logging.getLogger(__name__)

_RETRY_STATUSES = {408, 425, 429}


class WebhookSink(BatchSink):
    """POSTs each spooled event to ``cfg.url``.

    Args:
        cfg: The ``sinks.webhook`` section.
    """

    def __init__(self, cfg: WebhookConfig) -> None:
        super().__init__(
            "webhook",
            f"the webhook {cfg.url}",
            f"start the service behind {cfg.url} or correct sinks.webhook.url",
            cfg.backoff_initial,
            cfg.backoff_max,
        )
        self.cfg = cfg
        self._headers = {"Content-Type": "application/json", "User-Agent": "edgesight", **cfg.headers}

    def send(self, records: Sequence[Spooled]) -> None:
        for done, record in enumerate(records):
            request = urllib.request.Request(
                self.cfg.url, data=record.payload.encode(), headers=self._headers, method="POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=self.cfg.timeout) as response:
                    response.read()
            except urllib.error.HTTPError as exc:
                if exc.code >= 500 or exc.code in _RETRY_STATUSES:
                    raise SinkDown(f"HTTP {exc.code} {exc.reason}", delivered=done) from exc
                body = exc.read(200).decode(errors="replace")
                self.rejected += 1
                log.error(
                    "webhook %s refused event seq %d with HTTP %d %s (%r); it is not sent again. fix: check the "
                    "endpoint's expected format, sinks.webhook.headers (a token?) and url",
                    self.cfg.url, record.seq, exc.code, exc.reason, body,
                )
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                # Refused, reset, timed out, or the server hung up mid-answer (IncompleteRead, BadStatusLine).
                reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
                raise SinkDown(str(reason), delivered=done) from exc
