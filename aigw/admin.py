"""The admin app: HTTP/JSON over the daemon's Unix socket, serving the CLI.

    GET  /status                  pid, version, uptime, config path, listen address
    GET  /lb/stats                balancer snapshot (per model and target) + uptime
    GET  /quota                   every known tenant's quota status (tokens, cost, budget)
    GET  /quota/{tenant}          one tenant
    POST /quota/{tenant}          {"tokens": int, "period": str | null} → runtime override;
                                  {"usd": "20.50", "period": str | null} → runtime money
                                  budget (a decimal string; 0 = none); no period: the tenant
                                  keeps the one it has
    POST /quota/{tenant}/reset    zero the tenant's usage and spending (404 for a tenant
                                  nobody knows)
    GET  /usage                   the usage history: ?since=24h&by=hour|day|tenant|model
                                  &tenant=T&model=M → {"buckets": [...], "totals": {...}}
                                  (404 when usage.enabled is false)
    POST /reload                  re-read the config file

Every error is JSON, `{"error": {"message": "..."}}` with a 4xx/5xx status, never aiohttp's plain
text: the CLI prints the message as its one line. The client side is
`aigw.admin_client.AdminClient` (standard library only, for fast start-up).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import time
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from aigw.config import MAX_QUOTA_TOKENS, Config
from aigw.errors import ConfigError, GatewayError, ServiceUnavailableError, StartupError
from aigw.limits import Limits
from aigw.limits.quota import QuotaManager
from aigw.pricing import parse_usd, to_nanos
from aigw.private_socket import unsafe_directory
from aigw.runtime import Runtime
from aigw.usage_history import UsageQuery, hour_of, summarise


class AdminTarget(Protocol):
    """What the admin app serves from (`aigw.server.Gateway` is one)."""

    config: Config
    runtime: Runtime
    limits: Limits | None
    started: float

    def status(self) -> dict[str, Any]: ...

    async def reload(self, path: str | None = None) -> Config: ...


log = logging.getLogger("aigw")

#: The largest admin request body: a quota call is a few dozen bytes.
MAX_ADMIN_BODY = 64 * 1024


def _reply(payload: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(payload).encode(), status=status, content_type="application/json"
    )


def _problem(message: str, status: int = 400) -> web.Response:
    return _reply({"error": {"message": message}}, status)


def build_admin_app(gateway: AdminTarget) -> web.Application:
    routes = web.RouteTableDef()

    @routes.get("/status")
    async def status(request: web.Request) -> web.Response:
        return _reply(gateway.status())

    @routes.get("/lb/stats")
    async def lb_stats(request: web.Request) -> web.Response:
        payload = gateway.runtime.balancers.snapshot().to_dict()
        payload["uptime"] = time.monotonic() - gateway.started
        return _reply(payload)

    @routes.get("/quota")
    async def quota_list(request: web.Request) -> web.Response:
        quota = _quota(gateway)
        statuses = await quota.status(None)
        return _reply({"tenants": [s.to_dict() for s in statuses]})

    @routes.get("/quota/{tenant}")
    async def quota_get(request: web.Request) -> web.Response:
        quota = _quota(gateway)
        try:
            statuses = await quota.status(request.match_info["tenant"])
        except ValueError as exc:
            return _problem(str(exc))
        return _reply({"tenants": [s.to_dict() for s in statuses]})

    @routes.post("/quota/{tenant}")
    async def quota_set(request: web.Request) -> web.Response:
        quota = _quota(gateway)
        try:
            body = await request.json()
        except ValueError:
            return _problem("body must be JSON")
        if not isinstance(body, dict):
            return _problem(
                'body must be a JSON object: {"tokens": N, "period": P}'
                ' or {"usd": "X", "period": P}'
            )
        unknown = sorted(set(body) - {"tokens", "usd", "period"})
        if unknown:
            return _problem(f"unknown field {unknown[0][:40]!r}: use tokens or usd, and period")
        if ("tokens" in body) == ("usd" in body):
            return _problem("give either tokens or usd (a money budget), not both")
        period = body.get("period")
        if period is not None and not isinstance(period, str):
            return _problem("period must be a string or null")
        tenant = request.match_info["tenant"]
        if "usd" in body:
            usd = body["usd"]
            # A decimal string keeps the amount exact; a JSON number goes through a float.
            if isinstance(usd, bool) or not isinstance(usd, str | int):
                return _problem('usd must be an amount as a decimal string, e.g. "20.50"')
            try:
                nanos = to_nanos(parse_usd(str(usd)))
                await quota.set_budget(tenant, nanos, period)
                statuses = await quota.status(tenant)
            except ValueError as exc:
                return _problem(str(exc))
            return _reply({"tenants": [s.to_dict() for s in statuses]})
        tokens = body.get("tokens")
        if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
            return _problem("tokens must be an integer >= 0")
        if tokens > MAX_QUOTA_TOKENS:
            return _problem(f"tokens must be at most {MAX_QUOTA_TOKENS:,} (10**15)")
        try:
            await quota.set_limit(tenant, tokens, period)
            statuses = await quota.status(tenant)
        except ValueError as exc:
            return _problem(str(exc))
        return _reply({"tenants": [s.to_dict() for s in statuses]})

    @routes.post("/quota/{tenant}/reset")
    async def quota_reset(request: web.Request) -> web.Response:
        quota = _quota(gateway)
        tenant = request.match_info["tenant"]
        known = {key.tenant for key in gateway.config.auth.keys}
        try:
            await quota.reset(tenant, known=known)
            statuses = await quota.status(tenant)
        except ValueError as exc:
            return _problem(str(exc))
        return _reply({"tenants": [s.to_dict() for s in statuses]})

    @routes.get("/usage")
    async def usage(request: web.Request) -> web.Response:
        if not gateway.config.usage.enabled:
            return _problem(
                "the usage history is off (usage.enabled: false in the daemon's config)", 404
            )
        try:
            query = UsageQuery.from_params(request.query)
        except ValueError as exc:
            return _problem(str(exc))
        limits = _limits(gateway)
        now = time.time()
        since = now - query.seconds
        # What the store holds, and what this instance has not flushed yet.
        rows = await limits.quota.store.read_history(hour_of(since), query.tenant, query.model)
        rows += limits.history.rows()
        report = summarise(rows, since, query.by, query.tenant, query.model, until=now)
        return _reply(report.to_dict())

    @routes.post("/reload")
    async def reload(request: web.Request) -> web.Response:
        try:
            config = await gateway.reload()
        except ConfigError as exc:
            return _problem(f"reload failed, keeping the running config: {exc}")
        except Exception as exc:  # a hook or provider that cannot be built: the old config stays
            return _problem(f"reload failed, keeping the running config: {exc}", 500)
        return _reply(
            {
                "config": config.source,
                "models": list(config.models),
                "providers": list(config.providers),
                "warnings": [w.format() for w in config.warnings],
            }
        )

    app = web.Application(middlewares=[_json_errors], client_max_size=MAX_ADMIN_BODY)
    app.add_routes(routes)
    return app


@web.middleware
async def _json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every failure is a JSON error with one line for the CLI, never aiohttp's plain text or a
    traceback: a store that cannot answer (redis unreachable) is a 503, an unknown endpoint a
    404, a body too large a 413."""
    try:
        response: web.StreamResponse = await handler(request)
    except GatewayError as err:
        return _problem(err.message, err.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = {
            404: f"no admin endpoint {request.method} {request.path}",
            405: f"{request.method} is not allowed on {request.path}",
            413: f"request body too large (at most {MAX_ADMIN_BODY:,} bytes)",
        }.get(exc.status, exc.reason)
        problem = _problem(message, exc.status)
        if "Allow" in exc.headers:
            problem.headers["Allow"] = exc.headers["Allow"]
        return problem
    except Exception:  # a bug: log it, answer one line
        log.exception("admin %s %s failed", request.method, request.path)
        return _problem("internal error in the daemon (its log has the details)", 500)
    return response


def _limits(gateway: AdminTarget) -> Limits:
    if gateway.limits is None:
        raise ServiceUnavailableError("quota manager not running")
    return gateway.limits


def _quota(gateway: AdminTarget) -> QuotaManager:
    return _limits(gateway).quota


def claim_admin_socket(path: Path) -> None:
    """Make `path` free for a new admin socket, in a private directory (made 0700 if missing).

    Refuses (StartupError) when the directory, or one above it, belongs to or is writable by
    another user (`aigw.private_socket`), when a live daemon answers there, when the path is
    another user's socket or not a socket at all (never delete what is not ours); removes our
    own stale socket."""
    hint = "give this daemon another path with --admin-socket PATH"
    directory = path.parent
    if (reason := unsafe_directory(directory)) is not None:
        raise StartupError(f"unsafe admin socket directory: {reason}; {hint}")
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise StartupError(
            f"cannot create the admin socket {path}: {exc.strerror or exc}; {hint}"
        ) from None
    if (reason := unsafe_directory(directory)) is not None:  # made by someone else meanwhile?
        raise StartupError(f"unsafe admin socket directory: {reason}; {hint}")
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StartupError(f"cannot check the admin socket {path}: {exc.strerror}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise StartupError(f"{path} exists and is not a socket; not removing it ({hint})")
    if st.st_uid != os.geteuid():
        raise StartupError(
            f"{path} is another user's socket (uid {st.st_uid}); not using or removing it ({hint})"
        )
    if _socket_alive(path):
        raise StartupError(
            f"another aigw daemon is already running on the admin socket {path}; "
            f"stop it, or {hint} (and pass the same --admin-socket to the client commands)"
        )
    try:
        path.unlink()  # stale: its daemon died without cleaning up
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StartupError(
            f"cannot remove the stale admin socket {path}: {exc.strerror}; {hint}"
        ) from None


def _socket_alive(path: Path) -> bool:
    """Whether a process accepts connections on the socket at `path` (a stale one refuses)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(str(path))
        except OSError:
            return False
        return True
