"""`aigw quota set|show|reset`: per-tenant token quotas on the running daemon.

A client command: it talks to the daemon through `AdminClient` (standard library only) and never
imports aiohttp or the daemon's modules.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:  # rich's table is imported where it is used: client commands start fast
    from rich.table import Table
    from rich.text import Text
from aigw.choices import PeriodName
from aigw.cli.common import AdminSocketOption, ConfigOption, JsonOption, console, fail

_BAR_WIDTH = 8


def quota_table(statuses: list[dict[str, Any]]) -> Table:
    """Render QuotaStatus dicts (as the daemon sends them) as a table. Pure: no I/O."""
    from rich import box
    from rich.table import Table

    table = Table(
        title="Token quotas", title_justify="left", box=box.SIMPLE_HEAD, collapse_padding=True
    )
    # Usage counts may fold on a narrow terminal; everything else stays on one line.
    table.add_column("Tenant", style="bold", no_wrap=True)
    for name in ("Input", "Output", "Total"):
        table.add_column(name, justify="right", overflow="fold")
    table.add_column("Limit", justify="right", no_wrap=True)
    table.add_column("Used", no_wrap=True)
    table.add_column("Period", no_wrap=True)
    table.add_column("Next reset", no_wrap=True)
    for status in statuses:
        limit = int(status.get("limit") or 0)
        table.add_row(
            str(status.get("tenant", "")),
            _count(status.get("input_tokens")),
            _count(status.get("output_tokens")),
            _count(status.get("total_tokens")),
            (f"{limit:,}" if limit else "unlimited")
            + ("*" if status.get("source") == "override" else ""),
            _usage_bar(float(status.get("percent_used") or 0.0), limited=limit > 0),
            str(status.get("period", "")),
            _reset_time(status.get("next_reset")),
        )
    if any(status.get("source") == "override" for status in statuses):
        table.caption = "* set at runtime with `aigw quota set`"
    return table


def _count(value: object) -> str:
    return f"{int(value):,}" if isinstance(value, int | float) else "0"


def _usage_bar(percent: float, *, limited: bool) -> Text:
    from rich.text import Text

    if not limited:
        return Text("-", style="dim")
    filled = min(_BAR_WIDTH, round(percent * _BAR_WIDTH / 100))
    style = "red" if percent >= 100 else "yellow" if percent >= 80 else "green"
    bar = Text("█" * filled, style=style)
    bar.append("░" * (_BAR_WIDTH - filled), style="dim")
    bar.append(f" {percent:.0f}%" if percent >= 10 else f" {percent:.1f}%")
    return bar


def _reset_time(value: object) -> str:
    if not isinstance(value, str) or not value:
        return "never"
    # "2024-03-11T04:00:00Z" -> "2024-03-11 04:00Z": the daemon always sends UTC.
    return value.replace("T", " ")[:16] + "Z" if value.endswith("Z") else value


def _check_tenant(tenant: str) -> None:
    from aigw.tenants import is_valid_tenant

    if not is_valid_tenant(tenant):
        shown = tenant if len(tenant) <= 64 else tenant[:64] + "…"
        fail(f"invalid tenant name {shown!r}: use 1-64 characters of A-Z a-z 0-9 . _ -")


def _call(
    admin_socket: str | None,
    config: str | None,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
) -> Any:
    from aigw.admin_client import AdminClient, AdminError

    try:
        client = AdminClient.discover(admin_socket, config)
        if method == "GET":
            return client.get_json(path)
        return client.post_json(path, body or {})
    except AdminError as exc:  # DaemonNotRunning included
        fail(str(exc))


def _statuses(data: Any) -> list[dict[str, Any]]:
    if isinstance(data, dict) and isinstance(data.get("tenants"), list):
        return [s for s in data["tenants"] if isinstance(s, dict)]
    return [data] if isinstance(data, dict) else []


def register(app: typer.Typer) -> None:
    quota_app = typer.Typer(
        name="quota", help="Per-tenant token quotas of the running daemon.", no_args_is_help=True
    )

    @quota_app.command("set")
    def set_quota(
        tenant: Annotated[str, typer.Argument(help="Tenant name.")],
        tokens: Annotated[int, typer.Argument(min=0, help="Tokens per period; 0 = unlimited.")],
        period: Annotated[
            PeriodName | None,
            typer.Option("--period", help="Period of this quota (default: the configured one)."),
        ] = None,
        admin_socket: str | None = AdminSocketOption,
        config: str | None = ConfigOption,
    ) -> None:
        """Set a tenant's token quota at runtime (persisted; wins over the config)."""
        _check_tenant(tenant)
        data = _call(
            admin_socket, config, "POST", f"/quota/{tenant}", {"tokens": tokens, "period": period}
        )
        statuses = _statuses(data)
        shown_period = statuses[0].get("period") if statuses else period
        amount = f"{tokens:,} tokens per {shown_period} period" if tokens else "unlimited"
        console.print(f"Quota of [bold]{tenant}[/bold] set to {amount}.", highlight=False)

    @quota_app.command("show")
    def show_quota(
        tenant: Annotated[str | None, typer.Argument(help="Only this tenant.")] = None,
        as_json: bool = JsonOption,
        admin_socket: str | None = AdminSocketOption,
        config: str | None = ConfigOption,
    ) -> None:
        """Usage per tenant: input/output/total tokens, limit, % used, next reset."""
        if tenant is not None:
            _check_tenant(tenant)
        path = f"/quota/{tenant}" if tenant is not None else "/quota"
        statuses = _statuses(_call(admin_socket, config, "GET", path))
        if as_json:
            typer.echo(json.dumps({"tenants": statuses}, indent=2))
        elif not statuses:
            console.print("No tenants with a quota or recorded usage yet.")
        else:
            console.print(quota_table(statuses))

    @quota_app.command("reset")
    def reset_quota(
        tenant: Annotated[str, typer.Argument(help="Tenant name.")],
        admin_socket: str | None = AdminSocketOption,
        config: str | None = ConfigOption,
    ) -> None:
        """Zero a tenant's usage in its current period."""
        _check_tenant(tenant)
        _call(admin_socket, config, "POST", f"/quota/{tenant}/reset")
        console.print(f"Usage of [bold]{tenant}[/bold] reset to 0.", highlight=False)

    app.add_typer(quota_app)
