"""Stock OpenSSH tools through the relay behave as they do against OpenSSH's own sshd: exit
statuses (subsystems included), output that does not depend on stdin closing early, `exit`
with a background job, the environment a client may send, SSH_CONNECTION.

Differential: each case runs the same tool with the same arguments against a throwaway sshd
(the reference) and through a real relay to a real agent, and compares what a script sees.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.openssh import RelayPath, run_against
from tests.support import kill_and_reap

pytestmark = pytest.mark.skipif(
    shutil.which("sshd") is None and not os.path.exists("/usr/sbin/sshd"),
    reason="OpenSSH's sshd is the reference: apt-get install openssh-server")


def both(sshd, host: RelayPath, tool: str, *args: str, **kw):
    """(reference result, relayed result) of the same command."""
    return run_against(sshd, tool, *args, **kw), host.run(tool, *args, **kw)


def text(result: subprocess.CompletedProcess) -> str:
    return result.stdout.decode(errors="replace")


async def test_file_transfer_tools_exit_as_with_sshd(sshd, openssh_host, tmp_path: Path) -> None:
    host = openssh_host.path
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(300_000))
    remote = tmp_path / "remote"
    remote.mkdir()
    for flags in ((), ("-O",)):  # scp's default SFTP mode, and the legacy protocol
        mode = "scp" + "".join(flags)
        for side, (run) in (("sshd", lambda *a: run_against(sshd, "scp", *a)),
                            ("relay", lambda *a: host.run("scp", *a))):
            up = await asyncio.to_thread(run, *flags, str(payload), f"h:{remote}/{mode}-{side}")
            assert (up.returncode, up.stderr) == (0, b""), (mode, side, up.stderr)
            down = tmp_path / f"{mode}-{side}-back"
            got = await asyncio.to_thread(run, *flags, f"h:{remote}/{mode}-{side}", str(down))
            assert (got.returncode, got.stderr) == (0, b""), (mode, side, got.stderr)
            assert down.read_bytes() == payload.read_bytes()
        missing = await asyncio.to_thread(
            both, sshd, host, "scp", *flags, f"h:{remote}/missing", str(tmp_path / "x"))
        assert missing[0].returncode == missing[1].returncode == 1, missing

    # sftp -b: a batch that works exits 0, one whose command fails exits 1.
    batch = f"put {payload} {remote}/sftp\nget {remote}/sftp {tmp_path}/sftp-back\n".encode()
    ok = await asyncio.to_thread(both, sshd, host, "sftp", "-o", "BatchMode=no", "-b", "-",
                                 "h", input=batch)
    assert [r.returncode for r in ok] == [0, 0], [r.stderr for r in ok]
    failing = await asyncio.to_thread(both, sshd, host, "sftp", "-o", "BatchMode=no", "-b", "-",
                                      "h", input=f"get {remote}/missing /tmp/x\n".encode())
    assert [r.returncode for r in failing] == [1, 1], [r.stderr for r in failing]

    # rsync runs its own server on the host over `ssh host rsync --server ...`.
    for direction in ("up", "down"):
        results = []
        for run_ssh, side in ((" ".join(["ssh", *sshd.client_args()]), "sshd"),
                              (f"ssh -F {host.config}", "relay")):
            target = sshd.destination if side == "sshd" else "h"
            source, dest = (str(payload), f"{target}:{remote}/rsync-{side}") \
                if direction == "up" else (f"{target}:{remote}/sftp", str(tmp_path / f"r-{side}"))
            results.append(await asyncio.to_thread(
                subprocess.run, ["rsync", "-e", run_ssh, source, dest], capture_output=True,
                env=host.env, timeout=120))
        assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]


async def test_output_and_status_do_not_wait_for_stdin(sshd, openssh_host) -> None:
    host = openssh_host.path
    # stdin at its end before the command even starts (`</dev/null`), with and without a PTY
    for args in (("-tt", "h", "echo quick; exit 6"), ("h", "sleep 0.3; echo late; exit 4"),
                 ("-tt", "h", "sleep 0.3; echo late-tty; exit 5")):
        reference, relayed = await asyncio.to_thread(both, sshd, host, "ssh", *args)
        assert (relayed.returncode, text(relayed)) == (reference.returncode, text(reference))
    assert reference.returncode == 5 and "late-tty" in text(reference)


async def test_exit_with_a_background_job_closes_at_once(sshd, openssh_host) -> None:
    """`exit` ends the connection even while a job the shell left behind keeps printing."""
    host = openssh_host.path
    for side in ("sshd", "relay"):
        args = [*sshd.client_args(), "-tt", sshd.destination] if side == "sshd" else \
            [*host.args(), "-tt", "h"]
        ssh = await asyncio.create_subprocess_exec(
            "ssh", *args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env=host.env)
        assert ssh.stdin is not None and ssh.stdout is not None
        job = None
        try:
            ssh.stdin.write(b"sh -c 'echo job-$$-started; while :; do echo tick; sleep 0.1; "
                            b"done' &\n")
            seen = b""
            while not (started := re.search(rb"job-(\d+)-started", seen)) \
                    or b"tick\r\n" not in seen:
                chunk = await asyncio.wait_for(ssh.stdout.read(4096), 30)
                assert chunk, f"{side}: the shell ended early: {seen!r}"
                seen += chunk
            job = int(started.group(1))
            ssh.stdin.write(b"exit 3\n")  # and stdin stays open: only the exit may end it
            status = await asyncio.wait_for(ssh.wait(), 30)
        finally:
            await kill_and_reap(ssh)
            if side == "sshd" and job is not None:  # sshd leaves the job running
                os.kill(job, 15)
        assert status == 3, side


async def test_sent_environment_as_sshd_accepts_it(sshd, openssh_host) -> None:
    """SendEnv/SetEnv: LANG, LC_*, TERM, COLORTERM, TZ are taken (sshd's common AcceptEnv),
    anything else is ignored; SSH_CONNECTION and SSH_CLIENT look like sshd's."""
    host = openssh_host.path
    sent = {"LANG": "de_DE.UTF-8", "LC_TIME": "en_GB.UTF-8", "TZ": "Europe/Paris",
            "COLORTERM": "truecolor", "ADHOC_OTHER": "nope"}
    show = ("for v in LANG LC_TIME TZ COLORTERM ADHOC_OTHER MINE LC_PAPER; do "
            "printf '%s=%s\\n' \"$v\" \"$(printenv \"$v\" || echo unset)\"; done; "
            "echo \"conn=$SSH_CONNECTION\"; echo \"client=$SSH_CLIENT\"")
    reference, relayed = await asyncio.to_thread(
        both, sshd, host, "ssh", "-o", "SendEnv=LANG LC_* TZ COLORTERM ADHOC_OTHER",
        "-o", "SetEnv=LC_PAPER=en_US.UTF-8 MINE=x", "h", show, env=sent)
    assert reference.returncode == relayed.returncode == 0, relayed.stderr
    lines = {side: dict(line.split("=", 1) for line in text(result).splitlines())
             for side, result in (("sshd", reference), ("relay", relayed))}
    for name in ("LANG", "LC_TIME", "TZ", "COLORTERM", "ADHOC_OTHER", "MINE", "LC_PAPER"):
        assert lines["relay"][name] == lines["sshd"][name], name
    assert lines["relay"]["LANG"] == "de_DE.UTF-8" and lines["relay"]["ADHOC_OTHER"] == "unset"
    client, client_port, server, server_port = lines["relay"]["conn"].split()
    assert re.fullmatch(r"[0-9a-f.:]+", client) and re.fullmatch(r"[0-9a-f.:]+", server)
    assert client_port.isdigit() and server_port == "22"
    assert lines["relay"]["client"] == f"{client} {client_port} {server_port}"


async def test_terminal_type_and_environment_with_a_pty(openssh_host) -> None:
    host = openssh_host.path
    result = await asyncio.to_thread(
        host.run, "ssh", "-tt", "-o", "SetEnv=TZ=UTC COLORTERM=24bit", "h",
        "echo \"$TERM/$TZ/$COLORTERM\"", env={"TERM": "screen-256color"})
    assert result.returncode == 0, result.stderr
    assert text(result).strip() == "screen-256color/UTC/24bit"


async def test_openssh_clients_get_aes_gcm_on_both_legs(openssh_host) -> None:
    """Stock OpenSSH prefers chacha20-poly1305, the slowest cipher in Python: the relay and
    the host offer AES-GCM only, so both the jump and the inner connection use it; a client
    that insists on chacha20 is told there is no matching cipher."""
    host = openssh_host.path
    verbose = await asyncio.to_thread(host.run, "ssh", "-v", "h", "true")
    assert verbose.returncode == 0, verbose.stderr
    chosen = re.findall(rb"kex: server->client cipher: (\S+)", verbose.stderr)
    assert chosen == [b"aes128-gcm@openssh.com"] * 2, chosen  # relay, then host
    insisting = await asyncio.to_thread(host.run, "ssh", "-o",
                                        "Ciphers=chacha20-poly1305@openssh.com", "h", "true")
    assert insisting.returncode == 255
    assert b"no matching cipher found" in insisting.stderr


WRITER = """
import fcntl, os, sys
print(fcntl.fcntl(1, fcntl.F_GETPIPE_SZ), file=sys.stderr, flush=True)
written, chunk = 0, b"x" * 65536
while written < {total}:
    written += os.write(1, chunk[:{total} - written])
    with open({count!r}, "w") as f:
        f.write(str(written))
"""


async def test_bulk_command_output_crosses_wide_pipes_at_the_clients_pace(openssh_host,
                                                                          tmp_path: Path) -> None:
    """`rsync --server --sender`, `scp -O -f`, `tar c`: a command's output pipe is 1 MiB, not
    the system's 64 KiB (the agent read, paused and resumed per 60 KiB: a fifth of its CPU in
    a relayed rsync download), and a client that stops reading still holds the command back
    instead of the agent buffering what it writes."""
    host = openssh_host.path
    total = 48 << 20
    count = tmp_path / "written"
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(total=total, count=str(count)))
    ssh = await asyncio.create_subprocess_exec(
        "ssh", *host.args(), "h", f"python3 {script}", stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=host.env)
    assert ssh.stdout is not None and ssh.stderr is not None
    try:
        pipe_size = await asyncio.wait_for(ssh.stderr.readline(), 30)
        assert pipe_size.strip() == b"1048576"
        # Nobody reads ssh's output: the command must stall, the windows and pipes full.
        seen, still = -1, 0
        for _ in range(300):
            await asyncio.sleep(0.1)
            now = int(count.read_text() or 0) if count.exists() else 0
            still = still + 1 if now == seen else 0
            seen = now
            if still >= 15:
                break
        assert still >= 15 and seen < 16 << 20, f"the command wrote {seen} bytes unread"
        received = 0
        while chunk := await asyncio.wait_for(ssh.stdout.read(1 << 20), 30):
            received += len(chunk)
        assert received == total
        assert await asyncio.wait_for(ssh.wait(), 30) == 0
    finally:
        await kill_and_reap(ssh)


async def test_a_command_left_running_by_a_dropped_client_ends_without_a_word_to_the_customer(
        openssh_host) -> None:
    """The technician's ssh dies while `yes` runs: the host hangs the command up, and the
    customer's terminal shows only that the technician left (it showed asyncio's "Unknown
    child process pid ..., will report returncode 255" too: the transport's close reaped
    the command under asyncio's own wait for it)."""
    host, agent = openssh_host.path, openssh_host.agent
    said = []
    for _ in range(3):
        ssh = await asyncio.create_subprocess_exec(
            "ssh", *host.args(), "h", "yes", stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=host.env)
        await agent.wait_for_line("runs: yes")
        await asyncio.wait_for(ssh.stdout.readexactly(65536), 30)  # `yes` is printing
        await kill_and_reap(ssh)
        await agent.wait_for_line("disconnected")
        said += agent.output  # later rounds look only at what comes after
        agent.output.clear()
    await asyncio.sleep(1)  # what the hang-up's reaping prints would come by now
    marked = await asyncio.to_thread(host.run, "ssh", "h", "echo after-the-drops")
    assert marked.returncode == 0, marked.stderr
    await agent.wait_for_line("runs: echo after-the-drops")
    shown = "".join(said + agent.output)
    assert "Unknown child" not in shown and "WARNING" not in shown, shown
