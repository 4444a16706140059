"""``batchml serve``, ``bridge``, ``status`` and ``doctor``: run the service and check on it."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.table import Table

from ._common import CatalogOpt, HomeOpt, SourceArg, clean_errors, open_catalog, out, settings_from


@clean_errors
def serve(home: HomeOpt = None, catalog: CatalogOpt = None,
          model: Annotated[str | None, typer.Option(
              "--model", help="Score with this model: NAME@ALIAS (a moved alias takes effect "
                              "at the next batch, no restart), NAME/VERSION, a run id or "
                              "tag:NAME (default BATCHML_MODEL).")] = None,
          api: Annotated[bool, typer.Option(
              "--api", help="Also serve the model over HTTP (as batchml serve-api) on "
                            "BATCHML_API_HOST:BATCHML_API_PORT (127.0.0.1:8080), in this "
                            "process.")] = False) -> None:
    """Run the service: watch the inbox, score arrivals, train on the nightly cron; with
    --api, answer scoring requests over HTTP too.

    Starts its own Prefect server on 127.0.0.1 unless PREFECT_API_URL is set. Ctrl-C or SIGTERM
    finishes the current batch (and the HTTP requests in flight) and stops cleanly.
    """
    import logging

    from ..service import serve as run_service

    settings = settings_from(home, catalog)
    if model is not None:
        settings = settings.model_copy(update={"model": model})
    handler = logging.StreamHandler()
    fmt = "%(asctime)s %(levelname)s %(name)s %(message)s"
    if settings.log_format == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(JsonFormatter(fmt, rename_fields={"asctime": "time",
                                                               "levelname": "level"}))
    else:
        handler.setFormatter(logging.Formatter(fmt))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    logging.getLogger("httpx").setLevel(logging.WARNING)
    out.print(f"batchml serve: inbox {settings.inbox} -> outbox {settings.outbox}"
              + (f"; HTTP API on {settings.api_host}:{settings.api_port}" if api else ""))
    run_service(settings, api=api)
    out.print("stopped cleanly")


@clean_errors
def bridge(
    source: SourceArg = None,
    once: Annotated[bool, typer.Option(help="Emit for what is there now, then exit.")] = False,
    home: HomeOpt = None, catalog: CatalogOpt = None,
) -> None:
    """Server mode: emit a batchml.file.landed Prefect event for each new file (needs
    PREFECT_API_URL); a deployment trigger scores each one."""
    import os

    if not os.environ.get("PREFECT_API_URL"):
        from ..errors import ConfigError

        raise ConfigError("bridge needs a Prefect server: set PREFECT_API_URL.",
                          hint="Or use `batchml serve`, which scores without events.")
    from ..flows.bridge import LANDED, bridge_for
    from ..worker import Worker

    worker = Worker.for_source(settings_from(home, catalog), source)
    try:
        bridge_for(worker, 0 if once else None, poll_s=1.0,
                   on_emit=lambda n: out.print(f"emitted {n} {LANDED} event(s)"))
    except KeyboardInterrupt:
        pass
    finally:
        worker.source.close()


@clean_errors
def status(
    fmt: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
    home: HomeOpt = None, catalog: CatalogOpt = None,
) -> None:
    """Is the service up? Files per state, last training run, current model. Exit 1 if down."""
    from ..service import service_state
    from ..status import collect_status

    settings = settings_from(home, catalog)
    info = collect_status(open_catalog(home, catalog), settings, service_state(settings))
    if fmt == "json":
        sys.stdout.write(json.dumps(info, default=str) + "\n")
    else:
        svc = info["service"]
        out.print(f"service: {'[green]up[/]' if svc.get('up') else '[red]down[/]'}"
                  + (f" (pid {svc.get('pid')}, {svc.get('files', 0)} files in "
                     f"{svc.get('batches', 0)} batches)" if svc.get("pid") else "")
                  + (f"; scorer process {svc['scorer_pid']}, died {svc['scorer_deaths']} "
                     "time(s)" if svc.get("scorer_pid") else ""))
        out.print("files: " + ", ".join(f"{k} {v}" for k, v in info["files"].items()))
        out.print(f"last training run: {info['last_training_run'] or '-'}")
        out.print(f"current model: {info['current_model'] or '-'}")
        pub = info["published_catalog"]
        if pub.get("live"):
            out.print(f"catalog: {pub['path']} (live: people query the server itself)")
        else:
            out.print(f"published copy: {pub['path']} ("
                      + ("not yet published" if pub["age_s"] is None
                         else f"{pub['age_s']:.1f} s old") + ")")
        if info["recent_errors"]:
            out.print(f"recent errors: {info['recent_errors']}")
        for batch in info["drift_alerts"]:
            from rich.markup import escape

            out.print("[yellow]drift alert[/] " + escape(
                f"batch {batch['batch_id']} ({batch['at']:%Y-%m-%d %H:%M}, {batch['rows']} "
                f"rows, model {batch['model']}): " + "; ".join(batch["alerts"])),
                highlight=False)
    if not info["service"].get("up"):
        raise typer.Exit(1)


@clean_errors
def doctor(home: HomeOpt = None, catalog: CatalogOpt = None) -> None:
    """Check settings, the catalog, the artifact store and the Prefect API; exit 1 on a failure."""
    from ..diagnostics import run_checks

    settings = settings_from(home, catalog)
    checks = run_checks(settings)
    table = Table(title="batchml doctor")
    for col in ("check", "ok", "detail"):
        table.add_column(col, overflow="fold")
    for check in checks:
        table.add_row(check.name, "[green]ok[/]" if check.ok else "[red]FAIL[/]", check.detail)
    out.print(table)
    if not all(c.ok for c in checks):
        raise typer.Exit(1)
