"""The Prefect flows: thin wiring over the library (training, a micro-batch, the bridge, one
huge file in pieces). Imported lazily (``batchml`` itself never imports Prefect); the
top-level ``flows/`` package re-exports them as deployment entry points."""
