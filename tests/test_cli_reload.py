"""`aigw reload`: the running daemon (`aigw serve` as a subprocess) re-reads its config through
the admin socket; a config that does not load is one line, exit 1, and the old config stays."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon, cli_env

pytestmark = pytest.mark.slow

BEFORE = """\
version: 1
state: {backend: memory}
providers:
  mock: {type: mock}
models:
  mock: {targets: [{provider: mock}]}
"""
AFTER = BEFORE + "  second: {targets: [{provider: mock}]}\n"


def aigw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aigw", *args],
        capture_output=True,
        text=True,
        env=cli_env({"COLUMNS": "250"}),
        timeout=30,
    )


def models_of(d: Daemon) -> list[str]:
    status = aigw("status", "--json", "--admin-socket", str(d.socket))
    assert status.returncode == 0, status.stderr
    models: list[str] = json.loads(status.stdout)["models"]
    return models


def test_reload_reads_the_changed_config_and_says_what_it_loaded(
    daemon_factory: Any, tmp_path: Path
) -> None:
    d: Daemon = daemon_factory(BEFORE)
    config = tmp_path / "config.yaml"
    config.write_text(AFTER)
    result = aigw("reload", "--admin-socket", str(d.socket))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"reloaded {config}: models mock, second; providers mock\n"
    assert models_of(d) == ["mock", "second"]
    data = json.loads(aigw("reload", "--json", "--admin-socket", str(d.socket)).stdout)
    assert (data["config"], data["models"], data["warnings"]) == (
        str(config),
        ["mock", "second"],
        [],
    )
    assert d.terminate() == 0


def test_a_config_that_does_not_load_is_one_line_and_the_old_one_stays(
    daemon_factory: Any, tmp_path: Path
) -> None:
    d: Daemon = daemon_factory(BEFORE)
    config = tmp_path / "config.yaml"
    config.write_text(AFTER + "cache: {ttl: forever}\n")
    result = aigw("reload", "--admin-socket", str(d.socket))
    assert result.returncode == 1
    assert result.stdout == "" and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1
    assert "reload failed, keeping the running config" in result.stderr
    assert f"{config}:8: cache.ttl: invalid duration" in result.stderr
    assert models_of(d) == ["mock"]
    assert d.terminate() == 0


def test_reload_and_serve_show_the_config_warnings(daemon_factory: Any, tmp_path: Path) -> None:
    warned = BEFORE.replace(
        "  mock: {type: mock}\n",
        "  mock: {type: mock}\n"
        "  openai: {base_url: 'https://api.openai.com/v1', api_key: '${AIGW_T_UNSET_KEY:-}'}\n",
    )
    d: Daemon = daemon_factory(warned)
    assert "providers.openai.api_key: warning: the key is empty" in d.output()
    result = aigw("reload", "--admin-socket", str(d.socket))
    assert result.returncode == 0, result.stderr
    assert "providers.openai.api_key: warning: the key is empty" in result.stderr
    assert "AIGW_T_UNSET_KEY" in result.stderr
    assert d.terminate() == 0


def test_reload_without_a_daemon_is_one_line(sock_dir: Path) -> None:
    result = aigw("reload", "--admin-socket", str(sock_dir / "none.sock"))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "no aigw daemon is running" in result.stderr
