"""The relay's HTTP API (FastAPI): request and response models, routes, error mapping."""


import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from common.passwords import (
    TECHNICIAN_PASSWORD_MAX,
    VERIFIER_MAX_CHARS,
    technician_password_problem,
)
from common.secret import Secret
from relay import join
from relay import sessions as rules
from relay.db.engine import DatabaseUnavailable
from relay.service import RelayService, ServiceError, check_email, check_login_name
from relay.sshkeys import read_public_key
from relay.store import Technician

log = logging.getLogger("adhoc.relay")

API = "/api/v1"
MAX_BODY_BYTES = 64 * 1024
MAX_JSON_DEPTH = 32
SSE_KEEPALIVE_SECONDS = 15.0
AUDIT_PAGE_MAX = 1000


class ErrorBody(BaseModel):
    """Every refusal: a stable code for programs and a sentence for people."""

    error: str = Field(description="a stable error code, e.g. not_found, limit, no_seat")
    detail: str = Field(description="what happened and what to do next, in one sentence")


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI documentation of the error answers a route can give."""
    described = {
        401: "not logged in, or the token expired or was revoked",
        402: "no free seat",
        403: "not allowed (plan without ad hoc support, wrong code, not an administrator)",
        404: "no such session, link or technician (or another company's)",
        409: "a limit or the current state refuses this",
        410: "the link was used, burnt or has expired",
        413: "the request body is too large",
        422: "the request is not valid: wrong fields, types or values",
        429: "too many attempts from this address: see Retry-After",
    }
    return {status: {"model": ErrorBody, "description": described[status]}
            for status in (*statuses, 413, 422)}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class AgentReports(Strict):
    """Events of the agent vocabulary (common/protocol.py); each an object with `event`,
    optional `actor` and `outcome`, and fields of its own."""

    events: list[dict[str, Any]] = Field(max_length=100)


class AgentProblem(Strict):
    """Why the agent cannot hold its SSH connection (null: it can again)."""

    problem: str | None = Field(max_length=2000)


def held(fields: str):
    """A validator that holds a password or code as a Secret from the moment it is valid
    (its length checked): the model's repr, a log line or a crash report shows no value."""
    return field_validator(fields)(lambda value: Secret(value))


class TechnicianPassword(Strict):
    password: str = Field(min_length=8, max_length=TECHNICIAN_PASSWORD_MAX,
                          description="the technician's new password: 12+ characters, or 8+ "
                                      "mixing letters with digits or symbols; not a common one")

    @field_validator("password")
    @classmethod
    def _strong(cls, value: str) -> Secret:
        problem = technician_password_problem(value)
        if problem:
            raise ValueError(problem)
        return Secret(value)


class AddTechnicianRequest(TechnicianPassword):
    login: str = Field(min_length=1, max_length=64,
                       description="login name, also the SSH user name ([a-z0-9._-]+)")
    email: str = Field(max_length=rules.MAX_EMAIL_CHARS, json_schema_extra={"format": "email"})
    admin: bool = False
    ssh_keys: list[str] = Field(default_factory=list, max_length=10,
                                description="OpenSSH public keys for `ssh -J`")

    @field_validator("login")
    @classmethod
    def _login(cls, value: str) -> str:
        return check_login_name(value)

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        return check_email(value)

    @field_validator("ssh_keys")
    @classmethod
    def _keys(cls, value: list[str]) -> list[str]:
        return [read_public_key(text) for text in value]


class LoginRequest(Strict):
    login: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=TECHNICIAN_PASSWORD_MAX)
    _held = held("password")


class CreateSessionRequest(Strict):
    """Exactly one of `password_verifier` (what the console sends) and `password`."""

    model_config = ConfigDict(json_schema_extra={"oneOf": [{"required": ["password_verifier"]},
                                                           {"required": ["password"]}]})
    customer_email: str = Field(max_length=rules.MAX_EMAIL_CHARS,
                                json_schema_extra={"format": "email"})
    # Absent is None; an explicit null is refused (below) and the schema shows plain strings.
    # The service checks the verifier, its length too, in a sentence that says what to send.
    password_verifier: Annotated[str | None, WithJsonSchema(
        {"type": "string", "maxLength": VERIFIER_MAX_CHARS})] = Field(
        default=None,
        description="the session password hashed with argon2id, as a PHC string "
                    "($argon2id$v=19$m=...,t=...,p=...$salt$hash): at least 19 MiB with t=2 "
                    "(or 46 MiB with t=1), at most 256 MiB, t=10, p=8; salt and hash 16+ bytes. "
                    "The relay then never sees the password")
    password: Annotated[str | None, WithJsonSchema(
        {"type": "string", "minLength": 8, "maxLength": 256})] = Field(
        default=None, min_length=8, max_length=256,
        description="the session password itself (the relay checks and hashes it); 12+ "
                    "characters or mixed classes")
    note: str = Field(default="", max_length=rules.MAX_NOTE_CHARS)
    technician_key: Annotated[str | None, WithJsonSchema(
        {"type": "string", "maxLength": 16384})] = Field(
        default=None, max_length=16384,
        description="an OpenSSH public key (ssh-ed25519 AAAA...) that may log in to the "
                    "host as the technician creating the session, besides the session "
                    "password: for scripts (sftp -b, cron). Ed25519, ECDSA or RSA of 2048 "
                    "bits or more")

    _held = held("password")

    @field_validator("customer_email")
    @classmethod
    def _email(cls, value: str) -> str:
        return check_email(value)

    @field_validator("password_verifier", "password", "technician_key", mode="before")
    @classmethod
    def _not_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("send a string, or leave the field out")
        return value


class ActivateRequest(Strict):
    code: str = Field(max_length=32)
    _held = held("code")
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


def json_depth_exceeds(body: bytes, limit: int) -> bool:
    """Whether JSON nests deeper than `limit` (brackets inside strings do not count).

    Python's parser recurses per level: a body of 30,000 "[" would otherwise fail deep inside
    it. This scan is linear and needs no parse."""
    depth = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return False


class BodyLimit:
    """Read the whole body (at most MAX_BODY_BYTES) before anything parses it; refuse larger
    bodies with 413 and JSON nested deeper than MAX_JSON_DEPTH with 422 (ASGI middleware)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        too_large = error(413, "too_large",
                          f"the request body is larger than {MAX_BODY_BYTES} bytes: send less")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            await too_large(scope, receive, send)
            return
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            seen += len(body)
            if seen > MAX_BODY_BYTES:
                await too_large(scope, receive, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if json_depth_exceeds(body, MAX_JSON_DEPTH):
            await error(422, "invalid", f"the JSON body nests deeper than {MAX_JSON_DEPTH} "
                                        "levels: send a flat object")(scope, receive, send)
            return
        delivered = False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def create_app(service: RelayService) -> FastAPI:
    # No slash redirects: a path either names a route or is 404, never a 307 elsewhere.
    app = FastAPI(title="Adhoc relay", version="1", docs_url=None, redoc_url=None,
                  redirect_slashes=False)
    app.add_middleware(BodyLimit)

    @app.exception_handler(ServiceError)
    async def _service_error(_request: Request, exc: ServiceError) -> JSONResponse:
        response = error(exc.status, exc.code, exc.detail)
        if exc.retry_after is not None:
            response.headers["Retry-After"] = str(int(exc.retry_after))
        return response

    @app.exception_handler(DatabaseUnavailable)
    async def _database_unavailable(_request: Request, exc: DatabaseUnavailable) -> JSONResponse:
        log.warning("%s", exc)
        response = error(503, "unavailable", "the relay cannot reach its database just now: "
                                             "try again in a moment")
        response.headers["Retry-After"] = "5"
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error(422, "invalid", _describe_validation(exc))

    def allowed_methods(request: Request) -> str:
        """Every method some route offers for this path (Starlette names only the first
        route's when two routes share a path)."""
        methods: set[str] = set()
        for route in app.router.routes:
            match, _ = route.matches(request.scope)
            if match != Match.NONE:
                methods |= set(getattr(route, "methods", None) or ())
        return ", ".join(sorted(methods))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            if request.url.path.endswith("/install.sh"):  # a mistyped one-liner: sh runs this
                return join.refusal_script(404, "this link is not valid: copy the whole "
                                                "command from the invitation, or ask your "
                                                "technician for a new one")
            return error(404, "not_found", "no such route: see the API reference in docs/API.md")
        if exc.status_code == 400:  # FastAPI could not read the body as JSON
            return error(422, "invalid", "the request body is not valid JSON: send a JSON "
                                         "object with the documented fields")
        if exc.status_code == 405:
            allowed = allowed_methods(request)
            response = error(405, "method_not_allowed",
                             f"{request.method} is not allowed on this route: use "
                             f"{allowed.replace(', ', ' or ')}")
            response.headers["Allow"] = allowed
            return response
        response = error(exc.status_code, "http_error", str(exc.detail))
        response.headers.update(exc.headers or {})
        return response

    async def technician(
        authorization: Annotated[str | None, Header()] = None,
    ) -> Technician:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ServiceError(401, "unauthorized",
                               "log in first: send Authorization: Bearer <token>")
        return await service.technician_for_token(Secret(token.strip()))

    Tech = Annotated[Technician, Depends(technician)]

    @app.get(f"{API}/relay")
    async def relay_info() -> dict:
        """What a console needs to reach the relay's SSH endpoint."""
        return {"ssh": service.ssh_address, "host_key": service.relay_host_key,
                "base_url": service.base_url, "relays": service.relay_addresses()}

    @app.post(f"{API}/login", responses=_errors(401, 429))
    async def login(body: LoginRequest, request: Request) -> dict:
        """Exchange a login and password for a bearer token (30 days)."""
        try:
            token, tech = await service.login(body.login, body.password, _source(request))
        except ServiceError as exc:
            service.stats.login("http", "technician",
                                "rate_limited" if exc.status == 429 else "failed")
            raise
        service.stats.login("http", "technician", "ok")
        return {"token": token, "technician": await _technician_view(tech)}

    async def _technician_view(tech: Technician) -> dict:
        return {"login": tech.login, "email": tech.email, "admin": bool(tech.is_admin),
                "limits": await service.limits_for(tech)}

    @app.get(f"{API}/me", responses=_errors(401))
    async def me(tech: Tech) -> dict:
        """Who is logged in, with the company's plan, seats and limits."""
        return await _technician_view(tech)

    @app.get(f"{API}/sessions", responses=_errors(401))
    async def list_sessions(tech: Tech) -> dict:
        """The company's live sessions and those ended in the last 7 days."""
        logins = await service.technician_logins(tech.company_id)
        rows = await service.sessions_for(tech)
        return {"sessions": [service.session_view(r, logins.get(r.technician_id)) for r in rows],
                "limits": await service.limits_for(tech)}

    @app.post(f"{API}/sessions", status_code=201, responses=_errors(401, 402, 403, 409))
    async def create_session(body: CreateSessionRequest, tech: Tech) -> dict:
        """Invite a customer: the security code and join link are in this answer only."""
        created = await service.create_session(tech, body.customer_email, body.password,
                                               body.note, verifier=body.password_verifier,
                                               technician_key=body.technician_key)
        view = service.session_view(created.row, tech.login)
        view.update(security_code=created.security_code.reveal(),
                    join_url=created.join_url.reveal(),
                    install_command=service.install_command(created.join_token.reveal()))
        return view

    @app.get(f"{API}/sessions/{{session_id}}", responses=_errors(401, 404))
    async def get_session(session_id: str, tech: Tech) -> dict:
        row = await service.session_for(tech, session_id)
        logins = await service.technician_logins(tech.company_id)
        return service.session_view(row, logins.get(row.technician_id))

    @app.post(f"{API}/sessions/{{session_id}}/end", responses=_errors(401, 404))
    async def end_session(session_id: str, tech: Tech) -> dict:
        """End the session (idempotent); the agent is told and removes itself."""
        row = await service.end_session(tech, session_id)
        logins = await service.technician_logins(tech.company_id)
        return service.session_view(row, logins.get(row.technician_id))

    @app.post(f"{API}/sessions/{{session_id}}/code", responses=_errors(401, 404, 409))
    async def reissue_code(session_id: str, tech: Tech) -> dict:
        """A new security code for a pending session; the old one stops working. Wrong codes
        already tried on the link still count."""
        row, code = await service.reissue_code(tech, session_id)
        return {"id": row.id, "security_code": code.reveal(), "code_attempts": row.code_attempts,
                "attempts_left": max(0, rules.MAX_CODE_ATTEMPTS - row.code_attempts)}

    @app.get(f"{API}/sessions/{{session_id}}/invitation", responses=_errors(401, 404, 409))
    async def invitation(session_id: str, tech: Tech) -> dict:
        """The invitation as written to the outbox, with its join link, while pending."""
        return await service.invitation(tech, session_id)

    @app.get(f"{API}/sessions/{{session_id}}/audit", responses=_errors(401, 404))
    async def session_audit(session_id: str, tech: Tech,
                            after: Annotated[int, Query(ge=0)] = 0,
                            limit: Annotated[int, Query(ge=1, le=AUDIT_PAGE_MAX)]
                            = AUDIT_PAGE_MAX) -> dict:
        """The session's audit, oldest first, a page at a time: `next` is the `after` of the
        next page, or null after the last."""
        rows = await service.audit_for(tech, session_id, after=after, limit=limit)
        return {"audit": rows, "next": rows[-1]["id"] if len(rows) == limit else None}

    @app.get(f"{API}/events", responses={
        **_errors(401),
        200: {"description": "Server-Sent Events: see docs/API.md",
              "content": {"text/event-stream": {"schema": {"type": "string"}}}}})
    async def events(
        tech: Tech,
        last_event_id: Annotated[str | None, Header()] = None,
        after: int | None = None,
    ) -> StreamingResponse:
        """Live changes of the company's sessions; resume with Last-Event-ID or ?after=."""
        start = after if after is not None else _int_or_none(last_event_id)
        if start is None:
            start = await service.store.last_event_id()
        return StreamingResponse(_event_stream(service, tech.company_id, start),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store"})

    # --- company administration (technicians with the admin flag) --------------------------

    @app.get(f"{API}/admin/company", responses=_errors(401, 403))
    async def admin_company(tech: Tech) -> dict:
        """The company's plan, seats and use; plan and seats change only on the relay's CLI."""
        return await service.company_overview(tech)

    @app.get(f"{API}/admin/technicians", responses=_errors(401, 403))
    async def admin_technicians(tech: Tech) -> dict:
        return {"technicians": await service.technician_views(tech)}

    @app.post(f"{API}/admin/technicians", status_code=201, responses=_errors(401, 403, 409))
    async def admin_add_technician(body: AddTechnicianRequest, tech: Tech) -> dict:
        return await service.add_technician(tech, body.login, body.email, body.password,
                                            body.admin, body.ssh_keys)

    @app.post(f"{API}/admin/technicians/{{login}}/disable",
              responses=_errors(401, 403, 404, 409))
    async def admin_disable(login: str, tech: Tech) -> dict:
        """Disable a technician of your company; their logins are revoked at once."""
        return await service.set_technician_disabled(tech, login, True)

    @app.post(f"{API}/admin/technicians/{{login}}/enable", responses=_errors(401, 403, 404))
    async def admin_enable(login: str, tech: Tech) -> dict:
        return await service.set_technician_disabled(tech, login, False)

    @app.post(f"{API}/admin/technicians/{{login}}/reset-password",
              responses=_errors(401, 403, 404))
    async def admin_reset_password(login: str, body: TechnicianPassword, tech: Tech) -> dict:
        """Set a new password; the technician's logins are revoked."""
        return await service.reset_technician_password(tech, login, body.password)

    # --- the customer's agent ---------------------------------------------------------------

    @app.get(f"{API}/join/{{token}}", responses=_errors(404))
    async def join_info(token: str) -> dict:
        """Who is asking: company and technician as the relay knows them."""
        return await service.join_info(token)

    @app.post(f"{API}/join/{{token}}/activate", responses=_errors(403, 404, 409, 410, 429))
    async def activate(token: str, body: ActivateRequest, request: Request) -> dict:
        return await service.activate(
            token, body.code, host_key=body.host_key, hostname=body.hostname, os=body.os,
            user=body.user, machine_id=body.machine_id, source=_source(request))

    def agent_bearer(authorization: Annotated[str | None, Header()] = None) -> Secret:
        scheme, _, credential = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            raise ServiceError(401, "unauthorized", "the agent must send its session credential")
        return Secret(credential.strip())

    AgentBearer = Annotated[Secret, Depends(agent_bearer)]

    @app.post(f"{API}/agent/audit", responses=_errors(401))
    async def agent_audit(body: AgentReports, bearer: AgentBearer) -> dict:
        """The agent reports what technicians did inside the tunnel (the relay cannot see)."""
        return await service.agent_reports(bearer, body.events)

    @app.post(f"{API}/agent/problem", responses=_errors(401, 429))
    async def agent_problem(body: AgentProblem, bearer: AgentBearer) -> dict:
        """The agent says why it cannot connect over SSH; the console shows it on the row."""
        return await service.agent_problem(bearer, body.problem)

    @app.post(f"{API}/agent/end", responses=_errors(401))
    async def agent_end(bearer: AgentBearer) -> dict:
        """The customer ended the session from the agent's window."""
        row = await service.agent_ends(bearer)
        return {"id": row.id, "state": row.state, "ended_reason": row.ended_reason}

    join.add_routes(app, service)
    return app


async def _event_stream(service: RelayService, company_id: int,
                        after: int) -> AsyncIterator[bytes]:
    yield b"retry: 2000\n\n"
    while not service.bus.closed:
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
