"""Nothing but the agent's user can read its state, and no container mount holds it:
node.json (the node token) is 0600 in a 0700 directory, also when an older agent or a
crashed write left the file or its temporary more open; the attempts' mounts are
below the state dir, never above it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from agent.config import AgentConfig
from agent.state import AgentState, NodeIdentity
from agent.workspace import Workspaces


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_the_identity_is_readable_by_the_agent_only_whatever_was_left(tmp_path: Path) -> None:
    root = tmp_path / "agent"
    root.mkdir(mode=0o755)
    (root / "node.json").write_text('{"name": "n", "node_id": "x", "node_token": "old"}')
    os.chmod(root / "node.json", 0o644)
    (root / "node.json.tmp").write_text("partial")
    os.chmod(root / "node.json.tmp", 0o644)
    state = AgentState(root)
    state.prepare()
    assert (_mode(root), _mode(root / "reports"), _mode(root / "node.json")) == (
        0o700,
        0o700,
        0o600,
    )
    state.save_identity(NodeIdentity("n", "x", "secret-token"))
    assert _mode(root / "node.json") == 0o600
    assert state.load_identity() == NodeIdentity("n", "x", "secret-token")


def test_no_mount_of_an_attempt_holds_the_state_files(tmp_path: Path) -> None:
    config = AgentConfig(schedulers=["http://127.0.0.1:1"], join_token="j", state_dir=tmp_path)
    mounts = Workspaces(config.workspaces_dir).of("job1", 1).mounts
    identity = (tmp_path / "node.json").resolve()
    for mounted in (mounts.workspace, mounts.checkpoint):
        assert not identity.is_relative_to(mounted.resolve())
        assert mounted.resolve().is_relative_to(tmp_path.resolve())
