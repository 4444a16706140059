"""The flavor registry: which :class:`~batchml.estimators.base.Estimator` class loads each model
flavor and builds each training candidate.

A :class:`FlavorRegistry` is an ordinary object, made where it is needed (``load_estimator`` and
``make_estimator`` make one per call; a caller that loads many models may make one and pass it
down). :func:`default_registry` holds the built-in flavors and the flavors third-party packages
declare in the entry point group ``batchml.flavors`` (``docs/flavors.md``)::

    [project.entry-points."batchml.flavors"]
    keyword = "batchml_keyword:KeywordEstimator"

Nothing is imported before it is asked for: the keras flavor's module and a third-party
flavor's module are imported the first time their flavor (or, for a candidate, any flavor not
already loaded) is looked up, and the installed packages' metadata is read only when a name is
not a built-in one. So loading a built-in model never reads entry points, and a broken
third-party package never breaks the built-in flavors: it is skipped with a logged warning that
names its entry point, and asking for its flavor raises an error that names it too.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING

from ..errors import ConfigError, ModelError
from .base import Estimator

if TYPE_CHECKING:  # importlib.metadata costs ~25 ms to import: only when entry points are read
    from importlib.metadata import EntryPoint

log = logging.getLogger("batchml.estimators")

ENTRY_POINT_GROUP = "batchml.flavors"
"""The entry point group third-party packages declare their flavors in."""

Loader = Callable[[], object]


@dataclass(frozen=True)
class BrokenFlavor:
    """A flavor that was declared but could not be registered, and why."""

    flavor: str
    source: str
    """Where it was declared: ``entry point 'name = module:Class' (distribution x 1.0)``."""
    reason: str

    @property
    def message(self) -> str:
        return f"{self.source} in group {ENTRY_POINT_GROUP!r}: {self.reason}"

    @property
    def hint(self) -> str:
        return ("Fix or uninstall the package that declares it (pip show / pip uninstall); the "
                "built-in flavors are not affected.")


@dataclass
class _Lazy:
    """A flavor known by name whose class is imported on first use."""

    load: Loader
    source: str
    candidates: frozenset[str]
    """Its candidates, when known before loading (the built-in keras flavor's)."""


class FlavorRegistry:
    """Model flavors by name, and the candidates their classes build.

    :meth:`register` adds a class now; :meth:`register_lazy` adds a flavor whose class a
    callable returns on first use; ``discover`` (a callable returning entry points, e.g.
    :func:`flavor_entry_points`) is called once, the first time a name is not found among the
    registered ones. Order is kept: built-ins first, in registration order.

    The registry caches what it loaded for its own lifetime only; there is no process-wide
    registry (see ``load_estimator``).
    """

    def __init__(self, *, discover: Callable[[], Iterable[EntryPoint]] | None = None) -> None:
        self._order: list[str] = []
        self._classes: dict[str, type[Estimator]] = {}
        self._lazy: dict[str, _Lazy] = {}
        self._broken: dict[str, BrokenFlavor] = {}
        self._discover = discover

    def __repr__(self) -> str:
        return f"<FlavorRegistry {', '.join(self._order)}>"

    # --- adding ----------------------------------------------------------------------------

    def register(self, cls: object) -> type[Estimator]:
        """Add the estimator class ``cls`` under its ``flavor``; returns it.

        Raises :class:`ConfigError` when ``cls`` is not a concrete :class:`Estimator` subclass
        with a ``flavor``, ``file_suffix`` and ``candidates``, or when its flavor or one of its
        candidate names is taken already.
        """
        checked = _checked_class(cls)
        flavor = checked.flavor
        if flavor in self._classes or flavor in self._lazy:
            raise ConfigError(f"Model flavor {flavor!r} is registered already "
                              f"({self._describe(flavor)}).",
                              hint="Give the flavor another name.")
        taken = {c: f for f, k in self._classes.items() for c in k.candidates}
        taken |= {c: f for f, lazy in self._lazy.items() for c in lazy.candidates}
        clash = sorted(set(checked.candidates) & set(taken))
        if clash:
            raise ConfigError(f"Candidate {clash[0]!r} of flavor {flavor!r} is a candidate of "
                              f"flavor {taken[clash[0]]!r} already.",
                              hint="Give the candidates names of their own (prefix them with "
                                   "the flavor's name).")
        self._classes[flavor] = checked
        if flavor not in self._order:
            self._order.append(flavor)
        return checked

    def register_lazy(self, flavor: str, load: Loader, *, source: str = "",
                      candidates: Iterable[str] = ()) -> None:
        """Add ``flavor``, whose estimator class ``load()`` returns the first time it is used
        (so its module, and what it imports, is imported only then). ``candidates``, when
        given, lets :meth:`candidate` find the flavor of those names without loading others."""
        if flavor in self._classes or flavor in self._lazy:
            raise ConfigError(f"Model flavor {flavor!r} is registered already "
                              f"({self._describe(flavor)}).",
                              hint="Give the flavor another name.")
        self._lazy[flavor] = _Lazy(load, source or f"lazy flavor {flavor!r}",
                                   frozenset(candidates))
        self._order.append(flavor)

    def _describe(self, flavor: str) -> str:
        if flavor in self._classes:
            cls = self._classes[flavor]
            return f"{cls.__module__}.{cls.__qualname__}"
        return self._lazy[flavor].source

    # --- looking up ------------------------------------------------------------------------

    def get(self, flavor: str) -> type[Estimator]:
        """The estimator class of ``flavor``.

        Raises :class:`ModelError` for a flavor nobody declared, or one whose package is
        broken (naming its entry point).
        """
        cls = self._classes.get(flavor)
        if cls is not None:
            return cls
        if flavor not in self._lazy:
            self._discover_once()
        if flavor in self._lazy:
            self._load(flavor)
        cls = self._classes.get(flavor)
        if cls is not None:
            return cls
        broken = self._broken.get(flavor)
        if broken is not None:
            raise ModelError(f"Model flavor {flavor!r} could not be loaded: {broken.message}.",
                             hint=broken.hint)
        raise ModelError(f"Unknown model flavor {flavor!r}.",
                         hint=f"This batchml loads: {', '.join(self.names())}.")

    def candidate(self, name: str) -> type[Estimator]:
        """The estimator class that builds candidate ``name``; raises :class:`ConfigError`."""
        for cls in self._classes.values():
            if name in cls.candidates:
                return cls
        for flavor, lazy in list(self._lazy.items()):
            if name in lazy.candidates:
                self._load(flavor)
                if flavor in self._classes and name in self._classes[flavor].candidates:
                    return self._classes[flavor]
        candidates = self.candidates()  # loads the lazy flavors, then looks again
        if name not in candidates:
            broken = "".join(f" Skipped: {b.message}." for b in self.broken())
            raise ConfigError(f"Unknown candidate {name!r}.",
                              hint=f"Use one of {', '.join(candidates)}.{broken}")
        return candidates[name]

    def candidates(self) -> dict[str, type[Estimator]]:
        """Candidate name -> estimator class, for every flavor that loads."""
        return {n: cls for cls in self.flavors().values() for n in cls.candidates}

    def flavors(self) -> dict[str, type[Estimator]]:
        """Flavor name -> estimator class, for every flavor that loads (imports them all)."""
        self._discover_once()
        for flavor in list(self._lazy):
            self._load(flavor)
        return {f: self._classes[f] for f in self._order if f in self._classes}

    def names(self) -> list[str]:
        """The flavors this registry loads, built-ins first."""
        return list(self.flavors())

    def broken(self) -> list[BrokenFlavor]:
        """Flavors declared but skipped so far, with the reason (see the logged warnings)."""
        return list(self._broken.values())

    def load(self, flavor: str, data: bytes) -> Estimator:
        """The estimator of ``flavor`` saved as ``data`` (see ``load_estimator``)."""
        return self.get(flavor).from_bytes(data)

    # --- third-party flavors -----------------------------------------------------------------

    def _discover_once(self) -> None:
        discover, self._discover = self._discover, None
        if discover is None:
            return
        try:
            found = list(discover())
        except Exception as exc:  # unreadable metadata must not break the built-ins
            log.warning("Could not read the %r entry points (%s: %s); only the built-in model "
                        "flavors are available. Check the installed packages' metadata.",
                        ENTRY_POINT_GROUP, type(exc).__name__, exc)
            return
        for ep in found:
            source = _ep_source(ep)
            if ep.name in self._classes or ep.name in self._lazy:
                self._skip(ep.name, source, f"flavor {ep.name!r} is taken by "
                           f"{self._describe(ep.name)}; rename the entry point and the class's "
                           "flavor")
                continue
            if ep.name in self._broken:
                continue
            self._lazy[ep.name] = _Lazy(ep.load, source, frozenset())
            self._order.append(ep.name)

    def _load(self, flavor: str) -> None:
        lazy = self._lazy.pop(flavor)
        try:
            obj = lazy.load()
        except Exception as exc:  # ImportError, or whatever the module raised importing
            self._skip(flavor, lazy.source, f"importing it failed ({type(exc).__name__}: {exc})")
            return
        try:
            cls = _checked_class(obj)
            if cls.flavor != flavor:
                raise ConfigError(f"its class {cls.__qualname__} has flavor {cls.flavor!r}, "
                                  f"not {flavor!r} (the entry point's name must be the flavor)")
            self.register(cls)
        except ConfigError as exc:
            self._skip(flavor, lazy.source, exc.message)

    def _skip(self, flavor: str, source: str, reason: str) -> None:
        broken = BrokenFlavor(flavor, source, reason)
        if flavor in self._order and flavor not in self._classes:
            self._order.remove(flavor)
        self._broken.setdefault(flavor, broken)
        log.warning("Skipping model flavor %r: %s. %s", flavor, broken.message, broken.hint)


def _checked_class(obj: object) -> type[Estimator]:
    if not (isinstance(obj, type) and issubclass(obj, Estimator)):
        raise ConfigError(f"it loads {obj!r}, which is not a subclass of "
                          "batchml.estimators.Estimator",
                          hint="Subclass batchml.estimators.Estimator.")
    if inspect.isabstract(obj):
        missing = ", ".join(sorted(getattr(obj, "__abstractmethods__", ())))
        raise ConfigError(f"{obj.__qualname__} does not implement {missing}",
                          hint="Implement every abstract method of Estimator.")
    for attr, kind in (("flavor", str), ("file_suffix", str), ("candidates", dict)):
        if not isinstance(getattr(obj, attr, None), kind) or not getattr(obj, attr):
            raise ConfigError(f"{obj.__qualname__} has no {attr} ({kind.__name__})",
                              hint="Set the flavor, file_suffix and candidates class "
                                   "attributes.")
    return obj


def _ep_source(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    where = f" (distribution {dist.name} {dist.version})" if dist is not None else ""
    return f"entry point '{ep.name} = {ep.value}'{where}"


def flavor_entry_points() -> list[EntryPoint]:
    """The entry points of group ``batchml.flavors`` of the installed packages."""
    from importlib.metadata import entry_points

    return list(entry_points(group=ENTRY_POINT_GROUP))


def _keras() -> object:
    return import_module(".keras_text", __package__).KerasTextEstimator


def _python() -> object:
    return import_module(".python_model", __package__).PythonEstimator


def _encoder() -> object:
    return import_module(".sentence_encoder", __package__).SentenceEncoderEstimator


def builtin_registry(*, discover: Callable[[], Iterable[EntryPoint]] | None = None
                     ) -> FlavorRegistry:
    """A new registry of the built-in flavors: baseline, keras (imported on first use),
    sklearn, python (user code, :mod:`.python_model`, imported on first use) and encoder
    (imported on first use; torch only when it embeds text); plus the entry points
    ``discover`` returns, if given."""
    from .baseline import BaselineEstimator
    from .sklearn_models import SklearnEstimator

    registry = FlavorRegistry(discover=discover)
    registry.register(BaselineEstimator)
    registry.register_lazy("keras", _keras, source="the built-in keras flavor",
                           candidates=("keras_nbow",))
    registry.register(SklearnEstimator)
    registry.register_lazy("python", _python, source="the built-in python flavor",
                           candidates=("python_model",))
    registry.register_lazy("encoder", _encoder, source="the built-in encoder flavor",
                           candidates=("encoder_minilm",))
    return registry


def default_registry() -> FlavorRegistry:
    """A new registry of the built-in flavors and those of the ``batchml.flavors`` entry
    points of the installed packages (read the first time a name is not a built-in one)."""
    return builtin_registry(discover=flavor_entry_points)
