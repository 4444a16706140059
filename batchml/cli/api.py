"""``batchml serve-api``: score over HTTP (MLflow's scoring protocol, Open Inference v2)."""

from __future__ import annotations

from typing import Annotated

import typer

from ._common import CatalogOpt, HomeOpt, clean_errors, out, settings_from


@clean_errors
def serve_api(
    model: Annotated[str | None, typer.Option(
        "--model", help="The model to serve: NAME@ALIAS (followed as the alias moves), "
                        "NAME/VERSION, a run id or tag:NAME (default BATCHML_MODEL, then "
                        "BATCHML_MODEL_TAG).")] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (default "
                                             "BATCHML_API_HOST, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default BATCHML_API_PORT, "
                                             "8080).")] = None,
    home: HomeOpt = None, catalog: CatalogOpt = None,
) -> None:
    """Serve a model over HTTP: POST /invocations (MLflow) and /v2/models/NAME/infer (KServe,
    Triton); OpenAPI at /openapi.json. Ctrl-C stops."""
    import uvicorn

    from ..api import create_app

    settings = settings_from(home, catalog)
    app = create_app(settings, model)
    host = host or settings.api_host
    port = settings.api_port if port is None else port
    out.print(f"batchml serve-api: {app.state.api.ref} on http://{host}:{port}")
    uvicorn.run(app, host=host, port=port, log_level="warning")
