"""The relay's HTTP API (FastAPI): request and response models, routes, error mapping."""


import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from relay import join
from relay.service import RelayService, ServiceError, check_email
from relay.store import Technician

API = "/api/v1"
MAX_BODY_BYTES = 64 * 1024
SSE_KEEPALIVE_SECONDS = 15.0


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class AgentReport(BaseModel):
    model_config = ConfigDict(extra="allow")
    event: str = Field(max_length=64)
    actor: str = Field(default="technician", max_length=64)
    outcome: str = Field(default="ok", max_length=32)


class AgentReports(Strict):
    events: list[AgentReport] = Field(max_length=100)


class LoginRequest(Strict):
    login: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class CreateSessionRequest(Strict):
    customer_email: str = Field(max_length=254)
    password: str = Field(max_length=256)
    note: str = Field(default="", max_length=500)

    @field_validator("customer_email")
    @classmethod
    def _email(cls, value: str) -> str:
        return check_email(value)


class ActivateRequest(Strict):
    code: str = Field(max_length=32)
    host_key: str = Field(min_length=1, max_length=4096)
    hostname: str = Field(default="", max_length=255)
    os: str = Field(default="", max_length=255)
    user: str = Field(default="", max_length=255)
    machine_id: str | None = Field(default=None, max_length=255)


def error(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status)


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        message = str(err.get("msg", "is not valid"))
        message = message.removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "; ".join(parts) or "the request is not valid JSON of the expected shape"


class BodyLimit:
    """Reject bodies over MAX_BODY_BYTES before anything parses them (ASGI middleware)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            await error(413, "too_large",
                        f"the request body is larger than {MAX_BODY_BYTES} bytes")(
                scope, receive, send)
            return
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > MAX_BODY_BYTES:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _TooLarge:
            await error(413, "too_large",
                        f"the request body is larger than {MAX_BODY_BYTES} bytes")(
                scope, receive, send)


class _TooLarge(Exception):
    pass


def create_app(service: RelayService) -> FastAPI:
    app = FastAPI(title="Adhoc relay", version="1", docs_url=None, redoc_url=None)

    @app.exception_handler(ServiceError)
    async def _service_error(_request: Request, exc: ServiceError) -> JSONResponse:
        return error(exc.status, exc.code, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error(422, "invalid", _describe_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        detail = "no such route: see the API reference in docs/" if exc.status_code == 404 \
            else str(exc.detail)
        return error(exc.status_code, codes.get(exc.status_code, "http_error"), detail)

    async def technician(
        authorization: Annotated[str | None, Header()] = None,
    ) -> Technician:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ServiceError(401, "unauthorized",
                               "log in first: send Authorization: Bearer <token>")
        return await service.technician_for_token(token.strip())

    Tech = Annotated[Technician, Depends(technician)]

    @app.get(f"{API}/relay")
    async def relay_info() -> dict:
        """What a console needs to reach the relay's SSH endpoint."""
        return {"ssh": service.ssh_address, "host_key": service.relay_host_key,
                "base_url": service.base_url}

    @app.post(f"{API}/login")
    async def login(body: LoginRequest, request: Request) -> dict:
        token, tech = await service.login(body.login, body.password, _source(request))
        return {"token": token, "technician": await _technician_view(tech)}

    async def _technician_view(tech: Technician) -> dict:
        return {"login": tech.login, "email": tech.email, "admin": tech.is_admin,
                "limits": await service.limits_for(tech)}

    @app.get(f"{API}/me")
    async def me(tech: Tech) -> dict:
        return await _technician_view(tech)

    @app.get(f"{API}/sessions")
    async def list_sessions(tech: Tech) -> dict:
        logins = await service.technician_logins(tech.company_id)
        rows = await service.sessions_for(tech)
        return {"sessions": [service.session_view(r, logins.get(r.technician_id)) for r in rows],
                "limits": await service.limits_for(tech)}

    @app.post(f"{API}/sessions", status_code=201)
    async def create_session(body: CreateSessionRequest, tech: Tech) -> dict:
        created = await service.create_session(tech, body.customer_email, body.password,
                                               body.note)
        view = service.session_view(created.row, tech.login)
        view.update(security_code=created.security_code, join_url=created.join_url,
                    install_command=service.install_command(created.join_token))
        return view

    @app.get(f"{API}/sessions/{{session_id}}")
    async def get_session(session_id: str, tech: Tech) -> dict:
        row = await service.session_for(tech, session_id)
        logins = await service.technician_logins(tech.company_id)
        return service.session_view(row, logins.get(row.technician_id))

    @app.post(f"{API}/sessions/{{session_id}}/end")
    async def end_session(session_id: str, tech: Tech) -> dict:
        row = await service.end_session(tech, session_id)
        logins = await service.technician_logins(tech.company_id)
        return service.session_view(row, logins.get(row.technician_id))

    @app.get(f"{API}/sessions/{{session_id}}/audit")
    async def session_audit(session_id: str, tech: Tech) -> dict:
        return {"audit": await service.audit_for(tech, session_id)}

    @app.get(f"{API}/events")
    async def events(
        tech: Tech,
        last_event_id: Annotated[str | None, Header()] = None,
        after: int | None = None,
    ) -> StreamingResponse:
        start = after if after is not None else _int_or_none(last_event_id)
        if start is None:
            start = await service.store.last_event_id()
        return StreamingResponse(_event_stream(service, tech.company_id, start),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store"})

    @app.get(f"{API}/join/{{token}}")
    async def join_info(token: str) -> dict:
        return await service.join_info(token)

    @app.post(f"{API}/join/{{token}}/activate")
    async def activate(token: str, body: ActivateRequest, request: Request) -> dict:
        return await service.activate(
            token, body.code, host_key=body.host_key, hostname=body.hostname, os=body.os,
            user=body.user, machine_id=body.machine_id, source=_source(request))

    def agent_bearer(authorization: Annotated[str | None, Header()] = None) -> str:
        scheme, _, credential = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not credential:
            raise ServiceError(401, "unauthorized", "the agent must send its session credential")
        return credential.strip()

    AgentBearer = Annotated[str, Depends(agent_bearer)]

    @app.post(f"{API}/agent/audit")
    async def agent_audit(body: AgentReports, bearer: AgentBearer) -> dict:
        """The agent reports what technicians did inside the tunnel (the relay cannot see)."""
        count = await service.agent_reports(bearer, [e.model_dump() for e in body.events])
        return {"recorded": count}

    @app.post(f"{API}/agent/end")
    async def agent_end(bearer: AgentBearer) -> dict:
        """The customer ended the session from the agent's window."""
        row = await service.agent_ends(bearer)
        return {"id": row.id, "state": row.state, "ended_reason": row.ended_reason}

    join.add_routes(app, service)
    return app


async def _event_stream(service: RelayService, company_id: int,
                        after: int) -> AsyncIterator[bytes]:
    yield b"retry: 2000\n\n"
    while True:
        rows = await service.store.events_after(company_id, after)
        for row in rows:
            after = row.id
            payload = {"kind": row.kind, "session_id": row.session_id, **json.loads(row.data)}
            yield f"id: {row.id}\nevent: {row.kind}\ndata: {json.dumps(payload)}\n\n".encode()
        if rows:
            continue
        if not await service.bus.wait(SSE_KEEPALIVE_SECONDS):
            yield b": keepalive\n\n"


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def _source(request: Request) -> str:
    return request.client.host if request.client else "unknown"
