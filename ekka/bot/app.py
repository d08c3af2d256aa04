"""The web server (Starlette): `POST /webhook`, `GET /healthz`, `GET /jobs/{id}` (JSON),
`GET /jobs/{id}/report` (HTML), `GET /` (recent jobs), `GET /sweeps` (the nightly sweeps' history:
JSON, or HTML for a browser), `GET /sweeps/{run}/{model}/{dtype}/report` (a regression's report).

The webhook verifies the signature (401 when it is missing or wrong), remembers the delivery
id (a replay is acknowledged and ignored, across restarts), runs the event's handler, which
only records or enqueues, and answers: 400 for a payload that is not what its event says,
never 5xx for anything a sender controls. `serve` runs it under uvicorn with a worker in the
same process.
"""

from __future__ import annotations

import html
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ekka.bot.config import BotConfig
from ekka.bot.db import Store
from ekka.bot.handlers import Context, Event, MalformedPayload, dispatch
from ekka.bot.queue import Job
from ekka.bot.signatures import verify

log = logging.getLogger("ekka.bot")
MAX_BODY = 25 * 1024 * 1024  # GitHub caps payloads at 25 MB


def create_app(config: BotConfig, store: Store, *, worker: Any = None) -> Starlette:
    """The ASGI app; `worker` (an `ekka.bot.worker.Worker`) is started and stopped with it."""
    context = Context(config, store)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        if worker is not None:
            worker.start()
        try:
            yield
        finally:
            if worker is not None:
                await run_in_threadpool(worker.shutdown)

    async def webhook(request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_BODY:
            return _error(413, "the payload is larger than 25 MB")
        if not verify(
            config.secrets.webhook_secret, body, request.headers.get("x-hub-signature-256")
        ):
            return _error(401, "missing or wrong X-Hub-Signature-256")
        name = request.headers.get("x-github-event")
        delivery = request.headers.get("x-github-delivery")
        if not name or not delivery or len(delivery) > 64 or len(name) > 64:
            return _error(400, "X-GitHub-Event and X-GitHub-Delivery are required")
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return _error(400, "the payload is not JSON")
        if not isinstance(payload, dict):
            return _error(400, "the payload is not a JSON object")
        return await run_in_threadpool(_handle, Event(name, delivery, payload))

    def _handle(event: Event) -> Response:
        if not store.record_delivery(event.delivery, event.name, event.action, event.repository):
            return JSONResponse({"status": "duplicate", "delivery": event.delivery})
        try:
            outcome = dispatch(event, context)
        except MalformedPayload as exc:
            store.delivery_outcome(event.delivery, f"malformed: {exc}")
            return _error(400, str(exc))
        store.delivery_outcome(event.delivery, outcome)
        return JSONResponse({"status": "accepted", "outcome": outcome}, status_code=202)

    async def healthz(_request: Request) -> Response:
        ok = await run_in_threadpool(_database_ok, store)
        alive = worker is None or all(t.is_alive() for t in worker.threads)
        status = 200 if ok and alive else 503
        return JSONResponse(
            {"status": "ok" if status == 200 else "unhealthy", "database": ok, "worker": alive},
            status_code=status,
        )

    async def job_json(request: Request) -> Response:
        job = await run_in_threadpool(_job, store, request.path_params["id"])
        if job is None:
            return _error(404, "no such job")
        data = job.to_json()
        executor = data["params"].get("executor")
        if isinstance(executor, dict):  # its settings (build args, cluster) stay private
            data["params"] = {**data["params"], "executor": {"kind": executor.get("kind")}}
        data["links"] = _links(config, job)
        return JSONResponse(data)

    async def job_report(request: Request) -> Response:
        job = await run_in_threadpool(_job, store, request.path_params["id"])
        if job is None or not job.report_dir:
            return _error(404, "no report for this job (yet)")
        folder = Path(job.report_dir)
        if (folder / "report.html").is_file():
            return HTMLResponse((folder / "report.html").read_text())
        if (folder / "comment.md").is_file():
            import markdown_it

            text = (folder / "comment.md").read_text()
            page = markdown_it.MarkdownIt("commonmark").enable("table").render(text)
            return HTMLResponse(f"<!doctype html><html><body>{page}</body></html>")
        return _error(404, "the report's files are gone")

    async def index(_request: Request) -> Response:
        jobs = await run_in_threadpool(store.jobs, limit=50)
        rows = "".join(_index_row(job) for job in jobs)
        return HTMLResponse(INDEX.format(rows=rows))

    async def sweeps(request: Request) -> Response:
        runs = await run_in_threadpool(_sweep_history, config, store)
        if "text/html" in request.headers.get("accept", ""):
            return HTMLResponse(_sweeps_page(runs))
        return JSONResponse({"runs": runs})

    async def sweep_report(request: Request) -> Response:
        runs = await run_in_threadpool(store.sweeps.sweep_runs, limit=10_000)
        p = request.path_params
        for run in runs:
            for result in run["results"] if run["id"] == p["run"] else []:
                if (result.model, result.dtype) == (p["model"], p["dtype"]) and result.report_dir:
                    page = Path(result.report_dir) / "report.html"
                    if page.is_file():
                        return HTMLResponse(page.read_text())
        return _error(404, "no report for this sweep result")

    return Starlette(
        routes=[
            Route("/sweeps", sweeps, methods=["GET"]),
            Route("/sweeps/{run:int}/{model}/{dtype}/report", sweep_report, methods=["GET"]),
            Route("/webhook", webhook, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/jobs/{id:int}", job_json, methods=["GET"]),
            Route("/jobs/{id:int}/report", job_report, methods=["GET"]),
            Route("/", index, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


INDEX = """<!doctype html><html><head><meta charset='utf-8'><title>Ekka bot</title></head>
<body><h1>Ekka: recent jobs</h1><table border='1' cellpadding='4'>
<tr><th>job</th><th>issue</th><th>state</th><th>progress</th><th>model</th><th>report</th></tr>
{rows}</table></body></html>"""


def _index_row(job: Job) -> str:
    report = f"<a href='jobs/{job.id}/report'>report</a>" if job.report_dir else ""
    cells = [
        f"<a href='jobs/{job.id}'>{job.id}</a>",
        html.escape(f"{job.repository}#{job.issue}"),
        job.state.value,
        html.escape(job.progress),
        html.escape(str(job.params.get("model", ""))),
        report,
    ]
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def _sweep_history(config: BotConfig, store: Store) -> list[dict[str, Any]]:
    """Each sweep run, newest first: its head and each (model, dtype): verdict, the regression
    it belongs to (with its tracking issue) and the link to its report."""
    from ekka.forge.comments import issue_url

    base = config.base_url or ""
    runs = []
    for run in store.sweeps.sweep_runs(limit=100):
        results = []
        for result in run["results"]:
            data = result.to_json()
            data.pop("report_dir")
            data["report"] = (
                f"{base}/sweeps/{run['id']}/{result.model}/{result.dtype}/report"
                if result.report_dir
                else None
            )
            regression = store.sweeps.regression(result.regression) if result.regression else None
            if regression is not None:
                data["regression"] = {
                    **regression.to_json(),
                    "issue_url": issue_url(regression.repository, regression.issue)
                    if regression.issue
                    else None,
                }
            results.append(data)
        runs.append(
            {
                "id": run["id"],
                "sweep": run["sweep"],
                "repository": run["repository"],
                "branch": run["branch"],
                "head": run["head"],
                "state": run["state"],
                "error": run["error"],
                "started_at": run["started_at"].isoformat(),
                "finished_at": run["finished_at"].isoformat() if run["finished_at"] else None,
                "results": results,
            }
        )
    return runs


SWEEPS = """<!doctype html><html><head><meta charset='utf-8'><title>Ekka sweeps</title></head>
<body><h1>Ekka: nightly sweeps</h1><table border='1' cellpadding='4'>
<tr><th>run</th><th>sweep</th><th>branch</th><th>head</th><th>state</th><th>model</th>
<th>dtype</th><th>verdict</th><th>regression</th><th>report</th></tr>
{rows}</table></body></html>"""


def _sweeps_page(runs: list[dict[str, Any]]) -> str:
    rows = []
    for run in runs:
        for result in run["results"] or [{}]:
            regression = result.get("regression") or {}
            link = regression.get("issue_url")
            cells = [
                str(run["id"]),
                html.escape(run["sweep"]),
                html.escape(f"{run['repository']}@{run['branch']}"),
                f"<code>{html.escape(run['head'][:10])}</code>",
                html.escape(run["state"]),
                html.escape(str(result.get("model", ""))),
                html.escape(str(result.get("dtype", ""))),
                html.escape(str(result.get("verdict", ""))),
                f"<a href='{html.escape(link)}'>{html.escape(regression.get('state', ''))}</a>"
                if link
                else html.escape(str(regression.get("state", ""))),
                f"<a href='{html.escape(result['report'])}'>report</a>"
                if result.get("report")
                else "",
            ]
            rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return SWEEPS.format(rows="".join(rows))


def _error(status: int, message: str) -> Response:
    return JSONResponse({"error": message}, status_code=status)


def _job(store: Store, job_id: int) -> Job | None:
    return store.job(job_id)


def _database_ok(store: Store) -> bool:
    try:
        store.jobs(limit=1)
    except Exception:  # any failure of the database is "unhealthy", never a crash
        return False
    return True


def _links(config: BotConfig, job: Job) -> dict[str, str | None]:
    from ekka.forge.comments import issue_url

    base = config.base_url or ""
    return {
        "self": f"{base}/jobs/{job.id}",
        "report": f"{base}/jobs/{job.id}/report" if job.report_dir else None,
        "comment": issue_url(job.repository, job.issue, job.reply_comment),
    }


def build(config: BotConfig, *, with_worker: bool = True) -> tuple[Starlette, Store, Any]:
    """The app, its store and (with_worker) its worker, from a configuration."""
    from ekka.bot.worker import Worker
    from ekka.forge.client import connect

    store = Store(config.database_url)
    worker = None
    if with_worker:
        worker = Worker(config, store, connect(config.github))
    return create_app(config, store, worker=worker), store, worker


def serve(config: BotConfig, host: str, port: int, *, with_worker: bool = True) -> None:
    """Run the server (and its worker) until interrupted."""
    import uvicorn

    app, store, _ = build(config, with_worker=with_worker)
    try:
        uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
    finally:
        store.close()
