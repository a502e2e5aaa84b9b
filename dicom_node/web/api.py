"""The JSON API under ``/api/`` and the operator actions it shares with the pages.

Reads: ``GET /api/series``, ``/api/series/{key}``, ``/api/jobs``, ``/api/jobs/{id}``,
``/api/deliveries``, ``/api/destinations``, ``/api/config``, ``/api/disk``.
Actions (POST): ``/api/jobs/{id}/requeue``, ``/api/deliveries/{id}/retry``,
``/api/destinations/{destination}/pause`` and ``.../resume`` (the destination as written in
the configuration, URL-encoded). An unknown id is 404, an action the state forbids 409,
both with ``{"error": "..."}``.
"""
from __future__ import annotations

from dataclasses import asdict

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from storage.errors import NotFoundError, StateError

from dicom_node.web.context import WebContext
from dicom_node.web.patient import patient_of

LIST_LIMIT = 500


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _int(request: Request, name: str) -> int:
    return int(request.path_params[name])


def _limit(request: Request) -> int:
    try:
        return max(1, min(LIST_LIMIT, int(request.query_params.get("limit", "200"))))
    except ValueError:
        return 200


def configuration(context: WebContext) -> dict:
    """The configuration in force, as shown on the config page (secrets replaced by 'set')."""
    config = context.config
    hidden = {"http_token", "http_basic_auth"}
    values = {}
    for name in config.__dataclass_fields__:
        if name in ("warnings",):
            continue
        value = getattr(config, name)
        if name in hidden:
            value = "set" if value else None
        elif name == "webhooks":  # a URL may carry a secret: only how many
            value = f"{len(value)} URL(s)" if value else None
        elif name == "database_url":
            from sqlalchemy.engine import make_url

            value = make_url(value).render_as_string(hide_password=True)
        elif name in ("destinations", "allowed_aes"):
            value = [str(v) for v in value]
        elif name == "peers":
            value = {k: str(v) for k, v in value.items()}
        elif name == "destination_profiles":  # destination -> what it gets
            value = {str(k): {**asdict(v), "outputs": list(v.outputs)} for k, v in value.items()}
        elif value is not None and not isinstance(value, (str, int, float, bool, dict)):
            value = str(value) if not hasattr(value, "items") else dict(value)
        values[name] = value
    return {"settings": values, "summary": config.describe(), "warnings": list(config.warnings)}


# --- actions, shared with the pages ---------------------------------------------------------------------

def requeue(context: WebContext, job_id: int, who: str) -> dict:
    job = context.operations.requeue_job(job_id, who)
    context.wake_dispatch()
    return {"job_id": job.id, "state": job.state, "requeued_from": job_id}


def retry(context: WebContext, delivery_id: int, who: str) -> dict:
    context.operations.retry_delivery(delivery_id, who)
    context.wake_delivery()
    return {"delivery_id": delivery_id, "due": "now"}


def pause(context: WebContext, destination: str) -> dict:
    context.operations.pause_destination(destination, "paused from the dashboard")
    return {"destination": destination, "paused": True}


def resume(context: WebContext, destination: str) -> dict:
    context.operations.resume_destination(destination)
    context.wake_delivery()
    return {"destination": destination, "paused": False}


def who(request: Request) -> str:
    """Who asked, for the job's story: the basic-auth user or the client address."""
    user = request.scope.get("spine_node_user")
    host = request.client.host if request.client else "?"
    return f"{user} ({host})" if user else f"the dashboard ({host})"


# --- handlers -------------------------------------------------------------------------------------------

def routes(context: WebContext) -> list[Route]:
    ops = context.operations

    def answer(call):
        try:
            return JSONResponse(call())
        except NotFoundError as exc:
            return error(404, str(exc))
        except StateError as exc:
            return error(409, str(exc))
        except ValueError:
            return error(404, "not a number")

    def series_list(request: Request):
        return answer(lambda: {"series": ops.series_overview(_limit(request))})

    def series_one(request: Request):
        def read():
            detail = ops.series_detail(request.path_params["key"])
            if context.config.web_show_patient:
                detail["patient"] = patient_of(context.store, detail["series_key"], True)
            return detail
        return answer(read)

    def jobs_list(request: Request):
        return answer(lambda: {"jobs": ops.jobs_overview(_limit(request))})

    def job_one(request: Request):
        return answer(lambda: context.store.job_detail(_int(request, "job_id")))

    def deliveries(request: Request):
        state = request.query_params.get("state") or None
        return answer(lambda: {"deliveries": ops.deliveries_overview(_limit(request), state)})

    def destinations(request: Request):
        return answer(lambda: {"destinations": ops.destinations(_configured(context))})

    def config(request: Request):
        return JSONResponse(configuration(context))

    def disk(request: Request):
        space = context.guard.space()
        return JSONResponse({"free_bytes": space.free_bytes, "total_bytes": space.total_bytes,
                             "min_free_bytes": space.min_free_bytes, "ok": space.ok})

    def requeue_job(request: Request):
        return answer(lambda: requeue(context, _int(request, "job_id"), who(request)))

    def retry_delivery(request: Request):
        return answer(lambda: retry(context, _int(request, "delivery_id"), who(request)))

    def pause_destination(request: Request):
        return answer(lambda: pause(context, request.path_params["destination"]))

    def resume_destination(request: Request):
        return answer(lambda: resume(context, request.path_params["destination"]))

    return [
        Route("/api/series", series_list),
        Route("/api/series/{key}", series_one),
        Route("/api/jobs", jobs_list),
        Route("/api/jobs/{job_id}", job_one),
        Route("/api/jobs/{job_id}/requeue", requeue_job, methods=["POST"]),
        Route("/api/deliveries", deliveries),
        Route("/api/deliveries/{delivery_id}/retry", retry_delivery, methods=["POST"]),
        Route("/api/destinations", destinations),
        Route("/api/destinations/{destination:path}/pause", pause_destination, methods=["POST"]),
        Route("/api/destinations/{destination:path}/resume", resume_destination, methods=["POST"]),
        Route("/api/config", config),
        Route("/api/disk", disk),
    ]


def _configured(context: WebContext) -> list[str]:
    return [str(d) for d in context.config.destinations] + [str(p) for p in context.config.peers.values()]
