"""`aigw serve --workers N`: N gateway processes on one port (SO_REUSEPORT), sharing one Redis.

The supervisor is the process `aigw serve` started. It
- reserves the port: it binds it with SO_REUSEPORT without listening, so `--port 0` resolves to
  one port for every worker, and a port held by another program fails start-up (exit 3);
- starts N workers (`python -m aigw.workers`, each given its config on stdin). A worker is a full
  gateway bound with SO_REUSEPORT, with a private admin socket `<admin_socket>.d/worker-<i>.sock`;
  the kernel spreads new connections over the workers. Responses carry `x-aigw-worker: <pid>`;
- owns the admin socket: `status` lists the workers and their pids, `lb/stats` merges theirs,
  quota calls go to any one worker (the state is shared in Redis), `reload` goes to all;
- restarts a worker that dies, at most MAX_RESTARTS times within RESTART_WINDOW seconds; past
  that it stops everything and exits 1;
- on SIGTERM/SIGINT tells every worker to drain and exits 0 once all have stopped (a second
  signal kills them and exits 1); SIGHUP is forwarded, so every worker reloads.

Workers run in a session of their own, so a Ctrl+C on the terminal reaches only the supervisor
(which forwards one SIGTERM); a worker also stops when its stdin closes, so no worker outlives a
supervisor killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import pickle
import signal
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import ClientError, ClientSession, ClientTimeout, UnixConnector, web

from aigw import __version__
from aigw.admin import claim_admin_socket
from aigw.config import Config, format_duration
from aigw.errors import StartupError
from aigw.paths import default_admin_socket
from aigw.server import host_port, listen_error

log = logging.getLogger("aigw")

#: Restarts allowed within RESTART_WINDOW seconds before the supervisor gives up.
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
#: Longest a worker may take to start.
STARTUP_TIMEOUT = 60.0
#: Admin calls forwarded to a worker.
ADMIN_TIMEOUT = 30.0


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process is told on stdin."""

    index: int
    config: Config
    log_level: int
    #: re-applied on every reload (the port and the private admin socket among them)
    server_overrides: dict[str, Any]
    loop: str = "auto"  # event loop (aigw.loops)


@dataclass(eq=False)
class _Worker:
    index: int
    socket: Path
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


class Supervisor:
    def __init__(
        self,
        config: Config,
        workers: int,
        *,
        log_level: int = logging.INFO,
        server_overrides: dict[str, Any] | None = None,
        loop: str = "auto",
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.config = config
        self.loop = loop
        self.server_overrides = dict(server_overrides or {})
        self.log_level = log_level
        self.admin_socket = Path(config.server.admin_socket or default_admin_socket()).expanduser()
        self.worker_dir = Path(str(self.admin_socket) + ".d")
        self.workers = [_Worker(i, self.worker_dir / f"worker-{i}.sock") for i in range(workers)]
        self.started = time.monotonic()
        self.port = 0
        self.listen_address = ""
        self.stopping = False
        #: set when the supervisor must stop on its own (restart budget spent): exit code
        self.failed: asyncio.Future[int] | None = None
        self._placeholder: socket.socket | None = None
        self._runner: web.AppRunner | None = None
        self._watchers: list[asyncio.Task[None]] = []
        self._restarts: deque[float] = deque()

    # --- start ----------------------------------------------------------------------------------

    async def start(self) -> None:
        self.failed = asyncio.get_running_loop().create_future()
        claim_admin_socket(self.admin_socket)
        self._reserve_port()
        self.admin_socket.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.worker_dir.mkdir(mode=0o700, exist_ok=True)
        for stale in self.worker_dir.glob("worker-*.sock"):
            stale.unlink()
        try:
            # Started together: each takes a moment to import and bind.
            await asyncio.gather(*(self._spawn(w) for w in self.workers))
            await self._start_admin()
        except BaseException:
            await self._terminate_workers(kill_after=5.0)
            self._release()
            raise
        self._watchers = [
            asyncio.create_task(self._watch(w), name=f"aigw-worker-{w.index}") for w in self.workers
        ]

    def _reserve_port(self) -> None:
        server = self.config.server
        family = socket.AF_INET6 if ":" in server.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((server.host, server.port))
        except OSError as exc:
            sock.close()
            raise listen_error(exc, server.host, server.port) from None
        # Bound but never listening: it holds the port and receives no connections.
        self._placeholder = sock
        self.port = sock.getsockname()[1]
        self.listen_address = host_port(server.host, self.port)

    def _spec(self, worker: _Worker) -> WorkerSpec:
        overrides = {**self.server_overrides, "port": self.port, "admin_socket": str(worker.socket)}
        server = dataclasses.replace(self.config.server, **overrides)
        return WorkerSpec(
            worker.index,
            dataclasses.replace(self.config, server=server),
            self.log_level,
            overrides,
            self.loop,
        )

    async def _spawn(self, worker: _Worker) -> None:
        blob = pickle.dumps(self._spec(worker))
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "aigw.workers",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        worker.proc = proc
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(len(blob).to_bytes(8, "big") + blob)
            await proc.stdin.drain()
            line = await asyncio.wait_for(proc.stdout.readline(), STARTUP_TIMEOUT)
        except (OSError, TimeoutError):
            line = b""
        if not line.startswith(b"ready"):
            if proc.returncode is None:
                proc.kill()
            code = await proc.wait()
            raise StartupError(f"worker {worker.index} failed to start (exit code {code})")

    async def _start_admin(self) -> None:
        runner = web.AppRunner(self._admin_app(), access_log=None, shutdown_timeout=5)
        await runner.setup()
        old_umask = os.umask(0o177)  # born 0600, like the single daemon's socket
        try:
            await web.UnixSite(runner, str(self.admin_socket)).start()
        finally:
            os.umask(old_umask)
        os.chmod(self.admin_socket, 0o600)
        self._runner = runner

    # --- supervision ----------------------------------------------------------------------------

    async def _watch(self, worker: _Worker) -> None:
        while True:
            assert worker.proc is not None
            code = await worker.proc.wait()
            if self.stopping:
                return
            now = time.monotonic()
            self._restarts.append(now)
            while self._restarts and self._restarts[0] < now - RESTART_WINDOW:
                self._restarts.popleft()
            if len(self._restarts) > MAX_RESTARTS:
                log.error(
                    "worker %d exited with %s; %d restarts within %ds: giving up",
                    worker.index,
                    code,
                    MAX_RESTARTS,
                    int(RESTART_WINDOW),
                )
                self._fail(1)
                return
            log.warning(
                "worker %d (pid %s) exited with %s; restarting it", worker.index, worker.pid, code
            )
            await asyncio.sleep(0.1 * len(self._restarts))
            if self._stop_requested():
                return
            try:
                await self._spawn(worker)
            except StartupError as exc:
                log.error("%s", exc)
                continue  # counts as another exit
            worker.restarts += 1

    def _stop_requested(self) -> bool:
        # A method, not the attribute: `stopping` changes while this task awaits.
        return self.stopping

    def _fail(self, code: int) -> None:
        if self.failed is not None and not self.failed.done():
            self.failed.set_result(code)

    def forward(self, sig: int) -> None:
        for worker in self.workers:
            if worker.running and worker.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, sig)

    # --- stop -----------------------------------------------------------------------------------

    async def stop(self) -> None:
        """Drain every worker (each within server.shutdown_timeout), then release everything."""
        self.stopping = True
        await self._terminate_workers(kill_after=self.config.server.shutdown_timeout + 10.0)
        for task in self._watchers:
            task.cancel()
        for task in self._watchers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._watchers.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        with contextlib.suppress(FileNotFoundError):
            self.admin_socket.unlink()
        self._release()

    async def _terminate_workers(self, kill_after: float) -> None:
        self.stopping = True
        self.forward(signal.SIGTERM)
        procs = [w.proc for w in self.workers if w.proc is not None]
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), kill_after)
        except TimeoutError:
            log.warning("workers did not stop within %ss: killing them", kill_after)
            self.forward(signal.SIGKILL)
            await asyncio.gather(*(p.wait() for p in procs))
        for proc in procs:
            if proc.stdin is not None:
                proc.stdin.close()

    def kill_all(self) -> None:
        self.stopping = True
        self.forward(signal.SIGKILL)

    def _release(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(FileNotFoundError):
                worker.socket.unlink()
        with contextlib.suppress(OSError):
            self.worker_dir.rmdir()
        if self._placeholder is not None:
            self._placeholder.close()
            self._placeholder = None

    # --- admin ----------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        config = self.config
        return {
            "pid": os.getpid(),
            "version": __version__,
            "uptime": time.monotonic() - self.started,
            "config": config.source,
            "listen": f"http://{self.listen_address}",
            "admin_socket": str(self.admin_socket),
            "state_backend": config.state.backend,
            "models": list(config.models),
            "providers": list(config.providers),
            "draining": self.stopping,
            "workers": [
                {"index": w.index, "pid": w.pid, "running": w.running, "restarts": w.restarts}
                for w in self.workers
            ],
        }

    async def ask(
        self, worker: _Worker, method: str, path: str, body: bytes | None = None
    ) -> tuple[int, bytes]:
        """One admin call to a worker's private socket."""
        connector = UnixConnector(path=str(worker.socket))
        async with (
            ClientSession(connector=connector, timeout=ClientTimeout(total=ADMIN_TIMEOUT)) as s,
            s.request(
                method,
                "http://worker" + path,
                data=body,
                headers={"Content-Type": "application/json"} if body is not None else None,
            ) as resp,
        ):
            return resp.status, await resp.read()

    def _admin_app(self) -> web.Application:
        routes = web.RouteTableDef()

        @routes.get("/status")
        async def status(request: web.Request) -> web.Response:
            return _reply(self.status())

        @routes.get("/lb/stats")
        async def lb_stats(request: web.Request) -> web.Response:
            snapshots = []
            for worker in self.workers:
                if not worker.running:
                    continue
                try:
                    code, raw = await self.ask(worker, "GET", "/lb/stats")
                except (ClientError, OSError, TimeoutError):
                    continue  # restarting: the others still answer
                if code == 200:
                    snapshots.append(json.loads(raw))
            merged = merge_lb_stats(snapshots)
            merged["uptime"] = time.monotonic() - self.started
            return _reply(merged)

        async def any_worker(request: web.Request) -> web.Response:
            body = await request.read() if request.can_read_body else None
            for worker in self.workers:
                if not worker.running:
                    continue
                try:
                    code, raw = await self.ask(worker, request.method, request.path_qs, body)
                except (ClientError, OSError, TimeoutError):
                    continue
                return web.Response(body=raw, status=code, content_type="application/json")
            return _reply({"error": {"message": "no worker is running"}}, 503)

        @routes.post("/reload")
        async def reload(request: web.Request) -> web.Response:
            answers: list[tuple[int, bytes]] = []
            lost: list[str] = []
            for worker in self.workers:
                if not worker.running:
                    continue
                try:
                    answers.append(await self.ask(worker, "POST", "/reload", b"{}"))
                except (ClientError, OSError, TimeoutError):
                    # It died (or hangs) mid-reload: the others still get theirs.
                    lost.append(f"{worker.index} (pid {worker.pid})")
            if lost:
                reloaded = sum(1 for code, _ in answers if code == 200)
                message = (
                    f"reload failed: worker {', '.join(lost)} did not answer (it exited or "
                    "hangs; a worker that exits is restarted with the config it started with); "
                    f"{reloaded} of {len(answers) + len(lost)} workers reloaded"
                )
                return _reply({"error": {"message": message}}, 502)
            failed = [a for a in answers if a[0] != 200]
            code, raw = (failed or answers or [(503, b'{"error": {"message": "no worker"}}')])[0]
            if code == 200:
                from aigw.config import load_config

                with contextlib.suppress(Exception):  # only for `status`; workers reloaded
                    self.config = load_config(self.config.source)
            return web.Response(body=raw, status=code, content_type="application/json")

        app = web.Application()
        app.add_routes(routes)
        app.router.add_route("GET", "/quota", any_worker)
        # The history is shared in Redis: any worker answers (with what it has not flushed).
        app.router.add_route("GET", "/usage", any_worker)
        app.router.add_route("*", "/quota/{tail:.+}", any_worker)
        return app


def _reply(payload: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(payload).encode(), status=status, content_type="application/json"
    )


# --- merging the workers' balancer stats ----------------------------------------------------------

_HEALTH_ORDER = {"healthy": 0, "degraded": 1, "unhealthy": 2}
_CIRCUIT_ORDER = {"closed": 0, "half_open": 1, "open": 2}
_SUMMED = ("in_flight", "requests", "errors", "window_requests")


def merge_lb_stats(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    """One `lb stats` payload from the workers' payloads: models by name, targets by id.
    Counts are summed; the error rate is weighted by each worker's window requests; health
    and circuit take the worst worker; latency percentiles take the highest worker's (they
    cannot be merged exactly without the samples); the next probe is the soonest."""
    models: dict[str, dict[str, Any]] = {}
    for snapshot in snapshots:
        for model in snapshot.get("models", []):
            merged = models.get(model["name"])
            if merged is None:
                models[model["name"]] = {
                    **model,
                    "targets": [dict(t) for t in model.get("targets", [])],
                }
                continue
            by_id = {t["id"]: t for t in merged["targets"]}
            for target in model.get("targets", []):
                into = by_id.get(target["id"])
                if into is None:
                    merged["targets"].append(dict(target))
                else:
                    _merge_target(into, target)
    return {"models": list(models.values()), "workers": len(snapshots)}


def _merge_target(into: dict[str, Any], other: dict[str, Any]) -> None:
    window = into.get("window_requests", 0) + other.get("window_requests", 0)
    if window:
        into["error_rate"] = (
            into.get("error_rate", 0.0) * into.get("window_requests", 0)
            + other.get("error_rate", 0.0) * other.get("window_requests", 0)
        ) / window
    for name in _SUMMED:
        into[name] = into.get(name, 0) + other.get(name, 0)
    if _HEALTH_ORDER.get(other.get("health", ""), 0) > _HEALTH_ORDER.get(into.get("health", ""), 0):
        into["health"] = other["health"]
    if _CIRCUIT_ORDER.get(other.get("circuit", ""), 0) > _CIRCUIT_ORDER.get(
        into.get("circuit", ""), 0
    ):
        into["circuit"] = other["circuit"]
    for name in ("latency_p50", "latency_p95"):
        values = [v for v in (into.get(name), other.get(name)) if v is not None]
        into[name] = max(values) if values else None
    probes = [v for v in (into.get("next_probe_in"), other.get("next_probe_in")) if v is not None]
    into["next_probe_in"] = min(probes) if probes else None
    into["last_error"] = into.get("last_error") or other.get("last_error")


# --- running ----------------------------------------------------------------------------------


async def supervise(
    config: Config,
    workers: int,
    *,
    log_level: int = logging.INFO,
    server_overrides: dict[str, Any] | None = None,
    loop: str = "auto",
) -> int:
    """Run the supervisor until SIGTERM/SIGINT; returns the exit code. `server_overrides` are
    the `aigw serve` flags, re-applied by every worker on reload."""
    supervisor = Supervisor(
        config, workers, log_level=log_level, server_overrides=server_overrides, loop=loop
    )
    await supervisor.start()
    running = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals_seen = 0

    def on_stop() -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen > 1:
            log.warning("second signal: killing the workers and exiting now")
            supervisor.kill_all()
            os._exit(1)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        running.add_signal_handler(sig, on_stop)
    running.add_signal_handler(signal.SIGHUP, lambda: supervisor.forward(signal.SIGHUP))
    log.info(
        "aigw %s serving http://%s/v1 with %d workers (pids %s; admin socket %s, config %s)",
        __version__,
        supervisor.listen_address,
        workers,
        ", ".join(str(w.pid) for w in supervisor.workers),
        supervisor.admin_socket,
        config.source,
    )
    assert supervisor.failed is not None
    stopped = asyncio.ensure_future(stop.wait())
    waiters: set[asyncio.Future[Any]] = {stopped, supervisor.failed}
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    code = supervisor.failed.result() if supervisor.failed.done() else 0
    stopped.cancel()
    log.info(
        "stopping %d workers (each drains its requests in flight for up to %s); "
        "press Ctrl+C again to exit at once",
        workers,
        format_duration(config.server.shutdown_timeout),
    )
    await supervisor.stop()
    log.info("stopped")
    return code


# --- the worker process ---------------------------------------------------------------------------


class _StdinWatch(asyncio.Protocol):
    """The supervisor holds the worker's stdin open: end of file means it is gone."""

    def __init__(self, stop: asyncio.Event) -> None:
        self._stop = stop

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop.set()

    def eof_received(self) -> bool | None:
        self._stop.set()
        return None


def _read_spec() -> WorkerSpec:
    stream = sys.stdin.buffer
    size = int.from_bytes(stream.read(8), "big")
    spec = pickle.loads(stream.read(size))
    if not isinstance(spec, WorkerSpec):
        raise SystemExit("aigw.workers: not started by `aigw serve --workers`")
    return spec


async def _run_worker(spec: WorkerSpec) -> int:
    from aigw.server import run

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_read_pipe(lambda: _StdinWatch(stop), sys.stdin)

    def ready(gateway: Any) -> None:
        sys.stdout.write(f"ready {os.getpid()}\n")
        sys.stdout.flush()

    try:
        return await run(
            spec.config,
            worker=spec.index,
            stop=stop,
            ready=ready,
            server_overrides=spec.server_overrides,
        )
    finally:
        transport.close()


def worker_main() -> int:
    spec = _read_spec()
    logging.basicConfig(
        level=spec.log_level,
        format=f"%(asctime)s %(levelname)s %(name)s[worker {spec.index}]: %(message)s",
        stream=sys.stderr,
    )
    try:
        from aigw.loops import run as run_loop

        return run_loop(_run_worker(spec), spec.loop)
    except StartupError as exc:
        log.error("worker %d cannot start: %s", spec.index, exc)
        return 3


if __name__ == "__main__":
    # Through the importable module, so the unpickled WorkerSpec is the same class.
    from aigw.workers import worker_main as _main

    sys.exit(_main())
