"""The admin app: HTTP/JSON over the daemon's Unix socket, serving the CLI.

    GET  /status                  pid, version, uptime, config path, listen address
    GET  /lb/stats                balancer snapshot (per model and target) + uptime
    GET  /quota                   every known tenant's quota status
    GET  /quota/{tenant}          one tenant
    POST /quota/{tenant}          {"tokens": int, "period": str | null} → runtime override
    POST /quota/{tenant}/reset    zero the tenant's usage
    POST /reload                  re-read the config file

The client side is `aigw.admin_client.AdminClient` (standard library only, for fast start-up).
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from aigw.errors import ConfigError, GatewayError

if TYPE_CHECKING:
    from aigw.server import Gateway


def _reply(payload: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(payload).encode(), status=status, content_type="application/json"
    )


def _problem(message: str, status: int = 400) -> web.Response:
    return _reply({"error": {"message": message}}, status)


def build_admin_app(gateway: Gateway) -> web.Application:
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
        tokens = body.get("tokens") if isinstance(body, dict) else None
        if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
            return _problem("tokens must be an integer >= 0")
        try:
            await quota.set_limit(request.match_info["tenant"], tokens, body.get("period"))
            statuses = await quota.status(request.match_info["tenant"])
        except ValueError as exc:
            return _problem(str(exc))
        return _reply({"tenants": [s.to_dict() for s in statuses]})

    @routes.post("/quota/{tenant}/reset")
    async def quota_reset(request: web.Request) -> web.Response:
        quota = _quota(gateway)
        try:
            await quota.reset(request.match_info["tenant"])
            statuses = await quota.status(request.match_info["tenant"])
        except ValueError as exc:
            return _problem(str(exc))
        return _reply({"tenants": [s.to_dict() for s in statuses]})

    @routes.post("/reload")
    async def reload(request: web.Request) -> web.Response:
        try:
            config = await gateway.reload()
        except ConfigError as exc:
            return _problem(str(exc))
        except Exception as exc:  # a hook or provider that cannot be built: the old config stays
            return _problem(f"reload failed, keeping the running config: {exc}", 500)
        return _reply({"config": config.source, "models": list(config.models)})

    app = web.Application(middlewares=[_gateway_errors])
    app.add_routes(routes)
    return app


@web.middleware
async def _gateway_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """A store that cannot answer (redis unreachable) is a one-line 503, not a traceback."""
    try:
        response: web.StreamResponse = await handler(request)
    except GatewayError as err:
        return _problem(err.message, err.status)
    return response


def _quota(gateway: Gateway) -> Any:
    if gateway.quota is None:
        raise web.HTTPServiceUnavailable(
            body=json.dumps({"error": {"message": "quota manager not running"}}),
            content_type="application/json",
        )
    return gateway.quota
