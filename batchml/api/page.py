"""The web page at ``/`` (issue 18 item 9) and the JSON endpoints under ``/api/`` it reads and
writes: the runs with their metrics, the registered models with their versions, aliases and
alias history, moving an alias (compare-and-set, with a token), "try it" against the served
model, recent files with their state and quarantine reasons, rows scored per hour.

The HTML is rendered on the server (Jinja2, autoescaped) from the same data the JSON endpoints
answer; a little vanilla JavaScript (``static/page.js``) sorts the runs table, highlights the
best run by a metric, moves aliases and posts "try it" to ``/invocations``. Nothing is fetched
from elsewhere: the script and the stylesheet are served from memory by fixed routes, and a
Content-Security-Policy keeps the page to its own origin.

Security (item 10): a change (moving an alias) needs ``Authorization: Bearer <token>`` matching
``BATCHML_API_TOKEN`` (``settings.api_token``, compared in constant time); with no token
configured every change is refused (403) and the page shows itself read-only. Request values
reach the catalog only as parameters of its object API (model and alias names are checked by
the registry first) and never a path or SQL text. Bad input is a 400 (401/403 auth, 404 unknown
model or version, 409 a stale ``expect``) with ``{"error_code": ..., "message": ...}``.

Reads go through the catalog's object API only (no SQL here, see
``tests/test_catalog_backend.py``): the runs from :meth:`Catalog.search_runs`, the files from
:meth:`Ledger.files`, the batches from :meth:`Ledger.recent_batches`, rows and positives per
hour from :meth:`Ledger.scored_by_hour`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from ..catalog import Ledger
from ..catalog.registry import check_registry_name
from ..errors import AliasConflict, BatchMLError, RegistryError

HERE = Path(__file__).resolve().parent
RUNS_LIMIT = 200
FILES_LIMIT = 50
BATCHES_LIMIT = 20
DRIFT_BATCHES = 5
HOURS_DEFAULT, HOURS_MAX = 24, 168
MOVE_BODY_LIMIT = 16 * 1024
REASON_MAX = 500
LOWER_IS_BETTER = frozenset({"loss", "error", "errors", "brier", "rmse", "mse", "mae",
                             "mape"})
"""Metric name parts that mean lower is better (``log_loss``, ``val_loss``, ``error_rate``,
``brier_score``, ``rmse`` ...); every other metric is higher-is-better."""
PREFERRED_METRICS = ("roc_auc", "balanced_accuracy", "f1_macro", "accuracy", "f1")
"""The metric the picker starts with: the first of these the runs have, else the first."""
TOKEN_HINT = ("Set BATCHML_API_TOKEN in the server's environment (or api_token in its "
              "settings) and restart it to move aliases from this page.")

_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
                               "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class PageState(Protocol):
    """What the page needs of :class:`batchml.api.app.ApiState` (named here by shape: the
    app imports this module, not the other way round)."""

    settings: Any
    catalog: Any
    ref: Any
    follower: Any


def lower_is_better(metric: str) -> bool:
    """Is a lower value of ``metric`` better (losses, errors)? Domain-free, by its name."""
    parts = [p for p in re.split(r"[^a-z0-9]+", metric.lower()) if p]
    return any(p in LOWER_IS_BETTER or p.endswith("loss") for p in parts)


# --- reads ------------------------------------------------------------------------------------


def _iso(value: Any) -> str | None:
    """A timestamp as ISO 8601 in UTC (None stays None)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if hasattr(value, "to_pydatetime"):
        if str(value) == "NaT":
            return None
        value = value.to_pydatetime()
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC).isoformat(timespec="seconds")
    return str(value)


def _number(value: Any) -> float | None:
    """A finite float, else None (JSON has no NaN)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value)


def _int(value: Any) -> int | None:
    number = _number(value)
    return None if number is None else int(number)


def runs_view(catalog: Any, flow: str) -> dict[str, Any]:
    """The runs of ``flow`` (newest first, at most :data:`RUNS_LIMIT`) with every metric they
    logged, the versions registered from them, and the metric the picker starts with."""
    frame = catalog.search_runs(flow)
    if len(frame):
        frame = frame.sort_values("started_at", ascending=False).head(RUNS_LIMIT)
    # the usual metrics first, then the run's other ones, then the per-candidate ones
    found = [c.removeprefix("metrics.") for c in frame.columns if c.startswith("metrics.")]
    names = sorted(found, key=lambda n: ("." in n, n not in PREFERRED_METRICS,
                                         PREFERRED_METRICS.index(n)
                                         if n in PREFERRED_METRICS else 0, n))
    columns = [f"metrics.{n}" for n in names]
    registered: dict[str, list[str]] = {}
    for model in catalog.registered_models():
        for version in model.versions():
            registered.setdefault(version.run_id, []).append(version.ref)
    runs = []
    for row in frame.to_dict("records"):
        tags = _text(row.get("tags"))
        runs.append({
            "run_id": row["run_id"], "status": row["status"],
            "started_at": _iso(row.get("started_at")), "ended_at": _iso(row.get("ended_at")),
            "tags": sorted(t for t in (tags or "").split(",") if t),
            "versions": registered.get(row["run_id"], []),
            "metrics": {n: _number(row.get(c)) for n, c in zip(names, columns, strict=True)},
        })
    metrics = [{"name": n, "better": "lower" if lower_is_better(n) else "higher",
                "detail": "." in n} for n in names]
    default = next((m for m in PREFERRED_METRICS if m in names),
                   next((n for n in names if "." not in n), names[0] if names else None))
    return {"flow": flow, "metrics": metrics, "runs": runs, "default_metric": default,
            "best": best_run(runs, default)}


def best_run(runs: list[dict[str, Any]], metric: str | None) -> dict[str, Any] | None:
    """The run with the best value of ``metric`` (the first of equals, newest first), or None
    when no run has it."""
    if metric is None:
        return None
    scored = [(r["metrics"].get(metric), i) for i, r in enumerate(runs)]
    scored = [(v, i) for v, i in scored if v is not None]
    if not scored:
        return None
    sign = 1 if lower_is_better(metric) else -1
    value, index = min(scored, key=lambda vi: (sign * vi[0], vi[1]))
    return {"metric": metric, "run_id": runs[index]["run_id"], "value": value,
            "better": "lower" if sign == 1 else "higher"}


def models_view(catalog: Any) -> list[dict[str, Any]]:
    """Every registered model: its versions (with the aliases on each), aliases and the
    history of their moves (newest first)."""
    out = []
    for model in catalog.registered_models():
        aliases = model.aliases
        held: dict[int, list[str]] = {}
        for alias, number in sorted(aliases.items()):
            held.setdefault(number, []).append(alias)
        versions = [{"version": v.version, "ref": v.ref, "run_id": v.run_id,
                     "model": v.model_name, "description": v.description,
                     "created_at": _iso(v.created_at), "created_by": v.created_by,
                     "aliases": held.get(v.version, [])} for v in model.versions()]
        history = [{"alias": m.alias, "seq": m.seq, "from_version": m.from_version,
                    "to_version": m.to_version, "run_id": m.run_id,
                    "valid_from": _iso(m.valid_from), "valid_to": _iso(m.valid_to),
                    "moved_by": m.moved_by, "reason": m.reason}
                   for m in reversed(model.history())]
        out.append({"name": model.name, "description": model.description,
                    "aliases": dict(sorted(aliases.items())), "versions": versions,
                    "history": history, **live_view(catalog, model.name)})
    return out


def live_view(catalog: Any, name: str) -> dict[str, Any]:
    """A registered model's live performance from late labels (per version, role and day, the
    last :data:`LIVE_LIMIT` rows) and its latest shadow batches (champion against
    challenger)."""
    from ..labels import live_performance
    from ..shadow import shadow_batches

    live = [{**r, "day": _iso(r["day"]), "n": _int(r["n"]), "accuracy": _number(r["accuracy"]),
             "auc": _number(r["auc"]), "calibration_error": _number(r["calibration_error"])}
            for r in live_performance(catalog, name)[:LIVE_LIMIT]]
    shadow = [{"batch_id": r["batch_id"], "champion_version": _int(r["champion_version"]),
               "challenger_version": _int(r["challenger_version"]), "files": _int(r["files"]),
               "failed": _int(r["failed"]), "rows": _int(r["rows"]),
               "agreement": _number(r["agreement"]), "psi": _number(r["psi"]),
               "recorded_at": _iso(r["recorded_at"])}
              for r in shadow_batches(catalog, name, limit=SHADOW_LIMIT)]
    return {"live": live, "shadow": shadow}


LIVE_LIMIT = 30
SHADOW_LIMIT = 10


def activity_view(catalog: Any) -> dict[str, Any]:
    """Files per state, the most recent batches (at most :data:`BATCHES_LIMIT`) with their
    files' outcomes, and the most recent files (at most :data:`FILES_LIMIT`) with their
    state, rows, model run and error (a quarantined file's reason)."""
    ledger = Ledger(catalog)
    counts = ledger.counts()
    files = [{"file_id": r["file_id"], "source_uri": r["source_uri"],
              "name": str(r["source_uri"]).rstrip("/").rpartition("/")[2] or r["source_uri"],
              "state": r["state"], "attempts": _int(r.get("attempts")) or 0,
              "rows": _int(r.get("rows")), "model_run_id": _text(r.get("model_run_id")),
              "output_uri": _text(r.get("output_uri")), "error": _text(r.get("error")),
              "updated_at": _iso(r.get("updated_at"))}
             for r in ledger.files(limit=FILES_LIMIT).to_dict("records")]
    batches = [{"batch_id": r["batch_id"], "model_run_id": _text(r.get("model_run_id")),
                "status": r["status"], "started_at": _iso(r.get("started_at")),
                "ended_at": _iso(r.get("ended_at")), "files": _int(r.get("files")) or 0,
                "rows": _int(r.get("rows")) or 0,
                "duration_ms": _number(r.get("duration_ms")), "error": _text(r.get("error")),
                "scored": _int(r.get("scored")) or 0,
                "quarantined": _int(r.get("quarantined")) or 0,
                "failed": _int(r.get("failed")) or 0, "positives": _int(r.get("positives"))}
               for r in ledger.recent_batches(BATCHES_LIMIT).to_dict("records")]
    return {"counts": counts, "files": files, "batches": batches}


def drift_view(catalog: Any) -> list[dict[str, Any]]:
    """The drift metrics of the last :data:`DRIFT_BATCHES` batches measured
    (:mod:`batchml.drift`): newest batch first, its alerts first."""
    return [{"batch_id": r["batch_id"], "created_at": _iso(r["created_at"]),
             "feature": r["feature"], "kind": r["kind"], "metric": r["metric"],
             "value": _number(r["value"]), "threshold": _number(r["threshold"]),
             "alert": bool(r["alert"]), "note": _text(r["note"]), "rows": _int(r["rows"])}
            for r in Ledger(catalog).batch_drift(batches=DRIFT_BATCHES)]


def hourly_view(catalog: Any, hours: int, *, now: datetime | None = None) -> dict[str, Any]:
    """Rows scored per hour over the last ``hours`` hours (UTC, oldest first, empty hours
    included), the positives among them and the positive rate (None for an hour without
    rows or whose files recorded no positives)."""
    end = (now or datetime.now(UTC)).astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    start = end - timedelta(hours=hours - 1)
    buckets: dict[str, dict[str, Any]] = {
        _iso(start + timedelta(hours=i)) or "": {"rows": 0, "positives": None}
        for i in range(hours)}
    for row in Ledger(catalog).scored_by_hour(start).to_dict("records"):
        bucket = buckets.get(_iso(row.get("hour")) or "")
        if bucket is not None:
            bucket["rows"] = _int(row.get("rows")) or 0
            bucket["positives"] = _int(row.get("positives"))
    return {"hours": hours,
            "buckets": [{"hour": h, "rows": b["rows"], "positives": b["positives"],
                         "positive_rate": None if b["positives"] is None or not b["rows"]
                         else b["positives"] / b["rows"]} for h, b in buckets.items()]}


def serving_view(state: PageState) -> dict[str, Any]:
    """The served model: the reference, the version serving now and its signature (what the
    "try it" form is made from). Raises BatchMLError when there is no model to serve."""
    served = state.follower.current()
    sig = served.model.signature
    return {"reference": str(state.ref), "serving": served.label,
            "run_id": served.model.run_id, "model": served.model.name,
            "flavor": served.model.flavor,
            "inputs": [s.to_dict() for s in sig.inputs],
            "outputs": [s.to_dict() for s in sig.outputs],
            "classes": [c if isinstance(c, int | str) else str(c) for c in sig.classes]}


def chart(hourly: dict[str, Any], *, width: int = 1100, height: int = 220) -> dict[str, Any]:
    """The geometry of the rows-per-hour chart (bars) and the positive rate (a line on its
    own 0-100 % axis), drawn as SVG by the template: no script, no library."""
    left, right, top, bottom = 48, 44, 12, 28
    buckets = hourly["buckets"]
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max((b["rows"] for b in buckets), default=0)
    scale = _nice(peak)
    slot = plot_w / max(len(buckets), 1)
    bars, points, dots = [], [], []
    for i, b in enumerate(buckets):
        h = 0.0 if not scale else plot_h * b["rows"] / scale
        x = left + i * slot
        label = (b["hour"] or "")[:13].replace("T", " ") + ":00"
        bars.append({"x": round(x + slot * 0.1, 1), "y": round(top + plot_h - h, 1),
                     "w": round(slot * 0.8, 1), "h": round(h, 1), "rows": b["rows"],
                     "hour": label, "rate": b["positive_rate"]})
        if b["positive_rate"] is not None:
            cx, cy = round(x + slot / 2, 1), round(top + plot_h * (1 - b["positive_rate"]), 1)
            points.append(f"{cx},{cy}")
            dots.append({"x": cx, "y": cy, "rate": b["positive_rate"], "hour": label})
    ticks = [{"y": round(top + plot_h * (1 - f), 1), "label": f"{scale * f:,.0f}"}
             for f in (0, 0.5, 1)] if scale else [{"y": top + plot_h, "label": "0"}]
    hours_shown = [{"x": round(left + i * slot + slot / 2, 1),
                    "label": (b["hour"] or "")[11:13] + "h"}
                   for i, b in enumerate(buckets) if i % max(1, len(buckets) // 8) == 0]
    return {"width": width, "height": height, "left": left, "right": width - right,
            "top": top, "bottom": top + plot_h, "bars": bars, "line": " ".join(points),
            "dots": dots,
            "ticks": ticks, "hours": hours_shown, "total": sum(b["rows"] for b in buckets)}


def _nice(peak: float) -> float:
    """The smallest 1/2/5 x 10^k at or above ``peak`` (0 for 0)."""
    if peak <= 0:
        return 0
    power = 10 ** math.floor(math.log10(peak))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= peak)


# --- HTTP -------------------------------------------------------------------------------------


def _error(status: int, message: str, code: str, **extra: Any) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error_code": code, "message": message, **extra},
                        status_code=status, headers=headers)


def writable(settings: Any) -> bool:
    """May this server change state (is a token configured)?"""
    token = settings.api_token
    return token is not None and bool(token.get_secret_value())


def check_token(settings: Any, authorization: str | None) -> JSONResponse | None:
    """None when ``authorization`` carries the configured bearer token, else the refusal:
    403 when no token is configured (read-only) or the token is wrong, 401 when none was
    sent."""
    if not writable(settings):
        return _error(403, "This server is read-only: no API token is configured. "
                      + TOKEN_HINT, "READ_ONLY")
    scheme, _, given = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return _error(401, "Send the API token as 'Authorization: Bearer <token>'.",
                      "UNAUTHENTICATED")
    expected = settings.api_token.get_secret_value().encode()
    if not hmac.compare_digest(given.strip().encode(), expected):
        return _error(403, "The API token is not the one this server was given.",
                      "PERMISSION_DENIED")
    return None


def _move_request(body: bytes) -> tuple[int, int | None, str | None]:
    """(version, expect, reason) from a move's JSON body; ValueError with the message."""
    try:
        data = json.loads(body or b"null")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"The body is not valid JSON: {exc}.") from None
    if not isinstance(data, dict):
        raise ValueError('Send a JSON object: {"version": N, "expect": M or null, '
                         '"reason": "..."}.')
    unknown = sorted(set(data) - {"version", "expect", "reason"})
    if unknown:
        raise ValueError(f"Unknown field(s) {', '.join(map(repr, unknown))}; send version, "
                         "expect and reason.")

    def number(key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key!r} must be a version number (1, 2, 3 ...), not "
                             f"{json.dumps(value)[:40]}.")
        return value

    if "version" not in data:
        raise ValueError("Say which version the alias should point at: 'version'.")
    if "expect" not in data:
        raise ValueError("Say which version you expect the alias to point at now: 'expect' "
                         "(null when it is unset). The move is compare-and-set.")
    reason = data.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise ValueError("'reason' must be a string.")
    if reason is not None and len(reason) > REASON_MAX:
        raise ValueError(f"'reason' is {len(reason)} characters; at most {REASON_MAX}.")
    expect = None if data["expect"] is None else number("expect", data["expect"])
    return number("version", data["version"]), expect, (reason or "").strip() or None


async def _small_body(request: Request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ValueError(f"The body is over {limit:,} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def move_alias(catalog: Any, name: str, alias: str, body: bytes) -> JSONResponse:
    """Move ``name@alias`` as a request body asks (compare-and-set); the response, errors
    included."""
    try:
        check_registry_name("model", name)
        check_registry_name("alias", alias)
        version, expect, reason = _move_request(body)
    except RegistryError as exc:
        return _error(400, str(exc), "INVALID_NAME")
    except ValueError as exc:
        return _error(400, str(exc), "BAD_REQUEST")
    model = catalog.model(name)
    if not model.exists:
        return _error(404, f"No registered model {name!r}.", "NOT_FOUND")
    try:
        model.version(version)
    except RegistryError as exc:
        return _error(404, exc.message, "NOT_FOUND")
    try:
        move = model.set_alias(alias, version, expect=expect,
                               reason=reason or "moved on the web page")
    except AliasConflict as exc:
        return _error(409, str(exc), "CONFLICT", current=exc.current, expected=exc.expected)
    except RegistryError as exc:
        return _error(400, str(exc), "BAD_REQUEST")
    return JSONResponse({"name": name, "alias": move.alias, "seq": move.seq,
                         "from_version": move.from_version, "to_version": move.to_version,
                         "run_id": move.run_id, "valid_from": _iso(move.valid_from),
                         "moved_by": move.moved_by, "reason": move.reason})


def _static(name: str) -> tuple[bytes, str]:
    data = (HERE / "static" / name).read_bytes()
    return data, hashlib.sha256(data).hexdigest()[:12]


def _templates() -> Any:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                             autoescape=jinja2.select_autoescape(default=True),
                             undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    env.filters["metric"] = lambda v: "—" if v is None else f"{v:.4f}"
    env.filters["when"] = lambda v: "—" if not v else v[:16].replace("T", " ")
    env.filters["count"] = lambda v: "—" if v is None else f"{v:,}"
    return env


def _section(load: Callable[[], Any]) -> dict[str, Any]:
    """A section's data, or the error that kept it from loading (the page still renders)."""
    try:
        return {"data": load(), "error": None}
    except BatchMLError as exc:
        return {"data": None, "error": str(exc)}


def add_page(app: FastAPI, state: PageState) -> None:
    """Add the page (``/``), its script and stylesheet, and the ``/api/`` endpoints to
    ``app``."""
    env = _templates()
    assets = {"page.js": (*_static("page.js"), "text/javascript; charset=utf-8"),
              "page.css": (*_static("page.css"), "text/css; charset=utf-8")}
    settings, catalog = state.settings, state.catalog

    def page_data() -> dict[str, Any]:
        runs = _section(lambda: runs_view(catalog, settings.train_flow))
        hourly = _section(lambda: hourly_view(catalog, HOURS_DEFAULT))
        return {"runs": runs, "models": _section(lambda: models_view(catalog)),
                "serving": _section(lambda: serving_view(state)),
                "activity": _section(lambda: activity_view(catalog)),
                "drift": _section(lambda: drift_view(catalog)),
                "hourly": hourly,
                "chart": chart(hourly["data"]) if hourly["data"] else None,
                "writable": writable(settings), "token_hint": TOKEN_HINT,
                "assets": {k: v[1] for k, v in assets.items()}}

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        data = await asyncio.to_thread(page_data)
        html = env.get_template("page.html").render(**data)
        return HTMLResponse(html, headers=_SECURITY_HEADERS)

    def asset(name: str) -> Callable[[], Any]:
        async def serve() -> Response:
            body, _, media = assets[name]
            return Response(body, media_type=media,
                            headers={"Cache-Control": "public, max-age=3600",
                                     "X-Content-Type-Options": "nosniff"})
        return serve

    for name in assets:
        app.get(f"/static/{name}", include_in_schema=False)(asset(name))

    async def read(load: Callable[[], Any]) -> JSONResponse:
        try:
            return JSONResponse(await asyncio.to_thread(load))
        except BatchMLError as exc:
            return _error(503, str(exc), "UNAVAILABLE")

    @app.get("/api/runs", summary="Page: the training runs with their metrics",
             responses={503: {"description": "The catalog could not be read"}})
    async def api_runs() -> JSONResponse:
        return await read(lambda: runs_view(catalog, settings.train_flow))

    @app.get("/api/models", summary="Page: registered models, versions, aliases, history",
             responses={503: {"description": "The catalog could not be read"}})
    async def api_models() -> JSONResponse:
        return await read(lambda: {"writable": writable(settings),
                                   "models": models_view(catalog)})

    @app.get("/api/serving", summary="Page: the served model and its signature",
             responses={503: {"description": "No model to serve yet"}})
    async def api_serving() -> JSONResponse:
        return await read(lambda: serving_view(state))

    @app.get("/api/batches", summary="Page: files per state and the recent files",
             responses={503: {"description": "The catalog could not be read"}})
    async def api_batches() -> JSONResponse:
        return await read(lambda: activity_view(catalog))

    @app.get("/api/stats/hourly", summary="Page: rows scored per hour",
             responses={400: {"description": "hours is not a whole number in range"},
                        503: {"description": "The catalog could not be read"}},
             openapi_extra={"parameters": [{
                 "name": "hours", "in": "query", "required": False,
                 "description": f"How many hours back (1-{HOURS_MAX}; default "
                                f"{HOURS_DEFAULT})",
                 "schema": {"type": "integer", "minimum": 1, "maximum": HOURS_MAX}}]})
    async def api_hourly(request: Request) -> JSONResponse:
        given = request.query_params.get("hours")
        if given is None:
            hours = HOURS_DEFAULT
        elif given.isascii() and given.isdigit() and 1 <= int(given) <= HOURS_MAX:
            hours = int(given)
        else:
            return _error(400, f"'hours' must be a whole number from 1 to {HOURS_MAX}, not "
                          f"{given[:40]!r}.", "BAD_REQUEST")
        return await read(lambda: hourly_view(catalog, hours))

    @app.post("/api/models/{name}/aliases/{alias}",
              summary="Page: move an alias (compare-and-set; needs the API token)",
              responses={
                  200: {"description": "Moved; the move as recorded in the history"},
                  400: {"description": "Bad body or name"},
                  401: {"description": "No bearer token sent"},
                  403: {"description": "Read-only server, or a wrong token"},
                  404: {"description": "No such model or version"},
                  409: {"description": "The alias is held by another version than "
                                       "'expect' (AliasConflict)"}},
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": {
                      "type": "object", "required": ["version", "expect"],
                      "additionalProperties": False,
                      "properties": {
                          "version": {"type": "integer", "minimum": 1},
                          "expect": {"type": ["integer", "null"], "minimum": 1},
                          "reason": {"type": ["string", "null"],
                                     "maxLength": REASON_MAX}}}}}}})
    async def api_move_alias(name: str, alias: str, request: Request) -> JSONResponse:
        refused = check_token(settings, request.headers.get("authorization"))
        if refused is not None:
            return refused
        try:
            body = await _small_body(request, MOVE_BODY_LIMIT)
        except ValueError as exc:
            return _error(400, str(exc), "BAD_REQUEST")
        try:
            return await asyncio.to_thread(move_alias, catalog, name, alias, body)
        except BatchMLError as exc:
            return _error(503, str(exc), "UNAVAILABLE")

