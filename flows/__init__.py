"""Deployment entry points for ``deploy/prefect.yaml``: each module re-exports a flow of
:mod:`batchml.flows`. The library never imports this package."""
