"""The join link a customer opens: who is asking, what will happen, and how to start the host."""

from __future__ import annotations

import html

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response

from relay.service import RelayService, ServiceError


def _wants_text(request: Request) -> bool:
    agent = request.headers.get("user-agent", "").lower()
    accept = request.headers.get("accept", "")
    return agent.startswith(("curl/", "wget/", "httpie/")) or "text/html" not in accept


def join_text(info: dict, join_url: str, install_command: str) -> str:
    return (
        f"{info['technician']} of {info['company']} asks to give you remote support.\n"
        f"Only continue if you asked {info['company']} for help.\n\n"
        "What will happen:\n"
        "  1. You run the command below as administrator (root). It starts the temporary\n"
        "     Adhoc host in this terminal.\n"
        "  2. The technician reads you a 6-digit security code; you type it in.\n"
        f"  3. For {info['session_hours']} hours the technician can open a shell, files and a\n"
        "     system view on this computer. The window shows who is connected and what\n"
        "     they do; one key ends the session at once. Then the software removes itself.\n\n"
        f"Run:\n  {install_command}\n\n"
        f"Or, with Adhoc installed:\n  adhoc-host join {join_url}\n"
    )


def add_routes(app: FastAPI, service: RelayService) -> None:
    @app.get("/join/{token}", include_in_schema=False)
    async def join_page(token: str, request: Request) -> Response:
        try:
            info = await service.join_info(token)
        except ServiceError as exc:
            if _wants_text(request):
                return PlainTextResponse(exc.detail + "\n", status_code=exc.status)
            return HTMLResponse(_page("Link not valid", f"<p>{html.escape(exc.detail)}</p>"),
                                status_code=exc.status)
        if info["state"] != "pending":
            detail = ("this link was already used, has expired or was ended: ask your "
                      "technician for a new invitation")
            if _wants_text(request):
                return PlainTextResponse(detail + "\n", status_code=410)
            return HTMLResponse(_page("Link no longer valid", f"<p>{detail}</p>"),
                                status_code=410)
        text = join_text(info, service.join_url(token), service.install_command(token))
        if _wants_text(request):
            return PlainTextResponse(text)
        return HTMLResponse(_page(
            f"Remote support from {info['company']}",
            f"<pre>{html.escape(text)}</pre>"))


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title></head><body><h1>{html.escape(title)}</h1>{body}</body></html>")
