"""Console: terminal pane throughput with key latency, and the CPU of a 1,000-session list.

Run: python -m bench.console [--seconds 5] [--sessions 1000]

Terminal pane: tui/widgets/terminal.py's TerminalView in a bare Textual app (run_test, 80x24,
headless) is fed realistic shell output at an offered rate from a task in the same event loop
(as the SSH client feeds it), while a key is pressed every 100 ms; the lag is press to the
pane's send callback. "Consumed" is output the pane parsed while it was fed (fed minus dropped
minus still pending, over the feeding time). The anchor is bittty alone parsing the same bytes
(bench.emulator_parse); the pane's bulk path for plain lines can beat it. A row meets the target
when the pane consumed 1.5 MB/s, or everything offered (within 3%) when that was 1.5 MB/s,
with key p95 within 50 ms.

Sessions list: tui/screens/sessions.py's SessionsScreen with N synthetic sessions, and with a
screenful, and its own one-second tick; the process's CPU time over 2 x --seconds, against the
same screen with none. A second row also hands the screen the whole list again once a second,
as the console does after each relay event (one host going on or off line each time); the
relay round trip for the list is left out.
Headless, so terminal output costs are left out of both.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime, timedelta
from functools import partial

from textual import events
from textual.app import App, ComposeResult

from bench.common import header, percentile, table, verdict
from bench.emulator_parse import (
    bittty_feeder,
    ls_color_output,
    ls_long_output,
    throughput,
    vim_redraw_output,
    yes_output,
)
from tui.screens.sessions import SessionsScreen
from tui.widgets.terminal import TerminalView

CHUNK = 16 * 1024
KEY_EVERY = 0.1


class PaneApp(App):
    ENABLE_COMMAND_PALETTE = False

    def __init__(self) -> None:
        super().__init__()
        self.sent_at: list[float] = []

    def compose(self) -> ComposeResult:
        yield TerminalView(self._send, id="term")

    def on_mount(self) -> None:
        self.query_one(TerminalView).focus()

    def _send(self, data: bytes) -> None:
        self.sent_at.append(time.perf_counter())


async def pane_run(data: bytes, rate: float, seconds: float) -> dict:
    """Feed `data` (cycled) at `rate` bytes/s for `seconds`; press keys meanwhile."""
    app = PaneApp()
    async with app.run_test(size=(80, 24)):
        view = app.query_one(TerminalView)
        fed = 0
        stop = time.perf_counter() + seconds
        totals: dict = {}

        async def feeder() -> None:
            nonlocal fed
            start = time.perf_counter()
            offset = 0
            while time.perf_counter() < stop:
                due = (time.perf_counter() - start) * rate
                while fed < due:
                    piece = data[offset : offset + CHUNK] or data[:CHUNK]
                    offset = (offset + len(piece)) % len(data)
                    view.feed(piece)
                    fed += len(piece)
                await asyncio.sleep(0.005)
            elapsed = time.perf_counter() - start
            totals.update(
                offered=fed / elapsed,
                dropped=view.dropped_bytes,
                consumed=(fed - view.dropped_bytes - view.pending_bytes) / elapsed,
            )

        task = asyncio.create_task(feeder())
        lags = []
        while time.perf_counter() < stop:
            before = len(app.sent_at)
            pressed = time.perf_counter()
            # Posted as the driver does, without Pilot's waits, so the lag is the app's own.
            app.post_message(events.Key("a", "a"))
            deadline = time.perf_counter() + 2
            while len(app.sent_at) == before and time.perf_counter() < deadline:
                await asyncio.sleep(0.001)
            if len(app.sent_at) > before:
                lags.append(app.sent_at[before] - pressed)
            await asyncio.sleep(KEY_EVERY)
        await task
    return {**totals, "p50": percentile(lags, 50), "p95": percentile(lags, 95), "keys": len(lags)}


def synthetic_sessions(count: int) -> list[dict]:
    now = datetime.now(UTC)
    views = []
    for n in range(count):
        state = ("active", "pending", "ended")[n % 3]
        views.append(
            {
                "id": f"s{n:015d}",
                "state": state,
                "customer_email": f"customer{n}@example.com",
                "technician": f"tech{n % 50}",
                "created_at": (now - timedelta(minutes=n)).isoformat(),
                "expires_at": (now + timedelta(hours=23, minutes=n % 60)).isoformat(),
                "invite_expires_at": (now + timedelta(minutes=30)).isoformat(),
                "online": n % 2 == 0,
                "online_since": now.isoformat(),
                "host": {"hostname": f"host{n}", "os": "Linux", "user": "root"}
                if state == "active"
                else None,
                "mail_status": "sent",
                "ended_reason": "expired" if state == "ended" else None,
            }
        )
    return views


class ListApp(App):
    def __init__(self, views: list[dict]) -> None:
        super().__init__()
        self.views = views
        self.screen_under_test = SessionsScreen()

    async def on_mount(self) -> None:
        await self.push_screen(self.screen_under_test)
        self.screen_under_test.show(self.views, None)

    def event_refresh(self) -> None:
        """What a presence event brings: the whole list again, one host's online flipped."""
        self.views = [dict(view) for view in self.views]
        flipped = next((v for v in self.views if v["state"] == "active"), None)
        if flipped is not None:  # the newest active session: a row in view
            flipped["online"] = not flipped["online"]
        self.screen_under_test.show(self.views, None)


async def list_cpu(count: int, seconds: float, refresh: bool = False) -> float:
    app = ListApp(synthetic_sessions(count))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause(1.0)  # the first build is not what we measure
        if refresh:
            app.set_interval(1.0, app.event_refresh)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(seconds)
        cpu = time.process_time() - cpu0
        wall = time.perf_counter() - wall0
    return cpu / wall * 100


async def main_async(args: argparse.Namespace) -> None:
    header("Console: terminal pane and sessions list", "textual", "bittty", "rich")
    mixes = {
        "ls -l": ls_long_output,
        "ls --color": ls_color_output,
        "vim redraw": vim_redraw_output,
        "yes": yes_output,
    }
    rates = [1.5e6, 8e6]
    rows = []
    for name, make in mixes.items():
        data = make(2_000_000)
        bare = throughput(partial(bittty_feeder, True), data[:1_000_000], 1)
        for rate in rates:
            r = await pane_run(data, rate, args.seconds)
            kept_up = r["consumed"] >= min(1.5e6, 0.97 * r["offered"])
            ok = kept_up and r["p95"] <= 0.050
            rows.append(
                (
                    name,
                    f"{r['offered'] / 1e6:.2f}",
                    f"{r['consumed'] / 1e6:.2f}",
                    f"{bare:.2f}",
                    f"{r['consumed'] / 1e6 / bare:.2f}x",
                    f"{r['dropped'] / 1e6:.1f}",
                    f"{r['p50'] * 1e3:.1f}",
                    f"{r['p95'] * 1e3:.1f}",
                    r["keys"],
                    verdict(ok),
                )
            )
    print(
        f"terminal pane, 80x24, {args.seconds:.0f} s per row, a key every "
        f"{KEY_EVERY * 1e3:.0f} ms; MB = 10^6 B; target: consumed >= 1.5 MB/s (or all of "
        "an offered 1.5 MB/s) with key p95 <= 50 ms"
    )
    table(
        (
            "output",
            "offered MB/s",
            "pane MB/s",
            "bittty alone MB/s",
            "pane / bittty",
            "dropped MB",
            "key p50 ms",
            "key p95 ms",
            "keys",
            "target",
        ),
        rows,
    )

    # A screenful of sessions beside the thousand: the tick updates only the rows on view,
    # so what remains should not grow with the list.
    screenful = 36
    busy = await list_cpu(args.sessions, args.seconds * 2)
    events_too = await list_cpu(args.sessions, args.seconds * 2, refresh=True)
    few = await list_cpu(screenful, args.seconds * 2)
    empty = await list_cpu(0, args.seconds * 2)
    print(f"sessions list, 120x40, one tick per second, {args.seconds * 2:.0f} s each")
    table(
        ("sessions", "per second", "CPU %", "vs empty list"),
        [
            (args.sessions, "tick", f"{busy:.1f}", f"+{busy - empty:.1f} points"),
            (args.sessions, "tick + list refresh", f"{events_too:.1f}",
             f"+{events_too - empty:.1f} points"),
            (screenful, "tick", f"{few:.1f}", f"+{few - empty:.1f} points"),
            (0, "tick", f"{empty:.1f}", ""),
        ],
    )
    worst = max(busy, events_too)
    print(f"target < 5% CPU with {args.sessions} sessions: {verdict(worst < 5)}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5, help="seconds per pane run")
    parser.add_argument("--sessions", type=int, default=1000, help="sessions in the list")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
