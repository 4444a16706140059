"""The HTTP API of ``batchml serve-api`` (:func:`create_app`): MLflow's scoring protocol and
the Open Inference Protocol v2 over one model reference."""

from .app import create_app

__all__ = ["create_app"]
