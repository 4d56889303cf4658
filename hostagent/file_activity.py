"""What the customer is told about a technician's file operations: one line per thing they did
("alice wrote /home/dana/report.pdf"), not one per protocol step.

The console copies a file to `<name>.adhoc-part`, reads it back to verify it, and renames it
over `<name>` (docs/FILES.md). Those steps are one thing to the customer: the write of a part
file is held back, its read-back and resize are quiet, and the rename onto its name says
"wrote <name>". A part file that is not renamed (a stopped copy, or a client that only
pretends) is still shown, under its own name, once its SFTP session ends or it has been left
alone for a minute. The audit keeps every step as it happened.
"""

from __future__ import annotations

import asyncio
import stat
from collections.abc import Callable

from hostagent.text import printable

PART_SUFFIX = ".adhoc-part"
PART_SETTLE = 60.0  # a part file left alone this long is shown as it is
PATH_SHOWN = 1000


def shown_path(path: str) -> str:
    """A path as the customer sees it (escaped, and cut visibly if it is very long)."""
    return printable(path, PATH_SHOWN)


def special_bits(mode: int) -> list[str]:
    """The permission bits a customer should notice: who a program runs as."""
    return [name for bit, name in ((stat.S_ISUID, "setuid"), (stat.S_ISGID, "setgid"))
            if mode & bit]


def describe_mode(mode: int) -> str:
    bits = special_bits(mode)
    text = f"{stat.S_IMODE(mode):04o}"
    if bits:
        text += f" ({', '.join(bits)}: it runs with its owner's rights)" if "setuid" in bits \
            else f" ({', '.join(bits)})"
    return text


class FileActivity:
    """One technician's file operations in one SFTP session, as lines for the customer."""

    def __init__(self, say: Callable[[str], None], *, settle: float = PART_SETTLE) -> None:
        self._say = say
        self._settle = settle
        self._parts: dict[str, asyncio.TimerHandle] = {}

    def _hold(self, part: str) -> None:
        timer = self._parts.get(part)
        if timer is not None:
            timer.cancel()
        self._parts[part] = asyncio.get_running_loop().call_later(self._settle, self._left,
                                                                  part)

    def _left(self, part: str) -> None:
        """A part file nobody finished: shown under the name it really has."""
        self._parts.pop(part, None)
        self._say(f"wrote {shown_path(part)} (an unfinished copy of "
                  f"{shown_path(part.removesuffix(PART_SUFFIX))})")

    def _release(self, part: str) -> bool:
        timer = self._parts.pop(part, None)
        if timer is None:
            return False
        timer.cancel()
        return True

    def written(self, path: str, mode: int | None = None) -> None:
        suffix = f", permissions {describe_mode(mode)}" if mode is not None and \
            special_bits(mode) else ""
        if path.endswith(PART_SUFFIX) and not suffix:
            self._hold(path)
            return
        self._say(f"wrote {shown_path(path)}{suffix}")

    def read(self, path: str) -> None:
        if path in self._parts:
            self._hold(path)  # the console reading its copy back to verify it
            return
        self._say(f"copied {shown_path(path)} to their computer")

    def resized(self, path: str, size: int) -> bool:
        """A size change alone of a part file being written is a step of the copy: quiet.
        Whether it was one."""
        if path in self._parts:
            self._hold(path)
            return True
        return False

    def renamed(self, old: str, new: str) -> None:
        if self._release(old):
            if new == old.removesuffix(PART_SUFFIX):
                self._say(f"wrote {shown_path(new)}")
                return
            self._left(old)
        self._say(f"renamed {shown_path(old)} to {shown_path(new)}")

    def removed(self, path: str) -> None:
        self._release(path)
        self._say(f"removed {shown_path(path)}")

    def say(self, text: str) -> None:
        self._say(text)

    def close(self) -> None:
        """The SFTP session ended: whatever is still held back is shown now."""
        for part in list(self._parts):
            self._release(part)
            self._left(part)
