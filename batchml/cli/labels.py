"""``batchml labels ...``: late labels (:mod:`batchml.labels`): ingest label files now, list
the label files with what each did, and the live performance per model version."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ._common import CatalogOpt, HomeOpt, clean_errors, print_frame, settings_from

labels_app = typer.Typer(
    help="Late labels: join true labels to earlier predictions by id for live accuracy, AUC "
         "and calibration per model version.", no_args_is_help=True)

FormatOpt = Annotated[str, typer.Option("--format", help="table, csv or json.")]


@clean_errors
def ingest(
    path: Annotated[str, typer.Argument(
        help="A label file, a directory of them or s3://bucket/prefix (parquet with the id "
             "and label columns).")],
    id_column: Annotated[str | None, typer.Option(
        "--id-column", help="The id column (default: BATCHML_ID_COLUMN).")] = None,
    label_column: Annotated[str | None, typer.Option(
        "--label-column", help="The label column (default: BATCHML_LABEL_COLUMN).")] = None,
    home: HomeOpt = None, catalog: CatalogOpt = None,
) -> None:
    """Ingest label files now, each exactly once (a file ingested before is skipped), and
    print per file how many labels matched a prediction and how many were left out, why."""
    from pathlib import Path

    import pandas as pd

    from ..catalog import Catalog
    from ..labels import LabelConfig, LabelInbox
    from ..sources import DirectorySource, ListSource, open_source

    settings = settings_from(home, catalog, id_column=id_column, label_column=label_column)
    config = LabelConfig.from_settings(settings)
    cat = Catalog.from_settings(settings)
    inbox = LabelInbox(cat, config)
    source: Any
    if "://" not in path and Path(path).is_file():
        source = ListSource([str(Path(path).resolve())])
    elif "://" not in path:
        source = DirectorySource(path, quarantine_dir=settings.quarantine, use_events=False)
    else:
        source = open_source(path, settings=settings)
    try:
        reports = inbox.run_once(source)
    finally:
        source.close()
        cat.close()
    if not reports:
        print_frame(pd.DataFrame([{"note": "no new label files"}]))
        return
    print_frame(pd.DataFrame([{
        "file": r.source_uri, "state": r.state, "rows": r.rows, "matched": r.matched,
        "unknown_ids": r.unknown_ids, "duplicate_ids": r.duplicate_ids,
        "bad_labels": r.bad_labels,
        "reasons": "; ".join(f"{k}: {v}" for k, v in r.reasons.items()) or r.error or ""}
        for r in reports]), title="label files")
    if any(r.state == "quarantined" for r in reports):
        raise typer.Exit(1)


@clean_errors
def files(fmt: FormatOpt = "table", home: HomeOpt = None, catalog: CatalogOpt = None) -> None:
    """Every label file, newest first: state, rows, matched, left out per reason."""
    import pandas as pd

    from ..catalog import Catalog
    from ..labels import label_files

    cat = Catalog.from_settings(settings_from(home, catalog))
    try:
        rows = label_files(cat)
    finally:
        cat.close()
    frame = pd.DataFrame(rows, columns=["source_uri", "state", "rows", "matched", "unknown_ids",
                                        "duplicate_ids", "bad_labels", "report", "error",
                                        "updated_at"])
    if fmt == "table":
        frame["report"] = ["; ".join(f"{k}: {v}" for k, v in (r or {}).items())
                           for r in frame["report"]]
    print_frame(frame, fmt, title="label files")


@clean_errors
def performance(
    name: Annotated[str | None, typer.Argument(help="Registered model name (default: all).")]
    = None,
    fmt: FormatOpt = "table", home: HomeOpt = None, catalog: CatalogOpt = None,
) -> None:
    """Live performance from late labels: per model version, role (output or shadow) and day
    the predictions were made, labelled rows, accuracy, AUC and calibration error."""
    import pandas as pd

    from ..catalog import Catalog
    from ..labels import live_performance

    cat = Catalog.from_settings(settings_from(home, catalog))
    try:
        rows = live_performance(cat, name)
    finally:
        cat.close()
    print_frame(pd.DataFrame(rows, columns=["model_name", "model_version", "role", "day", "n",
                                            "accuracy", "auc", "calibration_error",
                                            "model_run_id"]), fmt, title="live performance")
