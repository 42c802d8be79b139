"""`aigw serve` (the daemon, in the foreground), and `aigw status` / `aigw reload` (ask a
running one through its admin socket)."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from aigw.choices import LoopName
from aigw.cli.common import (
    EXIT_STARTUP,
    AdminSocketOption,
    ConfigOption,
    JsonOption,
    console,
    env_admin_socket,
    fail,
    format_uptime,
)

if TYPE_CHECKING:
    from aigw.config import Config

LogLevel = Literal["debug", "info", "warning", "error"]


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("status")(status)
    app.command("reload")(reload)


def serve(
    config: str = ConfigOption,
    host: str = typer.Option(None, "--host", help="Listen address (overrides server.host)."),
    port: int = typer.Option(None, "--port", "-p", help="Listen port (overrides server.port)."),
    admin_socket: str = AdminSocketOption,
    access_log: bool = typer.Option(False, "--access-log", help="Log one line per request."),
    log_level: Annotated[LogLevel, typer.Option("--log-level", help="How much to log.")] = "info",
    loop: Annotated[
        LoopName,
        typer.Option("--loop", help="Event loop: uvloop when installed (auto), or plain asyncio."),
    ] = "auto",
    workers: int = typer.Option(
        1,
        "--workers",
        "-w",
        min=1,
        help="Worker processes sharing the port (SO_REUSEPORT); more than 1 needs "
        "state.backend: redis.",
    ),
) -> None:
    """Run the gateway daemon in the foreground (SIGTERM/SIGINT drain, SIGHUP reloads)."""
    import dataclasses
    import logging

    from aigw.config import load_config
    from aigw.errors import ConfigError
    from aigw.loops import run as run_loop
    from aigw.paths import discover_config_path

    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        fail(f"unknown log level '{log_level}'", 2)
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        cfg = load_config(discover_config_path(config))
    except ConfigError as exc:
        for problem in exc.problems:
            typer.echo(problem.format(), err=True)
        fail("invalid config; nothing started", EXIT_STARTUP)
    except OSError as exc:
        fail(f"cannot read config: {exc.strerror}: {exc.filename}", EXIT_STARTUP)
    server_overrides: dict[str, Any] = {}
    if host:
        server_overrides["host"] = host
    if port is not None:
        server_overrides["port"] = port
    socket_path = admin_socket or env_admin_socket()  # found as the client commands find it
    if socket_path:
        server_overrides["admin_socket"] = socket_path
    elif not cfg.server.admin_socket:
        from aigw.paths import default_admin_socket

        try:
            default_admin_socket()
        except OSError as exc:  # platformdirs refuses a runtime directory another user owns
            fail(
                f"no safe runtime directory for the admin socket: {exc}; pass --admin-socket PATH",
                EXIT_STARTUP,
            )
    if access_log:
        server_overrides["access_log"] = True
    if server_overrides:
        cfg = dataclasses.replace(cfg, server=dataclasses.replace(cfg.server, **server_overrides))
    _log_warnings(cfg, host)
    if workers > 1 and cfg.state.backend != "redis":
        # Each process would enforce its own quotas and rate limits: N times the limits.
        fail(
            f"--workers {workers} needs a shared state store: set state.backend: redis "
            f"(this config uses {cfg.state.backend})",
            EXIT_STARTUP,
        )
    from aigw.errors import StartupError
    from aigw.server import run

    if workers > 1:
        from aigw.workers import supervise

        main = supervise(
            cfg, workers, log_level=level, server_overrides=server_overrides, loop=loop
        )
    else:
        main = run(cfg, server_overrides=server_overrides)
    import gc

    gc.enable()  # main() turned it off for start-up; the daemon runs for long
    try:
        code = run_loop(main, loop)
    except StartupError as exc:  # StateStoreError included
        fail(str(exc), EXIT_STARTUP)
    except KeyboardInterrupt:  # pragma: no cover - signal handlers normally catch it
        code = 0
    raise typer.Exit(code)


def _log_warnings(cfg: Config, host: str | None) -> None:
    """What `aigw validate` would warn about, in the daemon's log (the config still runs)."""
    import logging

    from aigw.config import listen_warning

    log = logging.getLogger("aigw")
    for warning in cfg.warnings:
        if host and warning.key == "server.host":
            continue  # --host replaced it; judged below
        log.warning("%s", warning.format())
    if host and (found := listen_warning(host, has_keys=bool(cfg.auth.keys))):
        log.warning("--host %s: %s (Hint: %s)", host, *found)


def status(
    admin_socket: str = AdminSocketOption,
    config: str = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Show the running daemon: pid, version, uptime, config, listen address (and workers)."""
    from aigw.admin_client import AdminClient
    from aigw.errors import AdminError

    try:
        data = AdminClient.discover(admin_socket, config).get_json("/status")
    except AdminError as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    from rich.table import Table

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")  # paths are shown whole, to be copied
    table.add_row("pid", str(data["pid"]))
    table.add_row("version", data["version"])
    table.add_row("uptime", format_uptime(data["uptime"]))
    table.add_row("config", data["config"])
    table.add_row("listen", data["listen"] + "/v1")
    table.add_row("admin socket", data["admin_socket"])
    table.add_row("state", state_text(data))
    workers = data.get("workers")
    if workers:
        pids = ", ".join(str(w["pid"]) for w in workers)
        table.add_row("workers", f"{len(workers)} (pids {pids})")
    table.add_row("models", ", ".join(data["models"]) or "-")
    console.print(table)


def state_text(status: dict[str, Any]) -> str:
    """Where the daemon keeps its state, as `aigw status` shows it."""
    backend = str(status.get("state_backend", "?"))
    where = status.get("state_path") or status.get("state_url")
    if backend == "memory":
        return "memory (kept until the daemon stops)"
    return f"{backend} ({where})" if where else backend


def reload(
    admin_socket: str = AdminSocketOption,
    config: str = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Tell the running daemon to re-read its config file (as SIGHUP does); the running config
    stays when the file does not load."""
    from aigw.admin_client import AdminClient
    from aigw.errors import AdminError

    try:
        data = AdminClient.discover(admin_socket, config).post_json("/reload")
    except AdminError as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    if not isinstance(data, dict):
        fail("the daemon sent an unexpected answer to reload")
    for warning in data.get("warnings") or ():
        typer.echo(str(warning), err=True)
    models = ", ".join(str(m) for m in data.get("models") or ()) or "none"
    providers = ", ".join(str(p) for p in data.get("providers") or ()) or "none"
    console.print(
        f"reloaded {data.get('config')}: models {models}; providers {providers}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
