"""The ``batchml`` command line: each command opens the catalog, calls one library function and
prints the result with rich. Library errors become one clear line on stderr and exit code 1.

This module is the wiring only: the typer apps and which command goes where. The commands live
in one module per group (``catalog``, ``runs``, ``train``, ``predict``, ``serve``); what they
share (consoles, options, the error wrapper, the table printer) is in ``_common``.
"""

from __future__ import annotations

import typer

from . import api, backfill, catalog, labels, log_model, models, predict, runs, serve, train

app = typer.Typer(
    help="batchml: train, tag, and score every file that lands, exactly once, queryable in SQL.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
run_app = typer.Typer(help="Inspect one run.", no_args_is_help=True)
tag_app = typer.Typer(help="Add or remove tags on runs (history is kept).", no_args_is_help=True)
app.add_typer(run_app, name="run")
app.add_typer(tag_app, name="tag")
app.add_typer(catalog.catalog_app, name="catalog")
app.add_typer(models.models_app, name="models")
app.add_typer(labels.labels_app, name="labels")

# the order of registration is the order of `batchml --help`
app.command()(catalog.init)
app.command()(runs.runs)
run_app.command("show")(runs.run_show)
tag_app.command("add")(runs.tag_add)
tag_app.command("rm")(runs.tag_rm)
app.command()(catalog.sql)
catalog.catalog_app.command("migrate")(catalog.migrate)
app.command()(serve.doctor)
app.command()(train.train)
app.command()(runs.compare)
app.command("log-model")(log_model.log_model)
app.command()(predict.predict)
app.command()(predict.watch)
app.command()(predict.files)
app.command()(predict.reprocess)
app.command()(backfill.backfill)
app.command()(serve.serve)
app.command()(serve.status)
app.command()(serve.bridge)
app.command("serve-api")(api.serve_api)
app.command("demo-data")(train.demo_data)
labels.labels_app.command("ingest")(labels.ingest)
labels.labels_app.command("files")(labels.files)
labels.labels_app.command("performance")(labels.performance)

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    app()
