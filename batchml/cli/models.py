"""``batchml models ...``: the model registry (batchml.catalog.registry): list, show, versions,
history, alias, promote, rollback, register, delete-version, and compare
(:mod:`batchml.comparison`)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ._common import (
    CatalogOpt,
    HomeOpt,
    clean_errors,
    open_catalog,
    out,
    print_frame,
    settings_from,
)

if TYPE_CHECKING:
    from ..catalog.registry import AliasMove, RegisteredModel

models_app = typer.Typer(
    help="The model registry: named models, numbered versions, aliases moved by "
         "compare-and-set with their history.", no_args_is_help=True)

NameArg = Annotated[str, typer.Argument(help="Registered model name, such as reviews.")]
VersionArg = Annotated[int, typer.Argument(help="Version number (1, 2, 3 ...).")]
AliasOpt = Annotated[str, typer.Option("--alias", help="The alias to move.")]
ReasonOpt = Annotated[str | None, typer.Option(
    "--reason", help="Why (kept in the alias history).")]
FormatOpt = Annotated[str, typer.Option("--format", help="table, csv or json.")]


def _when(value: datetime | None) -> str | None:
    return None if value is None else f"{value:%Y-%m-%d %H:%M:%S}"


def _shown(version: int | None) -> str:
    return "-" if version is None else str(version)


def _version_text(text: str, what: str) -> int | None:
    """``text`` as a version number, or None for ``none``."""
    from ..errors import RegistryError

    if text.strip().lower() == "none":
        return None
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise RegistryError(f"{what} {text!r} is not a version number.",
                            hint="Give a version number (1, 2, 3 ...) or none.")
    return number


def _registered(home: Any, catalog: Any, name: str) -> RegisteredModel:
    """Registered model ``name``; a RegistryError naming it when there is none."""
    model = open_catalog(home, catalog).model(name)
    _ = model.aliases  # reads the model: an unknown one is an error, not an empty table
    return model


def _print_move(move: AliasMove) -> None:
    _say(f"{move.name}@{move.alias}: {_shown(move.from_version)} → {_shown(move.to_version)} "
         f"(move {move.seq}" + (f": {move.reason}" if move.reason else "") + ")")


def _say(text: str) -> None:
    """One line of plain text: brackets in a reason or a description are not rich markup."""
    out.print(text, markup=False, highlight=False)


def _print(frame: Any, fmt: str = "table", title: str | None = None) -> None:
    """:func:`print_frame` (it prints cells and headers as text, never as markup: a reason
    ``[v2] broke`` or a class label is shown as written)."""
    print_frame(frame, fmt, title=title)


@clean_errors
def list_models(fmt: FormatOpt = "table", home: HomeOpt = None,
                catalog: CatalogOpt = None) -> None:
    """List registered models: latest version, aliases, description, last change."""
    import pandas as pd

    rows = open_catalog(home, catalog).backend.registered_models()
    frame = pd.DataFrame(
        [{"name": r["name"], "latest": r["latest_version"],
          "aliases": ", ".join(f"{a}={v}" for a, v in sorted(r["aliases"].items())),
          "description": r["description"],
          "updated": r["updated_at"] if fmt != "table" else _when(r["updated_at"])}
         for r in rows], columns=["name", "latest", "aliases", "description", "updated"])
    _print(frame.astype({"latest": "Int64"}), fmt, title="registered models")


@clean_errors
def show(name: NameArg, home: HomeOpt = None, catalog: CatalogOpt = None) -> None:
    """Show a registered model: description, tags, aliases, and its versions with their runs
    and key metrics."""
    import pandas as pd

    from ..comparison import KEY_METRICS, version_metrics

    model = open_catalog(home, catalog).model(name)
    aliases = model.aliases
    _say(f"{model.name}: {model.description or 'no description'}")
    _say("tags: " + (", ".join(f"{k}={v}" for k, v in sorted(model.tags.items())) or "-"))
    _say("aliases: " + (", ".join(f"{a}={v}" for a, v in sorted(aliases.items())) or "-"))
    rows: list[dict[str, Any]] = []
    for v in model.versions():
        metrics = version_metrics(v)
        rows.append({"version": v.version, "run": v.run_id, "status": v.run.status,
                     "model": v.model_name,
                     "aliases": ", ".join(sorted(a for a, n in aliases.items()
                                                 if n == v.version)),
                     **{m: metrics.get(m) for m in KEY_METRICS},
                     "created_by": v.created_by, "created_at": _when(v.created_at)})
    frame = pd.DataFrame(rows)
    if frame.empty:
        _say("no versions")
        return
    _print(frame.dropna(axis=1, how="all"), title="versions")
    from ..labels import live_performance
    from ..shadow import shadow_batches

    live = live_performance(model.catalog, model.name)[:30]
    if live:
        _print(pd.DataFrame(live, columns=["model_version", "role", "day", "n", "accuracy",
                                           "auc", "calibration_error"]),
               title="live performance (late labels)")
    shadow = shadow_batches(model.catalog, model.name, limit=10)
    if shadow:
        _print(pd.DataFrame(shadow, columns=["batch_id", "champion_version",
                                             "challenger_version", "files", "failed", "rows",
                                             "agreement", "psi"]), title="shadow batches")
    from ..signature import Signature

    newest = model.versions()[-1]  # its inference parameters (batchml.params)
    specs = Signature.from_dict(newest.signature).params
    if specs:
        _print(pd.DataFrame([{"parameter": p.name, "type": p.type, "default": p.default,
                              "accepts": p.accepts(), "description": p.description}
                             for p in specs]),
               title=f"inference parameters (version {newest.version})")


@clean_errors
def versions(
    name: NameArg,
    deleted: Annotated[bool, typer.Option("--deleted", help="Include deleted versions.")]
    = False,
    fmt: FormatOpt = "table", home: HomeOpt = None, catalog: CatalogOpt = None,
) -> None:
    """List a model's versions, oldest first: run, model, aliases, who registered it, when."""
    import pandas as pd

    model = _registered(home, catalog, name)
    aliases = model.aliases
    rows = [{"version": v.version, "run": v.run_id, "model": v.model_name,
             "aliases": ", ".join(sorted(a for a, n in aliases.items() if n == v.version)),
             "description": v.description, "created_by": v.created_by,
             "created_at": v.created_at if fmt != "table" else _when(v.created_at),
             **({"deleted_at": v.deleted_at if fmt != "table" else _when(v.deleted_at)}
                if deleted else {})}
            for v in model.versions(deleted=deleted)]
    _print(pd.DataFrame(rows, columns=["version", "run", "model", "aliases", "description",
                                            "created_by", "created_at"]
                             + (["deleted_at"] if deleted else [])),
                fmt, title=f"{model.name} versions")


@clean_errors
def history(
    name: NameArg,
    alias: Annotated[str | None, typer.Option("--alias", help="Only this alias's moves.")]
    = None,
    fmt: FormatOpt = "table", home: HomeOpt = None, catalog: CatalogOpt = None,
) -> None:
    """Every alias move of a model, oldest first: from which version to which, the time the
    new holder held it from and to, who moved it and why."""
    import pandas as pd

    model = _registered(home, catalog, name)
    frame = model.history_frame(alias)
    if fmt != "table":
        _print(frame.drop(columns=["name"]), fmt)
        return
    _print(pd.DataFrame(
        [{"seq": m.seq, "alias": m.alias,
          "from → to": f"{_shown(m.from_version)} → {_shown(m.to_version)}",
          "valid_from": _when(m.valid_from), "valid_to": _when(m.valid_to),
          "moved_by": m.moved_by, "reason": m.reason} for m in model.history(alias)],
        columns=["seq", "alias", "from → to", "valid_from", "valid_to", "moved_by", "reason"]),
        title=f"{model.name} alias history")


@clean_errors
def alias(
    name: NameArg,
    alias: Annotated[str, typer.Argument(help="Alias to move, such as champion or production.")],
    version: Annotated[str, typer.Argument(
        help="Version to point it at, or none to remove the alias.")],
    expect: Annotated[str | None, typer.Option(
        "--expect", help="Version the alias must hold now (none: unset), else the move fails "
        "with a conflict. Default: the holder read now.")] = None,
    reason: ReasonOpt = None, home: HomeOpt = None, catalog: CatalogOpt = None,
) -> None:
    """Move an alias by compare-and-set: it moves only if it still holds the expected
    version; the move is recorded with who, when and why."""
    model = open_catalog(home, catalog).model(name)
    target = _version_text(version, "Version")
    if expect is None:
        current = model.alias(alias)
        expected = None if current is None else current.version
    else:
        expected = _version_text(expect, "--expect")
    _print_move(model.set_alias(alias, target, expect=expected, reason=reason))


@clean_errors
def promote(name: NameArg, version: VersionArg, alias_name: AliasOpt = "champion",
            reason: ReasonOpt = None, home: HomeOpt = None, catalog: CatalogOpt = None) -> None:
    """Point an alias (champion) at a version, replacing whichever version holds it now."""
    model = open_catalog(home, catalog).model(name)
    _print_move(model.promote(version, alias=alias_name, reason=reason))


@clean_errors
def rollback(name: NameArg, alias_name: AliasOpt = "champion", reason: ReasonOpt = None,
             home: HomeOpt = None, catalog: CatalogOpt = None) -> None:
    """Move an alias (champion) back to the version that held it before the current one."""
    model = _registered(home, catalog, name)
    _print_move(model.rollback(alias=alias_name, reason=reason))


@clean_errors
def register(
    name: NameArg,
    run_id: Annotated[str, typer.Argument(help="Completed training run, such as train/3.")],
    model_name: Annotated[str | None, typer.Option(
        "--model", help="Which of the run's models (default: its primary one).")] = None,
    description: Annotated[str | None, typer.Option(
        "--description", help="What this version is.")] = None,
    home: HomeOpt = None, catalog: CatalogOpt = None,
) -> None:
    """Register a run's model as the model's next version (the same model again: its
    existing version)."""
    cat = open_catalog(home, catalog)
    v = cat.model(name).register(run_id, model=model_name, description=description)
    _say(f"{v.ref}: run {v.run_id}, model {v.model_name}")


@clean_errors
def delete_version(name: NameArg, version: VersionArg, home: HomeOpt = None,
                   catalog: CatalogOpt = None) -> None:
    """Delete a version (refused while an alias points at it; its number is not reused)."""
    open_catalog(home, catalog).model(name).delete_version(version)
    _say(f"{name}/{version} deleted")


@clean_errors
def compare(
    name: NameArg,
    v1: Annotated[int, typer.Argument(help="First version.")],
    v2: Annotated[int, typer.Argument(help="Second version.")],
    data: Annotated[str | None, typer.Option(
        "--data", help="Labelled parquet (path or s3://) to score both on. Default: the "
        "validation file (BATCHML_VALID_URI, else the one the second version's run read).")]
    = None,
    label: Annotated[str | None, typer.Option(
        "--label", help="Label column of the data. Default: the one the run trained with.")]
    = None,
    home: HomeOpt = None, catalog: CatalogOpt = None,
) -> None:
    """Compare two versions: their recorded metrics side by side, then both scored on the
    same labelled data: each one's confusion matrix and how often they agree."""
    import pandas as pd

    from ..comparison import compare_from_settings

    result = compare_from_settings(settings_from(home, catalog), name, v1, v2, data=data,
                                   label=label)
    a, b = result.a.ref, result.b.ref
    _print(pd.DataFrame(
        [{"metric": m, a: x, b: y,
          "difference": None if x is None or y is None else y - x}
         for m, x, y in result.metrics], columns=["metric", a, b, "difference"]),
        title="recorded metrics (training runs)")
    _say(f"scored on {result.data_uri or 'the given frame'}: {result.rows} rows, "
         f"label column {result.label!r}")
    for scores in (result.a, result.b):
        _print(_matrix_frame(scores.confusion, result.labels, "true \\ predicted"),
                    title=f"{scores.ref} confusion matrix")
    _print(pd.DataFrame(
        [{"": "accuracy", a: result.a.accuracy, b: result.b.accuracy},
         {"": "balanced accuracy", a: result.a.balanced_accuracy,
          b: result.b.balanced_accuracy}]), title="on this data")
    _print(_matrix_frame(result.cross, result.labels, f"{a} \\ {b}"),
                title="predictions of one against the other")
    same = result.rows - result.disagreements
    _say(f"agreement: {result.agreement:.4f} ({same} of {result.rows} rows get the same "
         f"label; {result.disagreements} differ)")


def _matrix_frame(matrix: list[list[int]], labels: list[Any], corner: str) -> Any:
    import pandas as pd

    return pd.DataFrame([[str(label), *row] for label, row in zip(labels, matrix, strict=True)],
                        columns=[corner, *(str(v) for v in labels)])


models_app.command("list")(list_models)
models_app.command()(show)
models_app.command()(versions)
models_app.command()(history)
models_app.command()(alias)
models_app.command()(promote)
models_app.command()(rollback)
models_app.command()(compare)
models_app.command()(register)
models_app.command("delete-version")(delete_version)
