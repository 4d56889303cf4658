"""The systemd unit in docs/ADMIN.md, as written, passes `systemd-analyze verify` (with the
path of this machine's adhoc-relay), and keeps the hardening the doc promises."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ADMIN_DOC = Path(__file__).resolve().parents[2] / "docs" / "ADMIN.md"
DOC_PROGRAM = "/usr/local/bin/adhoc-relay"


def unit_text() -> str:
    blocks = re.findall(r"^```ini\n(.*?)^```$", ADMIN_DOC.read_text(), re.M | re.S)
    assert len(blocks) == 1, "docs/ADMIN.md should hold one ```ini block: the unit"
    return blocks[0]


def settings(unit: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in unit.splitlines()
                if "=" in line and not line.startswith(("#", " ")))


def test_the_unit_is_hardened_as_the_doc_says() -> None:
    values = settings(unit_text())
    assert values["DynamicUser"] == "yes"
    assert values["ProtectSystem"] == "strict"
    assert int(values["LimitNOFILE"]) >= 65536
    assert values["StateDirectory"] == "adhoc-relay"
    assert values["NoNewPrivileges"] == "yes"
    assert values["CapabilityBoundingSet"] == ""
    assert "AF_UNIX" in values["RestrictAddressFamilies"]  # SSH over WebSocket's socket pairs


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed; CI installs systemd")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    program = Path(sys.executable).parent / "adhoc-relay"
    if not program.exists():
        program = Path(shutil.which("adhoc-relay") or "")
    assert program.is_file(), "adhoc-relay is not installed next to this Python"
    unit = unit_text()
    assert DOC_PROGRAM in unit
    path = tmp_path / "adhoc-relay.service"
    path.write_text(unit.replace(DOC_PROGRAM, str(program)))
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(path)],
                            capture_output=True, text=True, timeout=60)
    complaints = [line for line in result.stderr.splitlines() if "adhoc-relay.service" in line]
    assert result.returncode == 0 and not complaints, result.stderr
