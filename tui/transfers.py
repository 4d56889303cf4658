"""The file manager's engine: listings, safe local paths, resumable copies and SHA-256 verify.

No Textual here: the file manager screen calls these classes, and tests drive them against a
real SFTP server. A hostile host controls every name and attribute it lists, so names are
checked before they touch the local disk, local writes go through directory descriptors opened
with O_NOFOLLOW (never through a symlink, never outside the target folder), symlinks are never
copied, and a download lands as `<name>.adhoc-part` that is renamed over the final name only
after its SHA-256 matches the source's.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import posixpath
import pwd
import shutil
import stat
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import asyncssh

PART_SUFFIX = ".adhoc-part"
# Blocks and requests in flight, as asyncssh's own get/put choose them (large blocks, many
# parallel requests), capped so one transfer holds at most BLOCK_CAP * MAX_DEPTH in memory.
BLOCK_CAP = 1024 * 1024
MIN_DEPTH = 16
MAX_DEPTH = 64
# Bounds on what one copy or delete walks, so a hostile or huge tree cannot run forever.
MAX_NESTING = 64
MAX_ENTRIES = 200_000
HASH_CHUNK = 1024 * 1024
PROGRESS_INTERVAL = 0.1

DIR, FILE, LINK, OTHER = "dir", "file", "link", "other"


class TransferError(Exception):
    """Something the technician must hear about, as one sentence."""


class UnsafeName(TransferError):
    """A name that could leave its folder (.., /, \\, NUL, empty): never used as a path."""


class UnsafeTarget(TransferError):
    """A local path component is a symlink or a file where a folder is needed."""


def check_name(name: str) -> str:
    """`name` if it is one plain path component; UnsafeName otherwise."""
    if name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise UnsafeName(f"unsafe name {name!r}: it could point outside the folder")
    return name


def is_hidden(name: str) -> bool:
    return name.startswith(".")


@dataclass(frozen=True, slots=True)
class Entry:
    """One listed file. `name` and `owner` may come from the host: sanitise before display."""

    name: str
    path: str
    kind: str  # DIR, FILE, LINK or OTHER (as listed, never following a link)
    size: int = 0
    mode: int = 0
    owner: str = ""
    mtime: float = 0.0

    @property
    def hidden(self) -> bool:
        return is_hidden(self.name)


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return DIR
    if stat.S_ISREG(mode):
        return FILE
    if stat.S_ISLNK(mode):
        return LINK
    return OTHER


# --- the two file systems the panes show ----------------------------------------------------


class LocalFiles:
    """The technician's own disk. Blocking calls run in a thread."""

    label = "local"
    join = staticmethod(os.path.join)
    parent = staticmethod(os.path.dirname)

    def __init__(self) -> None:
        self._owners: dict[int, str] = {}

    def _owner(self, uid: int) -> str:
        if uid not in self._owners:
            try:
                self._owners[uid] = pwd.getpwuid(uid).pw_name
            except KeyError:
                self._owners[uid] = str(uid)
        return self._owners[uid]

    def _list(self, path: str) -> list[Entry]:
        entries = []
        with os.scandir(path) as it:
            for n, item in enumerate(it):
                if n >= MAX_ENTRIES:
                    break
                try:
                    st = item.stat(follow_symlinks=False)
                except OSError:
                    continue
                entries.append(Entry(item.name, item.path, _kind(st.st_mode), st.st_size,
                                     st.st_mode, self._owner(st.st_uid), st.st_mtime))
        return entries

    async def home(self) -> str:
        return os.getcwd()

    async def resolve(self, path: str) -> str:
        return await asyncio.to_thread(lambda: os.path.realpath(os.path.expanduser(path)))

    async def list(self, path: str) -> list[Entry]:
        return await asyncio.to_thread(self._list, path)

    async def is_dir(self, path: str) -> bool:
        return await asyncio.to_thread(os.path.isdir, path)

    async def exists(self, path: str) -> bool:
        return await asyncio.to_thread(os.path.lexists, path)

    async def mkdir(self, path: str) -> None:
        await asyncio.to_thread(os.mkdir, path)

    async def rename(self, old: str, new: str) -> None:
        if await self.exists(new):
            raise TransferError(f"{os.path.basename(new)} already exists")
        await asyncio.to_thread(os.rename, old, new)

    async def delete(self, entry: Entry) -> None:
        def remove() -> None:
            if entry.kind == DIR:
                shutil.rmtree(entry.path)  # removes links inside, never follows them
            else:
                os.unlink(entry.path)

        await asyncio.to_thread(remove)


def _owner_from_longname(longname: str | None) -> str:
    fields = (longname or "").split(None, 3)
    return fields[2] if len(fields) >= 3 else ""


class RemoteFiles:
    """The host's disk over SFTP. Everything it returns is the host's word, not a fact."""

    label = "remote"
    join = staticmethod(posixpath.join)
    parent = staticmethod(posixpath.dirname)

    def __init__(self, sftp: asyncssh.SFTPClient) -> None:
        self.sftp = sftp

    async def home(self) -> str:
        return await self.sftp.realpath(".")

    async def resolve(self, path: str) -> str:
        return await self.sftp.realpath(path)

    async def list(self, path: str) -> list[Entry]:
        entries = []
        async for name in self.sftp.scandir(path):
            if len(entries) >= MAX_ENTRIES:
                break
            filename = str(name.filename)
            if filename in (".", ".."):
                continue
            attrs = name.attrs
            mode = attrs.permissions or 0
            owner = attrs.owner or _owner_from_longname(name.longname) or (
                str(attrs.uid) if attrs.uid is not None else "")
            entries.append(Entry(filename, posixpath.join(path, filename), _kind(mode),
                                 attrs.size or 0, mode, owner, float(attrs.mtime or 0)))
        return entries

    async def is_dir(self, path: str) -> bool:
        return await self.sftp.isdir(path)

    async def exists(self, path: str) -> bool:
        return await self.sftp.lexists(path)

    async def mkdir(self, path: str) -> None:
        await self.sftp.mkdir(path)

    async def rename(self, old: str, new: str) -> None:
        # Some servers (asyncssh's among them) replace silently: refuse first.
        if await self.exists(new):
            raise TransferError(f"{posixpath.basename(new)} already exists")
        await self.sftp.rename(old, new)

    async def delete(self, entry: Entry) -> None:
        """Remove a file, link or whole folder; links are removed, never followed."""
        if entry.kind != DIR:
            await self.sftp.remove(entry.path)
            return
        folders: list[str] = []
        stack = [(entry.path, 0)]
        seen = 0
        while stack:
            path, depth = stack.pop()
            if depth > MAX_NESTING:
                raise TransferError(f"{path} is nested too deeply to delete from here")
            folders.append(path)
            for child in await self.list(path):
                seen += 1
                if seen > MAX_ENTRIES:
                    raise TransferError("the folder holds too many files to delete from here")
                if not _plain_child(child):
                    raise TransferError(f"the host listed an unsafe name in {path}; "
                                        "nothing more was deleted")
                if child.kind == DIR:
                    stack.append((child.path, depth + 1))
                else:
                    await self.sftp.remove(child.path)
        for path in reversed(folders):
            await self.sftp.rmdir(path)


def _plain_child(entry: Entry) -> bool:
    try:
        check_name(entry.name)
    except UnsafeName:
        return False
    return True


# --- where downloads land ----------------------------------------------------------------


class LocalTarget:
    """Writes under one local folder, component by component through O_NOFOLLOW descriptors.

    The folder itself is the technician's choice; below it nothing is created or written
    through a symlink, and every component is checked with `check_name`.
    """

    def __init__(self, root: str) -> None:
        self.root = root

    def open_dir(self, parts: tuple[str, ...], *, create: bool) -> int:
        """A descriptor of root/parts; FileNotFoundError when missing and not `create`."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for part in parts:
                check_name(part)
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o777, dir_fd=fd)
                try:
                    child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                                    dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                        raise UnsafeTarget(
                            f"{'/'.join(parts)}: {part} is a symlink or a file here, "
                            "not written through") from None
                    raise
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def lexists(self, rel: tuple[str, ...]) -> bool:
        *folders, name = rel
        check_name(name)
        try:
            fd = self.open_dir(tuple(folders), create=False)
        except FileNotFoundError:
            return False
        except UnsafeTarget:
            return True  # something is in the way: ask, and refuse when writing
        try:
            os.stat(name, dir_fd=fd, follow_symlinks=False)
            return True
        except FileNotFoundError:
            return False
        finally:
            os.close(fd)

    def open_part(self, rel: tuple[str, ...], size: int) -> tuple[int, int, int]:
        """(folder fd, part fd, resume offset) for writing rel's `.adhoc-part`.

        An existing part no longer than the source is continued from its size; a longer one
        is started again. A symlink or anything but a regular file there is refused.
        """
        *folders, name = rel
        check_name(name)
        dir_fd = self.open_dir(tuple(folders), create=True)
        try:
            fd = os.open(name + PART_SUFFIX, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW,
                         0o666, dir_fd=dir_fd)
        except OSError as exc:
            os.close(dir_fd)
            if exc.errno == errno.ELOOP:
                raise UnsafeTarget(f"{name}{PART_SUFFIX} is a symlink, not written through"
                                   ) from None
            raise
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            os.close(dir_fd)
            raise UnsafeTarget(f"{name}{PART_SUFFIX} is not a regular file")
        start = st.st_size
        if start > size:
            os.ftruncate(fd, 0)
            start = 0
        return dir_fd, fd, start

    @staticmethod
    def commit(dir_fd: int, name: str) -> None:
        # rename() replaces a symlink at `name` itself; it never writes through it.
        os.replace(name + PART_SUFFIX, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)

    @staticmethod
    def discard(dir_fd: int, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name + PART_SUFFIX, dir_fd=dir_fd)


def fd_sha256(fd: int) -> str:
    digest = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, HASH_CHUNK, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


# --- planning a copy -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileJob:
    source: str
    rel: tuple[str, ...]
    size: int


@dataclass
class Plan:
    """What one copy will do: folders to make, files to copy, what it skips and overwrites."""

    direction: str  # "upload" or "download"
    target: str
    folders: list[tuple[str, ...]] = field(default_factory=list)
    files: list[FileJob] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    conflicts: list[tuple[str, ...]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(job.size for job in self.files)


async def make_plan(direction: str, source: LocalFiles | RemoteFiles,
                    destination: LocalFiles | RemoteFiles, chosen: list[Entry],
                    target: str) -> Plan:
    """Walk the chosen entries (folders recursively, links never followed) into a Plan."""
    plan = Plan(direction, target)
    stack: list[tuple[Entry, tuple[str, ...]]] = [(e, ()) for e in reversed(chosen)]
    walked = 0
    top_seen: set[str] = set()
    while stack:
        walked += 1
        if walked > MAX_ENTRIES:
            raise TransferError(f"more than {MAX_ENTRIES} entries: copy smaller folders")
        entry, parent = stack.pop()
        shown = "/".join((*parent, entry.name))
        try:
            check_name(entry.name)
        except UnsafeName:
            plan.skipped.append(f"{shown}: unsafe name")
            continue
        if not parent:
            if entry.name in top_seen:
                plan.skipped.append(f"{shown}: listed twice")
                continue
            top_seen.add(entry.name)
        rel = (*parent, entry.name)
        if entry.kind == DIR:
            if len(rel) > MAX_NESTING:
                plan.skipped.append(f"{shown}: nested too deeply")
                continue
            plan.folders.append(rel)
            seen: set[str] = set()
            children = []
            for child in await source.list(entry.path):
                if child.name in seen:
                    plan.skipped.append(f"{shown}/{child.name}: listed twice")
                    continue
                seen.add(child.name)
                children.append((child, rel))
            stack.extend(reversed(children))
        elif entry.kind == FILE:
            plan.files.append(FileJob(entry.path, rel, entry.size))
        elif entry.kind == LINK:
            plan.skipped.append(f"{shown}: symbolic link, not followed")
        else:
            plan.skipped.append(f"{shown}: not a regular file")
    if isinstance(destination, LocalFiles):
        local = LocalTarget(target)
        for job in plan.files:
            if await asyncio.to_thread(local.lexists, job.rel):
                plan.conflicts.append(job.rel)
    else:
        for job in plan.files:
            if await destination.exists(posixpath.join(target, *job.rel)):
                plan.conflicts.append(job.rel)
    return plan


# --- progress ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Progress:
    name: str
    phase: str  # "copying" or "verifying"
    done: int
    total: int
    speed: float  # bytes per second over the whole copy so far
    eta: float | None  # seconds, None until the speed is known


@dataclass
class Outcome:
    copied: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    moved: int = 0  # bytes that crossed the link


class _Meter:
    def __init__(self, total: int, report: Callable[[Progress], None],
                 clock: Callable[[], float]) -> None:
        self.total = total
        self.done = 0
        self.moved = 0
        self.report = report
        self.clock = clock
        self.started = clock()
        self.last = float("-inf")
        self.name = ""
        self.phase = "copying"

    def add(self, done: int, moved: int, force: bool = False) -> None:
        self.done += done
        self.moved += moved
        now = self.clock()
        if force or now - self.last >= PROGRESS_INTERVAL:
            self.last = now
            elapsed = now - self.started
            speed = self.moved / elapsed if elapsed > 0 else 0.0
            eta = (self.total - self.done) / speed if speed > 0 else None
            self.report(Progress(self.name, self.phase, self.done, self.total, speed, eta))


# --- copying -------------------------------------------------------------------------------


async def _pipelined(read: Callable[[int, int], Awaitable[bytes]], start: int, end: int,
                     block: int, depth: int, consume: Callable[[int, bytes], None]) -> int:
    """Read [start, end) with `depth` requests in flight, handing blocks over in order."""
    pending: deque[tuple[int, int, asyncio.Future[bytes]]] = deque()
    offset = start
    try:
        while pending or offset < end:
            while offset < end and len(pending) < depth:
                size = min(block, end - offset)
                pending.append((offset, size, asyncio.ensure_future(read(size, offset))))
                offset += size
            at, size, request = pending.popleft()
            data = await request
            while len(data) < size:  # a short read: each round adds bytes or stops
                more = await read(size - len(data), at + len(data))
                if not more:
                    raise TransferError("the file got shorter while it was being copied")
                data += more
            consume(at, data)
    finally:
        for _, _, request in pending:
            request.cancel()
        if pending:
            await asyncio.gather(*(r for _, _, r in pending), return_exceptions=True)
    return end - start


class Copier:
    """Runs a Plan: resumable, verified, cancellable (parts stay for the next run)."""

    def __init__(self, sftp: asyncssh.SFTPClient, plan: Plan,
                 report: Callable[[Progress], None] = lambda p: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sftp = sftp
        self.plan = plan
        limits = sftp.limits
        self.block = max(16 * 1024, min(limits.max_read_len or BLOCK_CAP,
                                        limits.max_write_len or BLOCK_CAP, BLOCK_CAP))
        self.depth = max(MIN_DEPTH, min(4 * 1024 * 1024 // self.block, MAX_DEPTH))
        self.meter = _Meter(plan.total, report, clock)

    async def run(self) -> Outcome:
        outcome = Outcome(skipped=list(self.plan.skipped))
        download = self.plan.direction == "download"
        for rel in self.plan.folders:
            try:
                if download:
                    fd = await asyncio.to_thread(LocalTarget(self.plan.target).open_dir, rel,
                                                 create=True)
                    os.close(fd)
                else:
                    await self._remote_mkdir(posixpath.join(self.plan.target, *rel))
            except (OSError, asyncssh.SFTPError, TransferError) as exc:
                outcome.failed.append(f"{'/'.join(rel)}: {_reason(exc)}")
        for job in self.plan.files:
            shown = "/".join(job.rel)
            self.meter.name = shown
            self.meter.phase = "copying"
            before = self.meter.done
            try:
                resumed = await (self._download(job) if download else self._upload(job))
            except (OSError, asyncssh.SFTPError, TransferError) as exc:
                outcome.failed.append(f"{shown}: {_reason(exc)}")
                self.meter.add(job.size - (self.meter.done - before), 0)
                continue
            outcome.copied.append(shown)
            if resumed:
                outcome.resumed.append(shown)
        self.meter.add(0, 0, force=True)
        outcome.moved = self.meter.moved
        return outcome

    async def _remote_mkdir(self, path: str) -> None:
        try:
            await self.sftp.mkdir(path)
        except asyncssh.SFTPError:
            if not await self.sftp.isdir(path):
                raise

    async def _download(self, job: FileJob) -> int:
        """Copy one remote file to the local target; the resume offset it continued from."""
        target = LocalTarget(self.plan.target)
        dir_fd, fd, start = await asyncio.to_thread(target.open_part, job.rel, job.size)
        name = job.rel[-1]
        source_digest = hashlib.sha256()
        try:
            async with self.sftp.open(job.source, "rb", block_size=self.block) as remote:
                size = (await remote.stat()).size or 0
                if size < start:
                    os.ftruncate(fd, 0)
                    start = 0

                def consume(at: int, data: bytes) -> None:
                    # The source's digest covers every byte, the part's prefix included.
                    source_digest.update(data)
                    if at + len(data) > start:
                        skip = max(0, start - at)
                        os.pwrite(fd, data[skip:] if skip else data, at + skip)
                    self.meter.add(len(data), len(data))

                await _pipelined(remote.read, 0, size, self.block, self.depth, consume)
                if await remote.read(1, size):
                    raise TransferError("the file grew while it was being copied; copy again")
            os.ftruncate(fd, size)
            self.meter.phase = "verifying"
            self.meter.add(0, 0, force=True)
            local_digest = await asyncio.to_thread(fd_sha256, fd)
            if local_digest != source_digest.hexdigest():
                os.close(fd)
                fd = -1
                await asyncio.to_thread(LocalTarget.discard, dir_fd, name)
                raise TransferError("SHA-256 differs from the source; the copy was removed, "
                                    "copy again")
            os.close(fd)
            fd = -1
            await asyncio.to_thread(LocalTarget.commit, dir_fd, name)
        finally:
            if fd >= 0:
                os.close(fd)
            os.close(dir_fd)
        return start

    async def _upload(self, job: FileJob) -> int:
        """Copy one local file to the remote target; the resume offset it continued from."""
        final = posixpath.join(self.plan.target, *job.rel)
        part = final + PART_SUFFIX
        start = 0
        try:
            attrs = await self.sftp.lstat(part)
            if attrs.type == asyncssh.FILEXFER_TYPE_REGULAR and (attrs.size or 0) <= job.size:
                start = attrs.size or 0
            else:
                await self.sftp.remove(part)
        except asyncssh.SFTPNoSuchFile:
            pass
        fd = await asyncio.to_thread(os.open, job.source, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            size = os.fstat(fd).st_size
            source_digest = hashlib.sha256()
            mode = "r+b" if start else "wb"
            async with self.sftp.open(part, mode, block_size=self.block) as remote:
                writes: deque[asyncio.Future[int]] = deque()
                try:
                    offset = 0
                    while offset < size:
                        data = await asyncio.to_thread(os.pread, fd, self.block, offset)
                        if not data:
                            raise TransferError("the file got shorter while it was being "
                                                "copied")
                        source_digest.update(data)
                        if offset + len(data) > start:
                            skip = max(0, start - offset)
                            writes.append(asyncio.ensure_future(
                                remote.write(data[skip:], offset + skip)))
                            moved = len(data) - skip
                        else:
                            moved = 0
                        offset += len(data)
                        while len(writes) >= self.depth or (writes and writes[0].done()):
                            await writes.popleft()
                        self.meter.add(len(data), moved)
                    while writes:
                        await writes.popleft()
                finally:
                    for write in writes:
                        write.cancel()
                    if writes:
                        await asyncio.gather(*writes, return_exceptions=True)
                if start > size:
                    await remote.truncate(size)
            self.meter.phase = "verifying"
            self.meter.add(0, 0, force=True)
            remote_digest = hashlib.sha256()
            async with self.sftp.open(part, "rb", block_size=self.block) as check:
                written = (await check.stat()).size or 0
                await _pipelined(check.read, 0, written, self.block, self.depth,
                                 lambda _at, data: remote_digest.update(data))
            if remote_digest.hexdigest() != source_digest.hexdigest():
                with contextlib.suppress(asyncssh.SFTPError):
                    await self.sftp.remove(part)
                raise TransferError("SHA-256 on the host differs from the source; the copy "
                                    "was removed, copy again")
            await self._remote_replace(part, final)
        finally:
            os.close(fd)
        return start

    async def _remote_replace(self, part: str, final: str) -> None:
        try:
            await self.sftp.posix_rename(part, final)
        except asyncssh.SFTPOpUnsupported:
            with contextlib.suppress(asyncssh.SFTPNoSuchFile):
                await self.sftp.remove(final)
            await self.sftp.rename(part, final)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncssh.SFTPError):
        return str(exc.reason) or "the host refused"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)
