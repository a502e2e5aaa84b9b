"""The dashboard's HTML pages (Jinja2, no script, no front-end build) and their action buttons.

Pages: ``/`` (health, counts, received series and their state), ``/series/{key}``,
``/jobs`` (stages and timings), ``/jobs/{id}`` (story, outputs, deliveries, requeue),
``/deliveries`` (outbox, last errors, retry; destinations, pause and resume), ``/config``,
``/retrieve`` (fetch a study from a PACS, as ``spine-node retrieve``), ``/jobs/{id}/qc.png``.
Buttons are plain HTML forms that POST and are answered with a redirect (303) to the page
that shows the result; a refused action comes back as the page with a message.
"""
from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from storage.errors import NotFoundError, StateError
from storage.notifications import Notifications

from dicom_node.web import api
from dicom_node.web.context import WebContext
from dicom_node.web.health import health
from dicom_node.errors import NodeError
from dicom_node.web.patient import patient_of
from dicom_node.web.qc import qc_file, qc_png

TEMPLATES = Path(__file__).with_name("templates")
STAGE_ORDER = ("load", "preprocess", "network", "postprocess", "resample_back", "measure", "lesions",
               "analyse_wall", "seg", "sr", "write")


def make_templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(TEMPLATES))
    templates.env.filters["when"] = _when
    templates.env.filters["seconds"] = _seconds
    templates.env.filters["urlpart"] = lambda value: quote(str(value), safe="")
    templates.env.filters["setting"] = _setting
    templates.env.globals["stage_order"] = STAGE_ORDER
    return templates


def _when(value: str | None) -> str:
    """ISO time as 'YYYY-MM-DD HH:MM:SS' UTC (empty for none)."""
    return value[:19].replace("T", " ") if value else ""


def _setting(value) -> str:
    """A setting's value as a person writes it: lists comma-separated, tables as KEY = VALUE, none as empty."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    if isinstance(value, dict):
        return ", ".join(f"{k} = {v}" for k, v in value.items())
    return str(value)


def _seconds(value) -> str:
    if not isinstance(value, (int, float)):
        return ""
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"


def stages(timings: dict) -> list[tuple[str, float]]:
    """The numeric stage timings in pipeline order (unknown stages after, by name)."""
    numeric = {k: float(v) for k, v in (timings or {}).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    known = [(k, numeric.pop(k)) for k in STAGE_ORDER if k in numeric]
    return known + sorted(numeric.items())


def routes(context: WebContext) -> list[Route]:
    templates = make_templates()
    ops = context.operations
    show_patient = context.config.web_show_patient

    def page(request: Request, name: str, status: int = 200, **values):
        values.setdefault("message", request.query_params.get("message"))
        return templates.TemplateResponse(request, name, {"node": context.config.ae_title, "active": name,
                                                          "show_patient": show_patient, **values},
                                          status_code=status)

    def not_found(request: Request, what: str):
        return page(request, "not_found.html", status=404, what=what)

    def patients(rows: list[dict]) -> dict:
        return {r["series_key"]: patient_of(context.store, r["series_key"], show_patient) for r in rows} \
            if show_patient else {}

    def overview(request: Request):
        ok, checks = health(context)
        counts = ops.counts()
        series = ops.series_overview(100)
        return page(request, "overview.html", healthy=ok, checks=checks, counts=counts, series=series,
                    patients=patients(series))

    def series_page(request: Request):
        try:
            detail = ops.series_detail(request.path_params["key"])
        except NotFoundError:
            return not_found(request, f"series {request.path_params['key']}")
        return page(request, "series.html", series=detail, patients=patients([detail]))

    def jobs(request: Request):
        rows = ops.jobs_overview(200)
        for row in rows:
            row["stages"] = stages(row["timings"])
        return page(request, "jobs.html", jobs=rows)

    def job(request: Request):
        try:
            detail = context.store.job_detail(int(request.path_params["job_id"]))
        except (NotFoundError, ValueError):
            return not_found(request, f"job {request.path_params['job_id']}")
        detail["stages"] = stages(detail["timings"])
        return page(request, "job.html", job=detail, patients=patients([detail]),
                    paused=ops.paused_destinations(),
                    has_qc=qc_file(context.store, context.files, detail["id"]) is not None)

    def qc(request: Request):
        job_id = request.path_params["job_id"]
        try:
            path = qc_file(context.store, context.files, job_id)
        except NotFoundError:
            path = None
        if path is None:
            return not_found(request, f"QC picture for job {job_id}")
        return Response(qc_png(path), media_type="image/png")

    def retrieve_page(request: Request):
        return page(request, "retrieve.html", recent=context.retrievals.recent,
                    node_address=context.retrievals.node_address())

    async def retrieve_start(request: Request):
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()}
        try:
            context.retrievals.start(form.get("source", ""), form.get("key", "accession"), form.get("value", ""),
                                     form.get("method", "move"), form.get("date"))
        except NodeError as exc:
            return RedirectResponse(f"/retrieve?message={quote(str(exc))}", status_code=303)
        return RedirectResponse(f"/retrieve?message={quote('retrieve started')}", status_code=303)

    def deliveries(request: Request):
        return page(request, "deliveries.html", deliveries=ops.deliveries_overview(200),
                    destinations=ops.destinations(api._configured(context)),
                    notifications=Notifications(context.store.db).overview(50) if context.config.webhooks else None)

    def config(request: Request):
        return page(request, "config.html", config=api.configuration(context))

    def act(action, back: str):
        """Run an action and redirect to ``back`` (with a message when it was refused)."""
        try:
            result = action()
        except (NotFoundError, StateError) as exc:
            return RedirectResponse(f"{back}?message={quote(str(exc))}", status_code=303)
        return RedirectResponse(back(result) if callable(back) else back, status_code=303)

    def requeue(request: Request):
        job_id = int(request.path_params["job_id"])
        try:
            result = api.requeue(context, job_id, api.who(request))
        except NotFoundError:
            return not_found(request, f"job {job_id}")
        except StateError as exc:
            return RedirectResponse(f"/jobs/{job_id}?message={quote(str(exc))}", status_code=303)
        return RedirectResponse(f"/jobs/{result['job_id']}?message={quote(f'requeued from job {job_id}')}",
                                status_code=303)

    def retry(request: Request):
        delivery_id = int(request.path_params["delivery_id"])
        return act(lambda: api.retry(context, delivery_id, api.who(request)), "/deliveries")

    def pause(request: Request):
        return act(lambda: api.pause(context, request.path_params["destination"]), "/deliveries")

    def resume(request: Request):
        return act(lambda: api.resume(context, request.path_params["destination"]), "/deliveries")

    return [
        Route("/", overview),
        Route("/series/{key}", series_page),
        Route("/jobs", jobs),
        Route("/jobs/{job_id}", job),
        Route("/jobs/{job_id:int}/requeue", requeue, methods=["POST"]),
        Route("/deliveries", deliveries),
        Route("/deliveries/{delivery_id:int}/retry", retry, methods=["POST"]),
        Route("/destinations/{destination:path}/pause", pause, methods=["POST"]),
        Route("/destinations/{destination:path}/resume", resume, methods=["POST"]),
        Route("/config", config),
        Route("/jobs/{job_id:int}/qc.png", qc),
        Route("/retrieve", retrieve_page),
        Route("/retrieve", retrieve_start, methods=["POST"]),
    ]
