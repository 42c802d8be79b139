"""Load balancing: which target of a gateway model serves the next attempt.

For every attempt the proxy asks a `ModelBalancer` for a `Lease` (`aigw.health`) on a target
whose circuit lets traffic through and that the request has not tried yet; a strategy picks
among them (the registry `aigw.choices.STRATEGY_CLASSES`). `Balancers` holds every model's
balancer; a reload builds a new set sharing the surviving targets' health and stats.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from aigw.choices import STRATEGY_CLASSES, import_string
from aigw.config import HealthConfig, ModelConfig
from aigw.health import (
    BUSY_PROBE_RETRY_AFTER,
    CLOSED,
    OPEN,
    Clock,
    Lease,
    TargetState,
    TargetStats,
)

# --- strategies ---------------------------------------------------------------------------


class Strategy:
    """Picks one of the `ready` targets (never empty, all admitted by their circuits)."""

    name: ClassVar[str]

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def pick(self, ready: Sequence[TargetState], now: float) -> TargetState:
        raise NotImplementedError


class RoundRobin(Strategy):
    """Smooth weighted round-robin (nginx): with equal weights an exact rotation; with weights
    3:1 the sequence A A B A, spread out rather than in bursts. Skipped targets lose no turn."""

    name = "round_robin"

    def __init__(self, rng: random.Random) -> None:
        super().__init__(rng)
        self._current: dict[TargetState, int] = {}

    def pick(self, ready: Sequence[TargetState], now: float) -> TargetState:
        current = self._current
        total = 0
        best: TargetState | None = None
        best_value = 0
        for target in ready:
            value = current.get(target, 0) + target.weight
            current[target] = value
            total += target.weight
            if best is None or value > best_value:
                best, best_value = target, value
        assert best is not None
        current[best] = best_value - total
        return best


class UniformRandom(Strategy):
    """Uniform random; weights are ignored (that is `weighted_random`)."""

    name = "random"

    def pick(self, ready: Sequence[TargetState], now: float) -> TargetState:
        return ready[int(self._rng.random() * len(ready))]


class WeightedRandom(Strategy):
    """Random with probability proportional to weight."""

    name = "weighted_random"

    def pick(self, ready: Sequence[TargetState], now: float) -> TargetState:
        total = 0
        for target in ready:
            total += target.weight
        point = self._rng.random() * total
        for target in ready:
            point -= target.weight
            if point < 0:
                return target
        return ready[-1]  # float rounding at the very top


class LeastConnections(Strategy):
    """Fewest in-flight requests per unit of weight; ties go round-robin, because the scan
    starts one place further each time."""

    name = "least_connections"

    def __init__(self, rng: random.Random) -> None:
        super().__init__(rng)
        self._start = 0

    def pick(self, ready: Sequence[TargetState], now: float) -> TargetState:
        n = len(ready)
        start = self._start % n
        self._start = start + 1
        best = ready[start]
        best_load = best.in_flight / best.weight
        for k in range(1, n):
            target = ready[(start + k) % n]
            load = target.in_flight / target.weight
            if load < best_load:
                best, best_load = target, load
        return best


#: Cost of a target with work in flight but no latency sample yet: avoid piling onto it.
_UNMEASURED_PENALTY = 1e6


class Latency(Strategy):
    """Peak-EWMA latency * (in-flight + 1) / weight, lower wins, between two targets drawn at
    random (power of two choices): a slow target sheds load smoothly and is retried as its
    cost decays, so it gets traffic back when it recovers."""

    name = "latency"

    def _cost(self, target: TargetState, now: float) -> float:
        ewma = target.latency_cost(now)
        if ewma == 0.0 and target.in_flight:
            return _UNMEASURED_PENALTY + target.in_flight
        return ewma * (target.in_flight + 1) / target.weight

    def pick(self, ready: Sequence[TargetState], now: float) -> TargetState:
        rng = self._rng
        n = len(ready)
        if n == 2:
            a, b = (ready[0], ready[1]) if rng.random() < 0.5 else (ready[1], ready[0])
        else:
            i = int(rng.random() * n)
            j = int(rng.random() * (n - 1))
            if j >= i:
                j += 1
            a, b = ready[i], ready[j]
        return b if self._cost(b, now) < self._cost(a, now) else a


def strategy_class(name: str) -> type[Strategy]:
    """The strategy a config name means (the registry `aigw.choices.STRATEGY_CLASSES`)."""
    try:
        spec = STRATEGY_CLASSES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}") from None
    cls: type[Strategy] = import_string(spec)
    return cls


# --- one gateway model --------------------------------------------------------------------


class ModelBalancer:
    """The targets of one gateway model and the strategy that picks among them."""

    __slots__ = ("_clock", "_strategy", "fallbacks", "name", "retries", "strategy", "targets")

    def __init__(
        self,
        name: str,
        strategy: str,
        targets: Sequence[TargetState],
        fallbacks: tuple[str, ...],
        retries: int,
        clock: Clock,
        rng: random.Random,
    ) -> None:
        try:
            strategy_cls = strategy_class(strategy)
        except ValueError:
            raise ValueError(f"model {name!r}: unknown strategy {strategy!r}") from None
        self.name = name
        self.strategy = strategy
        self.targets: tuple[TargetState, ...] = tuple(targets)
        self.fallbacks = fallbacks
        self.retries = retries
        self._strategy = strategy_cls(rng)
        self._clock = clock

    def acquire(self, exclude: Collection[TargetState] = ()) -> Lease | None:
        """A lease on a target whose circuit lets traffic through and that is not in `exclude`
        (the targets this request already tried); None when there is none."""
        now = self._clock()
        # The common case (closed, not cooling) inline: it costs no method call.
        if exclude:
            ready = [
                t
                for t in self.targets
                if ((t._circuit == CLOSED and t.cooling_until <= now) or t.admits(now))
                and t not in exclude
            ]
        else:
            ready = [
                t
                for t in self.targets
                if (t._circuit == CLOSED and t.cooling_until <= now) or t.admits(now)
            ]
        if not ready:
            return None
        target = ready[0] if len(ready) == 1 else self._strategy.pick(ready, now)
        lease = Lease(target, now)
        if target._circuit != CLOSED:  # admitted while half-open: this request is the probe
            target._probe_lease = lease
        target.in_flight += 1
        return lease

    def soonest_recovery(self, now: float | None = None) -> float:
        """Seconds until some target lets a request through again (for `retry-after`)."""
        if now is None:
            now = self._clock()
        soonest = math.inf
        for target in self.targets:
            cooling = target.cooling_until - now
            circuit = target.circuit_at(now)
            if circuit == CLOSED:
                wait = 0.0
            elif circuit == OPEN:
                wait = target._open_until - now
            elif target._probe_lease is None:
                wait = 0.0
            else:
                wait = BUSY_PROBE_RETRY_AFTER
            soonest = min(soonest, max(wait, cooling))
        return 0.0 if soonest == math.inf else max(soonest, 0.0)

    def cooling_target(self) -> TargetState | None:
        """The target whose upstream-asked pause ends first, when every target is either
        cooling or open and the soonest way back is a pause ending (the client then gets the
        upstream's own 429, not a 503); None otherwise."""
        now = self._clock()
        best: TargetState | None = None
        for target in self.targets:
            if target.cooling_until <= now:
                continue
            if best is None or target.cooling_until < best.cooling_until:
                best = target
        if best is None:
            return None
        return best if best.cooling_until - now <= self.soonest_recovery(now) else None

    def stats(self, now: float) -> ModelStats:
        return ModelStats(
            name=self.name,
            strategy=self.strategy,
            fallbacks=self.fallbacks,
            retries=self.retries,
            targets=tuple(t.stats(now) for t in self.targets),
        )


# --- all of them --------------------------------------------------------------------------

_StateKey = tuple[str, str, str, int]  # gateway model, provider, upstream model, occurrence


class Balancers:
    """Every gateway model's balancer. `reload()` returns a new set sharing the surviving
    targets' state objects, so in-flight leases on the old set report into the same counters."""

    def __init__(
        self,
        models: Mapping[str, ModelConfig],
        health: HealthConfig,
        *,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._setup(models, health, {})

    def _setup(
        self,
        models: Mapping[str, ModelConfig],
        health: HealthConfig,
        previous: Mapping[_StateKey, TargetState],
    ) -> None:
        self._health = health
        self._models: dict[str, ModelBalancer] = {}
        self._states: dict[_StateKey, TargetState] = {}
        self._by_id: dict[str, list[TargetState]] = {}
        for name, model in models.items():
            seen: dict[tuple[str, str], int] = {}
            targets: list[TargetState] = []
            for tc in model.targets:
                upstream = tc.model or name
                occurrence = seen.get((tc.provider, upstream), 0)
                seen[(tc.provider, upstream)] = occurrence + 1
                key = (name, tc.provider, upstream, occurrence)
                state = previous.get(key)
                if state is None:
                    state = TargetState(name, tc.provider, upstream, tc.weight, health, self._clock)
                else:
                    state._configure(tc.weight, health)
                self._states[key] = state
                self._by_id.setdefault(state.id, []).append(state)
                targets.append(state)
            retries = model.retries if model.retries is not None else max(len(targets) - 1, 0)
            self._models[name] = ModelBalancer(
                name,
                model.strategy,
                targets,
                tuple(model.fallbacks),
                retries,
                self._clock,
                self._rng,
            )

    def get(self, model_name: str) -> ModelBalancer | None:
        return self._models.get(model_name)

    def __iter__(self) -> Iterator[ModelBalancer]:
        return iter(self._models.values())

    def reload(self, models: Mapping[str, ModelConfig], health: HealthConfig) -> Balancers:
        """A new set for the new config. Targets that still exist (same provider and upstream
        model under the same gateway model) keep their state and stats; the old set keeps
        working for the requests still holding it."""
        new = Balancers.__new__(Balancers)
        new._clock = self._clock
        new._rng = self._rng
        new._setup(models, health, self._states)
        return new

    def snapshot(self) -> BalancerSnapshot:
        now = self._clock()
        return BalancerSnapshot(models=tuple(m.stats(now) for m in self._models.values()))

    def targets_for_probe(self) -> list[TargetState]:
        """One target per distinct upstream (provider/model) whose active probe is due. Handing a
        target out schedules its next probe, so a slow probe is not started twice."""
        interval = self._health.check_interval
        if interval <= 0:
            return []
        now = self._clock()
        due: list[TargetState] = []
        for group in self._by_id.values():
            if any(t.next_probe_at() <= now for t in group):
                for t in group:
                    t._last_probe_at = now
                due.append(group[0])
        return due

    def record_probe(self, target: TargetState, ok: bool, message: str | None) -> None:
        """Feed an active probe's result to every target with the same provider/model."""
        now = self._clock()
        for t in self._by_id.get(target.id) or (target,):
            t._probe_result(now, ok, message)


# --- stats --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelStats:
    name: str
    strategy: str
    fallbacks: tuple[str, ...]
    retries: int
    targets: tuple[TargetStats, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "strategy": self.strategy,
            "fallbacks": list(self.fallbacks),
            "retries": self.retries,
            "targets": [t.to_dict() for t in self.targets],
        }


@dataclass(frozen=True, slots=True)
class BalancerSnapshot:
    models: tuple[ModelStats, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"models": [m.to_dict() for m in self.models]}
