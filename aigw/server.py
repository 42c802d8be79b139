"""The gateway daemon's lifecycle: build everything from the config, serve the proxy on TCP and
the admin app on a Unix socket, reload on SIGHUP, drain on SIGTERM/SIGINT.

The drain: stop accepting, close idle connections, let the requests in flight finish until
`server.shutdown_timeout`, then set `Gateway.drain_deadline` and cancel what still runs (see
`ProxyServer.drain`). Client connections themselves (timeouts, cap, bad HTTP) are
`aigw.connections`.

`Gateway` owns long-lived parts (state store, quota manager, rate limiter, prices, usage
rollup, cache, metrics) and a `Runtime`: the parts a config reload replaces (providers,
balancers, hooks, auth). Requests hold on to the runtime they started with, so a reload never
disturbs a request in flight.

The usage history: requests add to the in-memory rollup (`Limits.history`); a background task
adds it to the store every `usage.flush_interval` (a failed write keeps the rows for the next
one) and prunes rows past `usage.retention` hourly; a graceful stop writes what is left after
the drain, so only `kill -9` loses anything (at most one interval).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import random
import signal
import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from aigw import __version__
from aigw.balancer import Balancers
from aigw.config import (
    Config,
    format_duration,
    load_config,
    public_url,
)
from aigw.connections import CUT_GRACE, ProxyServer, plan_limits, raise_fd_limit
from aigw.errors import StartupError
from aigw.exchange import RequestContext
from aigw.health import Clock
from aigw.hooks.base import Hook
from aigw.limits import Limits, build_limits
from aigw.logutil import RateLimitedLog
from aigw.paths import default_admin_socket
from aigw.providers import Provider
from aigw.proxy import Proxy
from aigw.runtime import Runtime, assemble, build_parts, close_all
from aigw.usage_history import Row, UsageRollup, retention_cutoff

if TYPE_CHECKING:
    from aigw.cache import ResponseCache
    from aigw.metrics import Metrics
    from aigw.state.base import StateStore
    from aigw.tracing import Tracing

log = logging.getLogger("aigw")
access = logging.getLogger("aigw.access")

#: How often rows past `usage.retention` are pruned from the store (and once at start).
PRUNE_INTERVAL = 3600.0


class Gateway:
    def __init__(
        self,
        config: Config,
        *,
        admin_socket: str | os.PathLike[str] | None = None,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
        server_overrides: dict[str, Any] | None = None,
        worker: int | None = None,
    ) -> None:
        self.config = config
        # `aigw serve` flags (--host, --port, --admin-socket, --access-log): re-applied on
        # every reload, which otherwise reads only the file.
        self._server_overrides = dict(server_overrides or {})
        # Health time and strategy randomness of the balancers, injectable for tests.
        self._clock = clock
        self._rng = rng
        #: index of this process under `aigw serve --workers N` (None: a lone daemon); workers
        #: share the port with SO_REUSEPORT and say who answered in `x-aigw-worker`
        self.worker = worker
        self.worker_pid = str(os.getpid()) if worker is not None else None
        self.admin_socket = Path(
            admin_socket or config.server.admin_socket or default_admin_socket()
        ).expanduser()
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.draining = False
        self.store: StateStore | None = None
        #: rate limits, quotas and the admission the proxy calls (built with the store)
        self.limits: Limits | None = None
        self.cache: ResponseCache | None = None
        self.metrics: Metrics | None = None
        #: spans of requests and their upstream attempts (None: tracing is off)
        self.tracing: Tracing | None = None
        providers, hook_specs = build_parts(config, None)
        self.runtime: Runtime = assemble(
            config,
            providers,
            hook_specs,
            Balancers(config.models, config.health, clock=self._clock, rng=self._rng),
        )
        self.access_logging = config.server.access_log
        self._runners: list[web.BaseRunner] = []
        self._proxy_server: ProxyServer | None = None
        self._proxy_site: web.SockSite | None = None
        #: set when the drain's deadline (server.shutdown_timeout) has passed: the requests
        #: still running are about to be cancelled (a stream may end with an in-band error)
        self.drain_deadline = asyncio.Event()
        #: one line per target and 10 s for requests that end in an upstream failure: a dead
        #: upstream under load must not write thousands of lines a second
        self.upstream_failures = RateLimitedLog(logging.getLogger("aigw.upstream"))
        self._tasks: list[asyncio.Task[Any]] = []
        #: the usage history write under way (it finishes even when its flusher is cancelled)
        self._usage_write: asyncio.Task[bool] | None = None
        self._usage_failing = False
        self._reload_lock = asyncio.Lock()
        self._retired: list[tuple[list[Provider], list[Hook]]] = []  # replaced by a reload
        self.listen_address = host_port(config.server.host, config.server.port)
        self.bound_port: int | None = None

    # --- building ------------------------------------------------------------------------------

    async def _open_long_lived(self) -> None:
        config = self.config
        from aigw.state import open_store

        self.store = await open_store(config.state)
        # With the limits: the price table (rebuilt on reload) and the usage rollup.
        self.limits = build_limits(self.store, config)
        if config.cache.enabled:
            from aigw.cache import ResponseCache

            c = config.cache
            self.cache = ResponseCache(c.max_entries, c.max_bytes, c.ttl)
        if config.metrics.enabled:
            from aigw.metrics import Metrics

            self.metrics = Metrics(True, config.metrics.tenant_label)
        if config.tracing.enabled:
            from aigw.tracing import build_tracing

            self.tracing = build_tracing(config.tracing)

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind everything or raise StartupError leaving nothing behind."""
        self._check_admin_socket()
        try:
            await self._start_parts()
        except BaseException:
            await self._release()  # the store, the providers and hooks, whatever was bound
            raise

    async def _start_parts(self) -> None:
        await self._open_long_lived()
        for provider in self.runtime.providers.values():
            await provider.start()
        server = self.config.server
        proxy = self.build_proxy_server()
        # The drain is ProxyServer.drain's; aiohttp's own shutdown finds nothing left to wait for.
        runner = web.ServerRunner(proxy, shutdown_timeout=CUT_GRACE)
        await runner.setup()
        self._runners.append(runner)
        self._proxy_server = proxy
        try:
            sock = _bind_tcp(server.host, server.port, reuse_port=self.worker is not None)
        except OSError as exc:
            raise listen_error(exc, server.host, server.port) from None
        self.bound_port = sock.getsockname()[1]
        self.listen_address = host_port(server.host, self.bound_port)
        site = web.SockSite(runner, sock)
        try:
            await site.start()
        except BaseException:
            sock.close()
            raise
        self._proxy_site = site
        try:
            await self._start_admin()
        except OSError as exc:
            raise StartupError(
                f"cannot create the admin socket {self.admin_socket}: {exc.strerror or exc}"
            ) from None
        self._tasks.append(asyncio.create_task(self._probe_loop(), name="aigw-probes"))
        self._tasks.append(asyncio.create_task(self._usage_loop(), name="aigw-usage-flush"))
        if self.cache is not None:
            self._tasks.append(asyncio.create_task(self._cache_sweep(), name="aigw-cache-sweep"))

    def build_proxy_server(self) -> ProxyServer:
        """aiohttp's low-level server: no Application, router or middleware on the hot path
        (the proxy routes by exact path itself), with the limits of `aigw.connections`."""
        config = self.config
        max_body = config.server.max_body_size
        loop = asyncio.get_running_loop()
        upstream = sum(p.max_connections for p in config.providers.values() if p.type != "mock")
        limits, warning = plan_limits(
            config.server, fd_limit=raise_fd_limit(), upstream_connections=upstream
        )
        if warning is not None:
            log.warning("%s", warning)

        def make_request(
            message: Any, payload: Any, protocol: Any, writer: Any, task: Any
        ) -> web.BaseRequest:
            return web.BaseRequest(
                message, payload, protocol, writer, task, loop, client_max_size=max_body
            )

        return ProxyServer(Proxy(self).handle, limits=limits, request_factory=make_request)

    async def _start_admin(self) -> None:
        from aigw.admin import build_admin_app

        path = self.admin_socket  # its directory was made and checked by claim_admin_socket
        runner = web.AppRunner(build_admin_app(self), access_log=None, shutdown_timeout=5)
        await runner.setup()
        old_umask = os.umask(0o177)  # the socket is born 0600: no window where others can connect
        try:
            site = web.UnixSite(runner, str(path))
            await site.start()
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        self._runners.append(runner)

    def _check_admin_socket(self) -> None:
        from aigw.admin import claim_admin_socket

        claim_admin_socket(self.admin_socket)

    def requests_in_flight(self) -> int:
        proxy = self._proxy_server
        return proxy.requests_in_flight() if proxy is not None else 0

    async def stop(self) -> None:
        """Stop accepting, drain in-flight requests until server.shutdown_timeout, cut the
        rest (setting `drain_deadline` first), release all."""
        self.draining = True
        await self._cancel_tasks()  # no probes or retirements during the drain
        if self._proxy_site is not None:
            await self._proxy_site.stop()  # stop accepting
            self._proxy_site = None
        if self._proxy_server is not None:
            timeout = self.config.server.shutdown_timeout
            cut = await self._proxy_server.drain(timeout, self.drain_deadline.set)
            if cut:
                log.warning(
                    "cut %d request%s still running at the drain deadline (%s)",
                    cut,
                    "" if cut == 1 else "s",
                    format_duration(timeout),
                )
        await self._release()
        with contextlib.suppress(FileNotFoundError):
            self.admin_socket.unlink()

    async def _release(self) -> None:
        """Close everything start() opened, in reverse: the sites (the admin socket last), the
        providers and hooks (retired ones too), the long-lived parts."""
        await self._cancel_tasks()
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        self._proxy_site = None
        self._proxy_server = None
        for providers, hooks in self._retired:
            await close_all(providers, hooks)
        self._retired.clear()
        await close_all(list(self.runtime.providers.values()), list(self.runtime.hooks))
        await self._close_long_lived()

    async def _cancel_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def _close_long_lived(self) -> None:
        if self.limits is not None:
            await self.flush_usage(final=True)  # after the drain: every request is in it
            await self.limits.close()
            self.limits = None
        if self.store is not None:
            await self.store.close()
            self.store = None
        if self.tracing is not None:
            # After the drain: every request's spans are queued; the export is bounded in time.
            tracing, self.tracing = self.tracing, None
            await tracing.close()

    # --- reload ----------------------------------------------------------------------------------

    async def reload(self, path: str | None = None) -> Config:
        """Re-read the config and swap the runtime; in-flight requests finish on the old one."""
        async with self._reload_lock:  # SIGHUP and POST /reload must not interleave
            return await self._reload(path)

    async def _reload(self, path: str | None) -> Config:
        source = path or (None if self.config.source.startswith("<") else self.config.source)
        config = await asyncio.to_thread(load_config, source)  # file I/O and YAML off the loop
        if self._server_overrides:
            config = replace(config, server=replace(config.server, **self._server_overrides))
        old = self.runtime
        # Build and start everything before touching live state: `Balancers.reload()` applies
        # the new weights and health settings to the surviving targets in place, so it comes
        # last, once nothing can fail.
        providers, hook_specs = build_parts(config, old)
        fresh = [p for n, p in providers.items() if old.providers.get(n) is not p]
        try:
            for provider in fresh:
                await provider.start()
        except BaseException:
            await close_all(fresh, [h for _, h in hook_specs if h not in old.hooks])
            raise
        balancers = old.balancers.reload(config.models, config.health)
        new = assemble(config, providers, hook_specs, balancers)
        self.runtime = new
        self.config = config
        self.access_logging = config.server.access_log
        if self.limits is not None:
            self.limits.reload(config)
        retired = [p for n, p in old.providers.items() if new.providers.get(n) is not p]
        hooks = [h for h in old.hooks if h not in new.hooks]
        if retired or hooks:
            self._retired.append((retired, hooks))
            retire = asyncio.create_task(self._retire(retired, hooks))
            self._tasks.append(retire)
            retire.add_done_callback(self._forget_task)
        restart_only = [
            name
            for name in ("state", "cache", "metrics", "tracing")
            if getattr(config, name) != getattr(old.config, name)
        ]
        # shutdown_timeout is read when the drain starts; these are read when the server is built.
        for name in ("max_body_size", "header_timeout", "keepalive_timeout", "max_connections"):
            if getattr(config.server, name) != getattr(old.config.server, name):
                restart_only.append(f"server.{name}")
        if self.metrics is not None:
            live = {t.id for m in new.balancers.snapshot().models for t in m.targets}
            for model in old.balancers.snapshot().models:
                for target in model.targets:
                    if target.id not in live:
                        self.metrics.forget_target(target.id)
        if (config.server.host, config.server.port, config.server.admin_socket) != (
            old.config.server.host,
            old.config.server.port,
            old.config.server.admin_socket,
        ):
            restart_only.append("server listen address / admin socket")
        if restart_only:
            log.warning(
                "config reloaded; changes to %s take effect only after a restart",
                ", ".join(restart_only),
            )
        else:
            log.info("config reloaded from %s", config.source)
        return config

    def _forget_task(self, task: asyncio.Task[Any]) -> None:
        with contextlib.suppress(ValueError):
            self._tasks.remove(task)

    async def _retire(self, providers: list[Provider], hooks: list[Hook]) -> None:
        # Requests started on the old runtime may still use these: close them after the longest
        # a request may take (or at stop, whichever comes first).
        await asyncio.sleep(self.config.server.request_timeout)
        self._retired.remove((providers, hooks))
        await close_all(providers, hooks)

    # --- background --------------------------------------------------------------------------

    async def _usage_loop(self) -> None:
        """Add the usage rollup to the store every `usage.flush_interval`; prune the history
        past `usage.retention` at start and then hourly. Off the request path."""
        next_prune = 0.0
        while True:
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + PRUNE_INTERVAL
                await self.prune_usage()
            await asyncio.sleep(self.config.usage.flush_interval)
            await self.flush_usage()

    async def flush_usage(self, *, final: bool = False) -> bool:
        """Add what the rollup holds to the store; False when the write failed (the rows are
        back in the rollup, for the next flush). One write at a time, and a write under way
        finishes even when the flusher is cancelled (at stop), so no row is written twice or
        lost."""
        limits, store = self.limits, self.store
        if limits is None or store is None:
            return True
        if self._usage_write is not None:
            await asyncio.shield(self._usage_write)
        rows = limits.history.drain()
        if not rows:
            return True
        write = asyncio.ensure_future(self._write_usage(store, limits.history, rows, final))
        self._usage_write = write

        def written(task: asyncio.Future[bool]) -> None:
            if self._usage_write is task:
                self._usage_write = None

        write.add_done_callback(written)
        return await asyncio.shield(write)

    async def _write_usage(
        self, store: StateStore, rollup: UsageRollup, rows: list[Row], final: bool
    ) -> bool:
        try:
            await store.add_history(rows, self.config.usage.retention)
        except Exception as exc:
            rollup.restore(rows)
            if final:
                log.error(
                    "usage history: could not write %d row(s) at shutdown (%s); they are lost",
                    len(rows),
                    str(exc)[:200] or type(exc).__name__,
                )
            elif not self._usage_failing:
                self._usage_failing = True
                log.warning(
                    "usage history: writing to the state store failed (%s); kept in memory "
                    "and written when it works again",
                    str(exc)[:200] or type(exc).__name__,
                )
            return False
        if self._usage_failing:
            self._usage_failing = False
            log.warning("usage history: writing to the state store works again")
        return True

    async def prune_usage(self) -> None:
        """Drop the history rows of hours past `usage.retention`."""
        store = self.store
        if store is None:
            return
        cutoff = retention_cutoff(time.time(), self.config.usage.retention)
        try:
            pruned = await store.prune_history(cutoff)
        except Exception as exc:  # the next prune tries again
            log.warning("usage history: pruning failed (%s)", str(exc)[:200] or type(exc).__name__)
            return
        if pruned:
            log.info("usage history: pruned %d row(s) past usage.retention", pruned)

    async def _cache_sweep(self) -> None:
        """Give back the memory of cached answers past their ttl that nobody asked for again
        (a lookup would drop them too, but they may never be looked up)."""
        cache = self.cache
        assert cache is not None
        while True:
            await asyncio.sleep(min(cache.ttl, 60.0))
            if cache.purge_expired() and self.metrics is not None:
                self.metrics.cache_size(cache.entries, cache.bytes)

    async def _probe_loop(self) -> None:
        while True:
            interval = self.config.health.check_interval
            await asyncio.sleep(min(interval, 1.0) if interval > 0 else 1.0)
            if interval <= 0:
                continue
            rt = self.runtime
            for target in rt.balancers.targets_for_probe():
                provider = rt.providers.get(target.provider)
                if provider is None:
                    continue
                try:
                    await provider.probe()
                except Exception as exc:  # any failure is a failed probe
                    rt.balancers.record_probe(target, False, str(exc)[:200])
                else:
                    rt.balancers.record_probe(target, True, None)

    # --- reporting -----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        # The store that runs, not the config's (a reload does not replace it): where it keeps
        # the state, never a password.
        store = self.store
        backend = str(getattr(store, "name", self.config.state.backend))
        path = getattr(store, "path", None) if backend == "sqlite" else None
        url = getattr(store, "url", None) if backend == "redis" else None
        return {
            "pid": os.getpid(),
            "version": __version__,
            "uptime": time.monotonic() - self.started,
            "config": self.config.source,
            "listen": f"http://{self.listen_address}",
            "admin_socket": str(self.admin_socket),
            "state_backend": backend,
            "state_path": str(Path(path).resolve()) if path is not None else None,
            "state_url": public_url(url) if isinstance(url, str) else None,
            "models": list(self.config.models),
            "providers": list(self.config.providers),
            "draining": self.draining,
            "worker": self.worker,
        }

    def refresh_gauges(self) -> None:
        """Push health/circuit state into the metrics gauges (cheap; done at scrape time)."""
        if self.metrics is None:
            return
        snapshot = self.runtime.balancers.snapshot()
        for model in snapshot.models:
            for target in model.targets:
                self.metrics.target_state(target.id, target.health == "healthy", target.circuit)
        if self.cache is not None:
            self.metrics.cache_size(self.cache.entries, self.cache.bytes)

    def access_log(self, ctx: RequestContext, request: web.BaseRequest) -> None:
        if not self.access_logging:
            return
        usage = ctx.usage
        access.info(
            '%s "%s %s" %s tenant=%s model=%s target=%s tokens=%s %.1fms',
            ctx.request_id,
            request.method,
            request.path,
            ctx.status,
            ctx.tenant or "-",
            ctx.model or "-",
            ctx.target or "-",
            usage.total_tokens if usage else "-",
            (time.monotonic() - ctx.started) * 1000,
        )


def host_port(host: str, port: int) -> str:
    """`host:port` as it goes in a URL: an IPv6 address in brackets (`[::1]:8080`)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _bind_tcp(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:  # `--workers N`: the kernel spreads connections over the workers
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def listen_error(exc: OSError, host: str, port: int) -> StartupError:
    """The one-line start-up error for a TCP port that cannot be bound."""
    if exc.errno == errno.EADDRINUSE:
        return StartupError(
            f"port {port} on {host} is already in use (another aigw?); "
            "start this one on another port with --port N"
        )
    return StartupError(
        f"cannot listen on {host_port(host, port)}: {exc.strerror}; "
        "choose another with --host / --port"
    )


# --- running in the foreground ---------------------------------------------------------------


async def run(
    config: Config,
    *,
    admin_socket: str | None = None,
    ready: Any = None,
    server_overrides: dict[str, Any] | None = None,
    worker: int | None = None,
    stop: asyncio.Event | None = None,
) -> int:
    """Run until SIGTERM/SIGINT (or until `stop` is set); SIGHUP reloads. Returns the exit code.

    `worker` is the index of this process under `aigw serve --workers N` (see `aigw.workers`)."""
    gateway = Gateway(
        config, admin_socket=admin_socket, server_overrides=server_overrides, worker=worker
    )
    await gateway.start()
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    signals_seen = 0
    reloads: set[asyncio.Future[None]] = set()

    def on_stop() -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen > 1:  # a second Ctrl+C: stop waiting for stragglers
            log.warning("second signal: exiting now")
            os._exit(1)
        stop.set()

    def on_hup() -> None:
        async def do() -> None:
            try:
                await gateway.reload()
            except Exception as exc:  # keep serving the old config
                log.error("reload failed, keeping the running config: %s", exc)

        reloads.add(task := asyncio.ensure_future(do()))
        task.add_done_callback(reloads.discard)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    if worker is None:
        log.info(
            "aigw %s serving http://%s/v1 (admin socket %s, config %s)",
            __version__,
            gateway.listen_address,
            gateway.admin_socket,
            config.source,
        )
    else:
        log.info("worker %d (pid %d) ready on %s", worker, os.getpid(), gateway.listen_address)
    if ready is not None:
        ready(gateway)
    await stop.wait()
    in_flight = gateway.requests_in_flight()
    if in_flight:
        timeout = gateway.config.server.shutdown_timeout
        log.info(
            "draining %d request%s in flight until %s (server.shutdown_timeout %s)%s",
            in_flight,
            "" if in_flight == 1 else "s",
            time.strftime("%H:%M:%S", time.localtime(time.time() + timeout)),
            format_duration(timeout),
            "; press Ctrl+C again to exit at once" if worker is None else "",
        )
    else:
        log.info("stopping: no requests in flight")
    await gateway.stop()
    log.info("stopped")
    return 0
