"""The transfer engine against a real asyncssh SFTP server on loopback that serves crafted,
hostile listings and can corrupt what it stores: safe names, no writes through symlinks,
resume, SHA-256 verify, cancel."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
import pytest

from tui.transfers import (
    PART_SUFFIX,
    Copier,
    LocalFiles,
    LocalTarget,
    RemoteFiles,
    UnsafeName,
    UnsafeTarget,
    check_name,
    make_plan,
)

FILE_MODE = stat.S_IFREG | 0o644


@dataclass
class ServerState:
    root: Path
    outside: Path
    corrupt_writes: bool = False
    written: int = 0
    hostile: list[asyncssh.SFTPName] = field(default_factory=list)


class CraftedSFTP(asyncssh.SFTPServer):
    """A real SFTP server chrooted to `root`; /hostile lists what the test crafted."""

    def __init__(self, chan: asyncssh.SSHServerChannel, state: ServerState) -> None:
        super().__init__(chan, chroot=os.fsencode(state.root))
        self.state = state

    async def scandir(self, path: bytes) -> AsyncIterator[asyncssh.SFTPName]:
        if path.rstrip(b"/").endswith(b"hostile"):
            for name in self.state.hostile:
                yield name
            return
        async for name in super().scandir(path):
            yield name

    def write(self, file_obj: object, offset: int, data: bytes) -> int:
        self.state.written += len(data)
        if self.state.corrupt_writes:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        return super().write(file_obj, offset, data)


class NoAuth(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return False


@pytest.fixture
async def server(tmp_path: Path):
    state = ServerState(tmp_path / "host", tmp_path / "outside")
    state.root.mkdir()
    state.outside.mkdir()
    key = asyncssh.generate_private_key("ssh-ed25519")
    listener = await asyncssh.listen(
        "127.0.0.1", 0, server_host_keys=[key], server_factory=NoAuth,
        sftp_factory=lambda chan: CraftedSFTP(chan, state))
    port = listener.sockets[0].getsockname()[1]
    conn = await asyncssh.connect(
        "127.0.0.1", port, username="tech", known_hosts=([key.convert_to_public()], [], []),
        client_keys=None, agent_path=None, config=None)
    sftp = await conn.start_sftp_client(path_errors="surrogateescape")
    yield sftp, state
    sftp.exit()
    conn.close()
    await conn.wait_closed()
    listener.close()
    await listener.wait_closed()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def file_name(name: bytes, size: int = 0, mode: int = FILE_MODE) -> asyncssh.SFTPName:
    return asyncssh.SFTPName(name, attrs=asyncssh.SFTPAttrs(
        type=asyncssh.FILEXFER_TYPE_REGULAR, size=size, permissions=mode, mtime=0))


async def entry(remote: RemoteFiles, folder: str, name: str):
    return next(e for e in await remote.list(folder) if e.name == name)


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "/etc/passwd", "a\\b",
                                  "..\\..\\x", "nul\0byte"])
def test_names_that_could_leave_the_folder_are_refused(name: str) -> None:
    with pytest.raises(UnsafeName):
        check_name(name)


def test_plain_names_pass() -> None:
    for name in ("report.pdf", ".hidden", "..double-dot-prefix", "spaces and ünïcode", "a..b"):
        assert check_name(name) == name


def test_local_target_never_writes_through_a_symlink(tmp_path: Path) -> None:
    target, outside = tmp_path / "target", tmp_path / "outside"
    target.mkdir()
    outside.mkdir()
    (target / "docs").symlink_to(outside)
    (target / "note.txt.adhoc-part").symlink_to(outside / "stolen")
    local = LocalTarget(str(target))
    with pytest.raises(UnsafeTarget):
        local.open_part(("docs", "a.txt"), 10)
    with pytest.raises(UnsafeTarget):
        local.open_part(("note.txt",), 10)
    with pytest.raises(UnsafeName):
        local.open_part(("..", "x"), 10)
    assert local.lexists(("docs", "a.txt"))  # something in the way counts as existing: ask
    assert not local.lexists(("fresh.txt",))
    assert list(outside.iterdir()) == []


async def test_hostile_listing_writes_nothing_outside_the_target(server, tmp_path) -> None:
    sftp, state = server
    (state.root / "hostile").mkdir()
    (state.root / "hostile" / "twin").write_bytes(b"twin data")
    (state.root / "hostile" / "ok.txt").write_bytes(b"fine")
    absolute = state.outside / "abs.txt"
    link = asyncssh.SFTPName(b"twin", attrs=asyncssh.SFTPAttrs(
        type=asyncssh.FILEXFER_TYPE_SYMLINK, permissions=stat.S_IFLNK | 0o777))
    state.hostile = [
        file_name(b"."), file_name(b".."),
        file_name(b"../escape.txt", 4), file_name(os.fsencode(absolute), 4),
        file_name(b"..\\win.txt", 4), file_name(b"sub/inner.txt", 4),
        link, file_name(b"twin", 9),  # a symlink, then a file of the same name
        file_name(b"ok.txt", 4), file_name(b"ok.txt", 4),
        file_name(b"\x1b]52;c;aGk=\x07clip.txt", 4),
    ]
    target = tmp_path / "target"
    target.mkdir()
    remote = RemoteFiles(sftp)
    plan = await make_plan("download", remote, LocalFiles(),
                           [await entry(remote, "/", "hostile")], str(target))
    outcome = await Copier(sftp, plan).run()

    assert tree(tmp_path / "outside") == []
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "win.txt").exists()
    assert (target / "hostile" / "ok.txt").read_bytes() == b"fine"
    # A name listed twice is copied once, as first listed: here a symlink, never copied.
    assert not (target / "hostile" / "twin").exists()
    assert not any(p.is_symlink() for p in target.rglob("*"))
    reasons = " | ".join(outcome.skipped)
    for shown in ("../escape.txt", "..\\win.txt", "sub/inner.txt"):
        assert f"hostile/{shown}: unsafe name" in reasons
    assert "hostile/twin: symbolic link, not followed" in reasons
    assert "hostile/twin: listed twice" in reasons
    assert "hostile/ok.txt: listed twice" in reasons
    # The file with an escape sequence in its name is just a file (shown escaped by the UI).
    assert "hostile/\x1b]52;c;aGk=\x07clip.txt" in outcome.failed[0]  # absent on the server


async def test_download_into_a_symlinked_folder_is_refused(server, tmp_path) -> None:
    sftp, state = server
    (state.root / "docs").mkdir()
    (state.root / "docs" / "a.txt").write_bytes(b"a")
    target = tmp_path / "target"
    target.mkdir()
    (target / "docs").symlink_to(state.outside)
    remote = RemoteFiles(sftp)
    plan = await make_plan("download", remote, LocalFiles(),
                           [await entry(remote, "/", "docs")], str(target))
    assert plan.conflicts == [("docs", "a.txt")]  # asked about before anything is written
    outcome = await Copier(sftp, plan).run()
    assert outcome.copied == []
    assert "symlink" in outcome.failed[0]
    assert tree(state.outside) == []


async def test_roundtrip_replaces_a_symlink_instead_of_writing_through(server, tmp_path) -> None:
    sftp, state = server
    payload = os.urandom(3 * 1024 * 1024 + 17)
    local = tmp_path / "local"
    (local / "folder" / "deep").mkdir(parents=True)
    (local / "folder" / "deep" / "big.bin").write_bytes(payload)
    (local / "folder" / "empty.txt").write_bytes(b"")
    (local / "folder" / "link").symlink_to("/etc/hostname")
    files, remote = LocalFiles(), RemoteFiles(sftp)
    chosen = [e for e in await files.list(str(local)) if e.name == "folder"]
    reports = []
    plan = await make_plan("upload", files, remote, chosen, "/")
    outcome = await Copier(sftp, plan, reports.append).run()
    assert sorted(outcome.copied) == ["folder/deep/big.bin", "folder/empty.txt"]
    assert outcome.skipped == ["folder/link: symbolic link, not followed"]
    assert (state.root / "folder" / "deep" / "big.bin").read_bytes() == payload
    assert not list(state.root.rglob(f"*{PART_SUFFIX}"))
    assert reports[-1].done == reports[-1].total == len(payload)
    assert all(a.done <= b.done for a, b in itertools.pairwise(reports))

    back = tmp_path / "back"
    back.mkdir()
    victim = state.outside / "victim.txt"
    victim.write_bytes(b"keep me")
    (back / "big.bin").symlink_to(victim)
    big = await entry(remote, "/folder/deep", "big.bin")
    plan = await make_plan("download", remote, files, [big], str(back))
    assert plan.conflicts == [("big.bin",)]
    outcome = await Copier(sftp, plan).run()
    assert outcome.copied == ["big.bin"] and outcome.failed == []
    assert not (back / "big.bin").is_symlink()
    assert sha((back / "big.bin").read_bytes()) == sha(payload)
    assert victim.read_bytes() == b"keep me"


async def test_download_resumes_from_a_partial_file(server, tmp_path) -> None:
    sftp, state = server
    payload = os.urandom(2 * 1024 * 1024 + 5)
    (state.root / "data.bin").write_bytes(payload)
    target = tmp_path / "target"
    target.mkdir()
    (target / f"data.bin{PART_SUFFIX}").write_bytes(payload[:1_000_000])
    remote = RemoteFiles(sftp)
    plan = await make_plan("download", remote, LocalFiles(),
                           [await entry(remote, "/", "data.bin")], str(target))
    assert plan.conflicts == []  # a partial file is continued, not an overwrite
    outcome = await Copier(sftp, plan).run()
    assert outcome.resumed == ["data.bin"] and outcome.failed == []
    assert (target / "data.bin").read_bytes() == payload
    assert not (target / f"data.bin{PART_SUFFIX}").exists()


async def test_a_stale_partial_download_fails_verification(server, tmp_path) -> None:
    sftp, state = server
    payload = os.urandom(600_000)
    (state.root / "data.bin").write_bytes(payload)
    target = tmp_path / "target"
    target.mkdir()
    (target / f"data.bin{PART_SUFFIX}").write_bytes(b"\0" * 300_000)  # not the source's bytes
    remote = RemoteFiles(sftp)
    plan = await make_plan("download", remote, LocalFiles(),
                           [await entry(remote, "/", "data.bin")], str(target))
    outcome = await Copier(sftp, plan).run()
    assert outcome.copied == []
    assert "SHA-256 differs" in outcome.failed[0]
    assert tree(target) == []  # no final file, and the bad part is gone


async def test_upload_resumes_and_sends_only_the_rest(server, tmp_path) -> None:
    sftp, state = server
    payload = os.urandom(1_500_000)
    source = tmp_path / "up.bin"
    source.write_bytes(payload)
    (state.root / f"up.bin{PART_SUFFIX}").write_bytes(payload[:1_000_000])
    files = LocalFiles()
    plan = await make_plan("upload", files, RemoteFiles(sftp),
                           [await entry(files, str(tmp_path), "up.bin")], "/")
    outcome = await Copier(sftp, plan).run()
    assert outcome.resumed == ["up.bin"]
    assert state.written == 500_000
    assert (state.root / "up.bin").read_bytes() == payload


async def test_corruption_on_the_host_is_detected(server, tmp_path) -> None:
    sftp, state = server
    state.corrupt_writes = True
    source = tmp_path / "up.bin"
    source.write_bytes(os.urandom(400_000))
    files = LocalFiles()
    plan = await make_plan("upload", files, RemoteFiles(sftp),
                           [await entry(files, str(tmp_path), "up.bin")], "/")
    outcome = await Copier(sftp, plan).run()
    assert outcome.copied == []
    assert "SHA-256 on the host differs" in outcome.failed[0]
    assert tree(state.root) == []


async def test_cancel_keeps_the_part_and_the_next_copy_resumes(server, tmp_path) -> None:
    sftp, state = server
    payload = os.urandom(8 * 1024 * 1024)
    (state.root / "big.bin").write_bytes(payload)
    target = tmp_path / "target"
    target.mkdir()
    remote = RemoteFiles(sftp)
    plan = await make_plan("download", remote, LocalFiles(),
                           [await entry(remote, "/", "big.bin")], str(target))
    task: asyncio.Task | None = None

    def report(progress) -> None:
        if task is not None and 0 < progress.done < progress.total:
            task.cancel()

    task = asyncio.ensure_future(Copier(sftp, plan, report).run())
    with pytest.raises(asyncio.CancelledError):
        await task
    part = target / f"big.bin{PART_SUFFIX}"
    assert 0 < part.stat().st_size < len(payload)
    assert not (target / "big.bin").exists()

    outcome = await Copier(sftp, plan).run()
    assert outcome.resumed == ["big.bin"]
    assert (target / "big.bin").read_bytes() == payload
    assert not part.exists()
