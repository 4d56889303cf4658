"""What operators watch: `/healthz`, `/readyz` and Prometheus `/metrics`.

`/healthz` says the process answers; `/readyz` that the database answers and the listeners are
up (503 with the reasons otherwise). Both are on the public HTTP listener, where load
balancers probe, and on the metrics listener. `/metrics` is only on the metrics listener
(`serve --metrics HOST:PORT`, loopback unless a host is named), so the relay's numbers do not
face the internet.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from relay.service import RelayService

Readiness = Callable[[], Awaitable[list[str]]]
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class RelayMetrics:
    """The relay's Prometheus registry (one per relay, so several relays in one process, as
    in tests, do not share numbers)."""

    def __init__(self, service: RelayService, startups=None) -> None:
        self.service = service
        self.startups = startups  # relay/sshd.py Startups: the SSH handshake gate
        self.registry = CollectorRegistry(auto_describe=True)
        self.latency = Histogram(
            "adhoc_relay_http_request_seconds",
            "Time to the first byte of each HTTP answer, by method and route",
            ["method", "route"], registry=self.registry, buckets=LATENCY_BUCKETS)
        self._sessions: dict[str, int] = {}
        self.registry.register(self)

    async def refresh(self) -> None:
        """What needs the database, read before each scrape (collect() cannot wait)."""
        counts = {"pending": 0, "active": 0}
        for row in await self.service.store.live_sessions():
            counts[row.state] = counts.get(row.state, 0) + 1
        self._sessions = counts

    def collect(self):
        service, stats = self.service, self.service.stats
        yield _gauge("adhoc_relay_agents_online", "Agents connected with their forward",
                     len(service.agents))
        yield _gauge("adhoc_relay_tunnels_open", "Technician tunnels to hosts open now",
                     stats.tunnels_open)
        yield _counter("adhoc_relay_tunnels_opened", "Technician tunnels opened",
                       stats.tunnels_opened)
        yield _counter("adhoc_relay_bytes_relayed", "Bytes spliced between technicians and "
                       "hosts", stats.bytes_relayed)
        if self.startups is not None:
            yield _gauge("adhoc_relay_ssh_handshakes_in_progress", "SSH handshakes running",
                         self.startups.in_flight)
            yield _gauge("adhoc_relay_ssh_handshakes_waiting", "SSH connections waiting for "
                         "a handshake place (the queue)", self.startups.waiting)
            yield _counter("adhoc_relay_ssh_connections_turned_away", "SSH connections "
                           "closed at once because the queue was full", self.startups.dropped)
        logins = CounterMetricFamily("adhoc_relay_logins", "Logins by route, who and outcome",
                                     labels=["route", "who", "outcome"])
        for (route, who, outcome), count in sorted(stats.logins.items()):
            logins.add_metric([route, who, outcome], count)
        yield logins
        sessions = GaugeMetricFamily("adhoc_relay_sessions", "Live sessions by state",
                                     labels=["state"])
        for state, count in sorted(self._sessions.items()):
            sessions.add_metric([state], count)
        yield sessions
        mailer = service.mailer
        yield _gauge("adhoc_relay_mail_sending", "Invitations being sent (the mail queue)",
                     getattr(mailer, "sending", 0))

    def middleware(self, app):
        """ASGI middleware timing every HTTP answer to its first byte, by route pattern."""
        latency = self.latency

        async def timed(scope, receive, send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            started = time.perf_counter()

            async def send_timed(message) -> None:
                if message["type"] == "http.response.start":
                    route = scope.get("route")
                    latency.labels(scope.get("method", "?"),
                                   getattr(route, "path", "unmatched")).observe(
                        time.perf_counter() - started)
                await send(message)

            await app(scope, receive, send_timed)

        return timed

    def export(self) -> bytes:
        return generate_latest(self.registry)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def add_health_routes(app: FastAPI, readiness: Readiness) -> None:
    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        problems = await readiness()
        if problems:
            return JSONResponse({"status": "not ready", "problems": problems},
                                status_code=503)
        return JSONResponse({"status": "ready"})


def metrics_app(metrics: RelayMetrics, readiness: Readiness) -> FastAPI:
    """The metrics listener's app: /metrics, /healthz and /readyz, nothing else."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/metrics")
    async def export() -> Response:
        await metrics.refresh()
        return Response(metrics.export(), media_type=CONTENT_TYPE_LATEST)

    add_health_routes(app, readiness)
    return app
