"""`aigw quota set|show|reset`: per-tenant token quotas and money budgets on the running daemon.

A client command: it talks to the daemon through `AdminClient` (standard library only) and never
imports aiohttp or the daemon's modules.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:  # rich's table is imported where it is used: client commands start fast
    from rich.table import Table
    from rich.text import Text
from aigw.choices import PERIODS, PeriodName
from aigw.cli._typerfix import SignedNumberCommand
from aigw.cli.common import (
    EXIT_USAGE,
    AdminSocketOption,
    ConfigOption,
    JsonOption,
    console,
    fail,
    output_width,
    print_plain,
)

#: The largest quota `aigw quota set` takes: far above any real budget, far below what a
#: store's 64-bit integers hold, so usage can grow past it without overflowing.
MAX_TOKENS = 10**15

_BAR_WIDTH = 8
_TOKENS = re.compile(r"-?[0-9]+(?:[_,][0-9]+)*")


@dataclass(frozen=True, slots=True)
class _Layout:
    """What a quota table shows: tried in order until one fits the width."""

    bar: bool  # the usage bar before the percentage
    hidden: tuple[str, ...] = ()  # columns left out


_LAYOUTS: tuple[_Layout, ...] = (
    _Layout(bar=True),
    _Layout(bar=False),
    _Layout(bar=False, hidden=("Input", "Output")),
    _Layout(bar=False, hidden=("Input", "Output", "Period")),
    _Layout(bar=False, hidden=("Input", "Output", "Period", "Next reset")),
)


def quota_table(statuses: list[dict[str, Any]], width: int | None = None) -> Table:
    """Render QuotaStatus dicts (as the daemon sends them) as a table no wider than `width`
    (None: as wide as it needs). Pure: no I/O. Cost and Budget columns come with a daemon that
    sends `cost_usd`/`budget_usd`, and a Spent column (% of the budget) when any tenant has a
    money budget. Nothing wraps and no number is ever cut: to fit, the usage bars go first (the
    percentages stay), then the Input and Output columns (Total stays), then Period and Next
    reset, and last the tenant names are shortened with `…`. The caption names what was left
    out."""
    layout = _LAYOUTS[0]
    table = _build_table(statuses, layout, None)
    if width is None:
        return table
    for layout in _LAYOUTS:
        table = _build_table(statuses, layout, None)
        if _width_of(table) <= width:
            return table
    excess = _width_of(table) - width
    longest = max((len(str(s.get("tenant", ""))) for s in statuses), default=0)
    return _build_table(statuses, layout, max(longest - excess, 8))


def _build_table(
    statuses: list[dict[str, Any]], layout: _Layout, tenant_width: int | None
) -> Table:
    from rich import box
    from rich.table import Table

    money = any("cost_usd" in status or "budget_usd" in status for status in statuses)
    budgets = any(_usd(status.get("budget_usd")) > 0 for status in statuses)
    table = Table(
        title="Quotas and budgets" if money else "Token quotas",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        collapse_padding=True,
    )
    columns = ["Tenant", "Input", "Output", "Total", "Limit", "Used"]
    if money:
        columns += ["Cost", "Budget"] + (["Spent"] if budgets else [])
    columns += ["Period", "Next reset"]
    shown = [name for name in columns if name not in layout.hidden]
    for name in shown:
        table.add_column(
            name,
            justify="right" if name in _NUMERIC else "left",
            style="bold" if name == "Tenant" else None,
            no_wrap=True,
            overflow="ellipsis",
            max_width=tenant_width if name == "Tenant" else None,
        )
    # The override marker `*` follows the number: the others get a space, so digits line up.
    unmarked = " " if any(status.get("source") == "override" for status in statuses) else ""
    budget_unmarked = " " if any(_budget_override(status) for status in statuses) else ""
    for status in statuses:
        limit = int(status.get("limit") or 0)
        cost, budget = _usd(status.get("cost_usd")), _usd(status.get("budget_usd"))
        cells: dict[str, str | Text] = {
            "Tenant": str(status.get("tenant", "")),
            "Input": _count(status.get("input_tokens")),
            "Output": _count(status.get("output_tokens")),
            "Total": _count(status.get("total_tokens")),
            "Limit": (f"{limit:,}" if limit else "unlimited")
            + ("*" if status.get("source") == "override" else unmarked),
            "Used": _usage_bar(
                float(status.get("percent_used") or 0.0), limited=limit > 0, bar=layout.bar
            ),
            "Cost": _money(cost),
            "Budget": (_money(budget) if budget else "none")
            + ("*" if _budget_override(status) else budget_unmarked),
            "Spent": _usage_bar(
                cost * 100.0 / budget if budget else 0.0, limited=budget > 0, bar=layout.bar
            ),
            "Period": str(status.get("period", "")),
            "Next reset": _reset_time(status.get("next_reset")),
        }
        table.add_row(*(cells[name] for name in shown))
    notes = []
    if any(status.get("source") == "override" or _budget_override(status) for status in statuses):
        notes.append("* set at runtime with `aigw quota set`")
    if layout.hidden:
        notes.append(f"{', '.join(layout.hidden)} hidden at this width (`--json` shows all)")
    if notes:
        table.caption = "\n".join(notes)
        table.caption_justify = "left"
    return table


def _width_of(table: Table) -> int:
    import io

    from rich.console import Console
    from rich.measure import Measurement

    measure = Console(file=io.StringIO(), width=100_000)
    return Measurement.get(measure, measure.options, table).maximum


def _count(value: object) -> str:
    return f"{int(value):,}" if isinstance(value, int | float) else "0"


_NUMERIC = ("Input", "Output", "Total", "Limit", "Cost", "Budget")


def _usd(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value)


def _budget_override(status: dict[str, Any]) -> bool:
    return status.get("budget_source") == "override"


def _money(usd: float) -> str:
    """`$1,234.50`; amounts under a dollar keep four decimals (`$0.0042`), so a small spend
    never shows as nothing."""
    if usd == 0 or usd >= 1:
        return f"${usd:,.2f}"
    return f"${usd:.4f}"


def _usage_bar(percent: float, *, limited: bool, bar: bool = True) -> Text:
    from rich.text import Text

    if not limited:
        return Text("-", style="dim")
    style = "red" if percent >= 100 else "yellow" if percent >= 80 else "green"
    shown = Text()
    if bar:
        filled = min(_BAR_WIDTH, round(percent * _BAR_WIDTH / 100))
        shown.append("█" * filled, style=style)
        shown.append("░" * (_BAR_WIDTH - filled) + " ", style="dim")
    shown.append(f"{percent:.0f}%" if percent >= 10 else f"{percent:.1f}%", style=style)
    return shown


def parse_tokens(text: str) -> int:
    """A TOKENS argument: a whole number from 0 to MAX_TOKENS, `_` or `,` between digits
    allowed (`100_000`, `100,000`). ValueError with the reason otherwise."""
    shown = text if len(text) <= 32 else text[:32] + "…"
    if not _TOKENS.fullmatch(text):
        raise ValueError(f"TOKENS must be a whole number of tokens, not {shown!r}")
    tokens = int(text.replace("_", "").replace(",", ""))
    if tokens < 0:
        raise ValueError(f"TOKENS cannot be negative (got {shown}); 0 means unlimited")
    if tokens > MAX_TOKENS:
        raise ValueError(f"TOKENS is at most {MAX_TOKENS:,} (10^15), got {shown}")
    return tokens


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
    from aigw.admin_client import AdminClient
    from aigw.errors import AdminError

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


def _set_budget(
    tenant: str,
    text: str,
    period: str | None,
    admin_socket: str | None,
    config: str | None,
) -> None:
    from aigw.pricing import parse_usd

    try:
        amount = parse_usd(text)
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    # A decimal string: the daemon reads the amount exactly, never through a float.
    data = _call(
        admin_socket, config, "POST", f"/quota/{tenant}", {"usd": str(amount), "period": period}
    )
    statuses = _statuses(data)
    shown_period = statuses[0].get("period") if statuses else period
    shown = f"${amount:,.2f} per {shown_period} period" if amount else "no money budget"
    if amount and amount != round(amount, 2):
        shown = f"${amount:,f} per {shown_period} period"
    console.print(f"Budget of [bold]{tenant}[/bold] set to {shown}.", highlight=False)


def register(app: typer.Typer) -> None:
    quota_app = typer.Typer(
        name="quota",
        help="Per-tenant token quotas and money budgets of the running daemon.",
        no_args_is_help=True,
    )

    @quota_app.command("set", cls=SignedNumberCommand)
    def set_quota(
        tenant: Annotated[str, typer.Argument(help="Tenant name.", show_default=False)],
        tokens: Annotated[
            str,
            typer.Argument(
                metavar="TOKENS",
                show_default=False,
                help=f"Tokens per period: 0 (unlimited) up to {MAX_TOKENS:,} (10^15); "
                "100_000 and 100,000 are read as 100000. With --usd: US dollars per period "
                "(20, 20.50, $1,000; 0 = no money budget).",
            ),
        ],
        usd: Annotated[
            bool,
            typer.Option(
                "--usd",
                help="Set the tenant's money budget (US dollars per period, priced with "
                "`prices:`) instead of its token quota; either limit can refuse a request.",
            ),
        ] = False,
        period: Annotated[
            PeriodName | None,
            typer.Option(
                "--period",
                metavar="PERIOD",
                help=f"Quota period: {', '.join(PERIODS[:-1])} or {PERIODS[-1]} "
                "(default: the tenant's current period).",
            ),
        ] = None,
        admin_socket: str | None = AdminSocketOption,
        config: str | None = ConfigOption,
    ) -> None:
        """Set a tenant's token quota or money budget at runtime (persisted; wins over the
        config)."""
        _check_tenant(tenant)
        if usd:
            _set_budget(tenant, tokens, period, admin_socket, config)
            return
        try:
            amount = parse_tokens(tokens)
        except ValueError as exc:
            fail(str(exc), EXIT_USAGE)
        data = _call(
            admin_socket, config, "POST", f"/quota/{tenant}", {"tokens": amount, "period": period}
        )
        statuses = _statuses(data)
        shown_period = statuses[0].get("period") if statuses else period
        shown = f"{amount:,} tokens per {shown_period} period" if amount else "unlimited"
        console.print(f"Quota of [bold]{tenant}[/bold] set to {shown}.", highlight=False)

    @quota_app.command("show")
    def show_quota(
        tenant: Annotated[str | None, typer.Argument(help="Only this tenant.")] = None,
        as_json: bool = JsonOption,
        admin_socket: str | None = AdminSocketOption,
        config: str | None = ConfigOption,
    ) -> None:
        """Usage per tenant: input/output/total tokens, limit, % used, cost, money budget,
        next reset."""
        if tenant is not None:
            _check_tenant(tenant)
        path = f"/quota/{tenant}" if tenant is not None else "/quota"
        statuses = _statuses(_call(admin_socket, config, "GET", path))
        if as_json:
            typer.echo(json.dumps({"tenants": statuses}, indent=2))
        elif not statuses:
            console.print("No tenants with a quota or recorded usage yet.")
        else:
            print_plain(quota_table(statuses, output_width(console)))

    @quota_app.command("reset")
    def reset_quota(
        tenant: Annotated[str, typer.Argument(help="Tenant name.", show_default=False)],
        admin_socket: str | None = AdminSocketOption,
        config: str | None = ConfigOption,
    ) -> None:
        """Zero a tenant's usage and spending in its current period."""
        _check_tenant(tenant)
        _call(admin_socket, config, "POST", f"/quota/{tenant}/reset")
        console.print(f"Usage of [bold]{tenant}[/bold] reset to 0.", highlight=False)

    app.add_typer(quota_app)
