"""Usage history: hourly rollups per tenant, model and endpoint, and the report `aigw usage` draws.

Two halves, both plain code with no I/O:

- `UsageRollup` is what the request path touches: `record()` adds one finished request to the
  counters of its hour (requests, errors, input, cached input and output tokens, cost) in O(1),
  a dict lookup and a few additions. A background task `drain()`s it every
  `usage.flush_interval` into the state store, off the request path; the store adds the rows to
  what it holds (same key: counters summed). Memory is bounded: past `max_keys` distinct keys
  between two drains, new keys are folded into one `*` row per hour (`folded` counts them).
- `summarise()` is the query the admin socket's `GET /usage` and the CLI share: rows in (from
  the store, plus the rollup's not yet flushed `rows()`), a `UsageReport` out whose
  `to_dict()` is DESIGN §9's JSON.

Conventions. Times are epoch seconds, and hours and days are UTC (`hour` is the start of the
hour, a multiple of 3600). `input_tokens` counts every prompt token, the cached ones included
(`cached_input_tokens` says how many of them were read from the provider's cache); output
tokens include reasoning. Cost is kept in integer nano-dollars (see `aigw.pricing`); in the JSON,
`cost_usd` is a number in USD to the nano-dollar.

A report's buckets carry exactly the keys they are grouped by: `--by hour|day` gives `start`,
`tenant` and `model` (endpoints summed); `--by tenant` sums over time and models and gives
`tenant`; `--by model` sums over time and tenants and gives `model`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final, Literal, cast, get_args

from aigw.exchange import Usage
from aigw.pricing import MAX_NANOS, to_nanos, usd_number

HOUR: Final = 3600
DAY: Final = 86400
#: What the folded rows of `UsageRollup` are keyed by (not a valid tenant or model name).
OVERFLOW: Final = "*"
DEFAULT_MAX_KEYS: Final = 10_000

GroupBy = Literal["hour", "day", "tenant", "model"]
GROUP_BY: tuple[str, ...] = get_args(GroupBy)
#: `--since` when none is given.
DEFAULT_SINCE: Final = "24h"
#: `--by` when none is given: hours for a window of up to this long, else days.
AUTO_DAYS_AFTER: Final = 2 * DAY
#: The longest `--since` (a year and a day: a retention could be that long).
MAX_SINCE: Final = 366 * DAY
COUNTERS: tuple[str, ...] = (
    "requests",
    "errors",
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
)

#: (hour start, tenant, model, endpoint)
RowKey = tuple[int, str, str, str]


@dataclass(frozen=True, slots=True)
class Row:
    """One hour of one tenant on one model and endpoint: plain ints, what a store persists."""

    hour: int  # epoch seconds of the hour's start (UTC)
    tenant: str
    model: str
    endpoint: str
    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    cost_nanos: int = 0

    @property
    def key(self) -> RowKey:
        return (self.hour, self.tenant, self.model, self.endpoint)

    def counts(self) -> tuple[int, int, int, int, int, int]:
        return (
            self.requests,
            self.errors,
            self.input_tokens,
            self.cached_input_tokens,
            self.output_tokens,
            self.cost_nanos,
        )

    def to_dict(self) -> dict[str, int | str]:
        return {
            "hour": self.hour,
            "tenant": self.tenant,
            "model": self.model,
            "endpoint": self.endpoint,
            "requests": self.requests,
            "errors": self.errors,
            "input_tokens": self.input_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "output_tokens": self.output_tokens,
            "cost_nanos": self.cost_nanos,
        }

    @classmethod
    def from_key(cls, key: RowKey, counts: Iterable[int]) -> Row:
        return cls(*key, *counts)


def merge_rows(rows: Iterable[Row]) -> list[Row]:
    """Rows with the same key summed into one (what a store does when it adds a flush)."""
    sums: dict[RowKey, list[int]] = {}
    for row in rows:
        cells = sums.get(row.key)
        if cells is None:
            sums[row.key] = list(row.counts())
        else:
            for i, value in enumerate(row.counts()):
                cells[i] += value
    return [Row.from_key(key, _capped(cells)) for key, cells in sums.items()]


def _capped(cells: list[int]) -> list[int]:
    # A 64-bit store counter cannot hold more; a sum that reached it stays there.
    return [value if value <= MAX_NANOS else MAX_NANOS for value in cells]


def hour_of(at: float) -> int:
    """The start of the UTC hour `at` falls in."""
    return int(at // HOUR) * HOUR


def retention_cutoff(now: float, retention: float) -> int:
    """Rows of hours starting before this are past `usage.retention` and pruned. An hour is
    kept while any part of it is within the retention."""
    return hour_of(now - retention)


def expires_at(hour: int, retention: float) -> int:
    """When a store's row of `hour` may go (a Redis key's EXPIREAT): `retention` after the hour
    ends."""
    return hour + HOUR + int(retention)


class UsageRollup:
    """Hourly counters per (hour, tenant, model, endpoint), in memory until `drain()`."""

    __slots__ = ("_cells", "_clock", "folded", "max_keys")

    def __init__(
        self, *, max_keys: int = DEFAULT_MAX_KEYS, clock: Callable[[], float] = time.time
    ) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.max_keys = max_keys
        self._clock = clock
        self._cells: dict[RowKey, list[int]] = {}
        #: Records folded into an `OVERFLOW` row because `max_keys` was reached.
        self.folded = 0

    def record(
        self,
        tenant: str,
        model: str,
        endpoint: str,
        usage: Usage | None,
        cost: Decimal | int = 0,
        error: bool = False,
        at: float | None = None,
    ) -> None:
        """One finished request (an error too: it counts as a request and an error, with the
        tokens it used). `cost` in integer nano-dollars, or USD as a `Decimal`; `at` defaults
        to the clock (wall time: the hours are calendar hours)."""
        when = self._clock() if at is None else at
        key = (int(when // HOUR) * HOUR, tenant, model, endpoint)
        cells = self._cells.get(key)
        if cells is None:
            cells = self._new(key)
        cells[0] += 1
        if error:
            cells[1] += 1
        if usage is not None:  # (a negative count is never added: it would credit)
            if (count := usage.prompt_tokens) > 0:
                cells[2] += count
            if (count := usage.cached_tokens) > 0:
                cells[3] += count
            if (count := usage.completion_tokens) > 0:
                cells[4] += count
        if cost:
            cells[5] += cost if type(cost) is int else to_nanos(cost)

    def _new(self, key: RowKey) -> list[int]:
        if len(self._cells) >= self.max_keys:
            self.folded += 1
            key = (key[0], OVERFLOW, OVERFLOW, OVERFLOW)
            cells = self._cells.get(key)
            if cells is not None:
                return cells
        cells = [0, 0, 0, 0, 0, 0]
        self._cells[key] = cells
        return cells

    def drain(self) -> list[Row]:
        """Everything recorded since the last drain, as rows to add to the store; the rollup
        starts empty. Give the rows back with `restore()` if the write fails."""
        cells, self._cells = self._cells, {}
        return [Row.from_key(key, _capped(values)) for key, values in cells.items()]

    def restore(self, rows: Iterable[Row]) -> None:
        """Add rows back (a flush that failed), so nothing recorded is lost."""
        for row in rows:
            cells = self._cells.get(row.key)
            if cells is None:
                self._cells[row.key] = list(row.counts())
            else:
                for i, value in enumerate(row.counts()):
                    cells[i] += value

    def rows(self) -> list[Row]:
        """What is recorded and not drained yet, without draining (for `GET /usage`)."""
        return [Row.from_key(key, _capped(values)) for key, values in self._cells.items()]

    def __len__(self) -> int:
        return len(self._cells)


# --- the query ---------------------------------------------------------------------------------

_SINCE_RE = re.compile(r"([0-9]{1,6})\s*(m|h|d|w)", re.ASCII)
_SINCE_UNITS = {"m": 60, "h": HOUR, "d": DAY, "w": 7 * DAY}
_MAX_NAME = 256


def parse_since(text: str) -> int:
    """Seconds of a `--since` window: a whole number of minutes, hours, days or weeks
    (`90m`, `24h`, `7d`, `2w`). ValueError with the reason otherwise."""
    m = _SINCE_RE.fullmatch(text.strip())
    if m is None:
        shown = text if len(text) <= 20 else text[:20] + "…"
        raise ValueError(
            f"since must be a number with a unit (24h, 7d, 30d; m, h, d or w), not {shown!r}"
        )
    seconds = int(m.group(1)) * _SINCE_UNITS[m.group(2)]
    if seconds <= 0:
        raise ValueError("since must be longer than 0")
    if seconds > MAX_SINCE:
        raise ValueError("since is at most 366d")
    return seconds


@dataclass(frozen=True, slots=True)
class UsageQuery:
    """What `GET /usage` is asked (its query string) and `aigw usage` asks."""

    since: str = DEFAULT_SINCE  # as written: 24h, 7d, 30d
    by: GroupBy = "hour"
    tenant: str | None = None
    model: str | None = None

    @property
    def seconds(self) -> int:
        return parse_since(self.since)

    @classmethod
    def make(
        cls,
        since: str | None = None,
        by: str | None = None,
        tenant: str | None = None,
        model: str | None = None,
    ) -> UsageQuery:
        """A checked query; `by` defaults to hours for a window up to 2 days, else days.
        ValueError naming the bad parameter."""
        since = since or DEFAULT_SINCE
        seconds = parse_since(since)
        if by is None or by == "":
            by = "hour" if seconds <= AUTO_DAYS_AFTER else "day"
        if by not in GROUP_BY:
            raise ValueError(f"by must be one of {', '.join(GROUP_BY)}, not {by[:20]!r}")
        for name, value in (("tenant", tenant), ("model", model)):
            if value is not None and (not value or len(value) > _MAX_NAME):
                raise ValueError(f"{name} must be 1 to {_MAX_NAME} characters")
        return cls(since, cast(GroupBy, by), tenant or None, model or None)

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> UsageQuery:
        """From a query string (`since`, `by`, `tenant`, `model`); unknown parameters are an
        error, so a typo is not silently ignored."""
        unknown = sorted(set(params) - {"since", "by", "tenant", "model"})
        if unknown:
            raise ValueError(f"unknown parameter {unknown[0][:40]!r}: use since, by, tenant, model")
        return cls.make(
            params.get("since"), params.get("by"), params.get("tenant"), params.get("model")
        )

    def to_params(self) -> dict[str, str]:
        params = {"since": self.since, "by": self.by}
        if self.tenant is not None:
            params["tenant"] = self.tenant
        if self.model is not None:
            params["model"] = self.model
        return params


@dataclass(frozen=True, slots=True)
class UsageCounts:
    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    cost_nanos: int = 0

    def to_dict(self) -> dict[str, int | float]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "input_tokens": self.input_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": usd_number(self.cost_nanos),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UsageCounts:
        """From the JSON; ValueError when a counter is missing or not a whole number >= 0."""
        values = []
        for name in COUNTERS:
            value = data.get(name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a whole number >= 0")
            values.append(value)
        requests, errors, input_tokens, cached, output = values
        return cls(requests, errors, input_tokens, cached, output, _nanos_of(data.get("cost_usd")))


def _nanos_of(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("cost_usd must be a number")
    try:
        # A float's repr is the shortest text that reads back as it: the amount as sent.
        return to_nanos(Decimal(repr(value)) if isinstance(value, float) else Decimal(value))
    except (InvalidOperation, ValueError):
        raise ValueError("cost_usd must be a number >= 0") from None


@dataclass(frozen=True, slots=True)
class UsageBucket:
    """One line of a report. `start` (epoch seconds), `tenant` and `model` are None where the
    report sums over them."""

    counts: UsageCounts
    start: int | None = None
    tenant: str | None = None
    model: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.start is not None:
            out["start"] = iso_utc(self.start)
        if self.tenant is not None:
            out["tenant"] = self.tenant
        if self.model is not None:
            out["model"] = self.model
        return out | self.counts.to_dict()


@dataclass(frozen=True, slots=True)
class UsageReport:
    """Buckets and their totals, and the period they cover (`since` to `until`, epoch seconds;
    not part of the JSON, which DESIGN fixes: the caller knows what it asked)."""

    by: GroupBy
    buckets: tuple[UsageBucket, ...]
    totals: UsageCounts
    since: float | None = None
    until: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """DESIGN §9's JSON: `{"buckets": [...], "totals": {...}}`."""
        return {
            "buckets": [bucket.to_dict() for bucket in self.buckets],
            "totals": self.totals.to_dict(),
        }

    @classmethod
    def from_dict(
        cls,
        data: object,
        by: GroupBy,
        *,
        since: float | None = None,
        until: float | None = None,
    ) -> UsageReport:
        """Read the JSON back (what the daemon answers); ValueError when it is not that shape."""
        if not isinstance(data, dict):
            raise ValueError("a usage report is a JSON object")
        raw_buckets, raw_totals = data.get("buckets"), data.get("totals")
        if not isinstance(raw_buckets, list) or not isinstance(raw_totals, dict):
            raise ValueError("a usage report has buckets (a list) and totals (an object)")
        buckets = []
        for raw in raw_buckets:
            if not isinstance(raw, dict):
                raise ValueError("each bucket is a JSON object")
            start = raw.get("start")
            tenant, model = raw.get("tenant"), raw.get("model")
            if not all(v is None or isinstance(v, str) for v in (start, tenant, model)):
                raise ValueError("start, tenant and model are strings")
            buckets.append(
                UsageBucket(
                    UsageCounts.from_dict(raw),
                    None if start is None else parse_iso_utc(start),
                    tenant,
                    model,
                )
            )
        return cls(by, tuple(buckets), UsageCounts.from_dict(raw_totals), since, until)


def iso_utc(epoch: float) -> str:
    """`2024-03-10T14:00:00Z`."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso_utc(text: str) -> int:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"start is not an ISO-8601 time: {text[:40]!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def summarise(
    rows: Iterable[Row],
    since: float,
    by: GroupBy,
    tenant: str | None = None,
    model: str | None = None,
    *,
    until: float | None = None,
) -> UsageReport:
    """The report of the rows whose hour overlaps `[since, until)` (an hour that began before
    `since` but ends after it is in), for one tenant and one model when given; rows with the
    same key (from several flushes or instances) are summed. Buckets of `--by hour|day` come
    oldest first; of `--by tenant|model`, the costliest first (then most requests, then name)."""
    if by not in GROUP_BY:
        raise ValueError(f"by must be one of {', '.join(GROUP_BY)}")
    first_hour = hour_of(since)
    groups: dict[tuple[int | None, str | None, str | None], list[int]] = {}
    totals = [0, 0, 0, 0, 0, 0]
    for row in rows:
        if row.hour < first_hour or (until is not None and row.hour >= until):
            continue
        if (tenant is not None and row.tenant != tenant) or (
            model is not None and row.model != model
        ):
            continue
        if by == "hour":
            key: tuple[int | None, str | None, str | None] = (row.hour, row.tenant, row.model)
        elif by == "day":
            key = (row.hour - row.hour % DAY, row.tenant, row.model)
        elif by == "tenant":
            key = (None, row.tenant, None)
        else:
            key = (None, None, row.model)
        cells = groups.get(key)
        if cells is None:
            cells = groups[key] = [0, 0, 0, 0, 0, 0]
        for i, value in enumerate(row.counts()):
            cells[i] += value
            totals[i] += value
    buckets = [
        UsageBucket(UsageCounts(*_capped(cells)), start, name, model_name)
        for (start, name, model_name), cells in groups.items()
    ]
    if by in ("hour", "day"):
        buckets.sort(key=lambda b: (b.start or 0, b.tenant or "", b.model or ""))
    else:
        buckets.sort(
            key=lambda b: (
                -b.counts.cost_nanos,
                -b.counts.requests,
                b.tenant or b.model or "",
            )
        )
    return UsageReport(by, tuple(buckets), UsageCounts(*_capped(totals)), first_hour, until)
