"""``batchml doctor``: check that settings, catalog, artifact store and Prefect API work."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

from .settings import Settings


@dataclass(frozen=True)
class Check:
    """One check's outcome."""

    name: str
    ok: bool
    detail: str


def _check(name: str, fn: object) -> Check:
    try:
        detail = fn()  # type: ignore[operator]
        return Check(name, True, str(detail))
    except Exception as exc:  # a doctor reports every failure instead of stopping at one
        return Check(name, False, f"{type(exc).__name__}: {exc}")


def run_checks(settings: Settings) -> list[Check]:
    """Run every check and return the outcomes (never raises)."""
    from .catalog import Catalog
    from .store import open_store

    def open_catalog() -> Catalog:  # no artifact store: its own check below
        return Catalog.from_settings(settings, with_store=False)

    def catalog() -> str:
        cat = open_catalog()
        return f"{cat.path} (schema v{cat.schema_version()})"

    def published() -> str:
        cat = open_catalog()
        path = cat.publish()
        at = cat.published_at()  # read from the copy, opened read-only as a person would
        return f"{path} (published {at if at is not None else '?'}, opens read-only)"

    def store() -> str:
        st = open_store(str(settings.artifact_root), endpoint_url=settings.s3_endpoint_url,
                        region=settings.s3_region)
        probe = st.put(f".doctor/{uuid.uuid4().hex}", b"ok")
        st.get(probe.uri, sha256=probe.sha256)
        st.delete(probe.uri)
        return f"{st.root} (write/read/delete ok)"

    def prefect_api() -> str:
        url = os.environ.get("PREFECT_API_URL")
        if not url:
            return "no PREFECT_API_URL: `batchml serve` starts its own local server"
        import httpx

        resp = httpx.get(url.rstrip("/") + "/health", timeout=5)
        resp.raise_for_status()
        return f"{url} healthy"

    return [
        Check("settings", True, f"home={settings.home} inbox={settings.inbox} "
              f"outbox={settings.outbox}"),
        _check("catalog", catalog),
        _check("published copy", published),
        _check("artifact store", store),
        _check("prefect api", prefect_api),
    ]
