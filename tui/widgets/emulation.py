"""Where the pane's emulator (bittty) is brought in line with tmux and xterm.

Each adjustment is one function applied to a Board; tests/tui/test_against_tmux.py holds the
pane to tmux's screen for the same bytes.
"""

from __future__ import annotations

from bittty import Board, mode_profiles
from bittty.constants import ERASE_ALL
from bittty.devices.modes import MODE_SPECS
from bittty.operations import Operation

PRIMARY_DEVICE_ATTRIBUTES = "\x1b[?62;22c"
"""A VT220 with ANSI colour, and nothing the pane cannot do: no 132 columns (the pane's width
is the technician's window), no printer, no user-defined keys."""

# DEC special graphics as tmux draws them (tty-acs.c), where bittty shows a block for the
# control-picture letters and for "0", and a space for "_".
DEC_SPECIAL_GRAPHICS = {
    "+": "→", ",": "←", "-": "↑", ".": "↓", "0": "▮", "`": "◆", "a": "▒", "b": "␉",
    "c": "␌", "d": "␍", "e": "␊", "f": "°", "g": "±", "h": "␤", "i": "␋", "j": "┘",
    "k": "┐", "l": "┌", "m": "└", "n": "┼", "o": "⎺", "p": "⎻", "q": "─", "r": "⎼",
    "s": "⎽", "t": "├", "u": "┤", "v": "┴", "w": "┬", "x": "│", "y": "≤", "z": "≥",
    "{": "π", "|": "≠", "}": "£", "~": "·",
}


def answer_as_a_vt220(board: Board) -> None:
    """Device attributes (CSI c) that claim only what the pane has."""
    host = board.host

    def report(operation: Operation) -> None:
        host.write(PRIMARY_DEVICE_ATTRIBUTES, flush=True)

    board.registry["DA1"] = report


def clear_tab_stops_as_xterm(board: Board) -> None:
    """TBC clears the stop at the cursor (0) or all stops (3); xterm and tmux ignore 1 and 2."""
    cursor = board.cursor

    def clear(operation: Operation) -> None:
        mode = operation.args[0]
        if mode == 0:
            cursor.tab_stops.discard(cursor.x)
        elif mode == 3:
            cursor.tab_stops.clear()

    board.registry["TBC"] = clear


def erase_characters_as_xterm(board: Board) -> None:
    """ECH blanks cells in the background colour alone, as EL does; bittty kept the current
    foreground and attributes (a bold grey blank where htop erased a meter)."""
    blitter, cursor, style = board.blitter, board.cursor, board.style

    def erase(operation: Operation) -> None:
        cursor.cancel_pending_wrap()
        blank = style.background_ansi()
        page, y = blitter.current_page, cursor.y
        for x in range(cursor.x, min(cursor.x + max(1, operation.args[0]), blitter.width)):
            page.set_cell(x, y, " ", blank)

    board.registry["ECH"] = erase


def keep_the_columns_as_tmux(board: Board) -> None:
    """DECCOLM (mode 3) clears the screen and homes the cursor, as in tmux, and the pane keeps
    its width (the technician's window): bittty would switch to 80 or 132 columns."""
    tmux = next(spec for spec in MODE_SPECS
                if spec.capability == mode_profiles.TMUX_COLUMN_MODE)
    board.modes._modes[(True, 3)] = tmux


def draw_line_graphics_as_tmux(board: Board) -> None:
    """DEC special graphics (ESC ( 0) drawn with tmux's glyphs."""
    charset = board.charset
    lookup = charset._get_charset_map

    def charset_map(designator: str) -> dict:
        return DEC_SPECIAL_GRAPHICS if designator == "0" else lookup(designator)

    charset._get_charset_map = charset_map


def clear_alternate_screen_on_entry(board: Board) -> None:
    """Make entering the alternate screen start from a blank page, as xterm's mode 1049 does.

    bittty 0.3.0 keeps whatever the last full-screen program left there, and programs that
    trust the page to be blank (less) would show vim's leftovers around their own text.
    """
    blitter = board.blitter
    switch = blitter.switch_screen

    def switch_screen(alt: bool) -> None:
        entering = alt and not blitter.in_alt_screen
        switch(alt)
        if entering:
            page = blitter.alt_page
            for y in range(page.height):
                page.clear_line(y, ERASE_ALL, 0, "")

    blitter.switch_screen = switch_screen


def behave_as_tmux(board: Board) -> None:
    """Every adjustment, in order."""
    answer_as_a_vt220(board)
    clear_tab_stops_as_xterm(board)
    erase_characters_as_xterm(board)
    keep_the_columns_as_tmux(board)
    draw_line_graphics_as_tmux(board)
    clear_alternate_screen_on_entry(board)
