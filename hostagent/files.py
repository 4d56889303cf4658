"""SFTP for the technician's file manager, granted by the plan's "files" and audited.

Every completed transfer is reported with its path, size and SHA-256. SFTP clients read and
write at many offsets in parallel, so the digest is taken from the file on disk when the
technician's handle closes (what the technician left there, or what they took away), in a
thread so the event loop stays free.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable

import asyncssh

from hostagent.state import AgentState

HASH_CHUNK = 1024 * 1024


def file_digest(path: bytes) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _text(path: bytes) -> str:
    return os.fsdecode(path)


class _Handle:
    __slots__ = ("bytes", "path", "writing")

    def __init__(self, path: bytes, writing: bool) -> None:
        self.path = path
        self.writing = writing
        self.bytes = 0


def make_sftp_factory(state: AgentState, who_of: Callable[[asyncssh.SSHServerChannel], str]):
    """SFTP only when the plan grants files; every session is noticed and audited."""
    if not state.allows("files"):
        return None

    class AuditedSFTP(asyncssh.SFTPServer):
        def __init__(self, chan: asyncssh.SSHServerChannel) -> None:
            super().__init__(chan)
            self.who = who_of(chan)
            self._handles: dict[int, _Handle] = {}
            self._doing = state.doing(self.who, "files")
            self._doing.__enter__()
            state.notices.activity(self.who, "opened the file manager")
            state.audit("files_opened", self.who, {})

        def exit(self) -> None:
            self._doing.__exit__(None, None, None)
            super().exit()

        def open(self, path: bytes, pflags: int, attrs: asyncssh.SFTPAttrs) -> object:
            file_obj = super().open(path, pflags, attrs)
            writing = bool(pflags & (asyncssh.FXF_WRITE | asyncssh.FXF_APPEND |
                                     asyncssh.FXF_CREAT | asyncssh.FXF_TRUNC))
            self._handles[id(file_obj)] = _Handle(self.map_path(path), writing)
            return file_obj

        def read(self, file_obj: object, offset: int, size: int) -> bytes:
            data = super().read(file_obj, offset, size)
            handle = self._handles.get(id(file_obj))
            if handle is not None:
                handle.bytes += len(data)
            return data

        def write(self, file_obj: object, offset: int, data: bytes) -> int:
            written = super().write(file_obj, offset, data)
            handle = self._handles.get(id(file_obj))
            if handle is not None:
                handle.bytes += len(data)
            return written

        async def close(self, file_obj: object) -> None:
            super().close(file_obj)
            handle = self._handles.pop(id(file_obj), None)
            if handle is None or (not handle.writing and handle.bytes == 0):
                return  # opened and closed without a transfer: nothing left the computer
            detail: dict = {"path": _text(handle.path),
                            "direction": "upload" if handle.writing else "download",
                            "transferred": handle.bytes}
            try:
                size, sha256 = await asyncio.to_thread(file_digest, handle.path)
                detail.update(size=size, sha256=sha256)
            except OSError as exc:
                detail["error"] = exc.strerror or str(exc)
            event = "file_written" if handle.writing else "file_read"
            verb = "wrote" if handle.writing else "read"
            state.notices.activity(self.who, f"{verb} {detail['path']}")
            state.audit(event, self.who, detail)

        def remove(self, path: bytes) -> None:
            super().remove(path)
            self._report("file_removed", "removed", path)

        def rename(self, oldpath: bytes, newpath: bytes) -> None:
            super().rename(oldpath, newpath)
            self._report("file_renamed", "renamed", oldpath, newpath)

        def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
            super().posix_rename(oldpath, newpath)
            self._report("file_renamed", "renamed", oldpath, newpath)

        def mkdir(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
            super().mkdir(path, attrs)
            self._report("folder_created", "created the folder", path)

        def rmdir(self, path: bytes) -> None:
            super().rmdir(path)
            self._report("folder_removed", "removed the folder", path)

        def _report(self, event: str, verb: str, path: bytes, new: bytes | None = None) -> None:
            detail = {"path": _text(self.map_path(path))}
            text = f"{verb} {detail['path']}"
            if new is not None:
                detail["to"] = _text(self.map_path(new))
                text += f" to {detail['to']}"
            state.notices.activity(self.who, text)
            state.audit(event, self.who, detail)

    return AuditedSFTP
