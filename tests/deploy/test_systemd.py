"""deploy/systemd/*.service pass `systemd-analyze verify` with no complaint, and their
ExecStart command lines are ones berth accepts.

The units start /usr/local/bin/berth, which verify requires to be an executable; the
units are verified as copies whose ExecStart names the berth installed here, with
nothing else changed."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.conftest import missing
from tests.support import REPO

UNITS = sorted((REPO / "deploy" / "systemd").glob("*.service"))
#: what the units run, and the configuration file they name
UNIT_BERTH = "/usr/local/bin/berth"
UNIT_CONFIG = "/etc/berth/berth.toml"


def _berth() -> str:
    found = shutil.which("berth")
    assert found, "berth is not installed (pip install -e .)"
    return found


def _systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        missing("systemd-analyze is not installed (apt-get install systemd)")
    assert found is not None
    return found


def _verify(units: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_systemd_analyze(), "verify", "--man=no", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _copies(tmp_path: Path, edit: str = "") -> list[Path]:
    """The units with ExecStart naming the installed berth; ``edit`` is appended to the
    [Service] section's lines (to show what verify reports)."""
    out = []
    for unit in UNITS:
        text = unit.read_text()
        assert f"ExecStart={UNIT_BERTH} " in text, unit
        text = text.replace(f"ExecStart={UNIT_BERTH} ", f"ExecStart={_berth()} ")
        if edit:
            text = text.replace("[Service]\n", f"[Service]\n{edit}\n")
        copy = tmp_path / unit.name
        copy.write_text(text)
        out.append(copy)
    return out


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    assert [u.name for u in UNITS] == ["berth-agent.service", "berth-scheduler.service"]
    done = _verify(_copies(tmp_path))
    # Unknown keys and bad values are only warned about: any output is a failure.
    assert done.returncode == 0 and not done.stdout and not done.stderr, done


def test_verify_reports_a_misspelt_setting(tmp_path: Path) -> None:
    done = _verify(_copies(tmp_path, edit="ProtectHom=yes\nKillMode=mixd"))
    assert "Unknown key 'ProtectHom'" in done.stderr
    assert "Failed to parse kill mode" in done.stderr


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_exec_start_is_a_command_berth_takes(unit: Path) -> None:
    """The unit's command line, with the sample configuration in place of
    /etc/berth/berth.toml, is parsed (up to --help) without complaint."""
    line = next(line for line in unit.read_text().splitlines() if line.startswith("ExecStart="))
    argv = shlex.split(line.removeprefix("ExecStart="))
    assert argv[0] == UNIT_BERTH
    argv = [
        _berth(),
        *(str(REPO / "deploy" / "berth.toml") if a == UNIT_CONFIG else a for a in argv[1:]),
    ]
    done = subprocess.run([*argv, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done
    assert done.stdout.startswith("Usage: berth " + argv[-1]), done.stdout
