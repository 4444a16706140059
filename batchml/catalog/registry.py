"""The model registry: named models, numbered versions, aliases with compare-and-set and
history, in the spirit of MLflow's registry (plus the history it lacks)::

    reviews = catalog.model("reviews")
    v3 = reviews.version(3)                 # a ModelVersion: run, metrics, signature, load()
    reviews.alias("champion")               # the version the alias points at now
    reviews.set_alias("champion", 4, expect=3, reason="won by 0.02 AUC")
    reviews.history()                       # every alias move, with who, when and why

A version points at one training run's model. Aliases move by compare-and-set: the caller
names the version it expects to replace, and a move that finds another holder fails with
:class:`~batchml.errors.AliasConflict`. Every move is kept (the ``alias_history`` view).
"""

from __future__ import annotations

import getpass
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..errors import RegistryError

if TYPE_CHECKING:
    import pandas as pd

    from ..estimators import Estimator

# The catalog and its runs are typed Any here: catalog/model.py imports this module (Catalog
# hands out RegisteredModel objects), so importing it back, even for types, would be a cycle.
Catalog = Any
Run = Any

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
CHAMPION = "champion"
CHALLENGER = "challenger"


def check_registry_name(kind: str, value: Any) -> str:
    """``value`` if it is a valid model or alias name (1-128 letters, digits, ``_.-``, not
    starting with a symbol: no path characters), else :class:`RegistryError`."""
    if not isinstance(value, str) or not _NAME.fullmatch(value) or value in (".", ".."):
        raise RegistryError(f"Invalid {kind} name {value!r}.",
                            hint="Use 1-128 letters, digits, '_', '.' or '-', starting with a "
                                 "letter or digit (no '/', '@' or spaces).")
    return value


def who() -> str:
    """``user@host`` of this process: who moved an alias or registered a version."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class AliasMove:
    """One move of an alias: from which version to which, when, by whom, why. ``valid_to``
    is when the next move replaced it (None while ``to_version`` still holds the alias)."""

    name: str
    alias: str
    seq: int
    from_version: int | None
    to_version: int | None
    run_id: str | None
    valid_from: datetime
    valid_to: datetime | None
    moved_by: str
    reason: str | None


class ModelVersion:
    """Version ``version`` of registered model ``name``: one training run's model."""

    def __init__(self, catalog: Catalog, row: Mapping[str, Any]) -> None:
        self.catalog = catalog
        self.name: str = row["name"]
        self.version: int = int(row["version"])
        self.run_id: str = row["run_id"]
        self.model_name: str = row["model"]
        self.description: str | None = row["description"]
        self.created_at: datetime = row["created_at"]
        self.created_by: str | None = row["created_by"]
        self.deleted_at: datetime | None = row["deleted_at"]

    def __repr__(self) -> str:
        return f"ModelVersion('{self.name}/{self.version}', run={self.run_id!r})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, ModelVersion) and other.name == self.name
                and other.version == self.version)

    def __hash__(self) -> int:
        return hash((self.name, self.version))

    @property
    def ref(self) -> str:
        """``name/version``: how to name this version to ``--model``."""
        return f"{self.name}/{self.version}"

    @property
    def run(self) -> Run:
        """The training run the version comes from."""
        return self.catalog.run(self.run_id)

    @property
    def metrics(self) -> dict[str, float]:
        return self.run.metrics

    @property
    def signature(self) -> dict[str, Any]:
        return dict(self.run.models[self.model_name]["signature"])

    @property
    def artifacts(self) -> dict[str, dict[str, Any]]:
        return self.run.artifacts

    @property
    def aliases(self) -> list[str]:
        """The aliases pointing at this version now."""
        held = self.catalog.backend.registered_models(self.name)
        aliases = held[0]["aliases"] if held else {}
        return sorted(a for a, v in aliases.items() if v == self.version)

    def load(self) -> Estimator:
        """Load the version's model (checksum-checked, as :meth:`Run.load_model`)."""
        return self.run.load_model(self.model_name)


class RegisteredModel:
    """A named model of the registry: its versions, aliases and their history."""

    def __init__(self, catalog: Catalog, name: str) -> None:
        self.catalog = catalog
        self.name = check_registry_name("model", name)

    def __repr__(self) -> str:
        return f"RegisteredModel({self.name!r})"

    def _info(self) -> dict[str, Any]:
        rows = self.catalog.backend.registered_models(self.name)
        if not rows:
            raise RegistryError(f"No registered model {self.name!r}.",
                                hint="List them with `batchml models list`.")
        return rows[0]

    @property
    def exists(self) -> bool:
        return bool(self.catalog.backend.registered_models(self.name))

    @property
    def description(self) -> str | None:
        return self._info()["description"]

    @property
    def tags(self) -> dict[str, str]:
        return dict(self._info()["tags"])

    @property
    def aliases(self) -> dict[str, int]:
        """Alias -> version, now."""
        return dict(self._info()["aliases"])

    def update(self, *, description: str | None = None,
               tags: Mapping[str, str] | None = None) -> None:
        """Set the description and merge tags."""
        self.catalog.backend.update_registered_model(self.name, description=description,
                                                     tags=tags)

    def register(self, run: Run | str, *, model: str | None = None,
                 description: str | None = None) -> ModelVersion:
        """Register ``run``'s model (its primary one unless ``model``) as the next version;
        the same run's model again returns its existing version."""
        run = self.catalog.run(run) if isinstance(run, str) else run
        if model is None:
            model = next((n for n, m in run.models.items() if m["is_primary"]), None)
            if model is None:
                raise RegistryError(f"Run {run.id} has no primary model to register.",
                                    hint="Name one with model=, or pick a run whose gate "
                                         "chose a winner.")
        number, _ = self.catalog.backend.create_model_version(
            self.name, run.id, model, description=description, created_by=who())
        return self.version(number)

    def versions(self, *, deleted: bool = False) -> list[ModelVersion]:
        """The versions, oldest first (deleted ones only when asked)."""
        return [ModelVersion(self.catalog, r)
                for r in self.catalog.backend.model_versions(self.name)
                if deleted or r["deleted_at"] is None]

    def version(self, number: int) -> ModelVersion:
        """Version ``number``; RegistryError when there is none (or it was deleted)."""
        rows = self.catalog.backend.model_versions(self.name, int(number))
        if not rows or rows[0]["deleted_at"] is not None:
            raise RegistryError(f"Model {self.name!r} has no version {number}.",
                                hint=f"List its versions with `batchml models versions "
                                     f"{self.name}`.")
        return ModelVersion(self.catalog, rows[0])

    def latest_version(self) -> ModelVersion | None:
        versions = self.versions()
        return versions[-1] if versions else None

    def alias(self, alias: str) -> ModelVersion | None:
        """The version ``alias`` points at now (None: unset)."""
        target = self.catalog.backend.alias_target(self.name,
                                                   check_registry_name("alias", alias))
        return None if target is None else self.version(target[0])

    def alias_at(self, alias: str, when: datetime) -> ModelVersion | None:
        """The version ``alias`` pointed at, at ``when``."""
        number = self.catalog.backend.alias_at(self.name, alias, when)
        return None if number is None else self.version(number)

    def set_alias(self, alias: str, version: int | ModelVersion | None, *,
                  expect: int | ModelVersion | None, reason: str | None = None) -> AliasMove:
        """Point ``alias`` at ``version`` (None removes it) if it points at ``expect`` now
        (None: unset); raises :class:`~batchml.errors.AliasConflict` naming the holder when
        another process moved it meanwhile. The move is recorded with who, when and why."""
        alias = check_registry_name("alias", alias)
        number = self._number(version)
        self.catalog.backend.move_alias(self.name, alias, number, expect=self._number(expect),
                                        moved_by=who(), reason=reason)
        return self.history(alias)[-1]

    def _number(self, version: int | ModelVersion | None) -> int | None:
        if isinstance(version, ModelVersion):
            if version.name != self.name:
                raise RegistryError(
                    f"Version {version.ref} belongs to model {version.name!r}, not "
                    f"{self.name!r}; an alias points at versions of its own model.",
                    hint=f"Register that run under {self.name!r} first.")
            return version.version
        if version is None:
            return None
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise RegistryError(f"{version!r} is not a version number.",
                                hint="Versions are numbered 1, 2, 3 ...")
        return version

    def promote(self, version: int | ModelVersion, *, alias: str = CHAMPION,
                reason: str | None = None) -> AliasMove:
        """Move ``alias`` (champion) to ``version`` from whatever holds it now, as read now
        (compare-and-set against that read)."""
        current = self.alias(alias)
        return self.set_alias(alias, version, expect=current, reason=reason)

    def rollback(self, *, alias: str = CHAMPION, reason: str | None = None) -> AliasMove:
        """Move ``alias`` back to the version that held it before the current one (the
        ``from_version`` of its last move), compare-and-set and recorded."""
        moves = self.history(alias)
        current = self.alias(alias)
        if current is None or not moves:
            raise RegistryError(f"{self.name}@{alias} is not set; there is nothing to roll "
                                "back.", hint=f"Promote a version: batchml models promote "
                                              f"{self.name} VERSION.")
        previous = moves[-1].from_version
        if previous is None:
            raise RegistryError(f"{self.name}@{alias} has had one holder only (version "
                                f"{current.version}); there is no earlier one to go back to.",
                                hint="Promote another version instead.")
        return self.set_alias(alias, previous, expect=current,
                              reason=reason or f"rollback from version {current.version}")

    def history(self, alias: str | None = None) -> list[AliasMove]:
        """Every move of the model's aliases (or of ``alias``), oldest first."""
        return [AliasMove(**r) for r in self.catalog.backend.alias_history(self.name, alias)]

    def history_frame(self, alias: str | None = None) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame([m.__dict__ for m in self.history(alias)],
                            columns=list(AliasMove.__dataclass_fields__))

    def delete_version(self, number: int) -> None:
        """Delete a version (refused while an alias points at it)."""
        self.catalog.backend.delete_model_version(self.name, int(number))
