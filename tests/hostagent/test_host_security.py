"""The host's side of the penetration test (issue 12): what a technician -- or someone holding a
technician's relay access -- does inside the tunnel is seen whole, audited, throttled and ended
with the session. A real relay, a real `adhoc-host` process and plain asyncssh clients."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import stat
import subprocess
from pathlib import Path

import asyncssh
import psutil
import pytest

from tests.hostagent.helpers import inner_connection, pid_alive, read_until
from tests.hostagent.test_features import audit_events
from tests.hostagent.test_shells import open_shell
from tests.support import Api, start_session
from tui.transfers import PART_SUFFIX, Copier, LocalFiles, RemoteFiles, make_plan


def has(details: list[dict], **fields) -> bool:
    """Whether some audit detail carries all of `fields` (it may carry more)."""
    return any(all(d.get(k) == v for k, v in fields.items()) for d in details)


def vm_peak_rss(pid: int) -> int:
    """The most memory (resident, bytes) a process has held so far (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


async def test_padded_command_is_shown_whole_and_audited(start_relay, agents,
                                                         tmp_path: Path) -> None:
    relay = start_relay()
    hidden = "true" + " " * 600 + "; echo pay''load-$((6*7))"
    long_tail = "echo " + "x" * 1500 + " tail-end"
    async with Api(relay.base_url) as api:
        view, agent = await start_session(api, agents, tmp_path)
        async with inner_connection(relay, api, view) as inner:
            result = await inner.run(hidden, check=True)
            assert result.stdout.strip() == "payload-42"
            line = await agent.wait_for_line("runs: true")
            assert "runs: true ; echo pay''load-$((6*7))." in line

            # The same through a terminal (`ssh -t host cmd`).
            tty = await inner.create_process(hidden, term_type="xterm", encoding=None)
            await read_until(tty.stdout, b"payload-42")
            await tty.wait_closed()
            line = await agent.wait_for_line("runs in a terminal: true")
            assert "runs in a terminal: true ; echo pay''load-$((6*7))." in line

            # Too long to show: the cut is marked with what is missing.
            await inner.run(long_tail, check=True)
            line = await agent.wait_for_line("runs: echo xxx")
            assert re.search(r"runs: echo x{995}… \[\+\d+ chars\]\.$", line.rstrip()), line

            # Too long for the system itself: an error for the technician, and the connection
            # goes on.
            huge = "echo " + "y" * 200_000
            refused = await inner.run(huge)
            assert refused.exit_status == 126
            assert "cannot run the command: Argument list too long" in refused.stderr
            assert (await inner.run("echo still-$((2*3))", check=True)).stdout == "still-6\n"
        rows = await audit_events(api, view["id"], {"command", "shell_opened"})
    commands = [r["detail"]["agent"] for r in rows if r["event"] == "command"]
    assert commands[0]["command"] == hidden
    assert commands[0]["command_chars"] == len(hidden)
    assert commands[0]["command_sha256"] == hashlib.sha256(hidden.encode()).hexdigest()
    assert commands[1]["command"] == long_tail
    assert commands[2]["command_cut"] is True
    assert commands[2]["command_chars"] == len(huge)
    assert commands[2]["command"] == huge[:8192]
    opened = next(r["detail"]["agent"] for r in rows if r["event"] == "shell_opened")
    assert opened["command"] == hidden


async def test_attribute_changes_and_links_are_shown_and_audited(start_relay, agents,
                                                                 tmp_path: Path) -> None:
    relay = start_relay()
    target = tmp_path / "on-host"
    target.mkdir()
    tool = target / "tool"
    tool.write_bytes(b"#!/bin/sh\necho hi\n" * 100)
    async with Api(relay.base_url) as api:
        view, agent = await start_session(api, agents, tmp_path)
        async with inner_connection(relay, api, view) as inner:
            async with inner.start_sftp_client() as sftp:
                await sftp.chmod(str(tool), 0o4755)
                await sftp.truncate(str(tool), 10)
                await sftp.utime(str(tool), (1_000_000, 1_000_000))
                await sftp.chown(str(tool), os.getuid(), os.getgid())
                await sftp.symlink("/etc/shadow", str(target / "soft"))
                await sftp.link(str(tool), str(target / "hard"))
                await sftp.utime(str(target / "soft"), (2_000_000, 2_000_000),
                                 follow_symlinks=False)
                async with sftp.open(str(tool), "r+b") as handle:
                    await handle.chmod(0o2755)  # fsetstat
            # SFTP version 6 opens files another way (open56): audited just the same.
            async with inner.start_sftp_client(sftp_version=6) as sftp6:
                async with sftp6.open(str(target / "v6.txt"), "wb") as handle:
                    await handle.write(b"written over SFTP v6")
        for text in (f"changed {tool}: set its permissions to 4755 (setuid",
                     f"changed {tool}: truncated it to 10 bytes",
                     f"changed {tool}: set its times",
                     f"changed {tool}: set its owner to {os.getuid()}:{os.getgid()}",
                     f"made a symbolic link {target / 'soft'} pointing to /etc/shadow",
                     f"made a hard link {target / 'hard'} to {tool}",
                     f"changed {target / 'soft'}: set its times",
                     f"changed {tool}: set its permissions to 2755 (setgid)",
                     f"wrote {target / 'v6.txt'}"):
            await agent.wait_for_line(text)
        rows = await audit_events(api, view["id"], {
            "file_attributes_changed", "symlink_created", "hardlink_created", "file_written"},
            until=lambda rows: any(r["event"] == "file_written" and r["detail"]["agent"]["path"]
                                   == str(target / "v6.txt") for r in rows))
    changes = [r["detail"]["agent"] for r in rows if r["event"] == "file_attributes_changed"]
    assert has(changes, path=str(tool), follow_links=True, permissions="4755", setuid=True)
    assert has(changes, path=str(tool), follow_links=True, size=10)
    assert has(changes, path=str(tool), mtime=1_000_000)
    assert has(changes, path=str(target / "soft"), follow_links=False, mtime=2_000_000)
    assert has(changes, path=str(tool), permissions="2755", setgid=True)
    links = [r["detail"]["agent"] for r in rows if r["event"] == "symlink_created"]
    assert has(links, path=str(target / "soft"), target="/etc/shadow")
    hard = [r["detail"]["agent"] for r in rows if r["event"] == "hardlink_created"]
    assert has(hard, path=str(target / "hard"), target=str(tool))
    v6 = next(r["detail"]["agent"] for r in rows if r["event"] == "file_written"
              and r["detail"]["agent"]["path"] == str(target / "v6.txt"))
    assert v6["sha256"] == hashlib.sha256(b"written over SFTP v6").hexdigest()


async def test_console_upload_is_one_line_for_the_customer(start_relay, agents,
                                                           tmp_path: Path) -> None:
    """The console writes a part file, reads it back and renames it: the customer reads
    "alice wrote <name>" once, and no temporary name or verification step."""
    relay = start_relay()
    local = tmp_path / "local"
    local.mkdir()
    (local / "report.pdf").write_bytes(os.urandom(200_000))
    remote_dir = tmp_path / "on-host"
    remote_dir.mkdir()
    async with Api(relay.base_url) as api:
        view, agent = await start_session(api, agents, tmp_path)
        async with inner_connection(relay, api, view) as inner:
            async with inner.start_sftp_client() as sftp:
                files, remote = LocalFiles(), RemoteFiles(sftp)
                chosen = [e for e in await files.list(str(local)) if e.name == "report.pdf"]
                plan = await make_plan("upload", files, remote, chosen, str(remote_dir))
                outcome = await Copier(sftp, plan).run()
                assert outcome.copied == ["report.pdf"]
                # And a download of it, for the other direction's wording.
                back = tmp_path / "back"
                back.mkdir()
                entry = [e for e in await remote.list(str(remote_dir))
                         if e.name == "report.pdf"]
                plan = await make_plan("download", remote, files, entry, str(back))
                assert (await Copier(sftp, plan).run()).copied == ["report.pdf"]
        await agent.wait_for_line(f"alice copied {remote_dir / 'report.pdf'} to their computer")
        await agent.wait_for_line("Technician alice disconnected")
    said = "".join(agent.output)
    assert said.count(f"Technician alice wrote {remote_dir / 'report.pdf'}.") == 1
    assert PART_SUFFIX not in said
    assert "alice read " not in said and "renamed" not in said


async def test_parallel_password_guessing_is_serialised_and_locked(
        start_relay, agents, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADHOC_HOST_LOGIN_PAUSE", "0.02")
    relay = start_relay()
    async with Api(relay.base_url) as api:
        view, agent = await start_session(api, agents, tmp_path)
        assert agent.proc is not None
        before = vm_peak_rss(agent.proc.pid)

        async def guess(n: int) -> BaseException | None:
            try:
                async with inner_connection(relay, api, view, password=f"guess-{n:02d}-Xy!"):
                    return None
            except (asyncssh.Error, OSError) as exc:
                return exc

        outcomes = await asyncio.gather(*(guess(n) for n in range(20)))
        assert all(isinstance(o, asyncssh.PermissionDenied) for o in outcomes), outcomes
        # Each argon2 check holds ~64 MiB: one at a time, not one per connection.
        assert vm_peak_rss(agent.proc.pid) - before < 150 * 1024 * 1024
        # The technician's client is told why, and so is the customer.
        told = [str(o) for o in outcomes if "stopped accepting the session password" in str(o)]
        assert told, outcomes
        assert "press u in the Adhoc window" in told[0]
        await agent.wait_for_line("Logins stopped after 10 wrong session passwords")
        # Locked: even the right password is turned away now, unchecked.
        with pytest.raises(asyncssh.PermissionDenied, match="stopped accepting"):
            async with inner_connection(relay, api, view):
                pass
        rows = await audit_events(api, view["id"], {"logins_locked"})
    wrong = [r for r in rows if r["event"] == "session_password"]
    assert len(wrong) == 10  # exactly ten were checked; the rest never reached argon2
    assert sorted(r["detail"]["agent"]["failures"] for r in wrong) == list(range(1, 11))
    said = "".join(agent.output)
    assert said.count("A wrong session password was typed") == 10
    assert said.count("Logins stopped after") == 1


def _sleepers(marks: list[str]) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {mark: [] for mark in marks}
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if len(cmdline) == 2 and cmdline[0].endswith("sleep") and cmdline[1] in found:
            if pid_alive(proc.pid):
                found[cmdline[1]].append(proc.pid)
    return found


async def test_processes_the_technician_started_die_with_the_session(start_relay, agents,
                                                                     tmp_path: Path) -> None:
    relay = start_relay()
    # Marks no other test's sleep carries, even one running beside this (another worker's pid).
    marks = [f"100{i}.{os.getpid()}" for i in range(7)]
    async with Api(relay.base_url) as api:
        view, agent = await start_session(api, agents, tmp_path)
        async with inner_connection(relay, api, view) as inner:
            shell = await open_shell(inner, "jobs")
            shell.stdin.write(f"nohup sleep {marks[0]} >/dev/null 2>&1 & setsid sleep "
                              f"{marks[1]} & echo started-$((1+1))\r".encode())
            await read_until(shell.stdout, b"started-2")
            # A command that leaves programs behind holding its output: the channel still
            # closes when the command is done.
            done = await asyncio.wait_for(inner.run(
                f"nohup sleep {marks[2]} & setsid sleep {marks[3]} & "
                f"(sleep {marks[4]} &) ; echo left-$((2+2))"), 30)
            assert "left-4" in done.stdout
            # The same through a terminal whose shell exits at once.
            tty = await inner.create_process(f"setsid sleep {marks[5]} & sleep {marks[6]} & "
                                             "echo tty-$((3+3))", term_type="xterm",
                                             encoding=None)
            await read_until(tty.stdout, b"tty-6")
            await asyncio.wait_for(tty.wait_closed(), 30)
        running = _sleepers(marks)
        assert all(running[mark] for mark in marks[:4]), running
        ended = await api.client.post(f"/api/v1/sessions/{view['id']}/end")
        assert ended.status_code == 200
        assert await asyncio.to_thread(agent.wait_exit, 30) == 0
    assert any("Goodbye" in line for line in agent.output)
    assert _sleepers(marks) == {mark: [] for mark in marks}


async def test_host_key_is_private_and_its_fingerprint_is_shown(start_relay, agents,
                                                                tmp_path: Path) -> None:
    relay = start_relay()
    async with Api(relay.base_url) as api:
        view, agent = await start_session(api, agents, tmp_path)
        line = await agent.wait_for_line("This computer's key is SHA256:")
        keys = list(agent.workdir.glob("adhoc-host-*/host_key"))
        assert len(keys) == 1
        assert stat.S_IMODE(keys[0].stat().st_mode) == 0o600
    # The fingerprint the customer reads out is the one OpenSSH prints for the key the relay
    # reports to the technician.
    printed = subprocess.run(["ssh-keygen", "-lf", "-"], input=view["host_key"] + "\n",
                             capture_output=True, text=True, check=True).stdout.split()[1]
    assert f"This computer's key is {printed}:" in line
