"""The bytes of a Python model: its code, its artifacts and a manifest, in one zip.

A Python model (:mod:`batchml.estimators.python_model`) is stored as one artifact like every
model, so the artifact store checks its sha256 against the catalog before anything reads it.
Inside, the manifest ``batchml-python-model.json`` lists every shipped file with its own
sha256 and size; :func:`open_bundle` refuses a bundle whose members differ from that list in
any way (a missing, extra, renamed or changed file, a path leaving its folder) before one
byte of it is written to disk or imported. Nothing is unpickled: the model object is the
user's class, named ``module:Class``, built with no arguments.

Layout of the zip::

    batchml-python-model.json       the manifest (below)
    code/<file or package>/...      the user's code (a .py file or a package folder)
    artifacts/<name>/<file>...      each named artifact (a file, or a folder's files)

The manifest also records the environment the model was logged in (:func:`environment`):
Python's version, batchml's, and the versions of the packages the user listed
(``requirements``) and of the packages the code imports; :func:`environment_problems` compares
them with this process's.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import logging
import re
import sys
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import ChecksumMismatch, ConfigError, ModelError

log = logging.getLogger("batchml.estimators")

MANIFEST = "batchml-python-model.json"
FORMAT = "batchml-python-model"
FORMAT_VERSION = 1
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
_SKIP_DIRS = {"__pycache__", ".git", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
_PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:==\s*([^\s;,]+))?\s*$")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class BundleFiles:
    """What goes into a bundle: relative path in the zip -> bytes, and the manifest."""

    files: dict[str, bytes] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)


def _folder_files(root: Path) -> list[tuple[str, Path]]:
    """(relative posix path, path) of every file under ``root``, sorted; caches skipped."""
    out = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part in _SKIP_DIRS for part in rel.parts) or path.suffix == ".pyc":
            continue
        if path.is_file():
            out.append((rel.as_posix(), path))
    return out


def collect(code: str | Path, artifacts: Mapping[str, str | Path] | None = None) -> BundleFiles:
    """Read the code (a ``.py`` file or a package folder) and the named artifacts (files or
    folders) into memory; raises :class:`ConfigError` naming a missing or unusable path."""
    bundle = BundleFiles()
    code_path = Path(code)
    if code_path.is_file():
        if code_path.suffix != ".py":
            raise ConfigError(f"--code {code_path} is not a .py file or a package folder.",
                              hint="Pass the module file (model.py) or the folder of a package "
                                   "(with __init__.py).")
        entries = [(code_path.name, code_path)]
        top = code_path.stem
    elif code_path.is_dir():
        if not (code_path / "__init__.py").is_file():
            raise ConfigError(f"--code {code_path} is a folder without __init__.py.",
                              hint="Ship a package folder (add __init__.py) or a single .py file.")
        entries = [(f"{code_path.name}/{rel}", p) for rel, p in _folder_files(code_path)]
        top = code_path.name
    else:
        raise ConfigError(f"--code {code_path} does not exist.",
                          hint="Pass the path of the model's .py file or package folder.")
    if not top.isidentifier():
        raise ConfigError(f"The code's module name {top!r} is not a Python identifier.",
                          hint="Rename the file or folder (letters, digits, '_').")
    code_files = {}
    for rel, path in entries:
        data = path.read_bytes()
        bundle.files[f"code/{rel}"] = data
        code_files[rel] = {"sha256": sha256_bytes(data), "bytes": len(data)}
    arts: dict[str, Any] = {}
    for name, where in (artifacts or {}).items():
        if not _NAME.match(name):
            raise ConfigError(f"Artifact name {name!r} is not allowed.",
                              hint="Use 1-128 letters, digits, '_', '.' or '-'.")
        p = Path(where)
        if p.is_file():
            items = [(p.name, p)]
        elif p.is_dir():
            items = _folder_files(p)
        else:
            raise ConfigError(f"Artifact {name!r}: {p} does not exist.",
                              hint="Pass --artifacts NAME=PATH with a file or folder that exists.")
        files = {}
        for rel, path in items:
            data = path.read_bytes()
            bundle.files[f"artifacts/{name}/{rel}"] = data
            files[rel] = {"sha256": sha256_bytes(data), "bytes": len(data)}
        arts[name] = {"kind": "file" if p.is_file() else "folder", "files": files}
    bundle.manifest = {"format": FORMAT, "version": FORMAT_VERSION, "code": {
        "module": top, "files": code_files}, "artifacts": arts}
    return bundle


def code_imports(files: Mapping[str, bytes], own: str) -> set[str]:
    """Top-level names the shipped code imports absolutely (not the standard library, not its
    own package, not batchml)."""
    names: set[str] = set()
    for path, data in files.items():
        if not path.startswith("code/") or not path.endswith(".py"):
            continue
        try:
            tree = ast.parse(data)
        except SyntaxError:
            continue  # reported when the code is imported
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names
            if n not in sys.stdlib_module_names and n not in (own, "batchml", "__future__")}


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def environment(requirements: Iterable[str], imports: Iterable[str]) -> dict[str, Any]:
    """The environment to record: Python's and batchml's versions, each listed requirement
    (``name`` or ``name==version``, which must be what is installed) and the distributions of
    the imported modules."""
    from .. import __version__

    listed: dict[str, str] = {}
    for req in requirements:
        m = _PIN.match(req)
        if not m:
            raise ConfigError(f"Requirement {req!r} is not 'name' or 'name==version'.",
                              hint="List installed packages, e.g. scikit-learn or "
                                   "numpy==2.1.3.")
        name, pin = m.group(1), m.group(2)
        have = _installed(name)
        if have is None:
            raise ConfigError(f"Requirement {name!r} is not installed here.",
                              hint=f"Install it (pip install {req}) before logging the model.")
        if pin is not None and pin != have:
            raise ConfigError(f"Requirement {req!r} asks for {name} {pin}, but {have} is "
                              "installed here.",
                              hint=f"Install {name}=={pin}, or list the installed version.")
        listed[name] = have
    dists = metadata.packages_distributions()
    imported: dict[str, str] = {}
    for module in sorted(set(imports)):
        for dist in dists.get(module, []):
            version = _installed(dist)
            if version is not None and dist not in listed:
                imported[dist] = version
    v = sys.version_info
    return {"python": f"{v.major}.{v.minor}.{v.micro}", "batchml": __version__,
            "requirements": listed, "imports": imported}


def environment_problems(env: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(errors, warnings) comparing a recorded environment with this process: a different
    Python major.minor or listed requirement is an error; a different batchml or version of an
    imported (unlisted) package a warning."""
    from .. import __version__

    errors: list[str] = []
    warnings: list[str] = []
    v = sys.version_info
    here = f"{v.major}.{v.minor}.{v.micro}"
    logged = str(env.get("python", ""))
    if logged.split(".")[:2] != here.split(".")[:2]:
        errors.append(f"the model was logged with Python {logged} and this is Python {here}: "
                      f"run it with Python {'.'.join(logged.split('.')[:2])}, or log it "
                      f"again with Python {v.major}.{v.minor}")
    for name, version in (env.get("requirements") or {}).items():
        have = _installed(name)
        if have != version:
            now = "is not installed" if have is None else f"{have} is installed"
            errors.append(f"requirement {name} was {version} when the model was logged and "
                          f"{now} here: pip install {name}=={version}, or log the model "
                          "again in this environment")
    for name, version in (env.get("imports") or {}).items():
        have = _installed(name)
        if have != version:
            warnings.append(f"{name} was {version} when the model was logged, here it is "
                            f"{have or 'not installed'}")
    if env.get("batchml") and env.get("batchml") != __version__:
        warnings.append(f"batchml was {env['batchml']} when the model was logged, here it is "
                        f"{__version__}")
    return errors, warnings


def write(bundle: BundleFiles) -> bytes:
    """The zip: the manifest first, then every file in sorted order (deterministic bytes)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name in [MANIFEST, *sorted(bundle.files)]:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            data = (json.dumps(bundle.manifest, sort_keys=True, indent=1).encode()
                    if name == MANIFEST else bundle.files[name])
            z.writestr(info, data)
    return buf.getvalue()


def _expected(manifest: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Zip member -> {sha256, bytes} as the manifest lists them."""
    out: dict[str, dict[str, Any]] = {}
    for rel, info in manifest["code"]["files"].items():
        out[f"code/{rel}"] = info
    for name, art in manifest["artifacts"].items():
        for rel, info in art["files"].items():
            out[f"artifacts/{name}/{rel}"] = info
    return out


def _safe(member: str) -> bool:
    p = PurePosixPath(member)
    return not p.is_absolute() and ".." not in p.parts and "\\" not in member and bool(p.parts)


def open_bundle(data: bytes) -> BundleFiles:
    """The manifest and files of a bundle, each file checked against the manifest's sha256
    and size; raises :class:`ChecksumMismatch` or :class:`ModelError` before returning
    anything of a bundle that differs from its manifest."""
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
        manifest = json.loads(z.read(MANIFEST))
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ModelError("These bytes are not a batchml Python model (no manifest).",
                             hint="Load it with the flavor recorded in the catalog.")
        if int(manifest.get("version", 0)) > FORMAT_VERSION:
            raise ModelError(f"The Python model was logged by a newer batchml (format "
                             f"{manifest.get('version')}).", hint="Upgrade batchml to load it.")
        expected = _expected(manifest)
        members = [i.filename for i in z.infolist() if not i.is_dir()]
    except ModelError:
        raise
    except (zipfile.BadZipFile, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ModelError(f"The Python model's bundle is malformed ({exc}).",
                         hint="Log the model again.") from exc
    extra = sorted(set(members) - set(expected) - {MANIFEST})
    missing = sorted(set(expected) - set(members))
    if extra or missing or len(members) != len(set(members)):
        raise ChecksumMismatch(
            "The Python model's bundle does not match its manifest ("
            + "; ".join(([f"unlisted: {', '.join(extra)}"] if extra else [])
                        + ([f"missing: {', '.join(missing)}"] if missing else [])
                        + (["a member appears twice"] if len(members) != len(set(members))
                           else []))
            + "). Nothing of it was loaded.", hint="Log the model again from its source.")
    files: dict[str, bytes] = {}
    for member, info in expected.items():
        if not _safe(member):
            raise ChecksumMismatch(f"The Python model's bundle holds the path {member!r}, "
                                   "which leaves its folder; nothing of it was loaded.",
                                   hint="Log the model again from its source.")
        body = z.read(member)
        if sha256_bytes(body) != info["sha256"] or len(body) != int(info["bytes"]):
            raise ChecksumMismatch(f"File {member} of the Python model has sha256 "
                                   f"{sha256_bytes(body)}, its manifest says {info['sha256']}; "
                                   "nothing of it was loaded.",
                                   hint="The bundle was changed after it was logged; log the "
                                        "model again from its source.")
        files[member] = body
    return BundleFiles(files, manifest)


def extract(bundle: BundleFiles, folder: Path) -> tuple[Path, dict[str, str]]:
    """Write a checked bundle's files under ``folder``; returns the code folder and the local
    path of each artifact (its file, or its folder)."""
    for member, body in bundle.files.items():
        target = folder.joinpath(*PurePosixPath(member).parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(body)
    paths: dict[str, str] = {}
    for name, art in bundle.manifest["artifacts"].items():
        base = folder / "artifacts" / name
        only = next(iter(art["files"]), None)
        base.mkdir(parents=True, exist_ok=True)
        paths[name] = str(base / only) if art.get("kind") == "file" and only else str(base)
    return folder / "code", paths
