"""The technician's mouse, passed to a remote program that asked for it.

The remote chooses what it wants reported (X10: presses; normal: presses and releases;
button-event: drags too; any-event: every motion) and how (legacy bytes, UTF-8, urxvt, SGR)
with the xterm modes; bittty's mouse device keeps that choice and encodes each report. This
module turns Textual's mouse events into its input. Shift held keeps the mouse local (select
and copy), as in xterm.
"""

from __future__ import annotations

from bittty import Board
from bittty.constants import MOUSE_BUTTON_WHEEL_DOWN, MOUSE_BUTTON_WHEEL_UP
from bittty.devices.modes import MouseProtocol
from textual import events

# Textual numbers buttons 1 (left), 2 (middle), 3 (right); xterm 0, 1, 2.
_BUTTONS = {1: 0, 2: 1, 3: 2}


def remote_wants_mouse(board: Board, event: events.MouseEvent) -> bool:
    """Whether this event is the remote program's (it asked for the mouse, shift is up)."""
    return board.mouse.protocol is not MouseProtocol.OFF and not event.shift


def remote_wants_wheel(board: Board, event: events.MouseEvent) -> bool:
    """Whether the wheel is the remote's: it asked for the mouse, or for wheel-as-arrows
    (mode 1007) while it shows the alternate screen."""
    if event.shift:
        return False
    if board.mouse.protocol is not MouseProtocol.OFF:
        return True
    return bool(board.modes.alternate_scroll_mode and board.blitter.in_alt_screen)


def _modifiers(event: events.MouseEvent) -> set[str]:
    return {name for name in ("shift", "meta", "ctrl") if getattr(event, name)}


def report(board: Board, event: events.MouseEvent, columns: int, rows: int) -> None:
    """Tell the remote about a mouse event at its cell (clamped to the screen)."""
    x = min(max(int(event.x), 0), columns - 1) + 1
    y = min(max(int(event.y), 0), rows - 1) + 1
    modifiers = _modifiers(event)
    mouse = board.mouse
    if isinstance(event, events.MouseScrollUp | events.MouseScrollDown):
        up = isinstance(event, events.MouseScrollUp)
        wheel = MOUSE_BUTTON_WHEEL_UP if up else MOUSE_BUTTON_WHEEL_DOWN
        mouse.input_mouse(x, y, wheel, "press", modifiers)
    elif isinstance(event, events.MouseDown):
        mouse.input_mouse(x, y, _BUTTONS.get(event.button, 0), "press", modifiers)
    elif isinstance(event, events.MouseUp):
        mouse.input_mouse(x, y, _BUTTONS.get(event.button, 0), "release", modifiers)
    elif isinstance(event, events.MouseMove):
        mouse.input_mouse(x, y, _BUTTONS.get(event.button, 3), "move", modifiers)
