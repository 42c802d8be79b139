"""In-memory state store: counters in dicts owned by the event-loop thread.

Durability: none, everything is lost when the process stops. Useful for tests and for a gateway
that must not write files. `SqliteStore` extends it with write-behind persistence.

Memory stays bounded by the number of tenants: each tenant keeps the counters of its current
period only. `reserve()` defines the current period (the quota manager calls it for every
request, unlimited ones included); when it moves on, the old counters are dropped as soon as no
reservation holds them, and late usage for a past period does not stay in memory. The usage
history is bounded by `usage.retention` (the gateway prunes it hourly) and by what the rollup
folds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from aigw.config import StateConfig
from aigw.pricing import MAX_NANOS
from aigw.state.base import Override, ReserveResult, StateStore, UsageCounters, UsageKey
from aigw.usage_history import Row, RowKey


class MemoryStore(StateStore):
    name = "memory"

    @classmethod
    def from_config(cls, config: StateConfig) -> MemoryStore:
        return cls()

    def __init__(self) -> None:
        self._counters: dict[UsageKey, UsageCounters] = {}
        #: tenant -> the period key of its latest reservation
        self._current: dict[str, str] = {}
        self._overrides: dict[str, Override] = {}
        self._history: dict[RowKey, list[int]] = {}

    async def open(self) -> None:
        return None

    @property
    def overrides(self) -> Mapping[str, Override]:
        return self._overrides

    # --- hooks for SqliteStore ------------------------------------------------------------

    async def _load(self, key: UsageKey) -> UsageCounters:
        """Counters for a key not in memory (may await I/O in subclasses)."""
        return self._install(key, UsageCounters())

    async def _get_missing(self, keys: Sequence[UsageKey]) -> list[UsageCounters]:
        """Snapshots of keys not in memory, without installing them."""
        return [UsageCounters() for _ in keys]

    def _touched(self, key: UsageKey, counters: UsageCounters) -> None:
        """Recorded usage changed (write-behind hook)."""
        return None

    # --- counters -------------------------------------------------------------------------

    def _install(self, key: UsageKey, counters: UsageCounters) -> UsageCounters:
        existing = self._counters.get(key)
        if existing is not None:  # another task loaded it while we awaited
            return existing
        self._counters[key] = counters
        return counters

    def _drop_if_idle(self, key: UsageKey) -> None:
        counters = self._counters.get(key)
        if counters is not None and counters.reserved <= 0 and counters.reserved_nanos <= 0:
            del self._counters[key]

    def _drop_if_past(self, tenant: str, period_key: str) -> None:
        current = self._current.get(tenant)
        if current is not None and current != period_key:
            self._drop_if_idle((tenant, period_key))

    async def reserve(
        self,
        tenant: str,
        period_key: str,
        tokens: int,
        limit: int,
        *,
        reservation_id: int,
        ttl: float,
        expires_at: float | None = None,
        nanos: int = 0,
        budget: int = 0,
    ) -> ReserveResult:
        key = (tenant, period_key)
        counters = self._counters.get(key)
        if counters is None:
            counters = await self._load(key)
        # No await from here on: the check and the add are one step for every other task.
        previous = self._current.get(tenant)
        if previous != period_key:  # the tenant entered a new period
            self._current[tenant] = period_key
            if previous is not None:
                self._drop_if_idle((tenant, previous))
        used, cost = counters.total_tokens, counters.cost_nanos
        if (limit > 0 and used + counters.reserved + tokens > limit) or (
            budget > 0 and cost + counters.reserved_nanos + nanos > budget
        ):
            return ReserveResult(
                False,
                used,
                counters.reserved,
                cost_nanos=cost,
                reserved_nanos=counters.reserved_nanos,
            )
        counters.reserved += tokens
        counters.reserved_nanos += nanos
        return ReserveResult(
            True, used, counters.reserved, cost_nanos=cost, reserved_nanos=counters.reserved_nanos
        )

    async def commit(
        self,
        tenant: str,
        period_key: str,
        reserved: int,
        input_tokens: int,
        output_tokens: int,
        total_tokens: int,
        *,
        reservation_id: int,
        reserved_nanos: int = 0,
        cost_nanos: int = 0,
    ) -> None:
        key = (tenant, period_key)
        counters = self._counters.get(key)
        if counters is None:
            counters = await self._load(key)
        counters.reserved = max(0, counters.reserved - reserved)
        counters.reserved_nanos = max(0, counters.reserved_nanos - reserved_nanos)
        counters.input_tokens += input_tokens
        counters.output_tokens += output_tokens
        counters.total_tokens += total_tokens
        if cost_nanos:
            counters.cost_nanos = min(counters.cost_nanos + cost_nanos, MAX_NANOS)
        self._touched(key, counters)
        self._drop_if_past(tenant, period_key)  # a late commit into a past period

    async def release(
        self,
        tenant: str,
        period_key: str,
        reserved: int,
        *,
        reservation_id: int,
        reserved_nanos: int = 0,
    ) -> None:
        key = (tenant, period_key)
        counters = self._counters.get(key)
        if counters is None:  # nothing reserved here (e.g. an unlimited tenant)
            return
        counters.reserved = max(0, counters.reserved - reserved)
        counters.reserved_nanos = max(0, counters.reserved_nanos - reserved_nanos)
        self._drop_if_past(tenant, period_key)

    async def get_usage(self, keys: Sequence[UsageKey]) -> list[UsageCounters]:
        result: list[UsageCounters | None] = [None] * len(keys)
        missing: list[int] = []
        for i, key in enumerate(keys):
            counters = self._counters.get(key)
            if counters is None:
                missing.append(i)
            else:
                result[i] = counters.copy()
        if missing:
            loaded = await self._get_missing([keys[i] for i in missing])
            for i, counters in zip(missing, loaded, strict=True):
                # A task may have installed the key while we awaited; memory is authoritative.
                live = self._counters.get(keys[i])
                result[i] = live.copy() if live is not None else counters
        return [c if c is not None else UsageCounters() for c in result]

    async def tenants(self) -> set[str]:
        return {tenant for tenant, _ in self._counters}

    async def reset_usage(self, tenant: str, period_key: str) -> None:
        key = (tenant, period_key)
        counters = self._counters.get(key)
        if counters is None:
            counters = await self._load(key)
        counters.input_tokens = counters.output_tokens = counters.total_tokens = 0
        counters.cost_nanos = 0
        self._touched(key, counters)
        self._drop_if_past(tenant, period_key)

    async def set_override(self, tenant: str, override: Override | None) -> None:
        if override is None:
            self._overrides.pop(tenant, None)
        else:
            self._overrides[tenant] = override

    # --- usage history ------------------------------------------------------------------------

    async def add_history(self, rows: Sequence[Row], retention: float) -> None:
        history = self._history
        for row in rows:
            cells = history.get(row.key)
            if cells is None:
                history[row.key] = list(row.counts())
                continue
            for i, value in enumerate(row.counts()):
                total = cells[i] + value
                cells[i] = total if total <= MAX_NANOS else MAX_NANOS

    async def read_history(
        self, since_hour: int, tenant: str | None = None, model: str | None = None
    ) -> list[Row]:
        return [
            Row.from_key(key, cells)
            for key, cells in self._history.items()
            if key[0] >= since_hour
            and (tenant is None or key[1] == tenant)
            and (model is None or key[2] == model)
        ]

    async def prune_history(self, before_hour: int) -> int:
        old = [key for key in self._history if key[0] < before_hour]
        for key in old:
            del self._history[key]
        return len(old)

    async def flush(self) -> None:
        return None

    async def close(self) -> None:
        return None

    @property
    def loaded_keys(self) -> int:
        """How many counters sit in memory (for stats and tests)."""
        return len(self._counters)
