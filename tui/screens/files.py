"""File manager: the technician's disk beside the customer's (SFTP through the relay).

Keyboard first, like Midnight Commander: tab switches pane, F5/c copies the marked or
highlighted entries to the other pane's folder (in the background, resumable, verified with
SHA-256), F6/r renames, F7/m makes a folder, F8/d deletes after asking, x cancels a copy.
Workers only post messages; the handlers below change the screen, and `_worker_changed` is
the one place a failure becomes something the technician sees.
"""

from __future__ import annotations

import asyncio
import contextlib

import asyncssh
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Input, ProgressBar, Static
from textual.worker import Worker, WorkerState

from tui.client import HostConnector, RelayError
from tui.failures import connection_lost, explain, reason
from tui.sanitize import clean, plain
from tui.screens.modals import ConfirmModal
from tui.screens.overwrite import OverwriteModal
from tui.transfers import (
    Copier,
    Entry,
    LocalFiles,
    Outcome,
    Plan,
    Progress,
    RemoteFiles,
    TransferError,
    check_name,
    make_plan,
)
from tui.widgets.bounded import PATH_MAX, BoundedInput
from tui.widgets.files import FilePane, human_size

LEAVE_KEY = "ctrl+right_square_bracket"
REFUSAL_WAIT = 5.0
SHOWN_PROBLEMS = 3
REFUSED = ("the customer's computer refused the file manager: it is not included in this "
           "session's plan (ask your company's admin for plus or premier)")
RECONNECT = "press ctrl+r to connect again once the host is back"

HELP = (
    "tab other pane · ↑↓ j k move · enter open · backspace up · space mark\n"
    "F5/c copy to the other pane · F6/r rename · F7/m new folder · F8/d delete\n"
    "x stop a copy (copy again to resume) · . hidden files · g go to · s sort\n"
    "ctrl+r reload · esc or ctrl+] back to the sessions list · ? hide this"
)


class RemoteReady(Message):
    def __init__(self, sftp: asyncssh.SFTPClient, home: str) -> None:
        super().__init__()
        self.sftp = sftp
        self.home = home


class RemoteUnavailable(Message):
    def __init__(self, reason: str, retry: bool) -> None:
        super().__init__()
        self.reason = reason
        self.retry = retry  # whether connecting again may help


class PlanReady(Message):
    def __init__(self, plan: Plan) -> None:
        super().__init__()
        self.plan = plan


class TransferProgress(Message):
    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self.progress = progress


class TransferDone(Message):
    def __init__(self, plan: Plan, outcome: Outcome) -> None:
        super().__init__()
        self.plan = plan
        self.outcome = outcome


class OperationDone(Message):
    def __init__(self, pane_id: str, text: str, select: str | None = None) -> None:
        super().__init__()
        self.pane_id = pane_id
        self.text = text
        self.select = select


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else \
        f"{rest // 60:02d}:{rest % 60:02d}"


def _problems(items: list[str]) -> str:
    text = "; ".join(clean(item, 120) for item in items[:SHOWN_PROBLEMS])
    if len(items) > SHOWN_PROBLEMS:
        text += f"; and {len(items) - SHOWN_PROBLEMS} more"
    return text


class FilesScreen(Screen):
    BINDINGS = [
        Binding("escape", "leave", "Back", id="files.leave"),
        Binding(LEAVE_KEY, "leave", "Back", show=False, priority=True, id="files.leave_pane"),
        Binding("tab", "switch", "Switch pane", show=False, id="files.switch"),
        Binding("f5,c", "copy", "Copy", id="files.copy"),
        Binding("f6,r", "rename", "Rename", id="files.rename"),
        Binding("f7,m", "mkdir", "Mkdir", id="files.mkdir"),
        Binding("f8,d", "delete", "Delete", id="files.delete"),
        Binding("x", "cancel", "Stop", id="files.cancel"),
        Binding("full_stop", "hidden", "Hidden files", show=False, id="files.hidden"),
        Binding("g", "goto", "Go to path", show=False, id="files.goto"),
        Binding("s", "sort", "Sort", show=False, id="files.sort"),
        Binding("ctrl+r", "reload", "Reload", show=False, id="files.reload"),
        Binding("question_mark", "help", "Help", id="files.help"),
    ]

    def __init__(self, session: dict, connector: HostConnector, password: str, *,
                 local_path: str | None = None, remote_path: str | None = None) -> None:
        super().__init__(name=f"files-{session['id']}")
        self.session = session
        self.connector = connector
        self.password = password
        self.local_path = local_path
        self.remote_path = remote_path
        self.sftp: asyncssh.SFTPClient | None = None
        self.conn: asyncssh.SSHClientConnection | None = None
        self.remote_fs: RemoteFiles | None = None
        self.local_fs = LocalFiles()
        self.active_id = "local-pane"
        self.prompt_mode: str | None = None
        self.prompt_original = ""  # what the prompt started with, as the host spelt it
        self.ended: str | None = None  # why the session ended, once it has
        self.transfer: Worker | None = None

    # --- layout ------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        host = self.session.get("host") or {}
        who = f"{clean(host.get('user'), 32)}@{clean(host.get('hostname'), 64)}"
        yield Static(f" Files · {who} · session {clean(self.session['id'], 40)} · ? for keys",
                     id="files-status", markup=False)
        with Horizontal(id="files-panes"):
            yield FilePane("local", self.local_fs, id="local-pane")
            yield FilePane("remote", None, id="remote-pane")
        with Horizontal(id="transfer-bar"):
            yield Static("", id="transfer-label", markup=False)
            yield ProgressBar(total=100, show_eta=False, id="transfer-progress")
            yield Static("", id="transfer-rate", markup=False)
        yield Static(HELP, id="files-help", markup=False)
        yield BoundedInput(id="files-prompt", max_length=PATH_MAX, what="a path or name")
        yield Footer(show_command_palette=False)  # ctrl+p still opens it

    def pane(self, pane_id: str) -> FilePane:
        return self.query_one(f"#{pane_id}", FilePane)

    @property
    def local(self) -> FilePane:
        return self.pane("local-pane")

    @property
    def remote(self) -> FilePane:
        return self.pane("remote-pane")

    @property
    def active(self) -> FilePane:
        return self.pane(self.active_id)

    @property
    def other(self) -> FilePane:
        return self.remote if self.active_id == "local-pane" else self.local

    def on_mount(self) -> None:
        self.query_one("#files-help").display = False
        self.query_one("#files-prompt").display = False
        self.query_one("#transfer-bar").display = False
        self.remote.show_message("connecting…")
        self.local.start(self.local_fs, self.local_path or ".")
        self.local.table.focus()
        self.connect()

    def end(self, why: str) -> None:
        """The session ended: stop the copy and the connection, and say so."""
        self.ended = why
        if self.transfer is not None:
            self.transfer.cancel()
        self.workers.cancel_group(self, "connect")
        if self.sftp is not None:
            self.sftp.exit()
            self.sftp = None
        self.remote_fs = None
        self.remote.fs = None
        self.remote.show_message(f"the session ended ({why})")

    def on_screen_resume(self) -> None:
        self.active.table.focus()

    def on_unmount(self) -> None:
        if self.sftp is not None:
            self.sftp.exit()
            self.sftp = None

    def on_descendant_focus(self, event) -> None:
        for node in (event.widget, *event.widget.ancestors):
            if isinstance(node, FilePane):
                self.active_id = node.id or self.active_id
                break

    # --- connecting ---------------------------------------------------------------------------

    @work(exclusive=True, group="connect", exit_on_error=False)
    async def connect(self) -> None:
        try:
            conn = await self.connector.host(self.session, self.password)
        except RelayError as exc:
            self.post_message(RemoteUnavailable(exc.detail, exc.code != "wrong_password"))
            return
        self.conn = conn
        try:
            sftp = await conn.start_sftp_client(path_errors="surrogateescape")
        except (asyncssh.Error, OSError) as exc:
            planned = "files" in (self.session.get("features") or [])
            if conn.is_closed() or (connection_lost(exc) and planned):
                # The connection went (a network drop): not a refusal, whatever it looks like.
                self.post_message(RemoteUnavailable(reason(exc), True))
                return
            refusal = await self._refusal(conn)
            if not refusal and isinstance(exc, asyncssh.ChannelOpenError):
                # The agent refuses the sftp subsystem outright when the plan lacks "files".
                refusal = REFUSED
            self.post_message(RemoteUnavailable(refusal or reason(exc), not refusal))
            return
        try:
            home = self.remote_path or await sftp.realpath(".")
        except asyncssh.SFTPError:
            home = "/"
        self.post_message(RemoteReady(sftp, home))

    @staticmethod
    async def _refusal(conn: asyncssh.SSHClientConnection) -> str:
        """What the host says when it refuses SFTP (the agent writes the reason on stderr)."""
        with contextlib.suppress(asyncssh.Error, OSError, TimeoutError):
            process = await conn.create_process(subsystem="sftp", encoding="utf-8",
                                                errors="replace")
            try:
                await asyncio.wait_for(process.wait_closed(), REFUSAL_WAIT)
                return (await process.stderr.read(4096)).strip()
            finally:
                process.close()
        return ""

    @on(RemoteReady)
    def _remote_ready(self, message: RemoteReady) -> None:
        if self.sftp is not None:
            self.sftp.exit()
        self.sftp = message.sftp
        self.remote_fs = RemoteFiles(message.sftp)
        self.remote.start(self.remote_fs, self.remote.path or message.home)

    @on(RemoteUnavailable)
    def _remote_unavailable(self, message: RemoteUnavailable) -> None:
        why = clean(message.reason, 200).rstrip(".")
        self.remote.show_message(f"unavailable: {why}" + (f"; {RECONNECT}" if message.retry
                                                          else ""))
        self.notify(f"The customer's files are unavailable: {why}"
                    + (f"; {RECONNECT}." if message.retry else "."), severity="error",
                    timeout=10)

    # --- the one place failures become visible ----------------------------------------------

    @on(Worker.StateChanged)
    def _worker_changed(self, event: Worker.StateChanged) -> None:
        event.stop()
        if not self.is_attached:
            return
        worker = event.worker
        if worker is self.transfer and event.state in (WorkerState.CANCELLED,
                                                       WorkerState.ERROR):
            self.transfer = None
            if event.state == WorkerState.CANCELLED:
                self._bar_result("Copy stopped; copy the same files again to resume.")
                self.notify("Copy stopped. Copy the same files again to resume.",
                            severity="warning")
            self.local.reload()
            self.remote.reload()
        if event.state == WorkerState.ERROR and worker.error is not None:
            if worker.group == "transfer":
                self._bar_result(f"Copy failed: {explain(worker.error).text}")
            self.app.report_failure(worker.error)  # the app's one place for failures

    # --- panes and prompts --------------------------------------------------------------------

    def action_switch(self) -> None:
        if self.prompt_mode is not None:
            return
        self.other.table.focus()

    def action_hidden(self) -> None:
        for pane in (self.local, self.remote):
            pane.toggle_hidden()

    def action_sort(self) -> None:
        key = self.active.cycle_sort()
        self.notify(f"Sorted by {key}.", timeout=2)

    def action_reload(self) -> None:
        if self.ended is not None and self.active is self.remote:
            self.notify(f"The session ended ({self.ended}): the customer's files are gone "
                        "from here.", severity="warning")
            return
        lost = self.conn is None or self.conn.is_closed()
        if self.active is self.remote and lost and self.transfer is None:
            # The host dropped (network, agent restart): connect again, then list.
            self.remote_fs = None
            self.remote.fs = None
            self.remote.show_message("connecting…")
            self.connect()
            return
        self.active.reload()

    def action_help(self) -> None:
        help_text = self.query_one("#files-help")
        help_text.display = not help_text.display

    def _ask(self, mode: str, label: str, value: str = "") -> None:
        """Ask for a name or path. A host's name that the prompt starts with is shown
        cleaned (an Input draws its value as it is); given back unchanged, it means the
        name itself."""
        self.prompt_mode = mode
        self.prompt_original = value
        prompt = self.query_one("#files-prompt", Input)
        prompt.placeholder = clean(label, 200)
        prompt.border_title = plain(label, 200)
        prompt.value = clean(value, 4096)
        prompt.display = True
        prompt.focus()

    def _close_prompt(self) -> None:
        self.prompt_mode = None
        prompt = self.query_one("#files-prompt", Input)
        prompt.display = False
        self.active.table.focus()

    def action_goto(self) -> None:
        if self.active.fs is None:
            return
        self._ask("goto", f"go to ({self.active.fs.label} path)", self.active.path)

    def action_mkdir(self) -> None:
        if self.active.fs is None:
            return
        self._ask("mkdir", f"new folder in {clean(self.active.path, 60)}")

    def action_rename(self) -> None:
        entry = self.active.highlighted()
        if self.active.fs is None or entry is None:
            return
        self._ask("rename", f"rename {clean(entry.name, 60)} to", entry.name)

    @on(Input.Submitted, "#files-prompt")
    def _prompt_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        mode, value, pane = self.prompt_mode, event.value.strip(), self.active
        if value == clean(self.prompt_original, 4096).strip():
            value = self.prompt_original.strip()
        self._close_prompt()
        if not value or pane.fs is None:
            return
        if mode == "goto":
            pane.go_to(value)
            return
        try:
            check_name(value)
        except TransferError:
            self.notify("A name cannot be empty, . or .., or contain / or \\.",
                        severity="error")
            return
        if mode == "mkdir":
            self.file_operation(pane.id or "", "mkdir", pane.fs.join(pane.path, value), value)
        elif mode == "rename":
            entry = pane.highlighted()
            if entry is not None and value != entry.name:
                self.file_operation(pane.id or "", "rename", entry.path,
                                    pane.fs.join(pane.path, value), value)

    def action_delete(self) -> None:
        pane = self.active
        chosen = pane.chosen()
        if pane.fs is None or not chosen:
            return
        names = ", ".join(clean(e.name, 120) for e in chosen[:SHOWN_PROBLEMS])
        if len(chosen) > SHOWN_PROBLEMS:
            names += f" and {len(chosen) - SHOWN_PROBLEMS} more"
        where = (f"the computer of {clean(self.session.get('customer_email'), 120)}"
                 if pane is self.remote else "this computer")
        question = f"Delete {names} from {where}? Folders are deleted with everything in them."

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.delete_entries(pane.id or "", chosen)

        self.app.push_screen(ConfirmModal(question, yes="Delete"), confirmed)

    @work(group="fileop", exit_on_error=False)
    async def file_operation(self, pane_id: str, what: str, path: str, *args: str) -> None:
        fs = self.pane(pane_id).fs
        assert fs is not None
        if what == "mkdir":
            await fs.mkdir(path)
            self.post_message(OperationDone(pane_id, f"Made the folder {args[0]}.", args[0]))
        else:
            await fs.rename(path, args[0])
            self.post_message(OperationDone(pane_id, f"Renamed to {args[1]}.", args[1]))

    @work(group="fileop", exit_on_error=False)
    async def delete_entries(self, pane_id: str, entries: list[Entry]) -> None:
        fs = self.pane(pane_id).fs
        assert fs is not None
        for entry in entries:
            await fs.delete(entry)
        self.post_message(OperationDone(pane_id, f"Deleted {len(entries)} "
                                        f"{'entry' if len(entries) == 1 else 'entries'}."))

    @on(OperationDone)
    def _operation_done(self, message: OperationDone) -> None:
        self.notify(clean(message.text, 200), timeout=3)
        pane = self.pane(message.pane_id)
        pane.marked.clear()
        pane.reload(message.select)

    def action_leave(self) -> None:
        if self.prompt_mode is not None:
            self._close_prompt()
            return
        if self.transfer is None:
            self.app.pop_screen()
            return

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.action_cancel()
                self.app.pop_screen()

        self.app.push_screen(ConfirmModal(
            "A copy is running. Leaving stops it; copy the same files again to resume.",
            yes="Stop and leave"), confirmed)

    # --- copying ------------------------------------------------------------------------------

    def action_copy(self) -> None:
        source, destination = self.active, self.other
        if source.fs is None or destination.fs is None or self.remote_fs is None:
            self.notify("The customer's files are not available.", severity="warning")
            return
        if self.transfer is not None:
            self.notify("A copy is running: wait for it, or stop it with x.",
                        severity="warning")
            return
        chosen = source.chosen()
        if not chosen:
            self.notify("Nothing to copy: highlight or mark (space) files first.",
                        severity="warning")
            return
        direction = "upload" if source is self.local else "download"
        self.plan_copy(direction, chosen, destination.path)

    @work(group="plan", exit_on_error=False)
    async def plan_copy(self, direction: str, chosen: list[Entry], target: str) -> None:
        assert self.remote_fs is not None
        source, destination = ((self.local_fs, self.remote_fs) if direction == "upload"
                               else (self.remote_fs, self.local_fs))
        plan = await make_plan(direction, source, destination, chosen, target)
        self.post_message(PlanReady(plan))

    @on(PlanReady)
    def _plan_ready(self, message: PlanReady) -> None:
        plan = message.plan
        if not plan.files and not plan.folders:
            self.notify(f"Nothing to copy. Skipped: {_problems(plan.skipped)}",
                        severity="warning", timeout=10)
            return
        if not plan.conflicts:
            self._start(plan)
            return

        def answered(replace: bool | None) -> None:
            if replace:
                self._start(plan)
            else:
                self.notify("Nothing was copied; the existing files are unchanged.")

        self.app.push_screen(OverwriteModal(["/".join(rel) for rel in plan.conflicts],
                                            plan.target), answered)

    def _start(self, plan: Plan) -> None:
        if self.transfer is not None:
            return
        verb = "Uploading" if plan.direction == "upload" else "Downloading"
        self.query_one("#transfer-bar").display = True
        progress = self.query_one("#transfer-progress", ProgressBar)
        progress.display = True
        progress.update(total=max(plan.total, 1), progress=0)
        self.query_one("#transfer-label", Static).update(
            f"{verb} {len(plan.files)} file{'s' if len(plan.files) != 1 else ''}")
        self.query_one("#transfer-rate", Static).update("")
        self.transfer = self.run_copy(plan)
        self.refresh_bindings()

    @work(group="transfer", exit_on_error=False)
    async def run_copy(self, plan: Plan) -> None:
        assert self.sftp is not None
        copier = Copier(self.sftp, plan, report=lambda p: self.post_message(TransferProgress(p)))
        outcome = await copier.run()
        self.post_message(TransferDone(plan, outcome))

    @on(TransferProgress)
    def _progress(self, message: TransferProgress) -> None:
        if self.transfer is None:
            return
        p = message.progress
        self.query_one("#transfer-progress", ProgressBar).update(total=max(p.total, 1),
                                                                 progress=p.done)
        self.query_one("#transfer-label", Static).update(
            f"{p.phase} {clean(p.name, 40)}")
        self.query_one("#transfer-rate", Static).update(
            f"{human_size(int(p.speed))}/s ETA {format_eta(p.eta)}")

    @on(TransferDone)
    def _done(self, message: TransferDone) -> None:
        self.transfer = None
        outcome = message.outcome
        count = len(outcome.copied)
        text = f"Copied {count} file{'s' if count != 1 else ''}, SHA-256 verified"
        if outcome.resumed:
            text += f" ({len(outcome.resumed)} resumed)"
        text += "."
        self._bar_result(text if not outcome.failed else
                         f"{count} copied, {len(outcome.failed)} failed")
        if outcome.failed:
            self.notify(f"{text} Failed: {_problems(outcome.failed)}", severity="error",
                        timeout=15)
        else:
            self.notify(text, timeout=5)
        if outcome.skipped:
            self.notify(f"Skipped: {_problems(outcome.skipped)}", severity="warning",
                        timeout=15)
        self.local.reload()
        self.remote.reload()

    def _bar_result(self, text: str) -> None:
        self.refresh_bindings()
        self.query_one("#transfer-bar").display = True
        self.query_one("#transfer-progress").display = False
        self.query_one("#transfer-label", Static).update(text)
        self.query_one("#transfer-rate", Static).update("")

    def action_cancel(self) -> None:
        if self.transfer is not None:
            self.transfer.cancel()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # While a name is being typed, only the keys that finish or leave the prompt act.
        if self.prompt_mode is not None and action not in ("leave",):
            return False
        if action == "cancel" and self.transfer is None:
            return False  # keeps the footer within 80 columns when there is nothing to stop
        return True
