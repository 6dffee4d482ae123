"""The configuration file: defaults for any command's flags, below flags and variables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from cli import config
from cli.main import cli
from tests.support import REPO


def test_the_sample_file_in_deploy_is_valid_for_every_section() -> None:
    defaults = config.load(REPO / "deploy" / "berth.toml", cli)
    assert defaults["scheduler"]["listen"] == "0.0.0.0:8750"
    assert defaults["scheduler"]["state_dir"] == "/var/lib/berth"
    assert defaults["agent"]["schedulers"] == "http://berth-scheduler:8750"
    assert defaults["agent"]["labels"] == ["zone=a"]
    assert defaults["logs"]["addr"] == "http://berth-scheduler:8750"
    assert "addr" not in defaults.get("scheduler", {})


def test_an_unknown_setting_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "berth.toml"
    path.write_text('[scheduler]\nlisten = "x:1"\nlissten = "y:2"\n')
    with pytest.raises(click.BadParameter, match="lissten"):
        config.load(path, cli)
    path.write_text("[schedular]\n")
    with pytest.raises(click.BadParameter, match="schedular"):
        config.load(path, cli)


def test_flags_and_variables_win_over_the_file(tmp_path: Path) -> None:
    seen: dict[str, object] = {}

    @cli.command("probe-config", hidden=True)
    @click.option("--listen", envvar="BERTH_PROBE_LISTEN", default="built-in")
    def probe(listen: str) -> None:
        seen["listen"] = listen

    try:
        path = tmp_path / "berth.toml"
        path.write_text('[probe-config]\nlisten = "from-file"\n')
        runner = CliRunner()
        assert runner.invoke(cli, ["--config", str(path), "probe-config"]).exit_code == 0
        assert seen["listen"] == "from-file"
        env = {"BERTH_PROBE_LISTEN": "from-env"}
        assert runner.invoke(cli, ["--config", str(path), "probe-config"], env=env).exit_code == 0
        assert seen["listen"] == "from-env"
        args = ["--config", str(path), "probe-config", "--listen", "from-flag"]
        assert runner.invoke(cli, args, env=env).exit_code == 0
        assert seen["listen"] == "from-flag"
    finally:
        cli.commands.pop("probe-config")


def test_client_settings_and_their_own_sections_reach_subcommands(tmp_path: Path) -> None:
    path = tmp_path / "berth.toml"
    path.write_text(
        '[client]\naddr = "http://sched:8750"\n[token.create]\nrole = "read"\n'
        '[schedule.list]\njson = true\n[scheduler]\nlisten = "0.0.0.0:1"\n'
    )
    defaults: dict[str, Any] = config.load(path, cli)
    assert defaults["token"]["create"] == {"addr": "http://sched:8750", "role": "read"}
    assert defaults["token"]["list"] == {"addr": "http://sched:8750"}
    assert defaults["schedule"]["list"]["as_json"] is True
    assert "addr" not in defaults["scheduler"]
    # A subcommand run with the file goes to the file's address.
    path.write_text('[client]\naddr = "http://127.0.0.1:1"\n')
    done = CliRunner().invoke(cli, ["--config", str(path), "token", "list"])
    assert done.exit_code == 69
    assert "cannot reach the scheduler at http://127.0.0.1:1" in done.output


def test_an_unknown_subcommand_section_or_setting_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "berth.toml"
    path.write_text("[token.creat]\nrole = 'read'\n")
    with pytest.raises(click.BadParameter, match=r"token\.creat"):
        config.load(path, cli)
    path.write_text("[token.create]\nrol = 'read'\n")
    with pytest.raises(click.BadParameter, match=r"\[token.create\] has no setting 'rol'"):
        config.load(path, cli)
