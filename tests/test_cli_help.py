"""What `aigw` says about itself: --version, -h, every command's help (values named, not typed;
an example each), and usage errors as one line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import aigw
from aigw.choices import PERIODS
from aigw.cli import build_app
from tests.conftest import cli_env

ROOT = Path(__file__).resolve().parents[1]


def command_paths() -> list[list[str]]:
    """Every command and group of the full `aigw` tree, as argument lists (the root is [])."""
    paths: list[list[str]] = []

    def walk(command: object, path: list[str]) -> None:
        paths.append(path)
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            walk(sub, [*path, name])

    walk(typer.main.get_command(build_app()), [])
    return paths


PATHS = command_paths()


def aigw_help(*args: str, width: int = 100) -> str:
    result = CliRunner().invoke(build_app(), [*args], prog_name="aigw", terminal_width=width)
    assert result.exit_code == 0, result.output
    return result.output


def run_aigw(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m aigw ARGS`: the program as installed, with its `main()`."""
    return subprocess.run(
        [sys.executable, "-m", "aigw", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=cli_env({"COLUMNS": "100"}),
        timeout=60,
    )


# --- version -------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_flag(flag: str) -> None:
    done = run_aigw(flag)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"aigw {aigw.__version__}\n", "")


def test_version_command() -> None:
    done = run_aigw("version")
    assert done.returncode == 0
    assert done.stdout.startswith(f"aigw {aigw.__version__} (Python {sys.version.split()[0]}, ")
    data = json.loads(run_aigw("version", "--json").stdout)
    assert data["version"] == aigw.__version__
    assert data["python"] == sys.version.split()[0]
    assert set(data) == {"version", "python", "implementation", "platform"}


# --- help -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "aigw")
def test_h_is_help(path: list[str]) -> None:
    assert aigw_help(*path, "-h") == aigw_help(*path, "--help")


@pytest.mark.parametrize("path", PATHS[1:], ids=" ".join)
def test_every_command_has_an_example(path: list[str]) -> None:
    text = " ".join(aigw_help(*path, "--help").split())
    assert re.search(rf"Example: aigw {' '.join(path)}\b", text), text


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "aigw")
@pytest.mark.parametrize("width", [80, 120])
def test_help_names_values_not_python_types(path: list[str], width: int) -> None:
    text = aigw_help(*path, "--help", width=width)
    assert not re.search(r"<(bool|str|int|float|path)[a-z ]*>", text), text
    assert not re.search(r"\{[a-z_]+\}", text)  # usage: TENANT, not {tenant}


@pytest.mark.parametrize("width", [80, 100, 120])
def test_period_choices_are_whole_words(width: int) -> None:
    text = aigw_help("quota", "set", "--help", width=width)
    words = set(re.findall(r"[a-z]+", text))
    assert set(PERIODS) <= words, text  # none broken across lines


# --- usage errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (
            ["quota", "set", "t", "5", "--period", "fortnightly"],
            "Invalid value for '--period': 'fortnightly' is not one of 'hourly', 'daily',"
            " 'weekly', 'monthly', 'never'. (see `python -m aigw quota set -h`)",
        ),
        (["quota", "set", "t", "-5"], "TOKENS cannot be negative (got -5); 0 means unlimited"),
        (["quota", "set", "t"], "Missing argument 'TOKENS'. (see `python -m aigw quota set -h`)"),
        (["lb", "stats", "--bogus"], "No such option: --bogus"),
        (["lb", "stats", "--interval", "0.01"], "Invalid value for '--interval'"),
    ],
)
def test_usage_errors_are_one_line_exit_2(args: list[str], reason: str) -> None:
    done = run_aigw(*args)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith(f"error: {reason}"), done.stderr
