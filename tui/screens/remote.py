"""Remote control: a live terminal on the customer's computer, through the relay.

Every key goes to the remote shell except the leave key (ctrl+] unless remapped): pressed
once it returns to the list, pressed twice in quick succession it is sent to the shell. The
pane asks for a shell with a stable id, kept across console restarts (tui/shellids.py), so
reconnecting after a drop, or `r` after the console itself was restarted, reattaches to it.
When another console takes the shell, this one says so and waits until it is shown again.
"""

from __future__ import annotations

import asyncio

from textual import events, on, work
from textual.app import ComposeResult
from textual.timer import Timer

from common.secret import Secret
from tui.client import SHELL_TAKEN, HostConnector, RelayError, ShellChannel, retry_delay
from tui.sanitize import clean
from tui.screens.pane import PaneScreen
from tui.shellids import shell_id_for
from tui.widgets.terminal import TerminalView, encode_key

# Pause the SSH channel while the pane has this much output waiting to be parsed, so a flood
# blocks the remote program instead of being dropped; resume as soon as the pane is below the
# low mark, early enough that more arrives before the parser runs dry.
HIGH_WATER = 512 * 1024
LOW_WATER = 192 * 1024
# A second press of the leave key within this time sends the key to the shell instead.
LEAVE_TWICE_SECONDS = 0.4
# Keys typed as the pane is shown again wait for its new size at most this long.
SIZE_WAIT_SECONDS = 2.0


class RemoteScreen(PaneScreen):
    kind = "shell"

    def __init__(self, session: dict, connector: HostConnector, password: Secret) -> None:
        super().__init__(session, connector, password)
        # Kept across console restarts: `r` after a restart reattaches to the same shell.
        self.shell_id = shell_id_for(session["id"])
        self._taken = False  # another console took the shell: wait to be shown again
        self.channel: ShellChannel | None = None
        self.closed_by_user = False
        self._paused = False
        self._shell_requested = False
        self._leaving: Timer | None = None  # the leave key was pressed once: waiting for twice
        self._browsing: str | None = None  # what the status bar says while history is browsed
        self._held_keys: list[bytes] | None = None  # typed while shown again, before the size
        self._size_wait: Timer | None = None  # the most the held keys wait
        # What the console has to say while the terminal is shown: on the status line, for
        # a while, instead of a toast over the remote screen's bottom right.
        self._notice: tuple[str, str] | None = None  # (severity, one line of text)
        self._notice_timer: Timer | None = None

    def compose(self) -> ComposeResult:
        yield self.status_bar()
        yield TerminalView(self._send, id="terminal")

    @property
    def terminal(self) -> TerminalView:
        return self.query_one("#terminal", TerminalView)

    def on_mount(self) -> None:
        self.terminal.focus()
        self.app.clear_notifications()  # toasts from the list would cover the remote screen
        # The shell is opened once the pane has been laid out and knows its size in cells
        # (its first TerminalView.Resized): a PTY opened before that would start at the
        # widget's placeholder 80x24 and full-screen programs would draw for the wrong size.

    def status_text(self) -> str:
        key = self.leave_key()
        if self._leaving is not None:
            return f" {key} again: send {key} · [: history · /: search · other keys: back"
        if self._notice is not None:
            severity, text = self._notice
            suffix = f" · {key} back"
            mark = "! " if severity in ("error", "warning") else ""
            room = max(10, self.size.width - 3 - len(mark) - len(suffix))
            shown = text if len(text) <= room else text[:room - 1] + "…"
            return f" {mark}{shown}{suffix}"
        if self._browsing is not None:
            return self._browsing
        return super().status_text()

    def show_notice(self, severity: str, text: str, timeout: float) -> None:
        """Say `text` (already clean) on the status line for `timeout` seconds, where it
        hides none of the remote screen; the newest notice replaces the one before."""
        self._notice = (severity, " ".join(text.split()))
        if self._notice_timer is not None:
            self._notice_timer.stop()
        self._notice_timer = self.set_timer(timeout, self._notice_done)
        self._show_severity(severity)
        self.set_state(self.state)

    def _notice_done(self) -> None:
        self._notice = None
        self._notice_timer = None
        self._show_severity(None)
        self.set_state(self.state)

    def _show_severity(self, severity: str | None) -> None:
        for bar in self.query("#pane-status"):
            bar.set_class(severity == "error", "-error")
            bar.set_class(severity == "warning", "-warning")

    @on(TerminalView.Browsing)
    def _browsing_changed(self, event: TerminalView.Browsing) -> None:
        self._browsing = event.text
        self.set_state(self.state)

    def action_leave(self) -> None:
        if self._leaving is None:
            # Wait a moment for a second press; meanwhile the terminal lets go of the keys
            # (no cursor), and any other key leaves at once and goes to the list.
            self._leaving = self.set_timer(LEAVE_TWICE_SECONDS, self._leave_now)
            self.set_focus(None)
            self.set_state(self.state)
            return
        self._leaving.stop()
        self._leaving = None
        key = next((key for key, active in self.active_bindings.items()
                    if active.binding.action == "leave" and active.binding.priority), None)
        encoded = encode_key(key, None) if key else None
        if encoded:
            self._send(encoded.encode())
        self.set_state(self.state)
        self.terminal.focus()

    def _leave_now(self) -> None:
        self._leaving = None
        self.set_state(self.state)
        if self.is_current:
            super().action_leave()

    def on_key(self, event: events.Key) -> None:
        if self._leaving is None:
            return
        event.stop()
        self._leaving.stop()
        if event.character in ("[", "/"):  # as tmux's prefix: history, or search it
            self._leaving = None
            self.terminal.focus()
            self.terminal.browse(search=event.character == "/")
            self.set_state(self.state)
            return
        # Another key after the leave key: leave, and pass the key on to the list.
        self._leave_now()
        self.app.post_message(events.Key(event.key, event.character))

    def on_screen_resume(self) -> None:
        self.terminal.focus()
        self.app.clear_notifications()
        if self._taken and self.channel is None and self.ended is None \
                and not self.closed_by_user:
            self._taken = False
            self.set_state("taking the shell back")
            self.connect()
            return
        # Shown again (back from the list, or reattached): the window may have changed size
        # meanwhile, or another attachment resized the remote PTY. Keys typed before the pane
        # is laid out again wait, so the shell has the pane's size before the first of them
        # (a quick `stty size` said the old size).
        if self.channel is not None and self._held_keys is None:
            self._held_keys = []
            self.call_after_refresh(self._send_size_then_keys)
            self._size_wait = self.set_timer(SIZE_WAIT_SECONDS, self._send_size_then_keys)

    def _send_size_then_keys(self) -> None:
        held, self._held_keys = self._held_keys, None
        if held is None:
            return
        if self._size_wait is not None:  # or it would let a later resume's keys go early
            self._size_wait.stop()
            self._size_wait = None
        width, height = self.terminal.size
        if self.channel is not None and width > 0 and height > 0:
            self.channel.resize(width, height)
        for data in held:
            self._send(data)

    def _send(self, data: bytes) -> None:
        if self._held_keys is not None:
            self._held_keys.append(data)
        elif self.channel is not None:
            self.channel.send(data)

    def _on_output(self, data: bytes) -> None:
        terminal = self.terminal
        terminal.feed(data)
        if not self._paused and terminal.pending_bytes > HIGH_WATER and self.channel:
            self._paused = True
            self.channel.pause()
            terminal.when_drained(LOW_WATER, self._resume_output)

    def _resume_output(self) -> None:
        if self._paused and self.channel:
            self._paused = False
            self.channel.resume()

    def _on_closed(self, reason: str) -> None:
        self.channel = None
        if reason == SHELL_TAKEN and not self.closed_by_user:
            # Taking it back at once would take it from the other console, which would take
            # it back in turn: it is taken back when the technician comes back to this pane.
            self._taken = True
            self.set_state(f"opened in another console; {self.leave_key()} then r takes "
                           "it back")
            return
        if self.closed_by_user or not self.is_attached:
            return
        self.set_state(f"disconnected ({clean(reason, 80)}), reconnecting")
        self.connect(reconnect=True)

    @work(exclusive=True, group="shell")
    async def connect(self, reconnect: bool = False) -> None:
        attempt = 0
        while not self.closed_by_user:
            if reconnect:
                await asyncio.sleep(retry_delay(attempt))
                self.connector.forget(self.session["id"])
            cols, rows = self.terminal.size_in_cells
            try:
                self.channel = await self.connector.open_shell(
                    self.session, self.password, cols=cols, rows=rows, shell_id=self.shell_id,
                    on_output=self._on_output, on_closed=self._on_closed)
            except RelayError as exc:
                if exc.code == "wrong_password":
                    self.set_state("the host refused the session password")
                    self.app.forget_password(self.session["id"])
                    return
                attempt += 1
                reconnect = True
                self.set_state(f"{clean(exc.detail, 100)}; retrying")
                continue
            self._paused = False
            if self.terminal.size_in_cells != (cols, rows):  # resized while the shell opened
                self.channel.resize(*self.terminal.size_in_cells)
            self.set_state("connected")
            return

    @on(TerminalView.Resized)
    def _resized(self, event: TerminalView.Resized) -> None:
        if not self._shell_requested:
            self._shell_requested = True
            self.connect()
        elif self.channel is not None:
            self.channel.resize(event.cols, event.rows)

    def close_shell(self) -> None:
        self.closed_by_user = True
        if self.channel is not None:
            self.channel.close()
