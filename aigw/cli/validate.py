"""`aigw validate [PATH] [--request FILE] [--json]`: check a config (and a request body) offline.

The command is `load_config()` plus a summary; with `--request` it runs the same request
validator the daemon uses. Problems print one per line as `file:line: key.path: message (Hint: …)`,
warnings as `file:line: key.path: warning: message (Hint: …)`; warnings never change the exit code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from aigw.cli.common import EXIT_ERROR, JsonOption, console, err_console, fail

if TYPE_CHECKING:  # imported where used: `aigw status` and friends must start fast
    from collections.abc import Iterable

    from rich.console import RenderableType

    from aigw.config import Config
    from aigw.errors import ConfigProblem, ConfigWarning


def register(app: typer.Typer) -> None:
    app.command("validate")(validate)


PathArgument = typer.Argument(
    None,
    metavar="PATH",
    help="Config file (default: $AIGW_CONFIG, then the user config, then the built-in one).",
    show_default=False,
)
RequestOption = typer.Option(
    None,
    "--request",
    help="Also check this JSON request body with the daemon's validator.",
    dir_okay=False,
)


def validate(
    path: str | None = PathArgument,
    request: Path | None = RequestOption,
    as_json: bool = JsonOption,
) -> None:
    """Check a config file offline: exit 0 when valid, 1 with every problem otherwise."""
    from aigw.config import load_config
    from aigw.errors import ConfigError
    from aigw.paths import discover_config_path

    try:
        config = load_config(discover_config_path(path))
    except ConfigError as exc:
        _print_problems(exc.problems, exc.warnings, as_json)
        raise typer.Exit(EXIT_ERROR) from None
    problems = hook_problems(config)
    if problems:
        _print_problems(problems, list(config.warnings), as_json)
        raise typer.Exit(EXIT_ERROR)
    if request is not None:
        _print_lines(config.warnings, as_json)
        _check_request(request, config, as_json)
    elif as_json:
        typer.echo(json.dumps(summary_data(config), indent=2))
    else:
        _print_lines(config.warnings, as_json)
        console.print(render_summary(config))


def hook_problems(config: Config) -> list[ConfigProblem]:
    """The hooks the daemon could not build, resolved the way it resolves them (loading the
    config imports no user code; this does, explicitly)."""
    from aigw.errors import ConfigProblem
    from aigw.hooks import check_hooks

    return [
        ConfigProblem(
            config.source,
            spec.line,
            spec.key or "hooks",
            message,
            "is the package installed in the same environment as aigw?"
            if "import" in message
            else None,
        )
        for spec, message in check_hooks(config.hooks)
    ]


def problem_rows(problems: Iterable[ConfigProblem]) -> list[dict[str, Any]]:
    """Problems (or warnings) as JSON-ready rows."""
    return [
        {"file": p.file, "line": p.line, "key": p.key, "message": p.message, "hint": p.hint}
        for p in problems
    ]


def _print_lines(problems: Iterable[ConfigProblem], as_json: bool) -> None:
    if as_json:
        return  # part of the JSON document instead
    for problem in problems:
        # Plain text: key paths like `targets[1]` must not be read as rich markup.
        console.print(problem.format(), markup=False, highlight=False, soft_wrap=True)


def _print_problems(
    problems: list[ConfigProblem], warnings: list[ConfigWarning], as_json: bool
) -> None:
    if as_json:
        data = {"ok": False, "problems": problem_rows(problems), "warnings": problem_rows(warnings)}
        typer.echo(json.dumps(data, indent=2))
        return
    _print_lines(sorted([*problems, *warnings], key=lambda p: p.line or 0), as_json)
    count = f"{len(problems)} problem" + ("s" if len(problems) != 1 else "")
    err_console.print(f"[red]invalid config:[/red] {count}", highlight=False)


def _check_request(file: Path, config: Config, as_json: bool) -> None:
    from aigw.errors import GatewayError
    from aigw.hooks.validation import endpoint_for_body, validate_request

    try:
        body = json.loads(file.read_bytes())
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror or exc}")
    except ValueError as exc:
        fail(f"{file}: invalid JSON: {exc}")
    if not isinstance(body, dict):
        fail(f"{file}: a request body must be a JSON object")
    endpoint = endpoint_for_body(body)  # the one guess the daemon's validator also uses
    try:
        validate_request(endpoint, body, config.models.keys())
    except GatewayError as exc:
        if as_json:
            data = {
                "ok": False,
                "endpoint": endpoint,
                "param": exc.param,
                "message": exc.message,
                "warnings": problem_rows(config.warnings),
            }
            typer.echo(json.dumps(data, indent=2))
            raise typer.Exit(EXIT_ERROR) from None
        fail(f"{file}: {endpoint}: {exc.param or '(body)'}: {exc.message}")
    if as_json:
        warnings = problem_rows(config.warnings)
        typer.echo(json.dumps({"ok": True, "endpoint": endpoint, "warnings": warnings}))
    else:
        console.print(f"request OK ({endpoint})", markup=False, highlight=False)


# --- the summary: pure functions of the config ---------------------------------------------


def _public_url(url: str) -> str:
    from aigw.config import public_url

    return public_url(url)


def _tenants(config: Config) -> list[str]:
    names = [k.tenant for k in config.auth.keys]
    names += list(config.rate_limit.tenants) + list(config.quota.tenants)
    return list(dict.fromkeys(names))


def _quota_for(config: Config, tenant: str | None) -> int:
    return (
        config.quota.default
        if tenant is None
        else config.quota.tenants.get(tenant, config.quota.default)
    )


def summary_data(config: Config) -> dict[str, Any]:
    """Everything the summary shows, as JSON-ready data; never a secret."""
    rate = config.rate_limit

    def limits(tenant: str | None) -> dict[str, Any]:
        rule = rate.tenants.get(tenant) if tenant is not None else None
        source = rule if rule is not None else rate  # tenants without an override get these
        return {
            "requests_per_second": source.requests_per_second,
            "burst": source.burst,
            "tokens_per_minute": source.tokens_per_minute,
            "quota": _quota_for(config, tenant),
        }

    key_count: dict[str, int] = {}
    for key in config.auth.keys:
        key_count[key.tenant] = key_count.get(key.tenant, 0) + 1
    return {
        "ok": True,
        "warnings": problem_rows(config.warnings),
        "source": config.source,
        "server": {"host": config.server.host, "port": config.server.port},
        "providers": {
            name: {
                "type": p.type,
                "base_url": _public_url(p.base_url) if p.type != "mock" else None,
                "api_key": bool(p.api_key),
            }
            for name, p in config.providers.items()
        },
        "models": {
            name: {
                "strategy": m.strategy,
                "targets": [
                    {"provider": t.provider, "model": t.model, "weight": t.weight}
                    for t in m.targets
                ],
                "fallbacks": list(m.fallbacks),
            }
            for name, m in config.models.items()
        },
        "tenants": {
            "*": limits(None) | {"keys": 0},
            **{t: limits(t) | {"keys": key_count.get(t, 0)} for t in _tenants(config)},
        },
        "quota_period": config.quota.period,
        "quota_timezone": config.quota.timezone,
        "state": {
            "backend": config.state.backend,
            "path": config.state.path,
            "url": _public_url(config.state.url) if config.state.url else None,
        },
        "cache": {
            "enabled": config.cache.enabled,
            "max_entries": config.cache.max_entries,
            "max_bytes": config.cache.max_bytes,
            "ttl": config.cache.ttl,
        },
        "metrics": config.metrics.enabled,
        "tracing": {
            "enabled": config.tracing.enabled,
            "endpoint": _public_url(config.tracing.export_url()),
            "sample_ratio": config.tracing.sample_ratio,
            "capture_content": config.tracing.capture_content,
        },
        "hooks": [h.name for h in config.hooks],
    }


def _tracing_line(config: Config) -> str:
    tracing = config.tracing
    if not tracing.enabled:
        return "tracing: off"
    line = (
        f"tracing: on (OTLP/HTTP to {_public_url(tracing.export_url())}, "
        f"sampling {tracing.sample_ratio:.0%} of new traces"
    )
    return line + (", with prompt and answer text)" if tracing.capture_content else ")")


def _limit(value: float) -> str:
    return "unlimited" if value == 0 else f"{value:g}"


def render_summary(config: Config) -> RenderableType:
    """The rich summary printed by `aigw validate` for a valid config."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from aigw.config import format_duration, format_size

    data = summary_data(config)
    head = Text.assemble(("✓ ", "green"), ("config OK: ", "bold"), config.source)
    server = Text(
        f"listen {config.server.host}:{config.server.port}   "
        f"max body {format_size(config.server.max_body_size)}"
    )

    providers = Table(title="providers", title_justify="left", expand=False)
    for column in ("name", "type", "base_url", "api key"):
        providers.add_column(column)
    for name, p in config.providers.items():
        if p.type == "mock":
            where = f"built-in (latency {format_duration(p.mock.latency)}"
            where += f", failure rate {p.mock.failure_rate:g})"
        else:
            where = _public_url(p.base_url)
        providers.add_row(name, p.type, where, "set" if p.api_key else "-")

    models = Table(title="models", title_justify="left")
    for column in ("model", "strategy", "targets (weight)", "fallbacks"):
        models.add_column(column)
    for name, m in config.models.items():
        targets = ", ".join(f"{t.provider}/{t.model} ({t.weight})" for t in m.targets)
        models.add_row(name, m.strategy, targets, ", ".join(m.fallbacks) or "-")

    tenants = Table(title="tenants", title_justify="left")
    for column in ("tenant", "keys", "requests/s", "burst", "tokens/min", "quota"):
        tenants.add_column(column)
    period = config.quota.period
    for name, row in data["tenants"].items():
        quota = row["quota"]
        tenants.add_row(
            "(others)" if name == "*" else name,
            str(row["keys"]) if name != "*" else "-",
            _limit(row["requests_per_second"]),
            str(row["burst"]) if row["burst"] else "auto",
            _limit(row["tokens_per_minute"]),
            "unlimited" if quota == 0 else f"{quota:,} tokens {period}",
        )

    state = config.state
    where = state.path or (_public_url(state.url) if state.url else "") or "default location"
    cache = config.cache
    lines = [
        f"state: {state.backend} ({where})" if state.backend != "memory" else "state: memory",
        (
            f"cache: on ({cache.max_entries:,} entries, {format_size(cache.max_bytes)}, "
            f"ttl {format_duration(cache.ttl)})"
            if cache.enabled
            else "cache: off"
        ),
        f"metrics: {'on' if config.metrics.enabled else 'off'}",
        _tracing_line(config),
        "hooks: " + ", ".join(h.name for h in config.hooks),
        "auth: "
        + (f"{len(config.auth.keys)} key(s)" if config.auth.keys else "none (laptop mode)"),
    ]
    return Group(
        head,
        server,
        providers,
        models,
        tenants,
        Text("\n".join(lines)),
    )
