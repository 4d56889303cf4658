"""A seeded chaos run: the real console (Pilot) against a real relay process and real agent
processes, random user actions interleaved with faults, and the console's promises checked
after every step (issue 13, "a property test that keeps it so").

Actions are what a technician does with keys: open and leave every pane kind (with the right
or a wrong session password), type, filter, sort, resize, create, end, re-issue a code, open
the audit, details and help, dismiss dialogs. Faults are what the world does: the relay
restarted or killed with -9 (and down for a few steps), the agent killed, the host's network
silently dropped (tests/faults/proxy.py, which the agent and the console both dial), the
session ended by the customer. After every step: the app is running, no exception escaped
and none was a bug of ours, no password or token is on screen, and every error shown says
what to do; every few steps, the relay's log and the agent's output hold no secret.

The run is decided by its seed: ADHOC_CHAOS_SEED replays one (the seed is printed first,
and named in any failure). tests/faults/test_console_chaos.py runs a short one in the
suite; bench/console_soak.py runs a long one and prints steps survived and faults injected.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import string
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from textual.widgets import DataTable, Input

from tests.faults.proxy import DeadLinkProxy
from tests.ports import free_port
from tests.support import (
    PASSWORD,
    SESSION_PASSWORD,
    AgentProcess,
    Api,
    RelayProcess,
    provision_store,
)
from tests.tui.helpers import screen_text
from tui.app import ConsoleApp
from tui.client import RelayClient
from tui.screens.audit import AuditModal
from tui.screens.created import CreatedModal
from tui.screens.files import FilesScreen
from tui.screens.modals import ConfirmModal, PasswordModal
from tui.screens.new_session import NewSessionModal
from tui.screens.pane import PaneScreen
from tui.screens.sessions import SessionsScreen
from tui.widgets.terminal import TerminalView

SIZES = ((80, 24), (100, 30), (120, 40))
# Words of an error a technician can act on: it says what to check, do or wait for.
NEXT_STEP_WORDS = ("check", "try", "wait", "log in", "press", "again", "reconnect", "retry",
                   "send", "type", "end one", "ask", "copy", "resume", "report", "use ")
KEY_NAMES = {" ": "space", "[": "left_square_bracket", "]": "right_square_bracket",
             "-": "minus", "_": "underscore", ".": "full_stop", "/": "slash",
             "\\": "backslash", ":": "colon", "@": "at"}
ENV = {"ADHOC_HOST_BACKOFF_CAP": "2", "ADHOC_HOST_SHELL": "/bin/sh",
       "ADHOC_HOST_KEEPALIVE": "2", "ADHOC_RELAY_KEEPALIVE": "2",
       "ADHOC_CONSOLE_KEEPALIVE": "2"}


def seed_from_env() -> int:
    value = os.environ.get("ADHOC_CHAOS_SEED")
    if value and value != "random":
        return int(value)
    return random.SystemRandom().randrange(1, 2**31)


class Agent(AgentProcess):
    """`adhoc-host join` for one session (as tests.support starts it), its output read as
    it comes so a long run never fills the pipe."""

    def start(self, *extra: str) -> None:
        super().start(*extra)
        self.reader = threading.Thread(target=self._drain, daemon=True)
        self.reader.start()

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        with contextlib.suppress(ValueError, OSError):
            for line in self.proc.stdout:
                self.output.append(line)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(15)

    def stop(self) -> None:
        self.signal(signal.SIGKILL)
        if self.proc is not None and self.proc.stdout is not None:
            self.reader.join(5)  # the pipe ends with the process
            self.proc.stdout.close()


@dataclass
class Report:
    seed: int
    steps: int = 0
    actions: Counter = field(default_factory=Counter)
    faults: Counter = field(default_factory=Counter)
    seconds: Counter = field(default_factory=Counter)  # time spent, by action or fault
    log: list[str] = field(default_factory=list)  # the last steps, for a failure message

    def note(self, what: str) -> None:
        self.log = [*self.log[-24:], f"{self.steps}: {what}"]

    def summary(self) -> str:
        return (f"seed {self.seed}: {self.steps} steps survived; faults "
                f"{dict(sorted(self.faults.items()))}; actions "
                f"{dict(sorted(self.actions.items()))}")


class ChaosFailure(AssertionError):
    pass


class World:
    """The relay, the proxy both sides dial, the current session and its agent."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.proxy = DeadLinkProxy()
        self.relay: RelayProcess | None = None
        self.ports = (free_port(), free_port())
        self.relay_up = False
        self.down_for = 0  # steps left before a stopped relay comes back
        self.cut_for = 0  # steps left before a cut link is mended
        self.agents: list[Agent] = []
        self.agent: Agent | None = None
        self.session: dict | None = None
        self.token = ""
        self.codes: list[str] = []
        self.api: Api | None = None  # alice's, logged in once (a login costs an argon2 hash)

    async def start(self) -> None:
        data_dir = self.root / "relay"
        await provision_store(data_dir, [("Acme", "plus", 5, ["alice", "bob"])])
        await self.proxy.start()
        self.proxy.upstream = ("127.0.0.1", self.ports[1])
        self.relay = RelayProcess(data_dir, ("--ssh-public", f"127.0.0.1:{self.proxy.port}"))
        self.start_relay()
        self.api = await Api(self.relay.base_url).__aenter__()
        self.token = self.api.token

    def start_relay(self) -> None:
        assert self.relay is not None
        self.relay.start(http_port=self.ports[0], ssh_port=self.ports[1])
        self.relay_up = True

    async def stop(self) -> None:
        if self.api is not None:
            await self.api.__aexit__(None, None, None)
        for agent in self.agents:
            agent.stop()
        if self.relay is not None:
            self.relay.stop()
        await self.proxy.close()

    async def ensure_session(self) -> None:
        """A live session of alice's with an agent on it, when the relay is there to ask."""
        if not self.relay_up:
            return
        api = self.api
        assert api is not None
        if self.session is not None:
            view = await api.session(self.session["id"])
            if view["state"] != "ended" and self.agent is not None and self.agent.alive():
                return
            if view["state"] != "ended":
                await api.client.post(f"/api/v1/sessions/{view['id']}/end")
        created = await api.create_session(f"c{len(self.agents)}@example.com")
        self.codes.append(created["security_code"])
        self.adopt(created)

    def adopt(self, created: dict) -> None:
        """Start an agent on a session just created (by the API or in the console)."""
        if self.agent is not None:
            self.agent.stop()
        workdir = self.root / f"agent{len(self.agents)}"
        workdir.mkdir()
        self.session = created
        self.agent = Agent(created["join_url"], created["security_code"], workdir)
        self.agents.append(self.agent)
        self.agent.start()

    def secrets(self) -> list[str]:
        return [SESSION_PASSWORD, PASSWORD, self.token]

    def logs(self) -> str:
        assert self.relay is not None
        text = self.relay.log_path.read_text(errors="replace")
        return text + "".join(line for agent in self.agents for line in agent.output)


Step = Callable[["Chaos"], Awaitable[None]]


class Chaos:
    def __init__(self, world: World, app: ConsoleApp, pilot, rng: random.Random,
                 report: Report) -> None:
        self.world, self.app, self.pilot, self.rng, self.report = world, app, pilot, rng, report
        self.notices_seen = 0

    # --- moving around the console --------------------------------------------------------

    async def settle(self, seconds: float = 0.05) -> None:
        await self.pilot.pause(seconds)

    async def wait(self, predicate: Callable[[], object], timeout: float = 3.0) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline or not self.app.is_running:
                return False
            await self.pilot.pause(0.05)
        return True

    async def to_list(self) -> None:
        """Back to the sessions list, whatever is on screen (a running copy is stopped)."""
        for _ in range(8):
            screen = self.app.screen
            if isinstance(screen, SessionsScreen):
                if screen.query_one("#filter", Input).display:
                    await self.pilot.press("escape")
                    continue
                return
            if isinstance(screen, ConfirmModal):
                await self.pilot.press("y" if screen.yes == "Stop and leave" else "n")
            elif isinstance(screen, (PaneScreen, FilesScreen)):
                # The shell pane leaves once no second press follows (twice goes to the
                # shell): wait for it rather than press again.
                await self.pilot.press("ctrl+right_square_bracket")
                await self.wait(lambda left=screen: self.app.screen is not left, timeout=2)
                continue
            else:
                await self.pilot.press("escape")
            await self.settle()

    async def select_session(self) -> bool:
        """Put the cursor on the current session's row with j and k."""
        session = self.world.session
        screen = self.app.sessions_screen
        if session is None or not await self.wait(
                lambda: session["id"] in screen.views, timeout=1):
            return False
        for _ in range(30):
            selected = screen.selected_id()
            if selected == session["id"]:
                return True
            ids = [v["id"] for v in screen._shown]
            if session["id"] not in ids or selected not in ids:
                return False
            await self.pilot.press("j" if ids.index(session["id"]) > ids.index(selected)
                                   else "k")
        return False

    async def password(self, right: bool) -> None:
        """Answer the password prompt if one comes (a known session's password is kept)."""
        told = len(self.app.notices)
        asked = lambda: isinstance(self.app.screen, PasswordModal) and \
            self.app.screen.query(Input)  # noqa: E731
        opened = lambda: isinstance(self.app.screen, (PaneScreen, FilesScreen))  # noqa: E731
        await self.wait(lambda: asked() or opened() or len(self.app.notices) > told, 1.5)
        if asked():
            self.app.screen.query_one(Input).value = (
                SESSION_PASSWORD if right else "wrong-" + self.word())
            await self.pilot.press("enter")
            await self.settle(0.1)

    def word(self, size: int = 8) -> str:
        alphabet = string.ascii_letters + string.digits + " []-_./\\:@"
        return "".join(self.rng.choice(alphabet) for _ in range(size))

    # --- actions ------------------------------------------------------------------------------

    async def open_pane(self, key: str) -> None:
        await self.to_list()
        if not await self.select_session():
            return
        await self.pilot.press(key)
        await self.password(right=self.rng.random() > 0.2)
        told = len(self.app.notices)
        shown = (PaneScreen, FilesScreen, PasswordModal)
        await self.wait(lambda: isinstance(self.app.screen, shown)
                        or len(self.app.notices) > told, 1.5)

    async def act_shell(self) -> None:
        await self.open_pane("r")

    async def act_files(self) -> None:
        await self.open_pane("f")
        if isinstance(self.app.screen, FilesScreen):
            for key in self.rng.sample(["tab", "j", "k", "full_stop", "s", "ctrl+r",
                                        "question_mark", "enter", "backspace"], 3):
                await self.pilot.press(key)
                await self.settle()

    async def act_dashboard(self) -> None:
        await self.open_pane("d")
        if isinstance(self.app.screen, PaneScreen):
            await self.pilot.press(self.rng.choice("1234s+-"))

    async def act_chat(self) -> None:
        await self.open_pane("t")

    async def act_type(self) -> None:
        """Type into what takes text now (a shell: an echo; the chat box; a prompt)."""
        focused = self.app.focused
        if isinstance(focused, TerminalView):
            text = "echo " + self.word(self.rng.randrange(1, 12)).replace("\\", "")
        elif isinstance(focused, Input):
            text = self.word(self.rng.randrange(1, 12))
        else:
            return  # keys on a list or a table are commands, not text
        for char in text:
            await self.pilot.press(KEY_NAMES.get(char, char))
        await self.pilot.press("enter")

    async def act_leave(self) -> None:
        await self.to_list()

    async def act_filter(self) -> None:
        await self.to_list()
        await self.pilot.press("slash")
        if await self.wait(lambda: isinstance(self.app.focused, Input), timeout=1):
            await self.act_type()
        await self.pilot.press("escape")

    async def act_sort(self) -> None:
        await self.to_list()
        await self.pilot.press("s")

    async def act_resize(self) -> None:
        await self.pilot.resize_terminal(*self.rng.choice(SIZES))
        await self.settle(0.1)

    async def act_create(self) -> None:
        """n, the form filled in (sometimes wrongly), create; a session it makes gets an
        agent, which activates with the code the dialog shows."""
        await self.to_list()
        await self.pilot.press("n")
        if not await self.wait(lambda: isinstance(self.app.screen, NewSessionModal)
                               and self.app.screen.query("#email")):
            return
        form = self.app.screen
        form.query_one("#email", Input).value = self.rng.choice(
            ["new@example.com", "x", "[a=:]@example.com", "a@b.c"])
        password = self.rng.choice([SESSION_PASSWORD, "short", "abcdefghij"])
        form.query_one("#password", Input).value = password
        form.query_one("#confirm", Input).value = password
        form.query_one("#create").press()
        await self.wait(lambda: isinstance(self.app.screen, CreatedModal) or str(
            form.query_one("#error").render()) not in ("", "Creating…"), timeout=10)
        if isinstance(self.app.screen, CreatedModal):
            created = self.app.screen.created
            self.world.codes.append(created["security_code"])
            if password == SESSION_PASSWORD:
                if self.world.agent is not None:
                    self.world.agent.stop()
                self.world.adopt(created)
            await self.pilot.press("enter")

    async def act_end(self) -> None:
        await self.to_list()
        if not await self.select_session():
            return
        await self.pilot.press("e")
        if await self.wait(lambda: isinstance(self.app.screen, ConfirmModal)):
            await self.pilot.press(self.rng.choice("yn"))

    async def act_reissue(self) -> None:
        await self.to_list()
        await self.pilot.press(self.rng.choice("jk"), "c")
        await self.settle(0.2)
        if isinstance(self.app.screen, CreatedModal):
            self.world.codes.append(self.app.screen.created.get("security_code", ""))

    async def act_audit(self) -> None:
        await self.to_list()
        await self.pilot.press("a")
        if await self.wait(lambda: isinstance(self.app.screen, AuditModal)
                           and self.app.screen.query(DataTable)):
            await self.pilot.press("j", "enter")
            await self.settle()

    async def act_details(self) -> None:
        await self.to_list()
        await self.pilot.press("i")

    async def act_help(self) -> None:
        await self.pilot.press("question_mark")

    async def act_dismiss(self) -> None:
        await self.pilot.press(self.rng.choice(["escape", "enter", "n", "q"])
                               if not isinstance(self.app.screen, SessionsScreen) else "j")

    # --- faults -------------------------------------------------------------------------------

    async def fault_relay_restart(self) -> None:
        assert self.world.relay is not None
        if self.world.relay_up:
            self.world.relay.stop()
            self.world.start_relay()

    async def fault_relay_kill9(self) -> None:
        assert self.world.relay is not None
        if self.world.relay_up:
            self.world.relay.kill9()
            self.world.relay_up = False
            self.world.down_for = self.rng.randrange(0, 5)

    async def fault_relay_stop(self) -> None:
        assert self.world.relay is not None
        if self.world.relay_up:
            self.world.relay.stop()
            self.world.relay_up = False
            self.world.down_for = self.rng.randrange(1, 6)

    async def fault_agent_kill(self) -> None:
        if self.world.agent is not None:
            self.world.agent.signal(signal.SIGKILL)

    async def fault_network_drop(self) -> None:
        if self.world.cut_for == 0:
            self.world.proxy.cut()
            self.world.cut_for = self.rng.randrange(1, 6)

    async def fault_customer_ends(self) -> None:
        if self.world.agent is not None:
            self.world.agent.signal(signal.SIGTERM)

    async def heal(self) -> None:
        """The world mends on its own schedule: a stopped relay comes back, a cut link too."""
        if not self.world.relay_up:
            if self.world.down_for <= 0:
                self.world.start_relay()
            self.world.down_for -= 1
        if self.world.cut_for > 0:
            self.world.cut_for -= 1
            if self.world.cut_for == 0:
                self.world.proxy.mend()
        with contextlib.suppress(Exception):
            await self.world.ensure_session()

    # --- the promises -------------------------------------------------------------------------

    def check(self, logs: bool = False) -> None:
        app, report = self.app, self.report
        problems = []
        if not app.is_running or app._exception is not None or app.return_code:
            problems.append(f"the console stopped: {app._exception!r}")
        if app.unexpected:
            problems.append(f"a bug of ours reached the user: {app.unexpected!r}")
        drawn = screen_text(app) if app.is_running else ""
        for secret in self.world.secrets():
            if secret and secret in drawn:
                problems.append("a secret is on screen")
        notices = list(app.notices)[self.notices_seen:]
        self.notices_seen = len(app.notices)
        for severity, text in notices:
            if severity == "error" and not actionable(text):
                problems.append(f"an error that says nothing to do: {text!r}")
        if logs:
            written = self.world.logs()
            for secret in [*self.world.secrets(), *self.world.codes]:
                if secret and secret in written:
                    problems.append("a secret is in the relay's log or the agent's output")
            relay_log = self.world.relay.log_path.read_text(errors="replace")
            if "Traceback" in relay_log:
                at = relay_log.index("Traceback")
                problems.append("the relay's log holds a traceback:\n"
                                + relay_log[at:at + 12000][-2500:])
        if problems:
            raise ChaosFailure(f"chaos seed {report.seed} (replay: ADHOC_CHAOS_SEED="
                               f"{report.seed}) failed after step {report.steps}: "
                               + "; ".join(problems) + "\nlast steps:\n"
                               + "\n".join(report.log) + f"\nscreen:\n{drawn}")


def actionable(text: str) -> bool:
    lowered = text.lower()
    return (bool(text.strip()) and "traceback" not in lowered
            and any(word in lowered for word in NEXT_STEP_WORDS))


ACTIONS = {"shell": (Chaos.act_shell, 8), "files": (Chaos.act_files, 5),
           "dashboard": (Chaos.act_dashboard, 5), "chat": (Chaos.act_chat, 5),
           "type": (Chaos.act_type, 8), "leave": (Chaos.act_leave, 8),
           "filter": (Chaos.act_filter, 3), "sort": (Chaos.act_sort, 2),
           "resize": (Chaos.act_resize, 3), "create": (Chaos.act_create, 3),
           "end": (Chaos.act_end, 2), "reissue": (Chaos.act_reissue, 2),
           "audit": (Chaos.act_audit, 3), "details": (Chaos.act_details, 2),
           "help": (Chaos.act_help, 2), "dismiss": (Chaos.act_dismiss, 5)}
FAULTS = {"relay restart": (Chaos.fault_relay_restart, 2),
          "relay kill -9": (Chaos.fault_relay_kill9, 2),
          "relay down": (Chaos.fault_relay_stop, 1),
          "agent kill": (Chaos.fault_agent_kill, 1),
          "network drop": (Chaos.fault_network_drop, 2),
          "customer ends": (Chaos.fault_customer_ends, 1)}
FAULT_SHARE = 0.12


async def run(root: Path, *, seed: int, steps: int, seconds: float,
              on_step: Callable[[Report], None] | None = None) -> Report:
    """`steps` steps of seeded chaos (or as many as fit in `seconds`); raises ChaosFailure
    with the seed when a promise breaks."""
    rng = random.Random(seed)
    report = Report(seed)
    print(f"chaos seed {seed} (replay: ADHOC_CHAOS_SEED={seed})", flush=True)
    world = World(root)
    saved = {key: os.environ.get(key) for key in ENV}
    os.environ.update(ENV)  # for the relay and agent processes, and this console
    try:
        await world.start()
        await world.ensure_session()
        assert world.relay is not None
        app = ConsoleApp(RelayClient(world.relay.base_url, world.token), "alice")
        async with app.run_test(size=rng.choice(SIZES), notifications=True) as pilot:
            chaos = Chaos(world, app, pilot, rng, report)
            deadline = time.monotonic() + seconds
            while report.steps < steps and time.monotonic() < deadline:
                report.steps += 1
                if rng.random() < FAULT_SHARE:
                    name, step = pick(rng, FAULTS)
                    report.faults[name] += 1
                else:
                    name, step = pick(rng, ACTIONS)
                    report.actions[name] += 1
                report.note(name)
                started = time.monotonic()
                try:
                    await asyncio.wait_for(step(chaos), 60)
                except TimeoutError:
                    report.note(f"{name} took over 60 s")
                await chaos.heal()
                report.seconds[name] += time.monotonic() - started
                await chaos.settle()
                chaos.check(logs=report.steps % 25 == 0)
                if on_step is not None:
                    on_step(report)
            chaos.check(logs=True)
            await chaos.to_list()
            await app.action_quit()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        await world.stop()
        shutil.rmtree(root, ignore_errors=True)
    return report


def pick(rng: random.Random, table: dict[str, tuple[Step, int]]) -> tuple[str, Step]:
    names = list(table)
    name = rng.choices(names, weights=[table[n][1] for n in names])[0]
    return name, table[name][0]
