"""Administration: `adhoc-relay company|technician ...` on the command line, and the admin API a
company administrator uses for their own technicians."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.relay.conftest import create, db_rows
from tests.support import PASSWORD, Api, run_cli

ON_BOTH_ENGINES = True  # what this module tests is decided by the store

NEW_PASSWORD = "a-brand-new-password-7"


def test_cli_company_and_technician_administration(tmp_path, database) -> None:
    data = tmp_path / "relay"
    run_cli(data, "init")
    run_cli(data, "init")  # idempotent
    assert "plan trial, 1 seats" in run_cli(data, "company", "add", "Zeta", "--plan", "trial",
                                            "--seats", "1").stdout
    run_cli(data, "company", "set-plan", "Zeta", "premier")
    run_cli(data, "company", "set-seats", "Zeta", "4")
    assert run_cli(data, "company", "list").stdout.strip() == "Zeta\tpremier\t4 seats"
    run_cli(data, "technician", "add", "zed", "--email", "zed@example.com", "--company", "Zeta",
            "--admin", "--password-stdin", stdin=PASSWORD + "\n")
    run_cli(data, "technician", "disable", "zed")
    assert run_cli(data, "technician", "list").stdout.split("\t")[-1].strip() == "admin,disabled"
    run_cli(data, "technician", "enable", "zed")
    run_cli(data, "technician", "reset-password", "zed", "--password-stdin",
            stdin=NEW_PASSWORD + "\n")
    run_cli(data, "company", "disable", "Zeta")
    assert "(disabled)" in run_cli(data, "company", "list").stdout

    # Mistakes get one line saying what to do, and exit status 2.
    for args, stdin, says in (
        (("company", "add", "Zeta", "--plan", "base", "--seats", "1"), None, "already exists"),
        (("company", "set-plan", "Nope", "plus"), None, "no company named 'Nope'"),
        (("technician", "add", "Bad Name", "--email", "x@example.com", "--company", "Zeta",
          "--password-stdin"), "long-enough-pw\n", "use 1-64 of a-z"),
        (("technician", "add", "zed", "--email", "zed@example.com", "--company", "Zeta",
          "--password-stdin"), "long-enough-pw\n", "already exists"),
        (("technician", "add", "amy", "--email", "not-an-email", "--company", "Zeta",
          "--password-stdin"), "long-enough-pw\n", "is not an email address"),
        (("technician", "add", "amy", "--email", "amy@example.com", "--company", "Zeta",
          "--password-stdin"), "short\n", "at least 8 characters"),
    ):
        result = run_cli(data, *args, stdin=stdin, check=False)
        assert result.returncode == 2 and says in result.stderr, result.stderr
    bad_plan = run_cli(data, "company", "add", "Y", "--plan", "gold", "--seats", "1", check=False)
    assert bad_plan.returncode == 2 and "choose trial, base, plus or premier" in bad_plan.stderr
    bad_smtp = run_cli(data, "serve", "--smtp", "http://x", check=False)
    assert bad_smtp.returncode == 2 and "smtp" in bad_smtp.stderr
    # The password never reaches the audit log, only the fact that it was reset.
    detail = db_rows(data, "SELECT detail FROM audit WHERE event = 'technician_changed'")
    assert any('"password": "reset"' in d for (d,) in detail)
    assert not any(NEW_PASSWORD in d for (d,) in detail)


async def test_company_admin_manages_their_own_technicians(relay) -> None:
    async with Api(relay.base_url, "alice") as alice:
        company = (await alice.client.get("/api/v1/admin/company")).json()
        assert company["company"] == "Acme" and company["plan"] == "plus"
        assert company["seats"] == 3 and company["technicians"] == 2

        added = await alice.client.post("/api/v1/admin/technicians", json={
            "login": "dave", "email": "dave@example.com", "password": PASSWORD,
            "ssh_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHxWlK5Y2Cl5jOSDZMTPvUV3ozNyfn0p9GnS"
                         "rSE9M09g dave@laptop"]})
        assert added.status_code == 201, added.text
        assert added.json()["ssh_keys"] == 1 and added.json()["admin"] is False
        duplicate = await alice.client.post("/api/v1/admin/technicians", json={
            "login": "carol", "email": "c@example.com", "password": PASSWORD})
        assert duplicate.status_code == 409 and duplicate.json()["error"] == "exists"

        async with Api(relay.base_url, "dave") as dave:
            session = (await create(dave)).json()
            listed = {t["login"]: t for t in (await alice.client.get(
                "/api/v1/admin/technicians")).json()["technicians"]}
            assert listed["dave"]["live_session"] == session["id"]
            # Not an admin: the admin routes are refused.
            for method, path in (("GET", "/api/v1/admin/company"),
                                 ("GET", "/api/v1/admin/technicians"),
                                 ("POST", "/api/v1/admin/technicians/bob/disable")):
                refused = await dave.client.request(method, path)
                assert refused.status_code == 403 and refused.json()["error"] == "forbidden"

            disabled = await alice.client.post("/api/v1/admin/technicians/dave/disable")
            assert disabled.status_code == 200 and disabled.json()["disabled"] is True
            assert (await dave.client.get("/api/v1/me")).status_code == 401

        self_disable = await alice.client.post("/api/v1/admin/technicians/alice/disable")
        assert self_disable.status_code == 409 and self_disable.json()["error"] == "self"

        await alice.client.post("/api/v1/admin/technicians/dave/enable")
        reset = await alice.client.post("/api/v1/admin/technicians/dave/reset-password",
                                        json={"password": NEW_PASSWORD})
        assert reset.status_code == 200
        async with httpx.AsyncClient(base_url=relay.base_url) as client:
            old = await client.post("/api/v1/login", json={"login": "dave", "password": PASSWORD})
            assert old.status_code == 401
            new = await client.post("/api/v1/login",
                                    json={"login": "dave", "password": NEW_PASSWORD})
            assert new.status_code == 200

        for body, field in (
            ({"login": "Eve!", "email": "e@example.com", "password": PASSWORD}, "login"),
            ({"login": "eve", "email": "nope", "password": PASSWORD}, "email"),
            ({"login": "eve", "email": "e@example.com", "password": "short"}, "password"),
            ({"login": "eve", "email": "e@example.com", "password": PASSWORD,
              "ssh_keys": ["not a key"]}, "ssh_keys"),
            ({"login": "eve", "email": "e@example.com", "password": PASSWORD,
              "plan": "premier"}, "plan"),
        ):
            response = await alice.client.post("/api/v1/admin/technicians", json=body)
            assert response.status_code == 422, body
            assert response.json()["error"] == "invalid" and field in response.json()["detail"]
        # Plan and seats are not for sale through the API.
        assert (await alice.client.post("/api/v1/admin/company", json={"seats": 99})
                ).status_code == 405


def _prompted(data, *args: str, keys: bytes) -> tuple[int, str]:
    """Run adhoc-relay on a terminal, type `keys` at its first prompt; (status, output)."""
    import os
    import pty
    import select
    import signal
    import sys

    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI on the terminal
        # As a shell starts it: ctrl+c neither ignored nor blocked, whatever the test runner's
        # process had (both pass through exec; in whole-suite runs the CLI once sat at its
        # prompt a minute after ^C, and after the same SIGINT sent directly).
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        os.execv(sys.executable, [sys.executable, "-m", "relay.cli", "--data-dir", str(data),
                                  *args])
    output = b""
    typed = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
        if not typed and b"Password:" in output:
            os.write(fd, keys)
            typed = True
    done, status = 0, 0
    for _ in range(100):  # its terminal closed: it is exiting (a moment at most)
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.1)
    if not done:  # still running a minute on: say so (with what it printed), do not hang
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(fd)
        pytest.fail(f"adhoc-relay still ran 60 s after {keys!r} (typed: {typed}); it printed "
                    f"{output.decode(errors='replace')!r}")
    os.close(fd)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


@pytest.mark.parametrize(("keys", "code", "says"), [
    (b"\x03", 130, "cancelled"), (b"\x04", 2, "no input")])
def test_ctrl_c_or_eof_at_a_prompt_is_one_line_not_a_traceback(tmp_path, keys, code,
                                                                 says) -> None:
    data = tmp_path / "relay"
    run_cli(data, "init")
    run_cli(data, "company", "add", "Zeta", "--plan", "base", "--seats", "1")
    status, output = _prompted(data, "technician", "add", "amy", "--email", "amy@example.com",
                               "--company", "Zeta", keys=keys)
    assert status == code, output
    assert says in output and "Traceback" not in output, output
    assert not db_rows(data, "SELECT 1 FROM technicians WHERE login = 'amy'")


def test_cli_newcomer_mistakes_get_a_sentence(tmp_path) -> None:
    data = tmp_path / "relay"
    # The option after the command is understood.
    assert run_cli(tmp_path, "init", "--data-dir", str(data)).returncode == 0
    assert (data / "relay.db").exists()
    listed = run_cli(data, "technician", "list").stdout
    assert "no technicians yet" in listed
    assert "no companies yet" in run_cli(data, "company", "list").stdout
    zero = run_cli(data, "company", "add", "Zeta", "--plan", "base", "--seats", "0", check=False)
    assert zero.returncode == 2 and "seats must be a whole number from 1" in zero.stderr
    run_cli(data, "company", "add", "Zeta", "--plan", "base", "--seats", "1")
    run_cli(data, "technician", "add", "zed", "--email", "zed@example.com", "--company", "Zeta",
            "--password-stdin", stdin=PASSWORD + "\n")
    lines = run_cli(data, "technician", "list").stdout.splitlines()
    assert lines[0].split("\t") == ["LOGIN", "EMAIL", "COMPANY", "FLAGS"]
    assert lines[1].startswith("zed\tzed@example.com\tZeta")
    # Without a terminal and without --password-stdin: one line, exit status 2.
    no_tty = run_cli(data, "technician", "add", "amy", "--email", "amy@example.com",
                     "--company", "Zeta", stdin="", check=False)
    assert no_tty.returncode == 2 and "--password-stdin" in no_tty.stderr
    assert no_tty.stderr.count("\n") == 1 and "Traceback" not in no_tty.stderr
    # Weak passwords are refused with the reason, on the CLI and in the API's rule.
    for weak, why in (("password", "too easy to guess"), ("shortone", "too simple"),
                      ("longbutsimple", None)):
        result = run_cli(data, "technician", "add", "amy", "--email", "amy@example.com",
                         "--company", "Zeta", "--password-stdin", stdin=weak + "\n",
                         check=False)
        if why is None:
            assert result.returncode == 0, result.stderr
            run_cli(data, "technician", "disable", "amy")
        else:
            assert result.returncode == 2 and why in result.stderr, (weak, result.stderr)
    # Control and bidi characters are no email address.
    for email in ("a\x1bc@example.com", "ab\u202ec@example.com", "a\u200bb@example.com"):
        result = run_cli(data, "technician", "add", "bea", "--email", email, "--company",
                         "Zeta", "--password-stdin", stdin=PASSWORD + "\n", check=False)
        assert result.returncode == 2 and "control or invisible" in result.stderr
        assert "\x1b" not in result.stderr and "\u202e" not in result.stderr


async def test_the_api_refuses_weak_technician_passwords_and_hostile_emails(relay) -> None:
    async with Api(relay.base_url, "alice") as alice:
        for body, says in (
                ({"login": "weak", "email": "w@example.com", "password": "password"},
                 "too easy to guess"),
                ({"login": "bidi", "email": "x\u202e@example.com", "password": NEW_PASSWORD},
                 "control or invisible")):
            response = await alice.client.post("/api/v1/admin/technicians", json=body)
            assert response.status_code == 422 and says in response.json()["detail"]
        response = await alice.client.post("/api/v1/admin/technicians/bob/reset-password",
                                           json={"password": "qwerty123"})
        assert response.status_code == 422 and "too easy" in response.json()["detail"]
        created = await alice.client.post("/api/v1/sessions", json={
            "customer_email": "cust\x1b]0;x\x07@example.com", "password": "Horse-battery-9"})
        assert created.status_code == 422
        assert "control or invisible" in created.json()["detail"]
