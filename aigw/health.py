"""Health of the targets: a circuit breaker per target, judged on the outcomes of its leases.

Plain classes, no aiohttp, no locks (one asyncio thread). For every attempt the proxy gets a
`Lease` on one target (from `aigw.balancer`), talks to that upstream, and reports exactly one
outcome on the lease:

    lease.success()          the upstream answered well.
    lease.failure(message)   the target's fault, counted as an error:
                             connect errors (refused, reset, DNS, TLS), connect/read timeouts,
                             HTTP 5xx, an unparseable answer, and a stream that breaks after it
                             started.
    lease.neutral()          not the target's fault: the client's own 4xx (400, 401, 403, 404,
                             413, 422, ...), the client cancelling or disconnecting, our own
                             deadline passing before the attempt. Counted in `requests`, never
                             as an error, and kept out of the health window: it neither trips a
                             breaker nor dilutes the error rate of a failing target.
    lease.throttled(s, msg)  the upstream said "too many requests" (HTTP 429): the target is
                             alive but must not get traffic for `s` seconds (its retry-after).
                             It is skipped until then (`cooling`), and the 429 never counts in
                             the health window: a burst of 429s cannot open the circuit.

The first outcome reported counts; later calls on the same lease are ignored. Latency is measured
from `acquire()` to `lease.first_byte()` when it is called, else to the outcome.

Health of one target (a provider + upstream model under one gateway model):

    passive   error rate over a sliding time window (`health.window`), kept in a ring of
              `WINDOW_BUCKETS` buckets, so memory is bounded and old failures age out. Judged on
              each failure once the window holds `min_requests` outcomes: a rate >=
              `error_rate_threshold` opens the circuit.
    breaker   closed -> open: no traffic for `cooldown` -> half-open: exactly one request (the
              probe) goes through -> closed when it succeeds (the window starts afresh), open again
              with the cooldown doubled (capped at `max_cooldown`) when it fails. A target that
              trips again within `window` of recovering also gets the doubled cooldown; one that
              stayed closed longer starts again from `cooldown`.
    active    when `check_interval` > 0, `Balancers.targets_for_probe()` hands out each distinct
              upstream (provider/model) whose probe is due, and `record_probe()` feeds the answer
              to every target with that id: on a closed target a failed probe counts as an error
              (and a good one as a success) in the window; on an open target past its cooldown
              (half-open) a good probe closes the circuit and a failed one reopens it, doubled.
              Probes never count in `requests`/`errors`, which are client requests only.

Health label in the stats: "unhealthy" while the circuit is not closed; "degraded" when closed but
the last active probe failed, the upstream asked for a pause (429) or the window error rate is at
least half the threshold; "healthy" otherwise. Circuit transitions are logged as WARNINGs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from aigw.config import HealthConfig

Clock = Callable[[], float]

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"

HEALTHY = "healthy"
DEGRADED = "degraded"
UNHEALTHY = "unhealthy"

#: Buckets of the sliding error window: the window really covers between (n-1)/n and n/n of it.
WINDOW_BUCKETS = 20
#: Latency samples kept per target for p50/p95 (a ring of the most recent ones).
LATENCY_SAMPLES = 512
#: Decay time (seconds) of the peak-EWMA latency; Finagle's and Linkerd's default.
EWMA_DECAY = 10.0
LAST_ERROR_MAX = 200
#: `soonest_recovery()` when the only way back is a half-open probe already in flight.
BUSY_PROBE_RETRY_AFTER = 1.0

_SUCCESS = 0
_FAILURE = 1
_NEUTRAL = 2
_THROTTLED = 3

log = logging.getLogger("aigw.balancer")


# --- bounded-memory estimators ------------------------------------------------------------


class ErrorWindow:
    """Requests and errors over the last `window` seconds, in a ring of time buckets."""

    __slots__ = ("_epoch", "_errors", "_requests", "_width", "errors", "requests")

    def __init__(self, window: float, buckets: int = WINDOW_BUCKETS) -> None:
        self._width = window / buckets
        self._requests = [0] * buckets
        self._errors = [0] * buckets
        self._epoch = -(2**62)  # bucket number of the newest bucket; far past = empty
        self.requests = 0
        self.errors = 0

    def _advance(self, now: float) -> None:
        epoch = int(now // self._width)
        gap = epoch - self._epoch
        if gap == 0:
            return
        size = len(self._requests)
        if gap >= size or gap < 0:  # whole window expired (or the clock stepped back)
            self.reset()
        else:
            requests, errors = self._requests, self._errors
            for k in range(self._epoch + 1, epoch + 1):
                i = k % size
                self.requests -= requests[i]
                self.errors -= errors[i]
                requests[i] = 0
                errors[i] = 0
        self._epoch = epoch

    def add(self, now: float, error: bool) -> None:
        if int(now // self._width) != self._epoch:
            self._advance(now)
        i = self._epoch % len(self._requests)
        self._requests[i] += 1
        self.requests += 1
        if error:
            self._errors[i] += 1
            self.errors += 1

    def counts(self, now: float) -> tuple[int, int]:
        """(requests, errors) inside the window ending at `now`."""
        self._advance(now)
        return self.requests, self.errors

    def reset(self) -> None:
        for i in range(len(self._requests)):
            self._requests[i] = 0
            self._errors[i] = 0
        self.requests = 0
        self.errors = 0


class LatencyRing:
    """The last `size` latency samples; percentiles are computed only when stats are read."""

    __slots__ = ("_count", "_next", "_samples")

    def __init__(self, size: int = LATENCY_SAMPLES) -> None:
        self._samples = [0.0] * size
        self._next = 0
        self._count = 0

    def add(self, seconds: float) -> None:
        self._samples[self._next] = seconds
        self._next = (self._next + 1) % len(self._samples)
        if self._count < len(self._samples):
            self._count += 1

    def percentiles(self, *qs: float) -> tuple[float | None, ...]:
        """Nearest-rank percentiles (0 < q <= 1) of the kept samples; None without samples."""
        if not self._count:
            return tuple(None for _ in qs)
        ordered = sorted(self._samples[: self._count])
        n = len(ordered)
        return tuple(ordered[max(1, math.ceil(q * n)) - 1] for q in qs)


# --- one target ---------------------------------------------------------------------------


class TargetState:
    """Health, circuit and counters of one target. Identity is the object: two states are equal
    only when they are the same target of the same gateway model."""

    __slots__ = (
        "_circuit",
        "_clock",
        "_closed_at",
        "_cooldown",
        "_ewma",
        "_ewma_stamp",
        "_health",
        "_last_probe_at",
        "_last_probe_ok",
        "_latencies",
        "_open_until",
        "_probe_lease",
        "_window",
        "cooling_answer",
        "cooling_until",
        "errors",
        "gateway_model",
        "id",
        "in_flight",
        "last_error",
        "model",
        "provider",
        "requests",
        "throttles",
        "trips",
        "weight",
    )

    def __init__(
        self,
        gateway_model: str,
        provider: str,
        model: str,
        weight: int,
        health: HealthConfig,
        clock: Clock,
    ) -> None:
        self.gateway_model = gateway_model
        self.provider = provider
        self.model = model
        self.id = f"{provider}/{model}"
        self.weight = weight
        self.in_flight = 0
        self.requests = 0
        self.errors = 0
        self.trips = 0
        self.throttles = 0  # 429 answers: the upstream asked for a pause
        #: clock time until which the upstream asked for no traffic (429 + retry-after)
        self.cooling_until = 0.0
        #: what the upstream answered when it asked for the pause (opaque to the balancer: the
        #: proxy gives it to clients while the pause lasts)
        self.cooling_answer: object = None
        self.last_error: str | None = None
        self._health = health
        self._clock = clock
        self._window = ErrorWindow(health.window)
        self._latencies = LatencyRing()
        self._ewma = 0.0
        self._ewma_stamp = 0.0
        self._circuit = CLOSED
        self._open_until = 0.0
        self._cooldown = 0.0  # current cooldown; 0 until the first trip
        self._closed_at: float | None = None  # when the circuit last recovered
        self._probe_lease: Lease | None = None  # the half-open probe request, if in flight
        self._last_probe_at: float | None = None
        self._last_probe_ok: bool | None = None

    def __repr__(self) -> str:
        return f"<TargetState {self.gateway_model}:{self.id} {self._circuit}>"

    # -- circuit ------------------------------------------------------------------------

    def circuit_at(self, now: float) -> str:
        """The circuit state at `now` (an open circuit past its cooldown becomes half-open)."""
        if self._circuit == OPEN and now >= self._open_until:
            self._circuit = HALF_OPEN
        return self._circuit

    def cooling_left(self) -> float:
        """Seconds left of the upstream-asked pause (0 when none)."""
        return max(self.cooling_until - self._clock(), 0.0)

    def admits(self, now: float) -> bool:
        """True when the circuit lets a request through now and the upstream did not ask for a
        pause (hot path)."""
        if now < self.cooling_until:
            return False
        circuit = self._circuit
        if circuit == CLOSED:
            return True
        if circuit == OPEN:
            if now < self._open_until:
                return False
            self._circuit = HALF_OPEN
        return self._probe_lease is None

    def _trip(self, now: float, repeated: bool) -> None:
        health = self._health
        if repeated and self._cooldown > 0:
            self._cooldown = min(self._cooldown * 2, health.max_cooldown)
        else:
            self._cooldown = min(health.cooldown, health.max_cooldown)
        self._circuit = OPEN
        self._open_until = now + self._cooldown
        self._probe_lease = None
        self.trips += 1
        log.warning(
            "target %s of model %s: circuit open for %s (%s)",
            self.id,
            self.gateway_model,
            _seconds(self._cooldown),
            self.last_error or "error rate over the threshold",
        )

    def _close(self, now: float) -> None:
        was = self._circuit
        self._circuit = CLOSED
        self._closed_at = now
        self._probe_lease = None
        # The errors that opened the circuit are history: judge the recovered target afresh.
        self._window.reset()
        if was != CLOSED:
            log.warning(
                "target %s of model %s: circuit closed, healthy again", self.id, self.gateway_model
            )

    def _judge(self, now: float) -> None:
        """Open a closed circuit when the window's error rate crosses the threshold."""
        requests, errors = self._window.counts(now)
        health = self._health
        if (
            errors
            and requests >= health.min_requests
            and errors >= health.error_rate_threshold * requests
        ):
            recently_recovered = (
                self._closed_at is not None and now - self._closed_at < health.window
            )
            self._trip(now, repeated=recently_recovered)

    # -- outcomes -----------------------------------------------------------------------

    def _finish(self, lease: Lease, outcome: int, message: str | None) -> None:
        now = self._clock()
        self.in_flight -= 1
        self.requests += 1
        first_byte = lease._first_byte
        latency = (now if first_byte is None else first_byte) - lease._started
        if outcome == _THROTTLED:
            self._cool(now, lease._cooling, message)
            self.cooling_answer = lease._answer
            if lease is self._probe_lease:
                self._probe_lease = None  # the next request after the pause probes again
            return
        if outcome == _FAILURE:
            self.errors += 1
            self.last_error = _clip(message)
            # A failure never makes a target look faster than it was (a refused connection is
            # quick), so the latency strategy does not chase failing targets.
            self._observe_ewma(now, max(latency, self._ewma))
        elif outcome == _SUCCESS or first_byte is not None:
            self._latencies.add(latency)
            self._observe_ewma(now, latency)
        if lease is self._probe_lease:
            self._probe_lease = None
            if outcome == _SUCCESS:
                self._close(now)
                self._window.add(now, False)
            elif outcome == _FAILURE:
                self._trip(now, repeated=True)
            return  # a neutral probe frees the slot; the next request probes again
        if outcome == _NEUTRAL:
            return
        self._window.add(now, outcome == _FAILURE)
        if outcome == _FAILURE and self._circuit == CLOSED:
            self._judge(now)  # only a failure raises the rate: a success never opens a circuit

    def _cool(self, now: float, seconds: float, message: str | None) -> None:
        """The upstream answered 429: no traffic for `seconds` (capped at max_cooldown). Neither
        an error nor a success for the health window; latency is not sampled (a refusal is
        quick and would make the target look fast)."""
        self.throttles += 1
        self.last_error = _clip(message)
        seconds = min(max(seconds, 0.0), self._health.max_cooldown)
        if now + seconds > self.cooling_until:
            if now >= self.cooling_until:
                log.warning(
                    "target %s of model %s: rate limited by the upstream, no traffic for %s",
                    self.id,
                    self.gateway_model,
                    _seconds(seconds),
                )
            self.cooling_until = now + seconds

    def _observe_ewma(self, now: float, rtt: float) -> None:
        # As Finagle's PeakEwma: the cost decays toward 0 between samples, jumps to any sample
        # above the decayed value (a slowdown shows at once) and otherwise moves toward it.
        weight = math.exp(-max(now - self._ewma_stamp, 0.0) / EWMA_DECAY)
        decayed = self._ewma * weight
        self._ewma = rtt if rtt > decayed else decayed + rtt * (1.0 - weight)
        self._ewma_stamp = now

    def latency_cost(self, now: float) -> float:
        """Peak-EWMA latency decayed toward 0 since the last sample, so an idle slow target is
        tried again after a while and can show that it recovered."""
        ewma = self._ewma
        elapsed = now - self._ewma_stamp
        if ewma and elapsed > 0:
            ewma *= math.exp(-elapsed / EWMA_DECAY)
        return ewma

    def _probe_result(self, now: float, ok: bool, message: str | None) -> None:
        self._last_probe_ok = ok
        circuit = self.circuit_at(now)
        if not ok:
            self.last_error = _clip(f"probe: {message}" if message else "probe failed")
        if circuit == HALF_OPEN:
            if ok:
                self._close(now)
            else:
                self._trip(now, repeated=True)
        elif circuit == CLOSED:
            self._window.add(now, not ok)
            if not ok:
                self._judge(now)
        # Open and still cooling down: the cooldown stands whatever the probe says.

    # -- probes and stats ---------------------------------------------------------------

    def next_probe_at(self) -> float:
        """When the next active probe is due (only meaningful with check_interval > 0)."""
        due = (
            self._last_probe_at + self._health.check_interval
            if self._last_probe_at is not None
            else -math.inf
        )
        if self._circuit == OPEN:
            due = max(due, self._open_until)  # a probe cannot close it before the cooldown
        return due

    def next_probe_in(self, now: float) -> float | None:
        """Seconds until the next probe (half-open slot or active probe); None if none."""
        circuit = self.circuit_at(now)
        if circuit == OPEN:
            return max(self._open_until - now, 0.0)
        if circuit == HALF_OPEN:
            return 0.0
        if self._health.check_interval <= 0:
            return None
        return max(self.next_probe_at() - now, 0.0)

    def health_at(self, now: float) -> str:
        if self.circuit_at(now) != CLOSED:
            return UNHEALTHY
        requests, errors = self._window.counts(now)
        if (
            self._last_probe_ok is False
            or now < self.cooling_until
            or (errors and errors >= self._health.error_rate_threshold / 2 * requests)
        ):
            return DEGRADED
        return HEALTHY

    def stats(self, now: float) -> TargetStats:
        requests, errors = self._window.counts(now)
        p50, p95 = self._latencies.percentiles(0.50, 0.95)
        return TargetStats(
            id=self.id,
            provider=self.provider,
            upstream_model=self.model,
            weight=self.weight,
            health=self.health_at(now),
            circuit=self.circuit_at(now),
            next_probe_in=self.next_probe_in(now),
            cooling_for=max(self.cooling_until - now, 0.0) or None,
            in_flight=self.in_flight,
            requests=self.requests,
            errors=self.errors,
            throttles=self.throttles,
            window_requests=requests,
            window_errors=errors,
            error_rate=errors / requests if requests else 0.0,
            latency_p50=p50,
            latency_p95=p95,
            last_error=self.last_error,
        )

    def _configure(self, weight: int, health: HealthConfig) -> None:
        """Apply a reloaded config; the counters and the circuit stay."""
        self.weight = weight
        if health.window != self._health.window:
            self._window = ErrorWindow(health.window)
        self._health = health


def _seconds(value: float) -> str:
    return f"{value:.0f}s" if value >= 10 else f"{value:.3g}s"


def _clip(message: str | None) -> str:
    text = " ".join((message or "error").split())  # one line
    return text if len(text) <= LAST_ERROR_MAX else text[: LAST_ERROR_MAX - 1] + "…"


class Lease:
    """One attempt on one target. Report exactly one outcome; the first one counts."""

    __slots__ = ("_answer", "_cooling", "_done", "_first_byte", "_started", "target")

    def __init__(self, target: TargetState, started: float) -> None:
        self.target = target
        self._started = started
        self._first_byte: float | None = None
        self._done = False
        self._cooling = 0.0
        self._answer: object = None

    def first_byte(self) -> None:
        """The first byte of the answer arrived: latency is measured up to here."""
        if self._first_byte is None:
            self._first_byte = self.target._clock()

    def success(self) -> None:
        if not self._done:
            self._done = True
            self.target._finish(self, _SUCCESS, None)

    def failure(self, message: str) -> None:
        """The target's fault; `message` (no secrets) becomes the target's last_error."""
        if not self._done:
            self._done = True
            self.target._finish(self, _FAILURE, message)

    def neutral(self) -> None:
        """Neither success nor the target's fault (client 4xx, cancellation)."""
        if not self._done:
            self._done = True
            self.target._finish(self, _NEUTRAL, None)

    def throttled(self, seconds: float, message: str, answer: object = None) -> None:
        """The upstream asked for a pause (429): skip the target for `seconds`. `answer` is
        kept as the target's `cooling_answer` while the pause lasts."""
        if not self._done:
            self._done = True
            self._cooling = seconds
            self._answer = answer
            self.target._finish(self, _THROTTLED, message)


@dataclass(frozen=True, slots=True)
class TargetStats:
    id: str
    provider: str
    upstream_model: str
    weight: int
    health: str  # healthy | degraded | unhealthy
    circuit: str  # closed | open | half_open
    next_probe_in: float | None  # seconds; None when no probe is scheduled
    cooling_for: float | None  # seconds of an upstream-asked pause (429) left; None: none
    in_flight: int
    requests: int  # client requests since start (or since the target appeared)
    errors: int
    throttles: int  # 429 answers (not errors: they never open the circuit)
    window_requests: int  # requests (and probes) inside the health window
    window_errors: int  # the errors among them
    error_rate: float  # errors / requests inside the health window, 0..1
    latency_p50: float | None  # seconds, over the last LATENCY_SAMPLES answers
    latency_p95: float | None
    last_error: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
