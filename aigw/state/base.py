"""The state store interface: where quota usage, money spent, reservations, overrides and the
usage history live.

Usage is keyed by `(tenant, period_key)`; the quota manager computes the period key (e.g.
`daily:2024-03-10`), so a new period starts at zero without any sweep and the store knows nothing
about calendars. Beside the token counters each key has two money counters, in integer
nano-dollars (`aigw.pricing`): `cost_nanos` spent and `reserved_nanos` held by requests in
flight, checked against a money budget in the same step as tokens against a token limit.

Atomicity contract. `reserve()` is check-and-add in one step: it either adds `tokens` to the
tenant's reserved counter and `nanos` to its reserved money, or refuses, and no other
reservation on the same key can interleave.
- In-process stores (memory, sqlite) keep the authoritative counters in memory, owned by the one
  event-loop thread. Their `reserve()` may await only *before* the check (to load a row); from
  the check to the add it does not suspend, so every other task sees both or neither.
- A shared store (redis) does the same in one round trip with a server-side script. Its
  reservations carry `reservation_id` and expire after `ttl` seconds, so a crashed instance never
  leaves a reservation stuck. In-process stores ignore both: their reservations die with the
  process because they are never persisted.

Overrides are rare admin writes and are persisted before `set_override()` returns. The store also
keeps a local, always-readable view of them (`overrides`) so the hot path resolves a tenant's
limit with one dict lookup and no I/O. A shared store keeps that view fresh with a version check
inside `reserve()`'s round trip: when another instance changed an override, `reserve()` reserves
nothing, reloads the view and answers `stale=True`, and the caller resolves the limit again.

Durability of the in-process stores is described in their modules (`memory`: none; `sqlite`:
write-behind every `flush_interval`, `kill -9` loses at most that window of usage).

Usage history. Hourly rows (`aigw.usage_history.Row`: hour, tenant, model, endpoint and six
counters) are added by a background flusher (`add_history`: counters summed into what the store
holds for the same key, each capped at 2^63-1), read back by `GET /usage` (`read_history`) and
pruned past `usage.retention` (`prune_history`). They are plain numbers: the store neither
rolls them up nor decides anything about them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from aigw.config import StateConfig
from aigw.usage_history import Row

#: `(tenant, period_key)`.
UsageKey = tuple[str, str]


@dataclass(slots=True)
class UsageCounters:
    """Token and money counters of one tenant in one period. `reserved` (tokens) and
    `reserved_nanos` are the in-flight worst case, never persisted."""

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    reserved: int = 0
    #: money spent in the period, nano-dollars
    cost_nanos: int = 0
    #: money held by requests in flight, nano-dollars
    reserved_nanos: int = 0

    def copy(self) -> UsageCounters:
        return UsageCounters(
            self.input_tokens,
            self.output_tokens,
            self.total_tokens,
            self.reserved,
            self.cost_nanos,
            self.reserved_nanos,
        )


@dataclass(frozen=True, slots=True)
class Override:
    """A runtime quota set with `aigw quota set`; wins over the config. `tokens == 0` means
    unlimited, `usd_nanos == 0` no money budget; None leaves that limit to the config.
    `period is None` keeps the configured period (one period for both)."""

    tokens: int | None
    period: str | None = None
    #: the money budget per period in nano-dollars (`aigw quota set TENANT 20 --usd`)
    usd_nanos: int | None = None


@dataclass(frozen=True, slots=True)
class ReserveResult:
    allowed: bool
    #: Total tokens recorded in the period (not counting reservations).
    used: int
    #: Tokens held by in-flight reservations, including this one when allowed.
    reserved: int
    #: A shared store saw that the overrides changed since its local view: nothing was
    #: reserved, the view is reloaded; resolve the tenant's limit again and retry.
    stale: bool = False
    #: Money spent in the period (nano-dollars, not counting reservations).
    cost_nanos: int = 0
    #: Money held by in-flight reservations, including this one when allowed.
    reserved_nanos: int = 0


#: The answer to a reserve that saw changed overrides (shared, never allocated per request).
STALE = ReserveResult(False, 0, 0, stale=True)


class StateStore(ABC):
    """Async storage of quota usage, reservations and overrides: numbers in, numbers out. What
    they mean for a request (limits, refusals) is `aigw.limits`'s business.

    Lifecycle: construct, `await open()`, use, `await close()`. `close()` flushes everything.
    """

    #: Backend name as written in `state.backend`.
    name: ClassVar[str]
    #: Several gateway instances share this store: their rate-limit buckets and quota
    #: reservations must live in it too (`aigw.limits.build_limits` picks the shared limits).
    shared: ClassVar[bool] = False

    @classmethod
    @abstractmethod
    def from_config(cls, config: StateConfig) -> StateStore:
        """The store `state:` describes (not opened yet)."""

    @abstractmethod
    async def open(self) -> None:
        """Create/connect and load what the hot path needs (overrides)."""

    @property
    @abstractmethod
    def overrides(self) -> Mapping[str, Override]:
        """The local view of all overrides, read on the hot path (no I/O)."""

    # --- usage ------------------------------------------------------------------------------

    @abstractmethod
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
        """Atomically: if used + reserved + tokens <= limit and cost + reserved money + nanos
        <= budget, add `tokens` to reserved and `nanos` to reserved money and allow; else change
        nothing and refuse. `limit <= 0` means no token limit, `budget <= 0` no money budget.

        Called for every request, unlimited ones too (`tokens=0, limit=0`): in-process stores
        learn the tenant's current period from it, so they can forget past ones; a shared store
        checks in the same round trip that its view of the overrides is current.

        `expires_at` is the end of the period (epoch seconds; `math.inf` for `never`, None when
        unknown): a shared store lets the period's counters expire some time after it."""

    @abstractmethod
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
        """Replace a reservation of `reserved` tokens and `reserved_nanos` by real usage and
        its cost (reserved may be 0: plain usage recording). Must not fail because the
        reservation expired or was reset."""

    @abstractmethod
    async def release(
        self,
        tenant: str,
        period_key: str,
        reserved: int,
        *,
        reservation_id: int,
        reserved_nanos: int = 0,
    ) -> None:
        """Drop a reservation without usage (the request failed before using anything)."""

    async def add_usage(
        self,
        tenant: str,
        period_key: str,
        input_tokens: int,
        output_tokens: int,
        total_tokens: int,
    ) -> None:
        """Record usage that had no reservation."""
        await self.commit(
            tenant, period_key, 0, input_tokens, output_tokens, total_tokens, reservation_id=0
        )

    @abstractmethod
    async def get_usage(self, keys: Sequence[UsageKey]) -> list[UsageCounters]:
        """Snapshots of the counters for each key, in order; zeros for unknown keys."""

    @abstractmethod
    async def tenants(self) -> set[str]:
        """Every tenant with recorded usage in any period."""

    @abstractmethod
    async def reset_usage(self, tenant: str, period_key: str) -> None:
        """Zero the recorded usage and money spent of one period. In-flight reservations stay
        (their requests are still running and will commit)."""

    # --- usage history ------------------------------------------------------------------------

    @abstractmethod
    async def add_history(self, rows: Sequence[Row], retention: float) -> None:
        """Add hourly rows to what the store holds (counters of the same key summed, capped
        at 2^63-1), kept at least `retention` seconds after their hour ends. Raises when the
        rows could not be written (the caller keeps them for the next try)."""

    @abstractmethod
    async def read_history(
        self, since_hour: int, tenant: str | None = None, model: str | None = None
    ) -> list[Row]:
        """The rows of hours from `since_hour` on (of one tenant and one model when given);
        rows of one key may come more than once (the caller sums them)."""

    @abstractmethod
    async def prune_history(self, before_hour: int) -> int:
        """Drop the rows of hours before `before_hour`; returns how many went (when known)."""

    # --- overrides --------------------------------------------------------------------------

    async def get_override(self, tenant: str) -> Override | None:
        return self.overrides.get(tenant)

    @abstractmethod
    async def set_override(self, tenant: str, override: Override | None) -> None:
        """Persist (or with None, delete) a tenant's override before returning."""

    async def list_overrides(self) -> dict[str, Override]:
        return dict(self.overrides)

    async def refresh_overrides(self) -> None:
        """Bring the local view of the overrides up to date (a shared store reads them again;
        in-process stores are always current)."""
        return None

    # --- lifecycle --------------------------------------------------------------------------

    @abstractmethod
    async def flush(self) -> None:
        """Write buffered usage now."""

    @abstractmethod
    async def close(self) -> None:
        """Flush everything and release files, threads and connections. Idempotent."""
