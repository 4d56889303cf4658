"""The relay's use cases as one object, for the HTTP API, the SSH endpoint and the console's
embedded relay. Each use case lives in relay/usecases/, one module per kind of caller."""

from __future__ import annotations

from relay.usecases.admins import AdminCases
from relay.usecases.agents import AgentCases
from relay.usecases.customers import CustomerCases
from relay.usecases.sessions import CreatedSession, SessionCases
from relay.usecases.shared import (
    RateLimiter,
    ServiceError,
    check_email,
    check_login_name,
    iso,
)
from relay.usecases.technicians import TechnicianCases

__all__ = ["CreatedSession", "RateLimiter", "RelayService", "ServiceError", "check_email",
           "check_login_name", "iso"]


class RelayService(TechnicianCases, SessionCases, AdminCases, CustomerCases, AgentCases):
    """Every use case of the relay (see relay/usecases/__init__.py for where each lives)."""
