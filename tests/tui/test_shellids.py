"""The shell names the console keeps across restarts (tui/shellids.py): one per session, the
same after a restart, forgotten after a week, and never in the way when the file is not."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tui import shellids


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ADHOC_CONSOLE_CONFIG_DIR", str(tmp_path / "conf"))
    return tmp_path / "conf"


def test_one_name_per_session_kept_for_a_week(config: Path) -> None:
    first = shellids.shell_id_for("sessiona", now=1000.0)
    assert first.startswith("console-")
    assert shellids.shell_id_for("sessiona", now=2000.0) == first  # a restart later
    assert shellids.shell_id_for("sessionb", now=2000.0) != first
    path = config / shellids.FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Asked for again, it is kept a week from then; a week after that, a new one.
    later = 2000.0 + shellids.KEEP_SECONDS - 1
    assert shellids.shell_id_for("sessiona", now=later) == first
    assert shellids.shell_id_for("sessiona", now=later + shellids.KEEP_SECONDS) != first


@pytest.mark.parametrize("content", ["", "not json", "[1, 2]",
                                     '{"sessiona": {"id": "$(reboot)", "used": 1}}',
                                     '{"sessiona": {"id": "console-0123456789abcdef"}}'])
def test_a_damaged_file_gives_a_new_name(config: Path, content: str) -> None:
    config.mkdir()
    (config / shellids.FILE).write_text(content)
    name = shellids.shell_id_for("sessiona", now=10.0)
    assert name.startswith("console-") and name != "console-0123456789abcdef"
    assert shellids.shell_id_for("sessiona", now=11.0) == name


def test_an_unwritable_file_still_gives_a_name(config: Path) -> None:
    config.mkdir()
    (config / shellids.FILE).mkdir()  # a folder where the file should be
    assert shellids.shell_id_for("sessiona").startswith("console-")
    assert [p.name for p in config.iterdir()] == [shellids.FILE]  # no temporary file left
