"""What the agent reports for the audit log cannot overwrite the audit row's own columns."""

from __future__ import annotations

import httpx

from tests.relay.conftest import activate, create
from tests.support import Api


async def test_agent_report_with_reserved_keys_is_recorded_not_a_500(relay) -> None:
    async with Api(relay.base_url) as api:
        session = (await create(api)).json()
        activation = (await activate(relay.base_url, session)).json()
        bearer = {"Authorization": f"Bearer {session['id']}:{activation['agent_secret']}"}
        async with httpx.AsyncClient(base_url=relay.base_url) as client:
            response = await client.post("/api/v1/agent/audit", headers=bearer, json={"events": [
                {"event": "file_written", "actor": "alice", "path": "/tmp/x", "size": 3,
                 "at": "2020-01-01", "company_id": 999, "session_id": "someone-else"}]})
        assert response.status_code == 200, response.text
        rows = (await api.client.get(f"/api/v1/sessions/{session['id']}/audit")).json()["audit"]
        written = [r for r in rows if r["event"] == "file_written"]
        assert len(written) == 1
        assert written[0]["actor"] == "technician:alice"
        assert written[0]["detail"]["agent_company_id"] == 999
        assert written[0]["detail"]["path"] == "/tmp/x"
        assert not written[0]["at"].startswith("2020")
