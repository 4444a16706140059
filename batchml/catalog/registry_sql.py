"""The model registry's SQL, shared by both backends (the statements are the same in both
dialects; each backend says how to open a transaction and how to lock a row).

Every change to one registered model runs in one transaction that first locks that model's
row (``FOR UPDATE`` on PostgreSQL; on DuckDB the catalog's write lock already lets one writer
in), so version numbers have no gaps or twins and an alias move compares and sets atomically:
of two processes expecting the same holder, exactly one moves the alias and the other gets
:class:`~batchml.errors.AliasConflict` naming the holder it did not expect.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

from ..errors import AliasConflict, RegistryError
from ._db import utcnow

_VERSION_COLS = ("name", "version", "run_id", "model", "description", "created_at",
                 "created_by", "deleted_at")
_MOVE_COLS = ("name", "alias", "seq", "from_version", "to_version", "run_id", "valid_from",
              "valid_to", "moved_by", "reason")


class DialectSQL:
    """What the dialect-shared SQL mixins (registry, backfills, labels) need from the backend
    they are mixed into: its transactions, its placeholder style and row locking."""

    _for_update = ""  # " FOR UPDATE" where the dialect locks rows

    def _registry_write(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _registry_read(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _q(self, sql: str) -> str:
        """``sql`` in the dialect's placeholder style (written with ``?``)."""
        return sql

    def _x(self, con: Any, sql: str, params: Sequence[Any] = ()) -> Any:
        return con.execute(self._q(sql), list(params))


class RegistrySQL(DialectSQL):
    """The registry half of a backend (mixed into the backend class)."""

    # --- registered models ------------------------------------------------------------------

    def _ensure_model(self, con: Any, name: str, now: datetime) -> None:
        self._x(con, "INSERT INTO registered_models (name, created_at, updated_at)"
                     " VALUES (?, ?, ?) ON CONFLICT DO NOTHING", [name, now, now])
        self._x(con, "SELECT name FROM registered_models WHERE name = ?" + self._for_update,
                [name]).fetchall()

    def create_registered_model(self, name: str, *, description: str | None,
                                tags: Mapping[str, str] | None) -> bool:
        now = utcnow()
        with self._registry_write() as con:
            rows = self._x(con, "INSERT INTO registered_models (name, description, tags,"
                                " created_at, updated_at) VALUES (?, ?, ?, ?, ?)"
                                " ON CONFLICT DO NOTHING RETURNING name",
                           [name, description, json.dumps(dict(tags or {})), now,
                            now]).fetchall()
        return bool(rows)

    def update_registered_model(self, name: str, *, description: str | None = None,
                                tags: Mapping[str, str] | None = None) -> None:
        with self._registry_write() as con:
            row = self._x(con, "SELECT tags FROM registered_models WHERE name = ?"
                          + self._for_update, [name]).fetchone()
            if row is None:
                raise _no_model(name)
            merged = {**_json(row[0]), **dict(tags or {})}
            self._x(con, "UPDATE registered_models SET description = coalesce(?, description),"
                         " tags = ?, updated_at = ? WHERE name = ?",
                    [description, json.dumps(merged), utcnow(), name])

    def registered_models(self, name: str | None = None) -> list[dict[str, Any]]:
        where = " WHERE m.name = ?" if name is not None else ""
        with self._registry_read() as con:
            rows = self._x(con, "SELECT m.name, m.description, m.tags, m.created_at,"
                                " m.updated_at, (SELECT max(version) FROM model_versions v"
                                " WHERE v.name = m.name AND v.deleted_at IS NULL)"
                                " FROM registered_models m" + where + " ORDER BY m.name",
                           [name] if name is not None else []).fetchall()
            aliases = self._x(con, "SELECT name, alias, version FROM model_aliases"
                                   + (" WHERE name = ?" if name is not None else "")
                                   + " ORDER BY alias",
                              [name] if name is not None else []).fetchall()
        by_model: dict[str, dict[str, int]] = {}
        for n, a, v in aliases:
            by_model.setdefault(n, {})[a] = int(v)
        return [{"name": n, "description": d, "tags": _json(t), "created_at": c,
                 "updated_at": u, "latest_version": None if lv is None else int(lv),
                 "aliases": by_model.get(n, {})} for n, d, t, c, u, lv in rows]

    # --- versions ---------------------------------------------------------------------------

    def create_model_version(self, name: str, run_id: str, model: str, *,
                             description: str | None, created_by: str) -> tuple[int, bool]:
        now = utcnow()
        with self._registry_write() as con:
            run = self._x(con, "SELECT r.status, EXISTS (SELECT 1 FROM models m WHERE"
                               " m.run_id = r.run_id AND m.name = ?) FROM runs r"
                               " WHERE r.run_id = ?", [model, run_id]).fetchone()
            if run is None:
                raise RegistryError(f"Run {run_id} does not exist; it cannot be registered.",
                                    hint="List runs with `batchml runs`.")
            if run[0] != "completed":
                raise RegistryError(f"Run {run_id} is {run[0]}; only a completed run's model "
                                    "can be registered.", hint="Pick a completed run.")
            if not run[1]:
                raise RegistryError(f"Run {run_id} has no model named {model!r}.",
                                    hint=f"See its models with `batchml run show {run_id}`.")
            self._ensure_model(con, name, now)
            same = self._x(con, "SELECT version FROM model_versions WHERE name = ? AND"
                                " run_id = ? AND model = ? AND deleted_at IS NULL",
                           [name, run_id, model]).fetchone()
            if same is not None:  # registering the same model again (a retried flow)
                return int(same[0]), False
            version = int(self._x(con, "SELECT coalesce(max(version), 0) + 1 FROM"
                                       " model_versions WHERE name = ?", [name]).fetchone()[0])
            self._x(con, "INSERT INTO model_versions (name, version, run_id, model, description,"
                         " created_at, created_by) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [name, version, run_id, model, description, now, created_by])
            self._x(con, "UPDATE registered_models SET updated_at = ? WHERE name = ?",
                    [now, name])
        return version, True

    def model_versions(self, name: str, version: int | None = None, *,
                       run_id: str | None = None) -> list[dict[str, Any]]:
        sql = ("SELECT " + ", ".join(_VERSION_COLS) + " FROM model_versions WHERE name = ?")
        params: list[Any] = [name]
        if version is not None:
            sql += " AND version = ?"
            params.append(int(version))
        if run_id is not None:
            sql += " AND run_id = ?"
            params.append(run_id)
        with self._registry_read() as con:
            rows = self._x(con, sql + " ORDER BY version", params).fetchall()
        return [dict(zip(_VERSION_COLS, r, strict=True)) for r in rows]

    def versions_of_run(self, run_id: str) -> list[tuple[str, int]]:
        with self._registry_read() as con:
            rows = self._x(con, "SELECT name, version FROM model_versions WHERE run_id = ?"
                                " AND deleted_at IS NULL ORDER BY name, version",
                           [run_id]).fetchall()
        return [(n, int(v)) for n, v in rows]

    def delete_model_version(self, name: str, version: int) -> None:
        with self._registry_write() as con:
            self._lock_model(con, name)
            row = self._x(con, "SELECT deleted_at FROM model_versions WHERE name = ? AND"
                               " version = ?", [name, version]).fetchone()
            if row is None or row[0] is not None:
                raise _no_version(name, version)
            held = [a for (a,) in self._x(con, "SELECT alias FROM model_aliases WHERE name = ?"
                                               " AND version = ? ORDER BY alias",
                                          [name, version]).fetchall()]
            if held:
                raise RegistryError(
                    f"Version {name}/{version} is held by alias(es) {', '.join(held)}; a "
                    "version an alias points at cannot be deleted.",
                    hint=f"Move the alias first: batchml models alias {name} {held[0]} "
                         "VERSION.")
            self._x(con, "UPDATE model_versions SET deleted_at = ? WHERE name = ? AND"
                         " version = ?", [utcnow(), name, version])

    def _lock_model(self, con: Any, name: str) -> None:
        if not self._x(con, "SELECT name FROM registered_models WHERE name = ?"
                       + self._for_update, [name]).fetchall():
            raise _no_model(name)

    # --- aliases ----------------------------------------------------------------------------

    def move_alias(self, name: str, alias: str, version: int | None, *, expect: int | None,
                   moved_by: str, reason: str | None) -> int:
        with self._registry_write() as con:
            self._lock_model(con, name)
            if version is not None:
                row = self._x(con, "SELECT v.deleted_at, r.status FROM model_versions v"
                                   " LEFT JOIN runs r ON r.run_id = v.run_id"
                                   " WHERE v.name = ? AND v.version = ?",
                              [name, version]).fetchone()
                if row is None or row[0] is not None:
                    raise _no_version(name, version)
                if row[1] != "completed":
                    raise RegistryError(
                        f"Version {name}/{version} comes from a run that is {row[1]}; an alias "
                        "may only point at a version whose run completed.",
                        hint=f"List versions with `batchml models versions {name}`.")
            current = self._x(con, "SELECT version, seq FROM model_aliases WHERE name = ? AND"
                                   " alias = ?", [name, alias]).fetchone()
            holder = None if current is None else int(current[0])
            if holder != expect:
                raise AliasConflict(name, alias, expected=expect, current=holder)
            seq = int(self._x(con, "SELECT coalesce(max(seq), 0) + 1 FROM alias_moves WHERE"
                                   " name = ? AND alias = ?", [name, alias]).fetchone()[0])
            now = utcnow()
            self._x(con, "INSERT INTO alias_moves (name, alias, seq, from_version, to_version,"
                         " moved_at, moved_by, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [name, alias, seq, holder, version, now, moved_by, reason])
            if version is None:
                self._x(con, "DELETE FROM model_aliases WHERE name = ? AND alias = ?",
                        [name, alias])
            elif current is None:
                self._x(con, "INSERT INTO model_aliases (name, alias, version, seq, moved_at)"
                             " VALUES (?, ?, ?, ?, ?)", [name, alias, version, seq, now])
            else:
                self._x(con, "UPDATE model_aliases SET version = ?, seq = ?, moved_at = ?"
                             " WHERE name = ? AND alias = ?", [version, seq, now, name, alias])
        return seq

    def alias_target(self, name: str, alias: str) -> tuple[int, str, str] | None:
        with self._registry_read() as con:
            return self._alias_target(con, name, alias)

    def _alias_target(self, con: Any, name: str, alias: str) -> tuple[int, str, str] | None:
        """(version, run_id, model) the alias points at now, or None."""
        row = self._x(con, "SELECT a.version, v.run_id, v.model FROM model_aliases a JOIN"
                           " model_versions v ON v.name = a.name AND v.version = a.version"
                           " WHERE a.name = ? AND a.alias = ?", [name, alias]).fetchone()
        return None if row is None else (int(row[0]), str(row[1]), str(row[2]))

    def _version_target(self, con: Any, name: str, version: int) -> tuple[str, str] | None:
        row = self._x(con, "SELECT run_id, model FROM model_versions WHERE name = ? AND"
                           " version = ? AND deleted_at IS NULL", [name, version]).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def _choose_registered(self, con: Any, name: str | None, alias: str | None,
                           version: int | None) -> tuple[str, int, str, str | None] | None:
        """(name, version, run_id, alias) a registered reference points at now (inside the
        claim's transaction), or None (no reference, or the alias or version is not there)."""
        if name is None:
            return None
        if alias is not None:
            target = self._alias_target(con, name, alias)
            return None if target is None else (name, target[0], target[1], alias)
        if version is None:
            raise ValueError("A registered model needs an alias or a version.")
        found = self._version_target(con, name, version)
        return None if found is None else (name, int(version), found[0], None)

    def _registered_as(self, con: Any, run_id: str) -> tuple[str, int] | None:
        row = self._x(con, "SELECT name, version FROM model_versions WHERE run_id = ? AND"
                           " deleted_at IS NULL ORDER BY created_at DESC LIMIT 1",
                      [run_id]).fetchone()
        return None if row is None else (str(row[0]), int(row[1]))

    def alias_history(self, name: str, alias: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT " + ", ".join(_MOVE_COLS) + " FROM alias_history WHERE name = ?"
        params: list[Any] = [name]
        if alias is not None:
            sql += " AND alias = ?"
            params.append(alias)
        with self._registry_read() as con:
            rows = self._x(con, sql + " ORDER BY valid_from, alias, seq", params).fetchall()
        return [dict(zip(_MOVE_COLS, r, strict=True)) for r in rows]

    def alias_at(self, name: str, alias: str, when: datetime) -> int | None:
        with self._registry_read() as con:
            row = self._x(con, "SELECT to_version FROM alias_moves WHERE name = ? AND"
                               " alias = ? AND moved_at <= ? ORDER BY seq DESC LIMIT 1",
                          [name, alias, when]).fetchone()
        return None if row is None or row[0] is None else int(row[0])


def _json(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    return dict(json.loads(value)) if isinstance(value, str) else dict(value)


def _no_model(name: str) -> RegistryError:
    return RegistryError(f"No registered model {name!r}.",
                         hint="List them with `batchml models list`; a model is registered "
                              "when a training run passes its gate, or with "
                              "`batchml models register`.")


def _no_version(name: str, version: int) -> RegistryError:
    return RegistryError(f"Model {name!r} has no version {version}.",
                         hint=f"List its versions with `batchml models versions {name}`.")
