"""Inference parameters: what a model accepts at scoring time, and how overrides are resolved.

The contract (stable: flavors and the scoring paths build on it):

- A model declares its parameters as :class:`ParamSpec` values (``name``, ``type`` one of
  :data:`PARAM_TYPES`, ``default``, optional inclusive ``minimum`` / ``maximum`` for numbers,
  optional ``choices``, ``description``). They travel in the model's signature
  (``Signature.params``, serialised under ``"params"``; signatures stored before parameters
  existed load with none, and the estimator fills in its own when it is loaded).
- Every flavor has the built-ins (:func:`builtin_params`): ``threshold`` (binary models only:
  the decision threshold; its default is the one chosen in training), ``explain`` (number of
  explanation terms per row, 0 = off) and ``batch_size`` (rows per model call, 0 = the batch
  as read). A flavor adds its own with ``Estimator.flavor_params`` (a class attribute) or by
  overriding ``Estimator.inference_params()``; a flavor's spec with a built-in's name replaces
  the built-in (another default or range of ``batch_size``, say).
- :func:`resolve_params` merges override *layers* into one plain dict holding every declared
  parameter (defaults filled in). Layers come lowest precedence first; the levels, from
  lowest to highest, are :data:`LEVELS`: the signature's default < ``deployment`` (the flow
  parameter in ``deploy/prefect.yaml``) < ``inbox settings`` (``BATCHML_PARAMS``) < ``batch``
  (``batchml predict --param``) < ``request`` (HTTP: MLflow ``params``, v2 ``parameters``) <
  ``call`` (``model.predict(df, params=...)``). A value of None in a layer means "not set here".
- A layer whose values are text (the CLI's ``--param k=v``, environment variables) is marked
  ``text=True`` and its values are parsed by each spec's type; other layers must give values of
  the right type (an int is fine for a float; a bool is never a number).
- Anything wrong (an unknown name, a wrong type, a value out of range or not among the choices)
  raises :class:`~batchml.errors.InvalidParams` (re-exported here): terminal, a ``ValueError``, naming the parameter, the layer it
  came from and what it accepts (for an unknown name: the names that exist). It is raised
  before any row is scored.
- Estimators receive the resolved dict as the keyword ``params`` of
  ``Estimator.predict_proba(frame, params=...)`` and ``Estimator.output_columns(batch, proba,
  index, params=...)`` (None means the defaults). A flavor's ``_predict_proba`` (or
  ``_predict_proba_arrow``) that takes a ``params`` keyword receives it too.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import InvalidParams

__all__ = ["BATCH_SIZE", "EXPLAIN", "LEVELS", "PARAM_TYPES", "InvalidParams", "ParamLayer",
           "ParamSpec", "builtin_params", "json_schema", "merge_specs", "params_json", "parse_assignments",
           "resolve_params", "specs_from_json", "specs_to_list", "threshold_param"]

PARAM_TYPES: tuple[str, ...] = ("float", "int", "bool", "str")
"""The types a parameter may have."""

LEVELS: tuple[str, ...] = ("deployment", "inbox settings", "batch", "request", "call")
"""The override levels, lowest precedence first (the signature's default is below them all)."""

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def _number(value: float | int) -> str:
    return repr(value) if isinstance(value, float) and not value.is_integer() else (
        str(int(value)) if isinstance(value, float) else str(value))


@dataclass(frozen=True)
class ParamSpec:
    """One inference parameter a model accepts.

    ``type`` is one of :data:`PARAM_TYPES`; ``minimum`` and ``maximum`` (inclusive, numbers
    only) and ``choices`` are optional limits; ``default`` must satisfy them.
    """

    name: str
    type: str
    default: Any
    minimum: float | int | None = None
    maximum: float | int | None = None
    choices: tuple[Any, ...] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"Parameter name {self.name!r} is not an identifier "
                             "(letters, digits, underscores).")
        if self.type not in PARAM_TYPES:
            raise ValueError(f"Parameter {self.name!r} has type {self.type!r}; use one of "
                             f"{', '.join(PARAM_TYPES)}.")
        if (self.minimum is not None or self.maximum is not None) and \
                self.type not in ("float", "int"):
            raise ValueError(f"Parameter {self.name!r} of type {self.type} cannot have a range.")
        if self.choices is not None:
            object.__setattr__(self, "choices", tuple(self.choices))
            if not self.choices:
                raise ValueError(f"Parameter {self.name!r} has an empty list of choices.")
            for choice in self.choices:
                self.check(choice, layer="choices")
        try:
            object.__setattr__(self, "default", self.check(self.default, layer="default"))
        except InvalidParams as exc:
            raise ValueError(f"Parameter {self.name!r}: its default is refused: "
                             f"{exc.message}") from exc

    # --- what it accepts ----------------------------------------------------------------------

    def accepts(self) -> str:
        """What the parameter accepts, in words: ``a float in [0, 1]``, ``one of 'a', 'b'``."""
        kind = {"float": "a float", "int": "an integer", "bool": "a boolean (true or false)",
                "str": "a string"}[self.type]
        if self.choices is not None:
            return f"{kind}, one of {', '.join(_show(c) for c in self.choices)}"
        if self.minimum is not None and self.maximum is not None:
            return f"{kind} in [{_number(self.minimum)}, {_number(self.maximum)}]"
        if self.minimum is not None:
            return f"{kind} >= {_number(self.minimum)}"
        if self.maximum is not None:
            return f"{kind} <= {_number(self.maximum)}"
        return kind

    def _refuse(self, value: Any, layer: str, why: str) -> InvalidParams:
        return InvalidParams(f"Inference parameter {self.name!r} from the {layer} is "
                             f"{_show(value)}{why}; it accepts {self.accepts()}.",
                             hint=f"Pass {self.name} as {self.accepts()}, or leave it out "
                                  f"(default {_show(self.default)}).",
                             param=self.name, layer=layer)

    def check(self, value: Any, *, layer: str) -> Any:
        """``value`` as this parameter's type (an int becomes a float for a float parameter),
        or :class:`InvalidParams` naming the parameter, ``layer`` and what it accepts."""
        if self.type == "float":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise self._refuse(value, layer, f" ({type(value).__name__})")
            if not math.isfinite(float(value)):
                raise self._refuse(value, layer, " (not finite)")
            value = float(value)
        elif self.type == "int":
            if isinstance(value, float) and value.is_integer() and math.isfinite(value):
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int):
                raise self._refuse(value, layer, f" ({type(value).__name__})")
            value = int(value)
        elif self.type == "bool":
            if not isinstance(value, bool):
                raise self._refuse(value, layer, f" ({type(value).__name__})")
        elif not isinstance(value, str):
            raise self._refuse(value, layer, f" ({type(value).__name__})")
        if self.minimum is not None and value < self.minimum:
            raise self._refuse(value, layer, " (below the minimum)")
        if self.maximum is not None and value > self.maximum:
            raise self._refuse(value, layer, " (above the maximum)")
        if self.choices is not None and layer != "choices" and value not in self.choices:
            raise self._refuse(value, layer, " (not one of the choices)")
        return value

    def parse(self, text: str, *, layer: str) -> Any:
        """``text`` (from the command line or an environment variable) read as this
        parameter's type, then :meth:`check`-ed."""
        raw = text.strip() if self.type != "str" else text
        value: Any = raw
        if self.type == "float":
            try:
                value = float(raw)
            except ValueError:
                raise self._refuse(text, layer, " (not a number)") from None
        elif self.type == "int":
            try:
                value = int(raw)
            except ValueError:
                raise self._refuse(text, layer, " (not an integer)") from None
        elif self.type == "bool":
            if raw.lower() not in (*_TRUE, *_FALSE):
                raise self._refuse(text, layer, " (not true or false)")
            value = raw.lower() in _TRUE
        return self.check(value, layer=layer)

    # --- serialisation -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The spec as a JSON-safe dict (limits left out when unset)."""
        out: dict[str, Any] = {"name": self.name, "type": self.type, "default": self.default}
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        if self.choices is not None:
            out["choices"] = list(self.choices)
        out["description"] = self.description
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ParamSpec:
        """The spec described by :meth:`to_dict`'s output."""
        choices = data.get("choices")
        return cls(name=str(data["name"]), type=str(data["type"]), default=data["default"],
                   minimum=data.get("minimum"), maximum=data.get("maximum"),
                   choices=tuple(choices) if choices is not None else None,
                   description=str(data.get("description", "")))


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float) or value is None:
        return json.dumps(value) if not isinstance(value, str) else repr(value)
    return f"{value!r}"


# --- the built-ins ---------------------------------------------------------------------------


def threshold_param(default: float = 0.5) -> ParamSpec:
    """The ``threshold`` parameter of a binary model, defaulting to its trained threshold."""
    return ParamSpec("threshold", "float", float(default), minimum=0.0, maximum=1.0,
                     description="Binary decision threshold: the positive class is predicted "
                                 "when its probability is at least this.")


EXPLAIN = ParamSpec("explain", "int", 0, minimum=0, maximum=1000,
                    description="Explanation terms per row (the column 'explanation': the "
                                "largest feature contributions); 0 = no explanation.")
BATCH_SIZE = ParamSpec("batch_size", "int", 0, minimum=0,
                       description="Rows per model call; 0 = each batch as read.")


def builtin_params(*, binary: bool, threshold: float = 0.5) -> tuple[ParamSpec, ...]:
    """The parameters every flavor has: ``threshold`` (binary models, default ``threshold``),
    ``explain`` and ``batch_size``."""
    return ((threshold_param(threshold),) if binary else ()) + (EXPLAIN, BATCH_SIZE)


def merge_specs(*groups: Iterable[ParamSpec]) -> tuple[ParamSpec, ...]:
    """The specs of ``groups`` in order, a later spec replacing an earlier one of its name
    (in the earlier one's place)."""
    out: dict[str, ParamSpec] = {}
    for group in groups:
        for spec in group:
            out[spec.name] = spec
    return tuple(out.values())


# --- resolving ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParamLayer:
    """One level of overrides: its ``name`` (see :data:`LEVELS`; used in messages), its
    ``values`` and whether they are ``text`` to be parsed by each spec's type."""

    name: str
    values: Mapping[str, Any] | None
    text: bool = False


def resolve_params(specs: Sequence[ParamSpec], layers: Iterable[ParamLayer] = ()
                   ) -> dict[str, Any]:
    """Every parameter of ``specs`` with its value: the default, overridden by each layer in
    turn (``layers`` lowest precedence first; a None value is "not set here").

    Raises :class:`InvalidParams` for an unknown name (listing the names that exist), a wrong
    type or a value out of range, naming the parameter and the layer.
    """
    by_name = {s.name: s for s in specs}
    resolved = {s.name: s.default for s in specs}
    for layer in layers:
        if layer.values is None:
            continue
        if not isinstance(layer.values, Mapping):
            raise InvalidParams(f"Inference parameters from the {layer.name} must be an object "
                                f"of name -> value, got {type(layer.values).__name__}.",
                                hint=_known(by_name), layer=layer.name)
        for name, value in layer.values.items():
            spec = by_name.get(name)
            if spec is None:
                raise InvalidParams(f"Unknown inference parameter {name!r} from the "
                                    f"{layer.name}.", hint=_known(by_name), param=str(name),
                                    layer=layer.name)
            if value is None:
                continue
            if layer.text and isinstance(value, str):
                resolved[name] = spec.parse(value, layer=layer.name)
            else:
                resolved[name] = spec.check(value, layer=layer.name)
    return resolved


def _known(by_name: Mapping[str, ParamSpec]) -> str:
    if not by_name:
        return "This model takes no inference parameters."
    return "The model's parameters are: " + "; ".join(
        f"{s.name} ({s.accepts()}, default {_show(s.default)})" for s in by_name.values()) + "."


def parse_assignments(items: Iterable[str], *, layer: str = "batch") -> dict[str, str]:
    """``NAME=VALUE`` strings (``batchml predict --param``) as a dict of text values (resolve
    them with ``ParamLayer(layer, values, text=True)``)."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise InvalidParams(f"Inference parameter {item!r} from the {layer} is not "
                                "NAME=VALUE.", hint="Write it as e.g. --param threshold=0.3.",
                                layer=layer)
        out[name.strip()] = value
    return out


def params_json(params: Mapping[str, Any] | None) -> str | None:
    """Resolved parameters as the JSON text the catalog and the prediction log record
    (keys sorted), or None for none."""
    if params is None:
        return None
    return json.dumps(dict(params), sort_keys=True, separators=(",", ":"))


def json_schema(specs: Iterable[ParamSpec]) -> dict[str, Any]:
    """The JSON Schema of an object of these parameters (OpenAPI): each a property with its
    type (or null: not set, the default), default, limits, choices and description; no
    others."""
    kinds = {"float": "number", "int": "integer", "bool": "boolean", "str": "string"}
    props: dict[str, Any] = {}
    for spec in specs:
        prop: dict[str, Any] = {"type": [kinds[spec.type], "null"], "default": spec.default}
        if spec.minimum is not None:
            prop["minimum"] = spec.minimum
        if spec.maximum is not None:
            prop["maximum"] = spec.maximum
        if spec.choices is not None:
            prop["enum"] = [*spec.choices, None]
        if spec.description:
            prop["description"] = spec.description
        props[spec.name] = prop
    return {"type": "object", "properties": props, "additionalProperties": False}


def specs_to_list(specs: Iterable[ParamSpec]) -> list[dict[str, Any]]:
    """``specs`` as a JSON-safe list (what ``Signature.to_dict`` writes under ``"params"``)."""
    return [s.to_dict() for s in specs]


def specs_from_json(data: Any) -> tuple[ParamSpec, ...]:
    """The specs stored under a signature's ``"params"``: a list of :meth:`ParamSpec.to_dict`
    dicts. Signatures stored before parameters existed hold a dict there (the trained
    ``threshold``, a scoring ``explain``) or nothing: those become the matching built-ins."""
    if not data:
        return ()
    if isinstance(data, Mapping):  # the older form: name -> value
        out: list[ParamSpec] = []
        if "threshold" in data:
            out.append(threshold_param(float(data["threshold"])))
        if "explain" in data:
            out.append(ParamSpec(**{**EXPLAIN.to_dict(), "default": int(data["explain"])}))
        return tuple(out)
    return tuple(ParamSpec.from_dict(d) for d in data)
