"""ConsoleApp: the technician's full-screen console (screens, bindings, live updates)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable

import rich
from rich.segment import Segments
from rich.traceback import Traceback
from textual import on, work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.worker import WorkerFailed, active_worker

from common.secret import Secret
from tui import sshconfig
from tui.client import CONNECTED, HostConnector, RelayClient, RelayError, retry_delay
from tui.config import embedded_data_dir
from tui.failures import explain
from tui.rawinput import raw_driver_for
from tui.sanitize import clean, clean_lines
from tui.screens.audit import AuditModal
from tui.screens.chat import ChatScreen
from tui.screens.created import CreatedModal
from tui.screens.dashboard import DashboardScreen
from tui.screens.detail import DetailModal
from tui.screens.files import FilesScreen
from tui.screens.first_run import FirstRunModal
from tui.screens.help import HelpModal, keys_of
from tui.screens.modals import ConfirmModal, PasswordModal
from tui.screens.new_session import NewSessionModal
from tui.screens.openssh import OpenSSHModal
from tui.screens.pane import PaneScreen
from tui.screens.remote import RemoteScreen
from tui.screens.sessions import SessionsScreen
from tui.widgets.terminal import TerminalView

# Actions that must not steal keys from a focused terminal pane (ctrl+q, ctrl+p, ctrl+c ...).
TERMINAL_KEEPS_KEYS = {"quit", "command_palette", "help_quit", "screenshot"}
PANES: dict[str, type[Screen]] = {"shell": RemoteScreen, "dashboard": DashboardScreen,
                                  "chat": ChatScreen, "files": FilesScreen}
# Panes that keep running while the technician is elsewhere (a shell, a chat, a copy).
KEPT_PANES = {"shell", "chat", "files"}
ENDED_WORDS = {"ended_by_technician": "ended by a technician",
               "ended_by_customer": "ended by the customer", "expired": "its 24 hours are up",
               "invite_expired": "the invitation expired",
               "code_attempts": "too many wrong security codes",
               "ended_by_admin": "ended by an admin"}
PANE_FEATURES = {"shell": "shell", "dashboard": "dashboard", "chat": "chat", "files": "files"}


def _pane_name(kind: str, session_id: str) -> str:
    return f"{kind}:{session_id}"


class SessionsChanged(Message):
    def __init__(self, views: list[dict], limits: dict | None) -> None:
        super().__init__()
        self.views = views
        self.limits = limits


class ConsoleApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "Adhoc"
    BINDINGS = [
        Binding("ctrl+q", "quit", "Quit", priority=True, show=False, id="app.quit"),
    ]

    def __init__(self, client: RelayClient, login: str, *, notice: str | None = None,
                 clock: Callable[[], float] = time.time,
                 keymap: dict[str, str] | None = None, runs_relay: bool = False,
                 first_run_password: Secret | None = None,
                 take_over: Callable[[], Awaitable[bool]] | None = None) -> None:
        super().__init__()
        self.client = client
        self.runs_relay = runs_relay  # quitting stops the bundled relay (the embedded default)
        # Attached to another console's bundled relay: run it here once that console quits.
        self._take_over = take_over
        self._asking_to_quit = False
        self.login = login
        self.notice = notice
        self.first_run_password = first_run_password
        self.clock = clock
        self.connector = HostConnector(client, login)
        self.passwords: dict[str, Secret] = {}  # session passwords: memory only, never saved
        self.panes: dict[tuple[str, str], Screen] = {}
        self.retired: dict[str, Screen] = {}  # panes of ended sessions, to remove
        self.views: dict[str, dict] = {}
        self.limits: dict | None = None
        self.last_event_id: int | None = None
        self.relay_ssh: str | None = None  # the relay's SSH address, for the ssh -J line
        self.relay_lost = False
        self.notices: deque[tuple[str, str]] = deque(maxlen=200)  # (severity, text) shown
        self.unexpected: list[BaseException] = []  # failures that were bugs of ours
        self._route_told: str | None = None
        if keymap:
            self.set_keymap(keymap)

    def get_driver_class(self):
        # The terminal pane takes the technician's keys as their terminal sent them.
        return raw_driver_for(super().get_driver_class())

    @property
    def sessions_screen(self) -> SessionsScreen:
        return self._sessions

    def on_mount(self) -> None:
        self._sessions = SessionsScreen(self.clock)
        self.push_screen(self._sessions)
        if self.first_run_password is not None:
            # The welcome toast waits for the dialog: over it, it would hide half of it.
            self.push_screen(FirstRunModal(self.login, self.first_run_password,
                                           str(embedded_data_dir())),
                             lambda _noted: self._welcome())
            self.first_run_password = None  # the dialog holds the only copy
        else:
            self._welcome()
        self.refresh_sessions()
        self.follow_events()

    def _welcome(self) -> None:
        if self.notice:
            self.notify(self.notice, title="Welcome to Adhoc", timeout=30)

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """The palette offers what makes sense where the technician is."""
        yield from super().get_system_commands(screen)
        if isinstance(screen, SessionsScreen):
            yield SystemCommand("New session", "Invite a customer by email",
                                self.action_new_session)
            yield SystemCommand("Remote control", "Open a shell on the selected session",
                                self.action_remote)
            yield SystemCommand("Dashboard", "System view of the selected session's host",
                                self.action_dashboard)
            yield SystemCommand("Chat", "Chat with the selected session's customer",
                                self.action_chat)
            yield SystemCommand("End session", "End the selected session",
                                self.action_end_session)
            yield SystemCommand("Audit trail", "Who did what in the selected session",
                                self.action_audit)
            yield SystemCommand("Session details", "Host, host key fingerprint, times, ssh -J",
                                self.action_details)
            yield SystemCommand("New security code", "For a session still waiting for it",
                                self.action_reissue_code)
            yield SystemCommand("OpenSSH and port forwards",
                                "The ssh command to copy; forward a local port to the "
                                "customer's network", self.action_openssh)
        elif isinstance(screen, PaneScreen):
            yield SystemCommand("Back to sessions", "Leave this pane (it keeps running)",
                                screen.action_leave)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in TERMINAL_KEEPS_KEYS and isinstance(self.focused, TerminalView):
            return False
        return True

    # --- what the technician is told -------------------------------------------------------

    def notify(self, message: str, *, title: str = "", severity="information",
               timeout: float | None = None, markup: bool = True) -> None:
        """Every toast, from any screen, is text: never markup, never an escape sequence
        (its words often carry a host's file name or the relay's detail)."""
        text = clean_lines(message, 2000)
        self.notices.append((severity, text))
        on_status_line = getattr(self.screen_stack[-1] if self.screen_stack else None,
                                 "show_notice", None)
        if on_status_line is not None:  # a terminal pane: a toast would hide the remote screen
            shown = f"{clean(title, 200)}: {text}" if title else text
            on_status_line(severity, shown, timeout or self.NOTIFICATION_TIMEOUT)
            return
        super().notify(text, title=clean_lines(title, 200), severity=severity,
                       timeout=timeout, markup=False)

    def report_failure(self, error: BaseException, group: str = "") -> None:
        """The one place where a failed background call becomes something the user sees."""
        if isinstance(error, RelayError) and error.status == 0 and group == "refresh":
            self._lost_relay(error)
            return
        explained = explain(error)
        if not explained.expected:
            self.unexpected.append(error)
        self.notify(explained.text, severity="error", timeout=10)

    def _handle_exception(self, error: Exception) -> None:
        """A background task that failed is told to the user; the console keeps running.
        Anything else is a bug that leaves the app (Textual stops the widget it hit)."""
        if isinstance(error, WorkerFailed) and self.is_running:
            worker = active_worker.get(None)
            self.report_failure(error.error, worker.group if worker is not None else "")
            return
        super()._handle_exception(error)

    def _fatal_error(self) -> None:
        """Textual's crash report without local variables: a session password or a token in
        a local would otherwise be printed in clear on the technician's terminal."""
        self.bell()
        report = Traceback(show_locals=False, width=None, suppress=[rich])
        self._exit_renderables.append(Segments(self.console.render(report,
                                                                   self.console.options)))
        self._close_messages_no_wait()

    # --- loading and live updates ----------------------------------------------------------

    @work(exclusive=True, group="refresh")
    async def refresh_sessions(self) -> None:
        body = await self.client.sessions()
        if self.relay_ssh is None:
            self.relay_ssh = str((await self.client.relay_info()).get("ssh") or "") or None
        self.post_message(SessionsChanged(body["sessions"], body.get("limits")))

    @on(SessionsChanged)
    def _sessions_changed(self, message: SessionsChanged) -> None:
        if self._closing_down():
            return
        self.views = {v["id"]: v for v in message.views}
        self.limits = message.limits
        self._sessions.show(message.views, message.limits)
        if isinstance(self.screen, CreatedModal):
            view = self.views.get(self.screen.created["id"])
            if view:
                self.screen.update_from(view)
        ended = set()
        for (_kind, session_id), screen in self.panes.items():
            view = self.views.get(session_id)
            if view:
                screen.session.update({k: v for k, v in view.items() if k != "host_key"})
                if view["state"] == "ended":
                    ended.add(session_id)
        for session_id in ended:
            view = self.views[session_id]
            self._session_over(view)
            self.notify(f"The session with {clean(view['customer_email'])} ended: "
                        f"{ended_reason(view)}. Its panes have stopped.", severity="warning",
                        timeout=15)

    def _session_over(self, view: dict) -> None:
        """The session ended (the customer, the technician, expiry): its panes stop trying
        and say why, and its password is forgotten."""
        why = ended_reason(view)
        for kind in PANES:
            screen = self.panes.pop((kind, view["id"]), None)
            if screen is None:
                continue
            if isinstance(screen, RemoteScreen):
                screen.close_shell()
            screen.end(why)
            self.retired[_pane_name(kind, view["id"])] = screen
        self.retire_panes()
        self.forget_password(view["id"])

    @on(SessionsScreen.Back)
    def retire_panes(self) -> None:
        """Remove the panes of ended sessions that the technician is no longer looking at
        (one still on screen says why it stopped until they leave it)."""
        for name, screen in list(self.retired.items()):
            if not any(screen in stack for stack in self._screen_stacks.values()):
                del self.retired[name]
                self.uninstall_screen(name)
                screen.remove()

    @work(exclusive=True, group="events")
    async def follow_events(self) -> None:
        """Follow the relay's event stream; on any event reload the list. Reconnects forever."""
        attempt = 0
        while True:
            try:
                async for event in self.client.events(self.last_event_id):
                    attempt = 0
                    if event.kind == CONNECTED:
                        if self.relay_lost:
                            self._relay_back()
                        continue
                    self.last_event_id = event.id
                    self.refresh_sessions()
                if self.last_event_id is None:
                    self.last_event_id = 0
            except RelayError as exc:
                if exc.status == 401:
                    self._sessions.set_banner(explain(exc).text)
                    return
                if exc.status == 0 and await self._took_over_relay():
                    attempt = 0
                    continue
                if not self.relay_lost:
                    self._lost_relay(exc)
            await asyncio.sleep(retry_delay(attempt))
            attempt += 1

    async def _took_over_relay(self) -> bool:
        """The bundled relay this console used is gone: if the console that ran it has quit,
        run it here (said once); whether this console runs it now."""
        if self._take_over is None or self.runs_relay:
            return False
        from tui.embedded import EmbeddedError  # loaded already: the console runs embedded

        try:
            if not await self._take_over():
                return False
        except (EmbeddedError, OSError) as exc:  # a port, or its data dir, not to be had
            self._take_over = None  # said once; the banner says the relay is still lost
            why = exc.strerror or exc if isinstance(exc, OSError) else exc
            self.notify(f"The console that ran the bundled relay has quit, and this one cannot "
                        f"run it: {why}. Quit and start adhoc-console again.",
                        severity="error", timeout=30)
            return False
        self.runs_relay = True
        self.notify("The console that ran the bundled relay has quit: this console runs it "
                    f"now, at {self.client.base_url}. Customers' computers reconnect by "
                    "themselves; quitting this console stops it.", title="Bundled relay",
                    timeout=30)
        return True

    def _closing_down(self) -> bool:
        """The console is quitting: its screens are going, news from the relay is let go
        (drawn into a screen being removed, it crashed the console on the way out)."""
        return not self.is_running

    def _lost_relay(self, error: RelayError) -> None:
        if self._closing_down():
            return
        self.relay_lost = True
        self._sessions.set_banner(f"Lost the relay. {explain(error).text} The console "
                                  "reconnects by itself.")

    def _relay_back(self) -> None:
        if self._closing_down():
            return
        self.relay_lost = False
        self._sessions.set_banner(None)
        self.refresh_sessions()

    # --- actions on the selected session ---------------------------------------------------

    def _selected(self) -> dict | None:
        session_id = self._sessions.selected_id()
        view = self.views.get(session_id) if session_id else None
        if view is None:
            self.notify("Select a session first (n creates one).", severity="warning")
        return view

    def _selected_active(self) -> dict | None:
        """The selected session if it is active; else None, having said why."""
        view = self._selected()
        if view is not None and view["state"] != "active":
            self.notify("The customer has not activated this session yet."
                        if view["state"] == "pending" else "This session has ended.",
                        severity="warning")
            return None
        return view

    def action_new_session(self) -> None:
        def created(result: dict | None) -> None:
            if result:
                self.views[result["id"]] = result
                self._sessions.select(result["id"])  # what c or e do next is for this one
                self.refresh_sessions()
                self.push_screen(CreatedModal(result))

        # Toasts said what they had to; at 80x24 one would hide the code and the link.
        self.clear_notifications()
        self.push_screen(NewSessionModal(self.client), created)

    def action_remote(self) -> None:
        self._open_pane("shell")

    def action_dashboard(self) -> None:
        self._open_pane("dashboard")

    def action_chat(self) -> None:
        self._open_pane("chat")

    def action_files(self) -> None:
        self._open_pane("files")

    def _open_pane(self, kind: str) -> None:
        view = self._selected_active()
        if view is None:
            return
        feature = PANE_FEATURES[kind]
        if feature not in (view.get("features") or []):
            self.notify(f"The {kind} is not included in this company's plan.",
                        severity="warning")
            return
        if (kind, view["id"]) in self.panes:
            self.push_screen(_pane_name(kind, view["id"]))
            return
        password = self.passwords.get(view["id"])
        if password is None:
            self._ask_password(view, kind)
        else:
            self.open_pane(view, kind, password)

    def _ask_password(self, view: dict, kind: str, error: str | None = None) -> None:
        def got(password: Secret | None) -> None:
            if password:
                self.open_pane(view, kind, password)

        self.push_screen(PasswordModal(view, error), got)

    @work(exclusive=True, group="open-pane")
    async def open_pane(self, view: dict, kind: str, password: Secret) -> None:
        full = await self.client.session(view["id"])  # host key as the relay reports it now
        if full["state"] != "active":
            self.notify(f"The session with {clean(full['customer_email'])} is "
                        f"{'over' if full['state'] == 'ended' else 'not active yet'}: "
                        "nothing to connect to.", severity="warning")
            return
        try:
            await self.connector.host(full, password)
        except RelayError as exc:
            if exc.code == "wrong_password":
                self.forget_password(view["id"])
                self._ask_password(full, kind, exc.detail)
                return
            raise
        self.passwords[view["id"]] = password
        self._tell_route()
        screen = PANES[kind](full, self.connector, password)
        if kind in KEPT_PANES:
            # Installed, so leaving it does not unmount it: it keeps its state and channel.
            self.panes[(kind, view["id"])] = screen
            self.install_screen(screen, _pane_name(kind, view["id"]))
            await self.push_screen(_pane_name(kind, view["id"]))
        else:
            await self.push_screen(screen)

    def _tell_route(self) -> None:
        """Say how SSH reaches the relay (its port, or WebSocket, through a proxy or not)
        when that is new."""
        route = self.connector.route
        if route is not None and str(route) != self._route_told:
            self._route_told = str(route)
            self.notify(f"Connected to the relay: {route}.", timeout=6)

    def forget_password(self, session_id: str) -> None:
        self.passwords.pop(session_id, None)
        self.connector.forget(session_id)

    def action_end_session(self) -> None:
        view = self._selected()
        if view is None or view["state"] == "ended":
            return

        def confirmed(yes: bool | None) -> None:
            if yes:
                self._end(view["id"])

        self.push_screen(ConfirmModal(
            f"End the session with {clean(view['customer_email'])}? The customer's computer "
            "disconnects and the temporary host removes itself.", yes="End session"), confirmed)

    @work(group="end")
    async def _end(self, session_id: str) -> None:
        ended = await self.client.end_session(session_id)
        self.views[session_id] = ended
        self._session_over(ended)
        self.notify(f"Ended the session with {clean(ended['customer_email'])}.")
        self.refresh_sessions()

    @work(group="code")
    async def action_reissue_code(self) -> None:
        view = self._selected()
        if view is None:
            return
        if view["state"] != "pending":
            self.notify("Only a session waiting for its code can get a new one.",
                        severity="warning")
            return
        created = await self.client.reissue_code(view["id"])
        merged = {**view, **created, "join_url": "", "install_command": ""}
        await self.push_screen(CreatedModal(merged))

    @work(group="audit")
    async def action_audit(self) -> None:
        view = self._selected()
        if view is None:
            return
        rows = await self.client.audit(view["id"])
        await self.push_screen(AuditModal(view, rows))

    def action_details(self) -> None:
        view = self._selected()
        if view is not None:
            self.push_screen(DetailModal(view, self.login, self.relay_ssh))

    @work(group="openssh")
    async def action_openssh(self) -> None:
        """The ssh command for the selected session, and `-L`-style forwards (key o)."""
        view = self._selected_active()
        if view is None:
            return
        try:
            relay = sshconfig.relay_from(await self.client.relay_info(), self.login,
                                         self.client.base_url)
            command = sshconfig.ssh_command(relay, view["id"])
        except sshconfig.ConfigError as exc:
            self.notify(str(exc), severity="error", markup=False)
            return
        commands = [("With OpenSSH (pins nothing: compare the key with the customer):",
                     command),
                    ("After `adhoc-console ssh-config --write` (keys pinned):",
                     f"ssh {view['id']}")]  # a session id, as ssh_command checked
        request = await self.push_screen_wait(OpenSSHModal(
            f"{clean(view['customer_email'])} ({clean(view['id'], 40)})", commands,
            self.connector.open_forwards(view["id"]),
            "forward" in (view.get("features") or [])))
        if request is None:
            return
        password = self.passwords.get(view["id"])
        if password is None:
            password = await self.push_screen_wait(PasswordModal(view))
            if not password:
                return
        full = await self.client.session(view["id"])
        try:
            local = await self.connector.forward_local_port(full, password, request.local_port,
                                                            request.host, request.port)
        except RelayError as exc:
            if exc.code == "wrong_password":
                self.forget_password(view["id"])
            raise
        self.passwords[view["id"]] = password
        where = f"[{request.host}]:{request.port}" if ":" in request.host \
            else f"{request.host}:{request.port}"
        self.notify(f"Forwarding {local} to {clean(where, 260)} on the customer's side; the "
                    "customer is asked on their screen at the first connection.",
                    markup=False, timeout=10)

    def action_help(self) -> None:
        if isinstance(self.screen, HelpModal):
            self.screen.dismiss(None)
        else:
            self.push_screen(HelpModal(keys_of(self, self.screen)))

    async def on_unmount(self) -> None:
        await self.connector.close()
        await self.client.aclose()

    async def action_quit(self) -> None:
        waiting = self._customers_on_this_relay()
        if not waiting:
            await self._quit()
            return

        async def answered(yes: bool | None) -> None:
            self._asking_to_quit = False
            if yes:
                await self._quit()

        self._asking_to_quit = True
        self.push_screen(ConfirmModal(
            f"{waiting} on this computer's bundled relay. Quitting stops the relay: their "
            "computers go offline and keep trying to reconnect, and nobody can join an "
            "invitation, until you start adhoc-console again. Their sessions stay open and "
            "still end on time. Quit anyway?", yes="Quit"), answered)

    def _customers_on_this_relay(self) -> str | None:
        """Who quitting would cut off, in words (None: nobody, the relay is elsewhere, or the
        technician asks to quit a second time while being asked)."""
        if not self.runs_relay or self._asking_to_quit:
            return None
        active = sum(v["state"] == "active" for v in self.views.values())
        pending = sum(v["state"] == "pending" for v in self.views.values())
        parts = [f"{active} customer{'s' * (active != 1)} in a live session"] if active else []
        if pending:
            parts.append(f"{pending} invitation{'s' * (pending != 1)} waiting")
        return " and ".join(parts) or None

    async def _quit(self) -> None:
        for screen in self.panes.values():
            if isinstance(screen, RemoteScreen):
                screen.close_shell()
        await self.connector.close()
        self.exit()


def ended_reason(view: dict) -> str:
    """Why a session ended, in words (the relay keeps a code)."""
    reason = view.get("ended_reason") or ""
    return ENDED_WORDS.get(reason, clean(reason.replace("_", " "), 40) or "ended")
