"""Raw keyboard input for the terminal pane: the key bytes as the technician's terminal sent them.

Textual turns input bytes into key names, and a name cannot always be turned back into the
bytes: Alt+digits, Alt+punctuation and Alt+Backspace lose their ESC, and an Esc followed
within Textual's escape delay by another key (vim's `Esc :`) becomes one "alt+" key. A remote
shell must get exactly what the technician's terminal sent, as `ssh` in that terminal would.

So while the terminal pane has focus, `RawInputDriver` (Textual's Linux driver, extended)
splits what it reads into keys with `KeyStream` and hands the key bytes, unchanged and in
order, to the pane. Only what is not typing goes on to Textual: mouse reports, focus reports,
answers to Textual's own queries, and any key that a priority binding takes (the pane's leave
key), from which point on Textual reads the input again until the pane asks for it back.
Pastes are passed whole so the pane can bracket them as the remote program asked.

While it owns the keys the driver also puts the technician's terminal in the key modes the
remote program chose (application cursor keys, application keypad, modifyOtherKeys) and
turns off the kitty keyboard protocol Textual asked for, so the terminal encodes each key as
it would for that program over ssh; leaving restores Textual's modes.
"""

from __future__ import annotations

import contextlib
import os
import selectors
from codecs import getincrementaldecoder
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from threading import Lock
from typing import TYPE_CHECKING

from textual import constants
from textual._parser import ParseError
from textual._xterm_parser import XTermParser
from textual.drivers.linux_driver import (
    KITTY_DISAMBIGUATE_ESCAPE_CODES,
    KITTY_REPORT_ALL_KEYS,
    KITTY_REPORT_ASSOCIATED_TEXT,
    LinuxDriver,
)

if TYPE_CHECKING:
    from textual.app import App

ESC = 0x1B
# An escape sequence cut off at the end of a read waits this long for its rest before its
# bytes are taken as keys (a lone Esc press is sent after this delay, not Textual's 100 ms).
HOLD_SECONDS = 0.02
READ_SIZE = 64 * 1024
PASTE_START = b"\x1b[200~"
PASTE_END = b"\x1b[201~"
_KITTY_FLAGS = (  # what Textual's driver pushes at start
    KITTY_DISAMBIGUATE_ESCAPE_CODES | KITTY_REPORT_ALL_KEYS | KITTY_REPORT_ASSOCIATED_TEXT
)


class Kind(Enum):
    KEY = "key"  # one key press: its bytes go to the remote unchanged
    PASTE = "paste"  # the text between the bracketed-paste markers
    TEXTUAL = "textual"  # for Textual: mouse, focus, answers to its queries


@dataclass(frozen=True, slots=True)
class Token:
    kind: Kind
    data: bytes  # exactly the bytes read, markers included
    text: bytes = b""  # for a paste, what was pasted


def _csi_end(data: bytes, start: int) -> int | None:
    """The end of the CSI sequence whose ESC is at `start`, or None if it is not complete."""
    index = start + 2
    size = len(data)
    while index < size and 0x30 <= data[index] <= 0x3F:  # parameters
        index += 1
    while index < size and 0x20 <= data[index] <= 0x2F:  # intermediates
        index += 1
    if index >= size:
        return None
    if data[index] == 0x4D and index == start + 2:  # ESC [ M: X10 mouse, three bytes follow
        return index + 4 if index + 3 < size else None
    return index + 1


def _utf8_length(lead: int) -> int:
    if lead < 0xC2:
        return 1  # ASCII, or a stray byte passed on by itself
    if lead < 0xE0:
        return 2
    if lead < 0xF0:
        return 3
    return 4 if lead < 0xF5 else 1


def _is_for_textual(sequence: bytes) -> bool:
    """Whether a complete CSI sequence is not a key but a report for Textual."""
    if sequence[2:3] == b"M" and len(sequence) == 6:
        return True  # X10 mouse: ESC [ M and three bytes
    body, final = sequence[2:-1], sequence[-1:]
    if body.startswith(b"<"):
        return True  # SGR mouse
    if body == b"" and final in (b"I", b"O"):
        return True  # focus in / out
    if final == b"y" and body.endswith(b"$"):
        return True  # DECRPM: a mode report Textual asked for
    if final == b"t" and body.startswith(b"48;"):
        return True  # in-band window resize
    return final == b"c" and body[:1] in (b"?", b">")  # device attributes


class KeyStream:
    """Splits the bytes a terminal sends into keys, pastes, and reports for Textual.

    Incremental: a sequence cut off at the end of one read is held (`held`) until the next;
    `flush()` gives it up as keys when no more comes.
    """

    def __init__(self) -> None:
        self._held = b""
        self._paste: bytearray | None = None

    @property
    def held(self) -> bool:
        return bool(self._held)

    def take_held(self) -> bytes:
        """The bytes held back (a cut-off sequence, or an unfinished paste), forgotten here."""
        held = self._held
        if self._paste is not None:
            held = PASTE_START + bytes(self._paste) + held
        self._held, self._paste = b"", None
        return held

    def feed(self, data: bytes) -> list[Token]:
        data = self._held + data
        self._held = b""
        tokens: list[Token] = []
        index, size = 0, len(data)
        while index < size:
            if self._paste is not None:
                end = data.find(PASTE_END, index)
                if end < 0:
                    # Keep what may be the start of the end marker for the next read.
                    keep = next((n for n in range(len(PASTE_END) - 1, 0, -1)
                                 if data.endswith(PASTE_END[:n])), 0)
                    self._paste += data[index : size - keep]
                    self._held = data[size - keep :]
                    return tokens
                self._paste += data[index:end]
                text = bytes(self._paste)
                self._paste = None
                tokens.append(Token(Kind.PASTE, PASTE_START + text + PASTE_END, text))
                index = end + len(PASTE_END)
                continue
            end = self._token_end(data, index)
            if end is None:
                self._held = data[index:]
                return tokens
            piece = data[index:end]
            if piece == PASTE_START:
                self._paste = bytearray()
            elif piece[:2] == b"\x1b[" and _is_for_textual(piece):
                tokens.append(Token(Kind.TEXTUAL, piece))
            else:
                tokens.append(Token(Kind.KEY, piece))
            index = end
        return tokens

    def flush(self) -> list[Token]:
        """What is held, given up as keys one byte sequence at a time (no more input came)."""
        if self._paste is not None:
            return []  # a paste ends only with its end marker, as in Textual
        data, self._held = self._held, b""
        tokens = []
        index = 0
        while index < len(data):
            end = self._token_end(data, index, final=True)
            tokens.append(Token(Kind.KEY, data[index:end]))
            index = end
        return tokens

    def _token_end(self, data: bytes, index: int, final: bool = False) -> int | None:
        size = len(data)
        lead = data[index]
        if lead != ESC:
            end = index + _utf8_length(lead)
            if end > size:
                return size if final else None
            return end
        if index + 1 >= size:
            return size if final else None  # a lone ESC: maybe the start of a sequence
        follow = data[index + 1]
        if follow == 0x5B:  # ESC [
            end = _csi_end(data, index)
            if end is None:
                return (index + 2) if final else None
            return end
        if follow == 0x4F:  # ESC O x: SS3 keys (application cursor keys, F1-F4, keypad)
            if index + 2 >= size:
                return (index + 2) if final else None
            return index + 3
        if follow == ESC:  # ESC ESC ...: Alt with a key that is itself a sequence
            inner = self._token_end(data, index + 1, final)
            return None if inner is None else inner
        end = index + 1 + _utf8_length(follow)  # ESC x: Alt+x
        if end > size:
            return size if final else None
        return end


_NAMER = XTermParser()


def key_name(data: bytes) -> str | None:
    """Textual's name for the key these bytes are, as its own parser would name it."""
    text = data.decode("utf-8", "replace")
    if len(text) == 2 and text[0] == "\x1b" and text[1] != "\x1b":
        events = list(_NAMER._sequence_to_key_events(text[1], alt=True))
        if events and len(events[0].key) > 1 and not events[0].key.startswith("alt+"):
            return f"alt+{events[0].key}"
        return events[0].key if events else None
    events = list(_NAMER._sequence_to_key_events(text))
    return events[0].key if len(events) == 1 else None


RawSink = Callable[[list[Token]], None]


class RawInputDriver(LinuxDriver):
    """Textual's Linux driver, able to hand the keys as read to one receiver (the pane)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._raw_sink: RawSink | None = None
        self._leave_keys: frozenset[str] = frozenset()
        self._key_modes: tuple[bool, bool, int] = (False, False, 0)
        self._lock = Lock()  # mode changes (event loop) against the input thread's reads

    # --- called from the event loop --- #

    def start_raw(self, sink: RawSink, leave_keys: frozenset[str]) -> None:
        """Send every key as read to `sink` (on the event loop), except `leave_keys`."""
        with self._lock:
            if self._raw_sink is None and not constants.DISABLE_KITTY_KEY:
                self.write("\x1b[<u")  # the kitty flags Textual pushed: keys as for any program
            self._raw_sink = sink
            self._leave_keys = leave_keys
        self.flush()

    def stop_raw(self) -> None:
        """Give the keys back to Textual."""
        with self._lock:
            was_raw = self._raw_sink is not None
            self._raw_sink = None
            self._write_key_modes((False, False, 0))
            if was_raw and not constants.DISABLE_KITTY_KEY:
                self.write(f"\x1b[>{_KITTY_FLAGS}u")
        self.flush()

    @property
    def raw(self) -> bool:
        return self._raw_sink is not None

    def set_key_modes(self, cursor_application: bool, keypad_application: bool,
                      modify_other_keys: int) -> None:
        """Put the technician's terminal in the remote program's key modes (while raw)."""
        with self._lock:
            if self._raw_sink is not None:
                self._write_key_modes((cursor_application, keypad_application, modify_other_keys))
        self.flush()

    def _write_key_modes(self, modes: tuple[bool, bool, int]) -> None:
        if modes == self._key_modes:
            return
        cursor, keypad, other = modes
        if cursor != self._key_modes[0]:
            self.write("\x1b[?1h" if cursor else "\x1b[?1l")
        if keypad != self._key_modes[1]:
            self.write("\x1b=" if keypad else "\x1b>")
        if other != self._key_modes[2]:
            self.write(f"\x1b[>4;{other}m" if other else "\x1b[>4m")
        self._key_modes = modes

    def stop_application_mode(self) -> None:
        self.stop_raw()
        super().stop_application_mode()

    # --- the input thread --- #

    def run_input_thread(self) -> None:
        """Wait for input; dispatch it to the pane while it takes keys raw, else to Textual."""
        selector = selectors.SelectSelector()
        selector.register(self.fileno, selectors.EVENT_READ)
        parser = XTermParser(self._debug)
        decode = getincrementaldecoder("utf-8")().decode
        stream = KeyStream()

        def to_textual(data: bytes, final: bool = False) -> None:
            text = decode(data, final=final)
            if text:
                for event in parser.feed(text):
                    self.process_message(event)

        def to_pane(sink: RawSink, tokens: list[Token]) -> None:
            """Tokens in order: keys for the pane, the rest for Textual; stops at a leave key."""
            batch: list[Token] = []
            for index, token in enumerate(tokens):
                if token.kind is Kind.KEY and key_name(token.data) in self._leave_keys:
                    # A key a binding takes: from here on Textual reads, until the pane
                    # asks for the keys again.
                    with self._lock:
                        self._raw_sink = None
                    self._deliver(sink, batch)
                    to_textual(b"".join(t.data for t in tokens[index:]) + stream.take_held())
                    return
                if token.kind is Kind.TEXTUAL:
                    self._deliver(sink, batch)
                    batch = []
                    to_textual(token.data)
                else:
                    batch.append(token)
            self._deliver(sink, batch)

        try:
            while not self.exit_event.is_set():
                timeout = HOLD_SECONDS if stream.held else 0.1
                ready = selector.select(timeout)
                data = b""
                for _key, mask in ready:
                    if mask & selectors.EVENT_READ:
                        data = os.read(self.fileno, READ_SIZE)
                if ready and not data:
                    break  # end of input (a pipe)
                sink = self._raw_sink
                if data:
                    if sink is not None:
                        to_pane(sink, stream.feed(data))
                    else:
                        to_textual(stream.take_held() + data)
                elif stream.held:
                    if sink is not None:
                        to_pane(sink, stream.flush())
                    else:
                        to_textual(stream.take_held())
                for event in parser.tick():
                    self.process_message(event)
        finally:
            selector.close()
            with contextlib.suppress(EOFError, ParseError):
                for event in parser.feed(""):
                    self.process_message(event)

    def _deliver(self, sink: RawSink, tokens: list[Token]) -> None:
        if tokens:
            self._loop.call_soon_threadsafe(sink, list(tokens))


def replay_as_keys(app: App, data: bytes) -> None:
    """Give `app` the keys `data` holds as Textual events, as if Textual had read them."""
    parser = XTermParser()
    with contextlib.suppress(EOFError, ParseError):
        for event in [*parser.feed(data.decode("utf-8", "replace")), *parser.feed("")]:
            app.post_message(event)


def raw_driver_for(driver_class: type) -> type:
    """The raw-input driver where Textual would use its Linux driver, else `driver_class`."""
    return RawInputDriver if driver_class is LinuxDriver else driver_class
