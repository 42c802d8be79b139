"""Client commands start fast: what they import, and the shortcuts that keep it small.

`aigw quota show`, `aigw lb stats` and `aigw status` against a real `aigw serve` must not import
the daemon's modules (aiohttp, aigw.server, aigw.proxy, aigw.config), nor http.client, nor
pydantic (typer's coercer, skipped for plain values by aigw.cli._fastparams). Nothing is timed
here: bench/startup.py measures the wall time.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

import pytest
import typer
from typer.testing import CliRunner

import aigw
from aigw.cli import _fastparams, build_app, modules_for
from tests.conftest import Daemon, cli_env

MOCK = """\
version: 1
state: {backend: memory}
providers: {mock: {type: mock, mock: {latency: 0s}}}
models: {mock: {targets: [{provider: mock}]}}
quota: {default: 1000}
"""

# Runs `aigw ARGS...` in this process, then writes the imported module names to a file.
PROBE = """\
import json, sys
out, args = sys.argv[1], sys.argv[2:]
sys.argv = ["aigw", *args]
from aigw.cli import main
code = 0
try:
    main()
except SystemExit as exc:
    code = exc.code or 0
with open(out, "w") as f:
    json.dump({"code": code, "modules": sorted(sys.modules)}, f)
"""

DAEMON_MODULES = ("aiohttp", "aigw.server", "aigw.proxy", "aigw.config", "yaml")
# http.client: the admin client speaks HTTP itself; pydantic: typer's coercer, not needed for
# plain values.
HEAVY_MODULES = (*DAEMON_MODULES, "http.client", "pydantic")
#: What every run of the CLI imports: typer's adjustments, no command.
LIGHT_CLI_MODULES = {"aigw.cli._fastparams", "aigw.cli._typerfix"}


def imported_by(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[int, set[str], str]:
    out = tmp_path / "modules.json"
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(out), *args],
        capture_output=True,
        text=True,
        env=cli_env(env),
        timeout=60,
    )
    data = json.loads(out.read_text())
    return int(data["code"]), set(data["modules"]), done.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "needs_rich"),
    [
        (("quota", "show"), True),
        (("quota", "show", "--json"), False),
        (("quota", "show", "default", "--json"), False),
        (("lb", "stats", "--once"), True),
        (("lb", "stats", "--json"), False),
        (("status",), True),
        (("status", "--json"), False),
    ],
)
def test_client_commands_import_nothing_of_the_daemon(
    args: tuple[str, ...], needs_rich: bool, daemon_factory: Any, tmp_path: Path
) -> None:
    d: Daemon = daemon_factory(MOCK)
    code, modules, stdout = imported_by(tmp_path, *args, "--admin-socket", str(d.socket))
    assert code == 0, stdout
    assert stdout.strip()
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY_MODULES or m in HEAVY_MODULES)
    assert heavy == []
    # Only the command asked for is registered: the other command modules are not imported.
    own = {"quota": "aigw.cli.quota", "lb": "aigw.cli.lb", "status": "aigw.cli.serve"}[args[0]]
    cli_modules = {m for m in modules if m.startswith("aigw.cli.") and m not in LIGHT_CLI_MODULES}
    assert cli_modules <= {own, "aigw.cli.serve", "aigw.cli.common"}
    # rich's console only when something is drawn with it.
    assert ("rich.console" in modules) == needs_rich
    assert d.terminate() == 0


def test_a_daemon_that_is_not_running_is_one_line_without_importing_rich_tables(
    tmp_path: Path,
) -> None:
    code, modules, _ = imported_by(
        tmp_path, "quota", "show", "--json", "--admin-socket", str(tmp_path / "none.sock")
    )
    assert code == 1
    assert not any(m.split(".")[0] in HEAVY_MODULES for m in modules)
    assert "rich.table" not in modules


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_imports_no_command_nor_rich(flag: str, tmp_path: Path) -> None:
    code, modules, stdout = imported_by(tmp_path, flag)
    assert (code, stdout) == (0, f"aigw {aigw.__version__}\n")
    assert not any(m.split(".")[0] in (*HEAVY_MODULES, "rich") for m in modules)
    cli_modules = {m for m in modules if m.startswith("aigw.cli.")}
    assert cli_modules <= {*LIGHT_CLI_MODULES, "aigw.cli.version", "aigw.cli.common"}


@pytest.mark.slow
def test_the_socket_named_in_the_discovered_config_is_found_without_loading_it(
    daemon_factory: Any, tmp_path: Path
) -> None:
    d: Daemon = daemon_factory(MOCK)
    cfg = tmp_path / "client.yaml"
    cfg.write_text(f'version: 1\nserver: {{admin_socket: "{d.socket}"}}\n')
    code, modules, stdout = imported_by(tmp_path, "quota", "show", "--json", "-c", str(cfg))
    assert (code, json.loads(stdout)) == (0, {"tenants": []})
    assert "aigw.config" not in modules
    # `${VAR}` is resolved as the daemon resolves it: by load_config.
    cfg.write_text(MOCK + 'server: {admin_socket: "${SOCK}"}\n')
    code, modules, stdout = imported_by(
        tmp_path, "quota", "show", "--json", env={"AIGW_CONFIG": str(cfg), "SOCK": str(d.socket)}
    )
    assert (code, json.loads(stdout)) == (0, {"tenants": []})
    assert "aigw.config" in modules
    assert d.terminate() == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('version: 1\nserver: {admin_socket: "/run/a.sock"}\n', "/run/a.sock"),
        ("version: 1\nserver:\n  port: 9000\n  admin_socket: ~/a.sock\n", "~/a.sock"),
        ("version: 1\nserver: {port: 9000}\n", None),
        ("version: 1\n", None),
        ("version: 1\nserver: {admin_socket: null}\n", None),
        ("server: [\n", None),  # YAML syntax error: no socket, the default is used
        ("- a list\n", None),
        (MOCK + 'server: {admin_socket: "${SOCK}"}\n', "/from/env.sock"),
        (MOCK + 'server: {admin_socket: "${NOT_SET_ANYWHERE}"}\n', None),
        (MOCK + 'server: {admin_socket: "/x/$${y}"}\n', "/x/${y}"),
        ('version: 1\nserver: {admin_socket: "${SOCK}"}\n', None),  # invalid: no models
        (MOCK + "server: {admin_socket: 12}\n", "12"),  # not a YAML string: load_config decides
    ],
)
def test_configured_admin_socket(
    text: str, expected: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aigw.admin_client import configured_admin_socket

    monkeypatch.setenv("SOCK", "/from/env.sock")
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(text)
    assert configured_admin_socket(cfg) == expected
    assert configured_admin_socket(tmp_path / "missing.yaml") is None


# --- main() registers only what the first argument names --------------------------------------


ALL_MODULES = ("serve", "validate", "quota", "usage", "lb", "version")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["quota", "show"], ("serve", "quota")),
        (["lb", "stats", "--once"], ("serve", "lb")),
        (["usage", "--since", "7d"], ("serve", "usage")),
        (["status"], ("serve",)),
        (["serve", "-c", "x.yaml"], ("serve",)),
        (["validate", "x.yaml"], ("serve", "validate")),
        (["version", "--json"], ("serve", "version")),
        (["--version"], ()),
        (["-V"], ()),
        ([], ALL_MODULES),
        (["--help"], ALL_MODULES),
        (["-h"], ALL_MODULES),
        (["quot"], ALL_MODULES),  # a typo: the full tree suggests
    ],
)
def test_modules_for(args: list[str], expected: tuple[str, ...]) -> None:
    assert modules_for(args) == expected


def test_shell_completion_always_gets_the_full_tree() -> None:
    assert modules_for(["quota"], {"_AIGW_COMPLETE": "complete_bash"}) == ALL_MODULES


HELP_PATHS = [
    ["serve"],
    ["status"],
    ["validate"],
    ["quota"],
    ["quota", "show"],
    ["quota", "set"],
    ["quota", "reset"],
    ["lb"],
    ["lb", "stats"],
    ["usage"],
    ["version"],
]


@pytest.mark.parametrize("path", HELP_PATHS, ids=" ".join)
def test_a_partial_app_answers_like_the_full_one(path: list[str]) -> None:
    """Help and usage errors of a command are the same whichever modules are registered."""
    runner = CliRunner()
    full, partial = build_app(), build_app(modules_for(path))
    for args in ([*path, "--help"], [*path, "--no-such-option"]):
        want = runner.invoke(full, args, prog_name="aigw", terminal_width=100)
        got = runner.invoke(partial, args, prog_name="aigw", terminal_width=100)
        assert (got.exit_code, got.output) == (want.exit_code, want.output), args
        assert want.exit_code in (0, 2)


def test_the_module_app_is_the_full_tree() -> None:
    from aigw.cli import app

    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    assert list(commands) == [
        "serve", "status", "reload", "validate", "usage", "version", "quota", "lb"
    ]  # fmt: skip


# --- parameter coercion without pydantic --------------------------------------------------------


def typer_coerce(annotation: Any, info: Any, value: Any) -> Any:
    """What typer's own (pydantic) coercer makes of a valid `value`."""
    from typer._coercion import build_runtime_param, resolve_type_descriptor

    full = build_runtime_param(resolve_type_descriptor(annotation, info))
    return full._coerce_value(value, param=None, ctx=None)  # type: ignore[arg-type]


Period = Literal["daily", "monthly"]


@pytest.mark.parametrize(
    ("annotation", "option", "value", "fast"),
    [
        (str, typer.Option(None), "team-a", True),
        (str, typer.Option(None), "", True),
        (int, typer.Option(None, min=0), "10000", True),
        (int, typer.Option(None, min=0), "0", True),
        (int, typer.Option(None, min=0), "-5", False),  # out of range: typer says why
        (int, typer.Option(None), "007", False),  # typer reads 7; left to it all the same
        (int, typer.Option(None), "1_000", False),
        (int, typer.Option(None), " 5", False),
        (int, typer.Option(None), "5.0", False),
        (int, typer.Option(None), "abc", False),
        (int, typer.Option(None, min=1), 1, True),
        (int, typer.Option(None, min=1, clamp=True), "0", False),
        (float, typer.Option(None, min=0.1), "2", True),
        (float, typer.Option(None, min=0.1), "0.1", True),
        (float, typer.Option(None, min=0.1), "0.05", False),
        (float, typer.Option(None, min=0.1), "1e3", False),
        (float, typer.Option(None, min=0.1), "nan", False),
        (float, typer.Option(None, min=0.1), 2.0, True),
        (Period, typer.Option(None), "daily", True),
        (Period, typer.Option(None), "Daily", False),
        (Period, typer.Option(None, case_sensitive=False), "daily", False),
        (Path, typer.Option(None), "x.json", False),
        (bool, typer.Option(None), "yes", False),
    ],
)
def test_fast_coercion_agrees_with_typer(
    annotation: Any, option: Any, value: Any, fast: bool
) -> None:
    got = _fastparams.fast_coerce(annotation, option, value)
    assert (got is not _fastparams._DELEGATE) == fast
    if fast:
        want = typer_coerce(annotation, option, value)
        assert (type(got), got) == (type(want), want)


# --- the garbage collector: off for start-up, on for a daemon ---------------------------------


def test_serve_turns_the_collector_back_on_before_its_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import gc

    import aigw.loops
    import aigw.server

    seen: list[bool] = []

    def fake_run_loop(main: object, loop: str) -> int:
        seen.append(gc.isenabled())
        return 0

    monkeypatch.setattr(aigw.loops, "run", fake_run_loop)
    monkeypatch.setattr(aigw.server, "run", lambda cfg, server_overrides: object())
    gc.disable()  # as main() leaves it
    try:
        result = CliRunner().invoke(build_app(["serve"]), ["serve"])
    finally:
        gc.enable()
    assert result.exit_code == 0, result.output
    assert seen == [True]
