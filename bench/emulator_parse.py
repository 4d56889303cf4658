"""Measures how fast bittty and pyte parse realistic shell output, to size the pane's budgets.

Run: python -m bench.emulator_parse [--mb N] [--repeat N]

Each emulator is fed the same bytes in 2 KiB slices (what tui/widgets/terminal.py gives bittty
per step) on an 80x24 screen, twice: grid only, and keeping scrollback as the console's pane
does (bittty MemoryScrollback vs pyte HistoryScreen). "pane parser" is the pane's own parse
loop (tui/widgets/terminal.py: bittty plus its bulk path for plain lines, no time budget, no
painting), fed in the 16 KiB pieces the SSH client delivers. The best of --repeat runs is
reported.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from functools import partial
from importlib.metadata import version

import pyte
from bittty import XTERM, Board
from bittty.terminals import Terminal
from bittty.terminals.scrollback import MemoryScrollback

from tui.widgets.terminal import TerminalView

COLS, ROWS = 80, 24
SLICE = 2048
PANE_PIECE = 16 * 1024

Feeder = Callable[[bytes], None]


def _repeat_to(unit: bytes, size: int) -> bytes:
    return unit * max(1, size // len(unit))


def yes_output(size: int) -> bytes:
    """`yes`: the worst case, every three bytes scroll the whole screen."""
    return _repeat_to(b"y\r\n", size)


def ls_long_output(size: int) -> bytes:
    """`ls -l`: plain text lines of about 60 columns."""
    lines = b"".join(
        b"-rw-r--r--  1 support staff  %6d Jan %2d 12:%02d report_%04d.txt\r\n"
        % (n * 37 % 999999, n % 28 + 1, n % 60, n)
        for n in range(1000)
    )
    return _repeat_to(lines, size)


def ls_color_output(size: int) -> bytes:
    """`ls --color`: short names, an SGR change every few characters."""
    lines = b"".join(
        b"\x1b[0m\x1b[01;34mdir%03d\x1b[0m  \x1b[01;32mrun%03d.sh\x1b[0m  notes%03d.txt  "
        b"\x1b[01;31mbackup%03d.tar.gz\x1b[0m  \x1b[38;5;208mlog%03d\x1b[0m\r\n" % ((n,) * 5)
        for n in range(1000)
    )
    return _repeat_to(lines, size)


def vim_redraw_output(size: int) -> bytes:
    """A full-screen editor: whole-screen redraws with cursor moves, highlighting, scrolling."""
    words = [b"def", b"return", b"self", b"value", b"if", b"else", b"for", b"in", b"range"]
    frames = []
    for frame in range(200):
        parts = [b"\x1b[?25l\x1b[H"]
        for row in range(1, ROWS - 1):
            n = frame + row
            parts.append(b"\x1b[%d;1H\x1b[38;5;244m%4d \x1b[0m" % (row, n))
            for i in range(8):
                word = words[(n + i) % len(words)]
                if i % 3 == 0:
                    parts.append(b"\x1b[1;38;5;%dm%s\x1b[0m " % (16 + (n * 7 + i) % 216, word))
                else:
                    parts.append(word + b" ")
            parts.append(b"\x1b[K")
        status = b" editor.py [+]   line %d of 4000 " % frame
        parts.append(b"\x1b[%d;1H\x1b[7m%s\x1b[0m\x1b[K" % (ROWS - 1, status))
        # scroll the text area by one line inside a scroll region, as vim does on j at the bottom
        parts.append(b"\x1b[1;%dr\x1b[%d;1H\n\x1b[r" % (ROWS - 2, ROWS - 2))
        parts.append(b"\x1b[%d;%dH\x1b[?25h" % (frame % (ROWS - 2) + 1, frame % COLS + 1))
        frames.append(b"".join(parts))
    return _repeat_to(b"".join(frames), size)


def bittty_feeder(scrollback: bool) -> Feeder:
    board = Board(width=COLS, height=ROWS, model=XTERM)
    board.blitter.set_grapheme_clustering(True)  # as the pane runs it
    Terminal(board, MemoryScrollback(5000 * COLS) if scrollback else None).attach()
    return board.feed_host_data


def pyte_feeder(scrollback: bool) -> Feeder:
    screen = pyte.HistoryScreen(COLS, ROWS, history=5000) if scrollback else pyte.Screen(COLS, ROWS)
    return pyte.ByteStream(screen).feed


def pane_feeder(scrollback: bool) -> Feeder:
    """The pane's parse loop, run to the end of what it was given after every piece."""
    view = TerminalView(
        lambda reply: None, cols=COLS, rows=ROWS, scrollback=5000 if scrollback else 0
    )

    def feed(data: bytes) -> None:
        view.feed(data)
        while view.pending_bytes:
            view._parse_pending()

    return feed


def throughput(
    make_feeder: Callable[[], Feeder], data: bytes, repeat: int, piece: int = SLICE
) -> float:
    """Best MB/s over `repeat` runs, each on a fresh emulator."""
    best = 0.0
    for _ in range(repeat):
        feed = make_feeder()
        start = time.perf_counter()
        for offset in range(0, len(data), piece):
            feed(data[offset : offset + piece])
        elapsed = time.perf_counter() - start
        best = max(best, len(data) / elapsed / 1e6)
    return best


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            names = [line.split(":", 1)[1] for line in info if line.startswith("model name")]
        cpu = names[0].strip() if names else cpu
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=1.0, help="bytes of each mix to parse, in MB")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (best kept)")
    args = parser.parse_args()
    size = int(args.mb * 1e6)

    mixes = {
        "yes": yes_output(size),
        "ls -l": ls_long_output(size),
        "ls --color": ls_color_output(size),
        "vim redraw": vim_redraw_output(size),
    }
    print(f"machine: {machine()}")
    print(
        f"python {platform.python_version()} ({platform.python_implementation()}), "
        f"bittty {version('bittty')}, pyte {version('pyte')}"
    )
    print(f"screen {COLS}x{ROWS}, {SLICE}-byte slices, best of {args.repeat}, MB = 10^6 bytes")
    print()
    header = (
        f"{'mix':<12} {'scrollback':<10} {'bittty MB/s':>12} {'pyte MB/s':>10} "
        f"{'bittty/pyte':>12} {'pane parser MB/s':>17} {'pane/bittty':>12}"
    )
    print(header)
    print("-" * len(header))
    for name, data in mixes.items():
        for scrollback in (False, True):
            fast = throughput(partial(bittty_feeder, scrollback), data, args.repeat)
            slow = throughput(partial(pyte_feeder, scrollback), data, args.repeat)
            pane = throughput(partial(pane_feeder, scrollback), data, args.repeat, PANE_PIECE)
            kept = "yes" if scrollback else "no"
            print(
                f"{name:<12} {kept:<10} {fast:>12.2f} {slow:>10.2f} {fast / slow:>11.1f}x "
                f"{pane:>17.2f} {pane / fast:>11.1f}x"
            )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
