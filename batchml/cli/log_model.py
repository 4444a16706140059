"""``batchml log-model``: log a Python model (a :class:`batchml.PythonModel` subclass in
shipped code) as a run and a registered version (:mod:`batchml.custom_model`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..errors import ConfigError
from ._common import CatalogOpt, HomeOpt, clean_errors, open_catalog, out


def _pairs(values: list[str], what: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise ConfigError(f"{what} {value!r} is not NAME=VALUE.",
                              hint=f"For example {what} words=words.txt.")
        pairs[name] = rest
    return pairs


@clean_errors
def log_model(
    code: Annotated[Path, typer.Option(
        "--code", help="The model's code: a .py file or a package folder (shipped with the "
                       "model, checksummed).")],
    model_class: Annotated[str, typer.Option(
        "--class", help="The PythonModel subclass as module:Class (module inside --code).")],
    name: Annotated[str, typer.Option(
        "--name", help="Registered model name; the model becomes its next version.")],
    input_example: Annotated[Path, typer.Option(
        "--input-example", help="Parquet file of typical input rows: its columns are the "
                                "inputs; predict runs on it once to infer the outputs.")],
    artifacts: Annotated[list[str] | None, typer.Option(
        "--artifacts", help="NAME=PATH (a file or folder) the model reads in load_context; "
                            "repeatable.")] = None,
    classes: Annotated[list[str] | None, typer.Option(
        "--classes", help="Class labels (repeatable; integers when all are integers): predict "
                          "returns probabilities per class, and the model gets label/proba "
                          "columns.")] = None,
    params: Annotated[list[str] | None, typer.Option(
        "--param", help="NAME=JSON inference parameter default (repeatable), e.g. "
                        "threshold=2.")] = None,
    requirements: Annotated[list[str] | None, typer.Option(
        "--requirement", help="A package the model needs (name or name==version; "
                              "repeatable): its version is recorded and checked at load.")] = None,
    validation: Annotated[Path | None, typer.Option(
        "--validation", help="Labelled parquet: run the gate on it (models with classes); "
                             "registered only if it passes.")] = None,
    label_column: Annotated[str, typer.Option(
        "--label-column", help="The label column of --validation.")] = "label",
    alias: Annotated[str | None, typer.Option(
        "--alias", help="Move this alias (e.g. champion) to the new version.")] = None,
    description: Annotated[str | None, typer.Option(
        "--description", help="What the registered model is.")] = None,
    home: HomeOpt = None, catalog: CatalogOpt = None,
) -> None:
    """Log a Python model (a batchml.PythonModel subclass) as a run and the next version of
    --name, with its code and artifacts. See docs/custom-models.md."""
    parsed = {k: json.loads(v) if v[:1] in "-0123456789[{tfn\"" else v
              for k, v in _pairs(params or [], "--param").items()}
    labels: list[str | int] = list(classes or [])
    if labels and all(c.lstrip("-").isdigit() for c in classes or []):
        labels = [int(c) for c in classes or []]  # integer classes, like integer labels
    logged = open_catalog(home, catalog).log_model(
        name=name, python_model=model_class, code=code, input_example=input_example,
        artifacts=_pairs(artifacts or [], "--artifacts"), classes=labels,
        params=parsed, requirements=requirements or (), validation=validation,
        label_column=label_column, alias=alias, description=description)
    gate = f"gate {logged.gate}"
    if logged.version is None:
        out.print(f"run {logged.run.id}: {gate}, not registered: " + "; ".join(logged.reasons),
                  markup=False, highlight=False)
        raise typer.Exit(1)
    where = f" ({name}@{alias})" if alias else ""
    out.print(f"{logged.version.ref}{where}: run {logged.run.id}, {gate}", markup=False,
              highlight=False)
