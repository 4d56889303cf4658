"""SFTP for the technician's file manager, granted by the plan's "files" and audited.

Every operation that changes or takes something is audited and shown to the customer: file
transfers (with path, size and SHA-256), removals, renames, folders, attribute changes
(truncate, chmod including setuid, chown, times) and links, whichever protocol version or
extension the client uses. A transfer's digest is taken from the file on disk when the
technician's handle closes (what they left there, or what they took away), after the client has
its reply (hostagent/digests.py); the customer is told at the close, in the order things happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import Callable

import asyncssh

from hostagent.audit import Event, timestamp
from hostagent.file_activity import FileActivity, describe_mode, shown_path, special_bits
from hostagent.state import AgentState

_WRITE_ACCESS = asyncssh.ACE4_WRITE_DATA | asyncssh.ACE4_APPEND_DATA


def _text(path: bytes) -> str:
    return os.fsdecode(path)


class _Handle:
    __slots__ = ("bytes", "mode", "path", "writing")

    def __init__(self, path: bytes, writing: bool, mode: int | None) -> None:
        self.path = path
        self.writing = writing
        self.mode = mode  # permissions it was created with, when the client chose them
        self.bytes = 0


def _attribute_changes(attrs: asyncssh.SFTPAttrs) -> tuple[dict, list[str]]:
    """What a setstat asks for: the audit's fields and the customer's words."""
    detail: dict = {}
    words: list[str] = []
    if attrs.size is not None:
        detail["size"] = attrs.size
        words.append(f"truncated it to {attrs.size} bytes")
    if attrs.permissions is not None:
        mode = attrs.permissions
        detail["permissions"] = f"{stat.S_IMODE(mode):04o}"
        for bit in special_bits(mode):
            detail[bit] = True
        words.append(f"set its permissions to {describe_mode(mode)}")
    uid = attrs.uid if attrs.uid is not None else attrs.owner
    gid = attrs.gid if attrs.gid is not None else attrs.group
    if uid is not None or gid is not None:
        detail.update(uid=uid, gid=gid)
        words.append(f"set its owner to {uid if uid is not None else '?'}:"
                     f"{gid if gid is not None else '?'}")
    if attrs.atime is not None or attrs.mtime is not None:
        detail.update(atime=attrs.atime, mtime=attrs.mtime)
        words.append("set its times")
    return detail, words


def make_sftp_factory(state: AgentState, who_of: Callable[[asyncssh.SSHServerChannel], str]):
    """SFTP only when the plan grants files; every session is noticed and audited."""
    if not state.allows("files"):

        async def refuse(chan: asyncssh.SSHServerChannel) -> asyncssh.SFTPServer:
            """The subsystem is accepted only to say why it ends (exit status 1): a refused
            request would leave OpenSSH users with "subsystem request failed"."""
            with contextlib.suppress(OSError, asyncssh.Error):
                chan.write_stderr(state.refusal(who_of(chan), "file transfer (SFTP)"))
                chan.exit(1)
            # No SFTP server follows: asyncssh ends a channel's task quietly on cancellation
            # (any other exception here would close the technician's whole connection).
            raise asyncio.CancelledError

        return refuse

    class AuditedSFTP(asyncssh.SFTPServer):
        def __init__(self, chan: asyncssh.SSHServerChannel) -> None:
            super().__init__(chan)
            self.who = who_of(chan)
            self._handles: dict[int, _Handle] = {}
            self._doing = state.doing(self.who, "files")
            self._doing.__enter__()
            self._activity = FileActivity(lambda text: state.notices.activity(self.who, text))
            self._activity.say("opened the file manager")
            state.audit(Event.FILES_OPENED, self.who, {})

        def exit(self) -> None:
            self._activity.close()
            self._doing.__exit__(None, None, None)
            super().exit()
            # Like sftp-server under sshd: the subsystem ends with an exit status, which
            # `scp` (in its default SFTP mode) waits for and reads as its own.
            with contextlib.suppress(OSError, asyncssh.Error):
                self.channel.exit(0)

        # --- transfers ---------------------------------------------------------------------

        def _opened(self, path: bytes, file_obj: object, writing: bool,
                    attrs: asyncssh.SFTPAttrs, creating: bool) -> None:
            mode = attrs.permissions if creating and attrs.permissions is not None else None
            self._handles[id(file_obj)] = _Handle(self.map_path(path), writing, mode)

        def open(self, path: bytes, pflags: int, attrs: asyncssh.SFTPAttrs) -> object:
            file_obj = super().open(path, pflags, attrs)
            writing = bool(pflags & (asyncssh.FXF_WRITE | asyncssh.FXF_APPEND |
                                     asyncssh.FXF_CREAT | asyncssh.FXF_TRUNC))
            self._opened(path, file_obj, writing, attrs, bool(pflags & asyncssh.FXF_CREAT))
            return file_obj

        def open56(self, path: bytes, desired_access: int, flags: int,
                   attrs: asyncssh.SFTPAttrs) -> object:
            """The open of SFTP version 5 and later: audited the same way."""
            file_obj = super().open56(path, desired_access, flags, attrs)
            disposition = flags & asyncssh.FXF_ACCESS_DISPOSITION
            writing = bool(desired_access & _WRITE_ACCESS) or \
                disposition != asyncssh.FXF_OPEN_EXISTING
            creating = disposition in (asyncssh.FXF_CREATE_NEW, asyncssh.FXF_CREATE_TRUNCATE,
                                       asyncssh.FXF_OPEN_OR_CREATE)
            self._opened(path, file_obj, writing, attrs, creating)
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
            path = _text(handle.path)
            detail: dict = {"path": path,
                            "direction": "upload" if handle.writing else "download",
                            "transferred": handle.bytes}
            if handle.mode is not None:
                detail["permissions"] = f"{stat.S_IMODE(handle.mode):04o}"
                for bit in special_bits(handle.mode):
                    detail[bit] = True
            if handle.writing:
                self._activity.written(path, handle.mode)
            else:
                self._activity.read(path)
            event = Event.FILE_WRITTEN if handle.writing else Event.FILE_READ
            detail["seen_at"] = timestamp()  # the close, not the digest's end

            def report(outcome: dict) -> None:
                state.audit(event, self.who, {**detail, **outcome})

            await state.digests.take(handle.path, report,
                                     read=None if handle.writing else handle.bytes)

        # --- attributes and links ----------------------------------------------------------

        def _attributes(self, path: str, attrs: asyncssh.SFTPAttrs, follow: bool,
                        during_write: bool = False) -> None:
            detail, words = _attribute_changes(attrs)
            if not words:
                return
            state.audit(Event.FILE_CHANGED, self.who,
                        {"path": path, "follow_links": follow, **detail})
            only_size = list(detail) == ["size"]
            if only_size and (during_write or self._activity.resized(path, attrs.size)):
                return  # part of a copy the customer is told about as one write
            self._activity.say(f"changed {shown_path(path)}: {', '.join(words)}")

        def setstat(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
            super().setstat(path, attrs)
            self._attributes(_text(self.map_path(path)), attrs, True)

        def lsetstat(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
            super().lsetstat(path, attrs)
            self._attributes(_text(self.map_path(path)), attrs, False)

        def fsetstat(self, file_obj: object, attrs: asyncssh.SFTPAttrs) -> None:
            super().fsetstat(file_obj, attrs)
            handle = self._handles.get(id(file_obj))
            path = _text(handle.path) if handle is not None else "an open file"
            self._attributes(path, attrs, True,
                             during_write=handle is not None and handle.writing)

        def symlink(self, oldpath: bytes, newpath: bytes) -> None:
            super().symlink(oldpath, newpath)
            link, target = _text(self.map_path(newpath)), os.fsdecode(oldpath)
            self._activity.say(f"made a symbolic link {shown_path(link)} pointing to "
                               f"{shown_path(target)}")
            state.audit(Event.SYMLINK_CREATED, self.who, {"path": link, "target": target})

        def link(self, oldpath: bytes, newpath: bytes) -> None:
            super().link(oldpath, newpath)
            link, target = _text(self.map_path(newpath)), _text(self.map_path(oldpath))
            self._activity.say(f"made a hard link {shown_path(link)} to "
                               f"{shown_path(target)}")
            state.audit(Event.HARDLINK_CREATED, self.who, {"path": link, "target": target})

        # --- names and folders -------------------------------------------------------------

        def remove(self, path: bytes) -> None:
            super().remove(path)
            name = _text(self.map_path(path))
            self._activity.removed(name)
            state.audit(Event.FILE_REMOVED, self.who, {"path": name})

        def rename(self, oldpath: bytes, newpath: bytes) -> None:
            super().rename(oldpath, newpath)
            self._renamed(oldpath, newpath)

        def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
            super().posix_rename(oldpath, newpath)
            self._renamed(oldpath, newpath)

        def _renamed(self, oldpath: bytes, newpath: bytes) -> None:
            old, new = _text(self.map_path(oldpath)), _text(self.map_path(newpath))
            self._activity.renamed(old, new)
            state.audit(Event.FILE_RENAMED, self.who, {"path": old, "to": new})

        def mkdir(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
            super().mkdir(path, attrs)
            name = _text(self.map_path(path))
            detail: dict = {"path": name}
            text = f"created the folder {shown_path(name)}"
            if attrs.permissions is not None:
                detail["permissions"] = f"{stat.S_IMODE(attrs.permissions):04o}"
                if special_bits(attrs.permissions):
                    text += f", permissions {describe_mode(attrs.permissions)}"
            self._activity.say(text)
            state.audit(Event.FOLDER_CREATED, self.who, detail)

        def rmdir(self, path: bytes) -> None:
            super().rmdir(path)
            name = _text(self.map_path(path))
            self._activity.say(f"removed the folder {shown_path(name)}")
            state.audit(Event.FOLDER_REMOVED, self.who, {"path": name})

    return AuditedSFTP

