"""Redis state store: quota usage, reservations, overrides and rate-limit buckets shared by every
gateway instance (and every `--workers` process) pointing at the same Redis.

Keys, all under `prefix` (default `aigw:`):

    aigw:u:<tenant>:<period>     hash    i, o, t = input/output/total tokens; r = reserved;
                                         c = money spent, rc = money reserved (nano-dollars)
    aigw:r:<tenant>:<period>     zset    in-flight reservations "<instance>:<id>:<tokens>" or
                                         "<instance>:<id>:<tokens>/<nano-dollars>", scored by
                                         their expiry (ms)
    aigw:tenants                 zset    tenant -> last usage (s), trimmed after TENANT_RETENTION
    aigw:overrides               hash    tenant -> "<tokens>:<period>[:<nano-dollars>]"
                                         (`aigw quota set`; tokens '' = the config's)
    aigw:overrides:v             int     bumped by every override change
    aigw:rl:<tenant>:req|tok     string  token bucket as a GCRA arrival time (epoch µs, a
                                         float), PX expiry
    aigw:h:<hour>                hash    usage history of one hour (epoch s of its start):
                                         "<tenant>\t<model>\t<endpoint>\t<counter>" -> count,
                                         counter one of r e i ci o c (requests, errors, input,
                                         cached input, output tokens, nano-dollars); expires
                                         `usage.retention` after the hour ends

Atomicity: each operation is one round trip running one Lua script, so no instance can
interleave another's check and write. A request costs two (`aigw.limits.shared`): at admission
one script checks the request bucket, the token bucket, the quota and the overrides version and
takes all three or nothing; at settlement one script replaces the reservation by the usage and
corrects the token bucket by the difference from the estimate. (`reserve`, `commit`, `take`
and `adjust` are the same scripts one limit at a time, for the store contract and the
standalone limiter.) Scripts read Redis's own clock (`TIME`), so instances with skewed clocks
still agree.

Usage history is added by each instance's flusher (one script per hour written: counters added,
saturating at 2^63-1, and the expiry set), so every instance reads what all of them flushed.

Nothing grows without bound: usage hashes (and their reservation sets) expire
`RETENTION_MARGIN` after their period ends (`never` periods do not expire; usage recorded for a
period this process never reserved in keeps `DEFAULT_RETENTION`); each reservation expires
`ttl` after it was made, so the reservations of a crashed instance are dropped by the next
request of that tenant; buckets expire when full; the tenants index is trimmed as it is written.

Overrides: the local view read on the hot path is checked against `aigw:overrides:v` inside
every admission (and `reserve`) round trip; when another instance changed an override, the
script takes nothing, the store reloads the view and answers `stale`, and the limit is resolved
again. So `aigw quota set` on one instance applies to the next request on every instance.

Failure policy (`state.on_failure`), when a call fails (connection refused, reset, or no answer
within `socket_timeout`):
- `fail_open` (default): serve. Quotas are enforced per instance against the last usage seen in
  Redis plus what this instance counted since; rate limits use this instance's in-memory
  buckets; usage is kept locally and added to Redis when it is back (reconciliation). A usage
  write whose answer was lost may be counted twice: the error is on the side of the quota.
- `fail_closed`: refuse new requests with 503 `state_unavailable`; requests already running
  still have their usage kept and reconciled.
Either way the outage is logged once (warning) and the recovery once (info). While Redis is
down no `fail_open` request waits for it: one background task tries every `recovery_interval`
to reach it, reconcile and switch back. A `fail_closed` request (and an admin call) that finds
the store down joins such an attempt first (at most two, each bounded by `socket_timeout`), so
nothing is refused once Redis answers again.

What is not an outage: a pooled connection that Redis closed (it restarted while this instance
was idle) fails the call at once, and the call is sent again, once, on a fresh connection (a
command sent on a connection the server had closed never ran). Calls beyond MAX_CONNECTIONS at
once wait for a free connection (every call is bounded by `socket_timeout`, and once an outage
is declared the waiting ones give up at once) instead of failing after a fixed wait.

Redis Cluster is not supported (scripts touch keys of several slots); use one Redis, optionally
with replicas and Sentinel.

Size: one concept, the store; its scripts are in `aigw.state.redis_scripts`. What remains is its
keys, its calls and its outage handling (fail-open accounting, recovery, reconciliation), which
share the store's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from aigw.config import StateConfig
from aigw.errors import StateUnavailableError
from aigw.state.base import STALE, Override, ReserveResult, StateStore, UsageCounters, UsageKey
from aigw.state.redis_scripts import ADD_HISTORY, ADJUST, ADMIT, COMMIT, READ, RESET, TAKE
from aigw.usage_history import HOUR, Row, RowKey, expires_at, hour_of

log = logging.getLogger("aigw.state")

#: Usage of a period is kept this long after the period ends (late commits, `quota show`).
RETENTION_MARGIN = 2 * 86400
#: Expiry of usage written for a period whose end this process does not know.
DEFAULT_RETENTION = 40 * 86400
#: A tenant without usage for this long leaves the tenants index.
TENANT_RETENTION = 40 * 86400

#: Connections per store: at most this many calls at once, the others wait for a free one.
MAX_CONNECTIONS = 16
#: The pool's own wait for a connection: a safety net, never reached while every call goes
#: through the store's slots.
POOL_WAIT = 30.0

_UNAVAILABLE = (RedisError, OSError, TimeoutError)
#: The connection failed (closed, reset, refused), as opposed to no answer in time: sent
#: again once on a fresh connection.
_CONNECTION_LOST = (RedisConnectionError, ConnectionError)

T = TypeVar("T")


class _Down(RedisError):
    """A call that waited for a connection while the store went down: not sent."""


@dataclass(slots=True)
class _Pending:
    """Usage of one (tenant, period) that could not be written: added to Redis on recovery."""

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    #: reservations made in Redis before the outage, to drop when the usage is written
    members: list[str] = field(default_factory=list)
    cost_nanos: int = 0

    def merge(self, other: _Pending) -> None:
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.total_tokens += other.total_tokens
        self.cost_nanos += other.cost_nanos
        self.members.extend(other.members)


@dataclass(frozen=True, slots=True)
class BucketStep:
    """One GCRA step on a shared bucket, in seconds (the `gcra` function of the scripts)."""

    #: the units fit now
    fits: bool
    #: when they fit: how far the bucket runs ahead of now after taking them; when not: how
    #: long until they would
    lead: float
    #: how far the bucket runs ahead of now before this step
    lead_now: float


@dataclass(frozen=True, slots=True)
class AdmitReply:
    """What one admission round trip decided (`RedisStore.admit`), as numbers."""

    #: everything was taken (request, tokens, quota reservation)
    allowed: bool
    #: quota: tokens recorded in the period, and held by reservations (this one included)
    used: int
    reserved: int
    #: the request and token buckets' steps; None where no such bucket was given
    requests: BucketStep | None = None
    tokens: BucketStep | None = None
    #: the overrides had changed: nothing was done, resolve the limit again
    stale: bool = False
    #: money: nano-dollars spent in the period, and held by reservations (this one included)
    cost_nanos: int = 0
    reserved_nanos: int = 0


_STALE_ADMISSION = AdmitReply(False, 0, 0, stale=True)


def _step(given: object, fits: Any, lead: Any, lead_now: Any) -> BucketStep | None:
    if given is None:
        return None
    return BucketStep(bool(int(fits)), float(lead) / 1_000_000, float(lead_now) / 1_000_000)


def redacted_url(url: str) -> str:
    """`host:port/db` of a Redis URL, never its credentials."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path or url
    host = parts.hostname or "localhost"
    port = parts.port or 6379
    db = parts.path.lstrip("/") or "0"
    return f"{host}:{port}/{db}"


class RedisStore(StateStore):
    name = "redis"
    shared = True

    @classmethod
    def from_config(cls, config: StateConfig) -> RedisStore:
        if not config.url:
            raise ValueError("state backend 'redis' needs state.url (redis://host:port/db)")
        return cls(config.url, on_failure=config.on_failure)

    def __init__(
        self,
        url: str,
        *,
        on_failure: str = "fail_open",
        prefix: str = "aigw:",
        clock: Callable[[], float] | None = None,
        socket_timeout: float = 1.0,
        recovery_interval: float = 0.5,
    ) -> None:
        if on_failure not in ("fail_open", "fail_closed"):
            raise ValueError(f"unknown on_failure policy {on_failure!r}")
        self.url = url
        self.where = redacted_url(url)
        self.on_failure = on_failure
        self.prefix = prefix
        #: injected time for tests (epoch seconds); None: the Redis server's clock
        self.clock = clock
        self.recovery_interval = recovery_interval
        # No automatic retries by redis-py: a script re-sent after a lost answer could count
        # usage twice, and a dead Redis must cost one timeout, not several. `_call` re-sends
        # only what failed on a dead connection. Query parameters of the URL win over these
        # defaults. `_slots` keeps calls to MAX_CONNECTIONS at once (a burst of requests must
        # not open hundreds of sockets, nor fail).
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=POOL_WAIT,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=30,
        )
        self._redis: aioredis.Redis = aioredis.Redis.from_pool(pool)
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self._admit = self._redis.register_script(ADMIT)
        self._commit = self._redis.register_script(COMMIT)
        self._read = self._redis.register_script(READ)
        self._reset = self._redis.register_script(RESET)
        self._take = self._redis.register_script(TAKE)
        self._adjust = self._redis.register_script(ADJUST)
        self._add_history = self._redis.register_script(ADD_HISTORY)
        self._overrides: dict[str, Override] = {}
        self._version = "0"
        #: tells this process's reservations apart from other instances' with the same id
        self._instance = uuid.uuid4().hex[:12]
        self._expiry: dict[str, int] = {}  # period key -> expire_at argument of the scripts
        self._tenants_key = prefix + "tenants"
        self._overrides_key = prefix + "overrides"
        self._version_key = prefix + "overrides:v"
        # --- outage state
        self._down = False
        self._closed = False
        self._recovery: asyncio.Task[None] | None = None
        #: the recovery attempt running now (one at a time, joined by whoever needs it)
        self._attempt: asyncio.Task[bool] | None = None
        self._pending: dict[UsageKey, _Pending] = {}
        self._local_reserved: dict[UsageKey, int] = {}
        self._local_reserved_nanos: dict[UsageKey, int] = {}
        self._local_ids: set[tuple[str, str, int]] = set()
        #: used + reserved as last seen in Redis, the base of local enforcement in an outage
        self._last_seen: dict[UsageKey, int] = {}
        #: the same for money: nano-dollars spent + reserved
        self._last_seen_cost: dict[UsageKey, int] = {}
        #: outages seen and usage records reconciled (stats, tests)
        self.outages = 0
        self.reconciled = 0

    # --- lifecycle --------------------------------------------------------------------------

    async def open(self) -> None:
        """Load the overrides. An unreachable Redis does not stop the gateway: it starts in
        the outage mode of its `on_failure` policy and switches over when Redis answers."""
        try:
            await self._load_overrides()
        except _UNAVAILABLE as exc:
            self._lost(exc)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in (self._recovery, self._attempt):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._recovery = self._attempt = None
        if self._pending:
            try:
                await self._reconcile()
            except _UNAVAILABLE:
                lost = sum(p.total_tokens for p in self._pending.values())
                log.warning(
                    "state: redis %s still unreachable at shutdown: %d tokens of usage counted "
                    "during the outage are lost",
                    self.where,
                    lost,
                )
        await self._redis.aclose()

    async def flush(self) -> None:
        """Writes are synchronous; usage kept during an outage is written by the recovery."""
        return None

    @property
    def available(self) -> bool:
        """False while Redis is unreachable (outage mode)."""
        return not self._down

    # --- keys and arguments ------------------------------------------------------------------

    def _usage_key(self, tenant: str, period_key: str) -> str:
        return f"{self.prefix}u:{tenant}:{period_key}"

    def _reservations_key(self, tenant: str, period_key: str) -> str:
        return f"{self.prefix}r:{tenant}:{period_key}"

    def _history_key(self, hour: int) -> str:
        return f"{self.prefix}h:{hour}"

    def _member(self, reservation_id: int, tokens: int, nanos: int) -> str:
        base = f"{self._instance}:{reservation_id}:{tokens}"
        return f"{base}/{nanos}" if nanos else base

    def bucket_key(self, tenant: str, kind: str) -> str:
        return f"{self.prefix}rl:{tenant}:{kind}"

    def _now_us(self) -> str:
        return "" if self.clock is None else str(int(self.clock() * 1_000_000))

    def _expire_at(self, period_key: str, expires_at: float | None) -> int:
        if expires_at is None:
            return self._expiry.get(period_key, 0)
        if math.isinf(expires_at):
            at = -1
        else:  # never in the past, even for a period of an injected clock
            at = max(int(expires_at) + RETENTION_MARGIN, int(time.time()) + 3600)
        if self._expiry.get(period_key) != at:
            if len(self._expiry) > 1024:  # period keys of past periods
                self._expiry.clear()
            self._expiry[period_key] = at
        return at

    # --- usage ------------------------------------------------------------------------------

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
        result = await self.admit(
            tenant,
            period_key,
            tokens,
            limit,
            reservation_id=reservation_id,
            ttl=ttl,
            expires_at=expires_at,
            nanos=nanos,
            budget=budget,
        )
        if result is None:
            return self.reserve_locally(
                (tenant, period_key), tokens, limit, reservation_id, nanos, budget
            )
        if result.stale:
            return STALE
        return ReserveResult(
            result.allowed,
            result.used,
            result.reserved,
            cost_nanos=result.cost_nanos,
            reserved_nanos=result.reserved_nanos,
        )

    async def admit(
        self,
        tenant: str,
        period_key: str,
        tokens: int,
        limit: int,
        *,
        reservation_id: int,
        ttl: float,
        expires_at: float | None = None,
        requests: tuple[float, int] | None = None,
        token_bucket: tuple[float, int] | None = None,
        units: float = 0.0,
        nanos: int = 0,
        budget: int = 0,
    ) -> AdmitReply | None:
        """`reserve()` (tokens and money) plus one request from the `requests` bucket and
        `units` from the `token_bucket` (each `(interval seconds, size)`, None: no such limit),
        in one round trip: all are taken or none is.

        None: Redis is unreachable, nothing was taken (the caller falls back per the failure
        policy). `stale`: the overrides changed, nothing was taken, the view is reloaded."""
        at = self._expire_at(period_key, expires_at)
        if self._down and not await self._back():
            return None
        keys = [
            self._usage_key(tenant, period_key),
            self._reservations_key(tenant, period_key),
            self._version_key,
        ]
        args: list[str | int] = [
            tokens,
            limit,
            self._member(reservation_id, tokens, nanos),
            max(1, int(ttl * 1000)),
            at,
            self._version,
            self._now_us(),
            DEFAULT_RETENTION,
            nanos,
            budget,
        ]
        if requests is not None or token_bucket is not None:
            keys.append(self.bucket_key(tenant, "req"))
            keys.append(self.bucket_key(tenant, "tok"))
            if requests is not None:
                args += [repr(requests[0] * 1_000_000), requests[1]]
            else:
                args += ["", 0]
            if token_bucket is not None:
                args += [repr(token_bucket[0] * 1_000_000), token_bucket[1], repr(units)]
            else:
                args += ["", 0, 0]
        try:
            reply = await self._call(self._admit, keys, args)
        except _UNAVAILABLE as exc:
            self._lost(exc)
            return None
        if int(reply[0]) < 0:  # overrides changed on another instance
            try:
                await self._load_overrides()
            except _UNAVAILABLE as exc:
                self._lost(exc)
            return _STALE_ADMISSION
        admitted = int(reply[0]) == 1
        used, reserved = int(reply[1]), int(reply[2])
        cost, reserved_nanos = int(reply[9]), int(reply[10])
        key = (tenant, period_key)
        if limit > 0:
            if len(self._last_seen) > 100_000:
                self._last_seen.clear()
            self._last_seen[key] = used + reserved
        if budget > 0:
            if len(self._last_seen_cost) > 100_000:
                self._last_seen_cost.clear()
            self._last_seen_cost[key] = cost + reserved_nanos
        return AdmitReply(
            admitted,
            used,
            reserved,
            _step(requests, reply[3], reply[4], reply[5]),
            _step(token_bucket, reply[6], reply[7], reply[8]),
            cost_nanos=cost,
            reserved_nanos=reserved_nanos,
        )

    def reserve_locally(
        self,
        key: UsageKey,
        tokens: int,
        limit: int,
        reservation_id: int,
        nanos: int = 0,
        budget: int = 0,
    ) -> ReserveResult:
        """A reservation while Redis is unreachable (`fail_open`): against the last usage and
        spending seen there plus what this instance counted since; `fail_closed` refuses with
        503."""
        if self.on_failure == "fail_closed":
            raise self.unavailable_error()
        held = self._local_reserved.get(key, 0)
        held_nanos = self._local_reserved_nanos.get(key, 0)
        pending = self._pending.get(key)
        used = self._last_seen.get(key, 0) + (pending.total_tokens if pending else 0)
        cost = self._last_seen_cost.get(key, 0) + (pending.cost_nanos if pending else 0)
        if (limit > 0 and used + held + tokens > limit) or (
            budget > 0 and cost + held_nanos + nanos > budget
        ):
            return ReserveResult(False, used, held, cost_nanos=cost, reserved_nanos=held_nanos)
        if tokens > 0 or nanos > 0:
            held += tokens
            held_nanos += nanos
            self._local_reserved[key] = held
            self._local_reserved_nanos[key] = held_nanos
            self._local_ids.add((key[0], key[1], reservation_id))
        return ReserveResult(True, used, held, cost_nanos=cost, reserved_nanos=held_nanos)

    def _settle_local(
        self, key: UsageKey, reserved: int, reservation_id: int, reserved_nanos: int = 0
    ) -> str | None:
        """Drop a reservation made locally during an outage (returns None), or name the Redis
        reservation to remove."""
        if reserved <= 0 and reserved_nanos <= 0:
            return None
        local = (key[0], key[1], reservation_id)
        if local in self._local_ids:
            self._local_ids.discard(local)
            for held, amount in (
                (self._local_reserved, reserved),
                (self._local_reserved_nanos, reserved_nanos),
            ):
                left = held.get(key, 0) - amount
                if left > 0:
                    held[key] = left
                else:
                    held.pop(key, None)
            return None
        return self._member(reservation_id, reserved, reserved_nanos)

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
        await self.settle(
            tenant,
            period_key,
            reserved,
            input_tokens,
            output_tokens,
            total_tokens,
            reservation_id=reservation_id,
            reserved_nanos=reserved_nanos,
            cost_nanos=cost_nanos,
        )

    async def settle(
        self,
        tenant: str,
        period_key: str,
        reserved: int,
        input_tokens: int,
        output_tokens: int,
        total_tokens: int,
        *,
        reservation_id: int,
        token_interval: float | None = None,
        token_delta: float = 0.0,
        reserved_nanos: int = 0,
        cost_nanos: int = 0,
    ) -> bool:
        """`commit()` plus a correction of `token_delta` tokens (> 0 charge, < 0 refund) to the
        tenant's token bucket (one token every `token_interval` seconds), in one round trip.
        The usage is never lost (kept and reconciled when Redis is unreachable); returns False
        when the bucket correction did not reach Redis, so the caller can apply it to its
        local buckets."""
        key = (tenant, period_key)
        member = self._settle_local(key, reserved, reservation_id, reserved_nanos)
        adjust = token_interval is not None and token_delta != 0
        has_usage = member is not None or bool(
            input_tokens or output_tokens or total_tokens or cost_nanos
        )
        if not has_usage and not adjust:
            return True
        pending = _Pending(
            input_tokens,
            output_tokens,
            total_tokens,
            [member] if member else [],
            cost_nanos,
        )
        if not self._down:
            try:
                if token_interval is not None and adjust:
                    delta_us = repr(token_delta * token_interval * 1_000_000)
                    await self._write(key, pending, self.bucket_key(tenant, "tok"), delta_us)
                else:
                    await self._write(key, pending)
                return True
            except _UNAVAILABLE as exc:
                self._lost(exc)
        if has_usage:
            self._keep(key, pending)
        return not adjust

    async def release(
        self,
        tenant: str,
        period_key: str,
        reserved: int,
        *,
        reservation_id: int,
        reserved_nanos: int = 0,
    ) -> None:
        await self.commit(
            tenant,
            period_key,
            reserved,
            0,
            0,
            0,
            reservation_id=reservation_id,
            reserved_nanos=reserved_nanos,
        )

    async def _write(
        self,
        key: UsageKey,
        pending: _Pending,
        bucket: str | None = None,
        delta_us: str = "",
        *,
        recovering: bool = False,
    ) -> None:
        tenant, period_key = key
        used = (
            pending.input_tokens
            or pending.output_tokens
            or pending.total_tokens
            or pending.cost_nanos
        )
        keys = [
            self._usage_key(tenant, period_key),
            self._reservations_key(tenant, period_key),
            self._tenants_key,
        ]
        if bucket is not None:
            keys.append(bucket)
        seen = await self._call(
            self._commit,
            keys,
            [
                pending.input_tokens,
                pending.output_tokens,
                pending.total_tokens,
                self._expire_at(period_key, None),
                DEFAULT_RETENTION,
                tenant if used else "",
                self._now_us(),
                TENANT_RETENTION,
                delta_us,
                pending.cost_nanos,
                *pending.members,
            ],
            recovering=recovering,
        )
        # only tenants with a limit are tracked
        if key in self._last_seen:
            self._last_seen[key] = int(seen[0])
        if key in self._last_seen_cost:
            self._last_seen_cost[key] = int(seen[1])

    def _keep(self, key: UsageKey, pending: _Pending) -> None:
        kept = self._pending.get(key)
        if kept is None:
            self._pending[key] = pending
        else:
            kept.merge(pending)

    async def get_usage(self, keys: Sequence[UsageKey]) -> list[UsageCounters]:
        await self._ensure_up()
        if not keys:
            return []
        try:
            replies = await self._call(self._read_usage, keys, self._now_us())
        except _UNAVAILABLE as exc:
            self._lost(exc)
            raise self.unavailable_error() from None
        return [
            UsageCounters(
                int(i),
                int(o),
                int(t),
                int(r) + self._local_reserved.get(key, 0),
                int(c),
                int(rc) + self._local_reserved_nanos.get(key, 0),
            )
            for key, (i, o, t, r, c, rc) in zip(keys, replies, strict=True)
        ]

    async def _read_usage(self, keys: Sequence[UsageKey], now: str) -> list[Any]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for tenant, period_key in keys:
                await self._read(
                    keys=[
                        self._usage_key(tenant, period_key),
                        self._reservations_key(tenant, period_key),
                    ],
                    args=[now],
                    client=pipe,
                )
            replies: list[Any] = await pipe.execute()
        return replies

    async def tenants(self) -> set[str]:
        await self._ensure_up()
        try:
            names = await self._call(self._redis.zrange, self._tenants_key, 0, -1)
        except _UNAVAILABLE as exc:
            self._lost(exc)
            raise self.unavailable_error() from None
        return {n.decode() if isinstance(n, bytes) else str(n) for n in names}

    async def reset_usage(self, tenant: str, period_key: str) -> None:
        await self._ensure_up()
        try:
            await self._call(
                self._reset,
                [self._usage_key(tenant, period_key)],
                [self._expire_at(period_key, None), DEFAULT_RETENTION],
            )
        except _UNAVAILABLE as exc:
            self._lost(exc)
            raise self.unavailable_error() from None
        pending = self._pending.get((tenant, period_key))
        if pending is not None:  # usage counted in an outage belongs to the zeroed period too
            pending.input_tokens = pending.output_tokens = pending.total_tokens = 0
            pending.cost_nanos = 0

    # --- overrides --------------------------------------------------------------------------

    @property
    def overrides(self) -> Mapping[str, Override]:
        return self._overrides

    async def set_override(self, tenant: str, override: Override | None) -> None:
        await self._ensure_up()
        try:
            await self._call(self._write_override, tenant, override)
            await self._load_overrides()
        except _UNAVAILABLE as exc:
            self._lost(exc)
            raise self.unavailable_error() from None

    async def _write_override(self, tenant: str, override: Override | None) -> None:
        # Sent again after a lost connection, at worst the version is bumped twice: harmless.
        async with self._redis.pipeline(transaction=True) as pipe:
            if override is None:
                pipe.hdel(self._overrides_key, tenant)
            else:
                pipe.hset(self._overrides_key, tenant, _override_text(override))
            pipe.incr(self._version_key)
            await pipe.execute()

    async def refresh_overrides(self) -> None:
        if self._down:
            return  # keep the last view; the recovery reloads it
        try:
            await self._load_overrides()
        except _UNAVAILABLE as exc:
            self._lost(exc)

    async def _load_overrides(self, *, recovering: bool = False) -> None:
        mapping, version = await self._call(self._read_overrides, recovering=recovering)
        overrides: dict[str, Override] = {}
        for raw_tenant, raw in mapping.items():
            overrides[raw_tenant.decode()] = _override_of(raw.decode())
        self._overrides = overrides
        self._version = version.decode() if version is not None else "0"

    async def _read_overrides(self) -> list[Any]:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(self._overrides_key)
            pipe.get(self._version_key)
            replies: list[Any] = await pipe.execute()
        return replies

    # --- usage history ------------------------------------------------------------------------

    async def add_history(self, rows: Sequence[Row], retention: float) -> None:
        """One script per hour, in one pipeline. Raises when Redis is unreachable (the caller
        keeps the rows); a write whose answer was lost may be added twice, as usage may."""
        if not rows:
            return
        by_hour: dict[int, list[str | int]] = {}
        for row in rows:
            args = by_hour.get(row.hour)
            if args is None:
                args = by_hour[row.hour] = [expires_at(row.hour, retention)]
            prefix = f"{row.tenant}\t{row.model}\t{row.endpoint}\t"
            for name, value in zip(_HISTORY_FIELDS, row.counts(), strict=True):
                if value:
                    args += [prefix + name, value]
        await self._ensure_up()
        try:
            await self._call(self._write_history, by_hour)
        except _UNAVAILABLE as exc:
            self._lost(exc)
            raise self.unavailable_error() from None

    async def _write_history(self, by_hour: dict[int, list[str | int]]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for hour, args in by_hour.items():
                await self._add_history(keys=[self._history_key(hour)], args=args, client=pipe)
            await pipe.execute()

    async def read_history(
        self, since_hour: int, tenant: str | None = None, model: str | None = None
    ) -> list[Row]:
        """Every hour from `since_hour` to now, in one pipeline."""
        await self._ensure_up()
        now = hour_of(time.time() if self.clock is None else self.clock())
        hours = list(range(since_hour, max(now, since_hour) + HOUR, HOUR))
        try:
            replies = await self._call(self._read_history, hours)
        except _UNAVAILABLE as exc:
            self._lost(exc)
            raise self.unavailable_error() from None
        rows: dict[RowKey, list[int]] = {}
        for hour, fields in zip(hours, replies, strict=True):
            for raw_field, raw_value in fields.items():
                head, _, counter = raw_field.decode().rpartition("\t")
                first, _, rest = head.partition("\t")
                model_name, _, endpoint = rest.rpartition("\t")
                index = _HISTORY_INDEX.get(counter)
                if index is None or not endpoint:
                    continue  # not a field this version writes
                if (tenant is not None and first != tenant) or (
                    model is not None and model_name != model
                ):
                    continue
                key = (hour, first, model_name, endpoint)
                cells = rows.get(key)
                if cells is None:
                    cells = rows[key] = [0, 0, 0, 0, 0, 0]
                cells[index] = int(raw_value)
        return [Row.from_key(key, cells) for key, cells in rows.items()]

    async def _read_history(self, hours: list[int]) -> list[Any]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for hour in hours:
                pipe.hgetall(self._history_key(hour))
            replies: list[Any] = await pipe.execute()
        return replies

    async def prune_history(self, before_hour: int) -> int:
        """Hours expire on their own (EXPIREAT, `usage.retention` after they end); this drops
        those kept longer by a retention since shortened."""
        await self._ensure_up()
        try:
            return await self._call(self._prune_history, before_hour)
        except _UNAVAILABLE as exc:
            self._lost(exc)
            raise self.unavailable_error() from None

    async def _prune_history(self, before_hour: int) -> int:
        pattern = f"{self.prefix}h:*"
        old = []
        async for raw in self._redis.scan_iter(match=pattern, count=1000):
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
            hour = name[len(self.prefix) + 2 :]
            if hour.isdigit() and int(hour) < before_hour:
                old.append(name)
        for start in range(0, len(old), 1000):
            await self._redis.delete(*old[start : start + 1000])
        return len(old)

    # --- shared rate-limit buckets ----------------------------------------------------------

    async def take(self, key: str, interval: float, size: int, units: float) -> BucketStep | None:
        """One GCRA step on a shared bucket (one unit every `interval` seconds, `size` at most);
        None when Redis is unreachable."""
        if self._down and not await self._back():
            return None
        try:
            allowed, a, b = await self._call(
                self._take, [key], [repr(interval * 1_000_000), size, repr(units), self._now_us()]
            )
        except _UNAVAILABLE as exc:
            self._lost(exc)
            return None
        return BucketStep(bool(int(allowed)), float(a) / 1_000_000, float(b) / 1_000_000)

    async def adjust(self, key: str, interval: float, units: float) -> bool:
        """Charge (units > 0) or refund (units < 0) a shared bucket; False when unreachable."""
        if self._down:
            return False
        try:
            await self._call(
                self._adjust, [key], [repr(units * interval * 1_000_000), self._now_us()]
            )
        except _UNAVAILABLE as exc:
            self._lost(exc)
            return False
        return True

    # --- outages ----------------------------------------------------------------------------

    def unavailable_error(self) -> StateUnavailableError:
        return StateUnavailableError(
            "The gateway's shared state store is unreachable; try again shortly.",
            self.recovery_interval,
        )

    async def _call(
        self, fn: Callable[..., Awaitable[T]], *args: Any, recovering: bool = False
    ) -> T:
        """One call to Redis, holding one of MAX_CONNECTIONS slots. A call that waited for its
        slot while the store went down is not sent (`_Down`), unless it is the recovery's.
        A call whose connection failed is sent again, once, on a fresh connection."""
        async with self._slots:
            if self._down and not recovering:
                raise _Down("the store went down while this call waited")
            try:
                return await fn(*args)
            except _CONNECTION_LOST:
                # Most likely Redis restarted since the pooled connection was last used: the
                # command never reached a server that could run it, and every idle pooled
                # connection is as dead. A Redis that is really gone fails this one too.
                await self._redis.connection_pool.disconnect(inuse_connections=False)
                return await fn(*args)

    async def _ensure_up(self) -> None:
        """For calls that have no local fallback (admin): refuse only when Redis does not
        answer now."""
        if self._down and not await self._recovered():
            raise self.unavailable_error()

    async def _back(self) -> bool:
        """The store is down: whether a request may go to Redis after all. `fail_closed` would
        refuse, so it first joins a recovery attempt; `fail_open` never waits (it serves
        locally, and the background recovery switches back)."""
        return self.on_failure == "fail_closed" and await self._recovered()

    async def _recovered(self) -> bool:
        """Whether Redis answers again, as found by a recovery attempt that began after this
        call did: an attempt already running may have failed just before Redis came back, so
        when it fails, the next one is awaited as well (at most two)."""
        if self._closed:
            return False
        running = self._attempt
        if running is not None and await asyncio.shield(running):
            return True
        if not self._down:
            return True
        return await asyncio.shield(self._attempt or self._start_attempt())

    def _start_attempt(self) -> asyncio.Task[bool]:
        task = asyncio.get_running_loop().create_task(
            self._try_recover(), name="aigw-redis-recovery-attempt"
        )
        self._attempt = task

        def done(_: asyncio.Task[bool]) -> None:
            if self._attempt is task:
                self._attempt = None

        task.add_done_callback(done)
        return task

    async def _try_recover(self) -> bool:
        """One attempt: reload the overrides, write the usage kept meanwhile, switch back."""
        try:
            # Connections opened before the outage may be dead: start afresh.
            await self._redis.connection_pool.disconnect(inuse_connections=False)
            await self._load_overrides(recovering=True)
            records = await self._reconcile()
        except _UNAVAILABLE:
            return False
        # _reconcile returned with nothing pending and without awaiting since it checked:
        # every commit from here on goes to Redis directly.
        self._down = False
        log.info(
            "state: redis %s is reachable again; reconciled %d usage record(s) kept "
            "during the outage",
            self.where,
            records,
        )
        return True

    def _lost(self, exc: BaseException) -> None:
        """A call failed: switch to outage mode (once) and start watching for the recovery."""
        if self._down:
            return
        self._down = True
        self.outages += 1
        if self.on_failure == "fail_open":
            mode = "fail_open: serving, counting usage locally until it is back"
        else:
            mode = "fail_closed: answering 503 until it is back"
        log.warning("state: redis %s is unreachable (%s); %s", self.where, _describe(exc), mode)
        if not self._closed and (self._recovery is None or self._recovery.done()):
            self._recovery = asyncio.get_running_loop().create_task(
                self._recover(), name="aigw-redis-recovery"
            )

    async def _recover(self) -> None:
        """In the background, an attempt every `recovery_interval` until Redis is back (a
        request's attempt may bring it back first)."""
        while self._down:
            await asyncio.sleep(self.recovery_interval)
            if self._down:
                await asyncio.shield(self._attempt or self._start_attempt())

    async def _reconcile(self) -> int:
        """Write the usage kept during the outage; returns how many records were written."""
        records = 0
        while self._pending:
            key = next(iter(self._pending))
            pending = self._pending.pop(key)
            try:
                await self._write(key, pending, recovering=True)
            except BaseException:
                self._keep(key, pending)  # commits that arrived meanwhile merge into it
                raise
            records += 1
            self.reconciled += 1
        return records


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


#: The history counters' field suffixes, in `Row.counts()` order.
_HISTORY_FIELDS = ("r", "e", "i", "ci", "o", "c")
_HISTORY_INDEX = {name: i for i, name in enumerate(_HISTORY_FIELDS)}


def _override_text(override: Override) -> str:
    """`<tokens>:<period>`, with `:<nano-dollars>` when it sets a money budget (tokens empty
    when it leaves them to the config). An override without a budget keeps the format older
    instances read."""
    tokens = "" if override.tokens is None else str(override.tokens)
    text = f"{tokens}:{override.period or ''}"
    return text if override.usd_nanos is None else f"{text}:{override.usd_nanos}"


def _override_of(text: str) -> Override:
    tokens, _, rest = text.partition(":")
    period, _, usd = rest.partition(":")
    return Override(int(tokens) if tokens else None, period or None, int(usd) if usd else None)


__all__ = ["AdmitReply", "BucketStep", "RedisStore", "redacted_url"]
