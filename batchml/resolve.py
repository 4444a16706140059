"""Which model scores: one :class:`ModelRef` and one :class:`ModelResolver`.

A model reference is written one way everywhere (CLI options, flows, the Python API):

* ``train/12`` -- the run with this id (``FLOW/NUMBER``, ``FLOW`` the training flow);
  ``run:other/3`` names a run of any flow;
* ``tag:deployment_candidate`` -- the latest successful run of the training flow carrying
  the tag;
* ``name@alias`` -- the version of registered model ``name`` that ``alias`` points at now
  (:mod:`batchml.catalog.registry`); a worker follows it: each batch resolves it when it is
  claimed, so a moved alias takes effect at the next batch;
* ``name/3`` -- version 3 of registered model ``name`` (``FLOW/3`` of the training flow is a
  run id; ``run:FLOW/3`` says so explicitly).

The resolver turns a reference into the run whose model scores, and decides which
error a failure is. *Nothing tagged yet*, or an alias not set yet, is transient
(:class:`~batchml.errors.ModelNotFound`: a later training run may tag or promote one, so files
wait). A run named by id (or a version named by number) that does not
exist, failed, is still running or has no model is terminal
(:class:`~batchml.errors.RunCannotScore`): waiting cannot fix it, so it is reported at once.
The SQL of the lookups stays in :mod:`batchml.catalog`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from .errors import ConfigError, ModelNotFound, RunCannotScore, RunNotFound

if TYPE_CHECKING:
    from .catalog import Catalog, Run

RefKind = Literal["run", "tag", "alias", "version"]

_RUN_ID = re.compile(r"[^\s/]+(?:/[^\s/]+)*/\d+")
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_FORMS = ("write train/12 for a run, tag:NAME for the latest successful run carrying a tag, "
          "NAME@ALIAS for the version an alias points at (reviews@champion) or NAME/3 for a "
          "registered model's version")


@dataclass(frozen=True)
class ModelRef:
    """A reference to the model that should score.

    ``kind`` is ``run`` (``name`` is the run id), ``tag`` (``name`` is the tag), ``alias``
    (``name@qualifier``) or ``version`` (``name/qualifier``). Build one with :meth:`parse`,
    :meth:`from_options`, :meth:`for_run` or :meth:`for_tag`.
    """

    kind: RefKind
    name: str
    qualifier: str | None = None

    @classmethod
    def for_run(cls, run_id: str) -> ModelRef:
        """The run with id ``run_id`` (``FLOW/NUMBER``); ConfigError when it is not one."""
        if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
            raise ConfigError(f"{run_id!r} is not a run id.",
                              hint="A run id is FLOW/NUMBER, e.g. train/12; list runs with "
                                   "`batchml runs`.")
        return cls("run", run_id)

    @classmethod
    def for_tag(cls, tag: str) -> ModelRef:
        """The latest successful run carrying ``tag``; ConfigError when the tag is empty."""
        if not isinstance(tag, str) or not tag or tag != tag.strip():
            raise ConfigError(f"{tag!r} is not a tag.",
                              hint="Give a non-empty tag without surrounding spaces, e.g. "
                                   "deployment_candidate (BATCHML_MODEL_TAG).")
        return cls("tag", tag)

    @classmethod
    def parse(cls, text: str, *, flow: str = "train") -> ModelRef:
        """Parse a reference (see the module docstring); ``flow`` is the training flow, whose
        ``FLOW/NUMBER`` is a run id while any other ``name/NUMBER`` is a model version.
        Raises :class:`ConfigError` naming the accepted forms."""
        text = text.strip() if isinstance(text, str) else ""
        if not text:
            raise ConfigError("An empty model reference.", hint=f"To choose the model, {_FORMS}.")
        if text.startswith("tag:"):
            return cls.for_tag(text[4:])
        if text.startswith("run:"):
            return cls.for_run(text[4:])
        if "@" in text:
            name, _, alias = text.partition("@")
            if _NAME.fullmatch(name) and _NAME.fullmatch(alias):
                return cls("alias", name, alias)
            raise ConfigError(f"{text!r} is not a model alias reference.",
                              hint="Write name@alias, e.g. reviews@champion.")
        name, _, number = text.rpartition("/")
        if name and number.isdigit():
            if name == flow:
                return cls.for_run(text)
            if _NAME.fullmatch(name):
                return cls("version", name, number)
        raise ConfigError(f"{text!r} is not a model reference.", hint=f"To choose the model, "
                          f"{_FORMS}.")

    @classmethod
    def from_options(cls, run_id: str | None = None, tag: str | None = None, *,
                     model: str | None = None, default_model: str | None = None,
                     default_tag: str | None = None, flow: str = "train") -> ModelRef:
        """The reference the ``--run`` / ``--model`` / ``--tag`` options (or flow parameters)
        mean: the run when given (it wins, as it always has), else ``model`` (any form of
        :meth:`parse`), else the tag, else ``default_model`` (``settings.model``), else
        ``default_tag`` (``settings.model_tag``)."""
        if run_id is not None:
            return cls.for_run(run_id)
        if model is not None:
            return cls.parse(model, flow=flow)
        if tag is None and default_model:
            return cls.parse(default_model, flow=flow)
        tag = tag if tag is not None else default_tag
        if tag is None:
            raise ConfigError("No model chosen: neither a run id nor a tag was given.",
                              hint="Pass --run train/12 or --tag NAME, or set "
                                   "BATCHML_MODEL_TAG.")
        return cls.for_tag(tag)

    @property
    def run_id(self) -> str | None:
        """The run id of a ``run`` reference, else None."""
        return self.name if self.kind == "run" else None

    @property
    def tag(self) -> str | None:
        """The tag of a ``tag`` reference, else None."""
        return self.name if self.kind == "tag" else None

    @property
    def registered(self) -> bool:
        """Does it name a registered model (``name@alias`` or ``name/3``)?"""
        return self.kind in ("alias", "version")

    @property
    def alias(self) -> str | None:
        return self.qualifier if self.kind == "alias" else None

    @property
    def version(self) -> int | None:
        return int(self.qualifier) if self.kind == "version" and self.qualifier else None

    def __str__(self) -> str:
        if self.kind == "tag":
            return f"tag:{self.name}"
        if self.kind == "alias":
            return f"{self.name}@{self.qualifier}"
        if self.kind == "version":
            return f"{self.name}/{self.qualifier}"
        return self.name


def nothing_resolved(ref: ModelRef, flow: str) -> ModelNotFound | RunCannotScore:
    """The error for a reference that resolves to no run now: nothing tagged or the alias
    not set (transient), or a version that is not there (terminal)."""
    if ref.kind == "alias":
        return ModelNotFound(
            f"{ref} is not set: model {ref.name!r} has no version under alias "
            f"{ref.qualifier!r} yet.",
            hint=f"Promote a version (`batchml models promote {ref.name} VERSION"
                 + (f" --alias {ref.qualifier}" if ref.qualifier != "champion" else "")
                 + "`); files wait until then.")
    if ref.kind == "version":
        return RunCannotScore(
            f"Model {ref.name!r} has no version {ref.qualifier}; it cannot score.",
            hint=f"List its versions with `batchml models versions {ref.name}`.",
            status="missing")
    return nothing_tagged(flow, str(ref.tag))


def nothing_tagged(flow: str, tag: str) -> ModelNotFound:
    """The transient error for "no successful run of ``flow`` carries ``tag`` yet"."""
    return ModelNotFound(
        f"No successful run of flow {flow!r} tagged {tag!r}.",
        hint="Train one with `batchml train`, or tag a run with `batchml tag add`.")


class ModelResolver:
    """Turns a :class:`ModelRef` into the run whose model scores, with the right error.

    One per catalog and training flow; it holds no cache (see
    :class:`batchml.scoring.ModelCache` for loaded models).
    """

    def __init__(self, catalog: Catalog, *, flow: str = "train") -> None:
        self.catalog = catalog
        self.flow = flow

    def run(self, ref: ModelRef) -> Run:
        """The run ``ref`` names now, without checking that it can score.

        Raises :class:`ModelNotFound` (transient) when no successful run carries the tag,
        :class:`RunCannotScore` (terminal) when a named run does not exist, and
        :class:`ConfigError` for references not supported yet.
        """
        if ref.kind == "tag":
            try:
                return self.catalog.latest_run(self.flow, tag=ref.name)
            except ModelNotFound:
                raise nothing_tagged(self.flow, ref.name) from None
        if ref.kind == "run":
            try:
                return self.catalog.run(ref.name)
            except RunNotFound:
                raise RunCannotScore(
                    f"Run {ref.name} does not exist in {self.catalog.path}; it cannot score.",
                    hint="List runs with `batchml runs` and pass an existing one, or leave "
                         "out --run to score with the latest tagged run.",
                    run_id=ref.name, status="missing") from None
        return self._registered(ref)

    def _registered(self, ref: ModelRef) -> Run:
        """The run of the version ``name@alias`` or ``name/N`` names now."""
        from .errors import RegistryError

        model = self.catalog.model(ref.name)
        try:
            version = model.alias(str(ref.alias)) if ref.kind == "alias" else \
                model.version(int(ref.qualifier or 0))
        except RegistryError:
            version = None
        if version is None:
            raise nothing_resolved(ref, self.flow)
        return version.run

    def resolve(self, ref: ModelRef) -> tuple[Run, str]:
        """The run ``ref`` names and the name of its primary model, checked able to score
        (see :meth:`check`)."""
        run = self.run(ref)
        return run, self.check(run, ref)

    def check(self, run: Run, ref: ModelRef) -> str:
        """The name of ``run``'s primary model, when ``run`` (named by ``ref``) can score.

        A run named by id that is not completed or has no primary model raises
        :class:`RunCannotScore` (terminal). A run a tag resolved to is completed; if it has
        no primary model that raises :class:`ModelNotFound` (transient), as before: a later
        training run may tag a better one.
        """
        if not run.successful:
            if ref.kind != "run":
                raise ModelNotFound(f"Run {run.id} ({ref}) is {run.status}; only completed "
                                    "runs score.", hint="Waiting for a completed tagged run.")
            raise _not_completed(run)
        primary = next((n for n, m in run.models.items() if m["is_primary"]), None)
        if ref.registered:  # the model the version registered (its run's primary, usually)
            versions = self.catalog.backend.model_versions(ref.name, run_id=run.id)
            primary = versions[-1]["model"] if versions else primary
        if primary is None:
            if ref.kind == "run":
                raise RunCannotScore(
                    f"Run {run.id} is {run.status} but has no primary model; it cannot score.",
                    hint="Choose a training run whose gate picked a winner (`batchml runs`), "
                         "or leave out --run to score with the latest tagged run.",
                    run_id=run.id, status=run.status)
            raise ModelNotFound(f"Run {run.id} ({ref}) has no primary model.",
                                hint="Choose a training run whose gate picked a winner.")
        return primary


def _not_completed(run: Run) -> RunCannotScore:
    """The terminal error for a run named by id whose status is not ``completed``."""
    status = run.status
    if status == "running":
        message = f"Run {run.id} is still running; only a completed run can score."
        hint = ("Wait until it ends (`batchml run show " + run.id + "`) and start again, or "
                "pick a completed run (`batchml runs`).")
    elif status == "failed":
        message = f"Run {run.id} failed; a failed run has no model to score with."
        hint = ("Pick a completed run (`batchml runs`), or leave out --run to score with the "
                "latest tagged run.")
    else:
        message = f"Run {run.id} is {status}; only a completed run can score."
        hint = "Pick a completed run (`batchml runs`)."
    return RunCannotScore(message, hint=hint, run_id=run.id, status=status)
