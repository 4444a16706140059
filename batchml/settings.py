"""One settings object for the whole of batchml.

Values come from keyword arguments, then ``BATCHML_*`` environment variables, then a ``.env``
file in the working directory, then the defaults below. Settings are resolved once at an entry
point (the CLI, a flow) and passed down; no module reads them at import time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_home() -> Path:
    return Path.cwd() / ".batchml"


def default_memory_budget_mb() -> int:
    """The default memory budget per file: min(1024 MiB, 1/8 of this machine's memory, or of
    its cgroup limit when lower). One file never takes more than an eighth of the machine, so
    a worker keeps room beside training and other processes; ordinary files stay far inside
    it (B5: 10M rows scored in 626 MB peak RSS, decoded batches of a few MB)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        raw = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if raw.isdigit():
            total = min(total, int(raw))
    except OSError:
        pass
    return max(64, min(1024, total // 8 // 2**20))


class Settings(BaseSettings):
    """Every knob batchml has. Environment variables use the ``BATCHML_`` prefix."""

    model_config = SettingsConfigDict(
        env_prefix="BATCHML_", env_file=".env", extra="ignore", validate_default=True
    )

    home: Path = Field(
        default_factory=_default_home,
        description="Directory for batchml's own state; the other local paths default inside it.",
    )
    catalog_path: Path | None = Field(
        default=None, description="DuckDB catalog file. Default: HOME/catalog.duckdb."
    )
    catalog_url: str | None = Field(
        default=None,
        description="The catalog as a URL, instead of CATALOG_PATH: postgresql://USER@HOST:PORT/DB "
        "for a catalog shared by many hosts (docs/scaling.md), or duckdb:///PATH. A password "
        "in it is moved to CATALOG_PASSWORD at start-up and never stored, logged or sent to "
        "Prefect.")
    catalog_password: SecretStr | None = Field(
        default=None, exclude=True,
        description="Password for a PostgreSQL catalog (or use PGPASSWORD / ~/.pgpass). Never "
        "serialised: processes Prefect starts read it from their own environment.")
    artifact_root: str | None = Field(
        default=None,
        description="Where models and plots are stored: a local directory or s3://bucket/prefix. "
        "Default: HOME/artifacts.",
    )
    inbox: str | None = Field(
        default=None,
        description="Watched input location: a directory, s3://bucket/prefix or sqs://queue-url. "
        "Default: HOME/inbox.",
    )
    outbox: str | None = Field(
        default=None,
        description="Where prediction parquet is written: a directory or s3://bucket/prefix. "
        "Default: HOME/outbox.",
    )
    quarantine: str | None = Field(
        default=None,
        description="Where unreadable local input files are moved with an error sidecar. "
        "Default: HOME/quarantine.",
    )
    s3_endpoint_url: str | None = Field(
        default=None,
        description="S3 endpoint for S3-compatible servers (MinIO, moto). Credentials always come "
        "from boto3's standard chain (AWS_* variables, profiles, instance roles).",
    )
    s3_region: str | None = Field(default=None, description="AWS region for S3 and SQS clients.")
    sqs_sweep_uri: str | None = Field(
        default=None, pattern=r"^s3://[^/]+",
        description="With an sqs:// inbox: the s3://bucket/prefix its notifications come from, "
        "listed at start and every BATCHML_SQS_SWEEP_S to find files whose notification never "
        "came (unset: the queue alone).")
    sqs_sweep_s: float = Field(
        default=300.0, ge=0,
        description="How often the SQS inbox's prefix (BATCHML_SQS_SWEEP_URI) is listed; 0: "
                    "only at start.")
    published_catalog_path: Path | None = Field(
        default=None,
        description="The read-only copy of the catalog for people and their tools (duckdb CLI, "
        "notebooks), refreshed after each change. Default: CATALOG.readonly.duckdb beside the "
        "catalog.")
    publish_interval_s: float = Field(
        default=1.0, gt=0,
        description="Publish the read-only copy at most this often (a burst of changes is "
        "published once; a large catalog is copied at most 1/10 of the time).")
    lock_timeout_s: float = Field(
        default=60.0, gt=0, description="How long to wait for the catalog lock before giving up."
    )
    lease_s: float = Field(
        default=300.0, gt=0, description="How long a worker's claim on an input file lasts."
    )
    model: str | None = Field(
        default=None,
        description="The model that scores new files, as a reference: NAME@ALIAS (the "
        "version an alias of a registered model points at now, followed as it moves), "
        "NAME/VERSION, a run id (train/12) or tag:NAME. Unset: the latest successful run "
        "carrying model_tag.")
    model_tag: str = Field(
        default="deployment_candidate",
        description="Tag that marks the training run whose model scores new files.",
    )
    train_flow: str = Field(default="train", description="Flow name of training runs.")
    model_name: str | None = Field(
        default=None,
        description="Registered model that a training run whose gate passes adds a version to "
        "(batchml.champion). Default: the label column's name, made a valid model name "
        "('labels', 'segment'): it names what the model predicts, stays the same from one "
        "nightly run to the next (a file name would not), and differs between models that "
        "predict different things in one catalog.")
    promotion: Literal["auto", "manual"] = Field(
        default="auto",
        description="After training, 'auto' moves NAME@champion to the new version when there "
        "is no champion yet or it beats the champion, scored on the same validation data, by "
        "more than promotion_margin (compare-and-set, recorded, undone by `batchml models "
        "rollback`); 'manual' only moves challenger and leaves champion to `batchml models "
        "promote`. Default auto: the gate and the head-to-head comparison guard it, as the "
        "tag has always moved on its own.")
    promotion_margin: float = Field(
        default=0.0, allow_inf_nan=False,
        description="How much the new version must beat the champion by on the gate's primary "
        "metric (roc_auc unless the training says otherwise; lower for log_loss) for automatic "
        "promotion. 0: any strict improvement (a tie keeps the champion); negative: the newer "
        "version wins unless it is worse by more than this.")
    batch_rows: int = Field(
        default=65_536, gt=0, description="Rows scored per record batch (bounds memory)."
    )
    memory_budget_mb: int = Field(
        default_factory=default_memory_budget_mb,
        gt=0,
        description="Memory budget per input file, MiB: the decoded data one file may hold at "
        "once while it is scored or loaded for training, estimated from its footer before "
        "reading (dictionary and run-length expansion included) and checked on every batch. A "
        "file that cannot be read within it is quarantined. Default: min(1024, 1/8 of RAM).",
    )
    max_text_chars: int = Field(
        default=100_000, gt=0,
        description="Longest text value, in characters, a model reads (scoring and training).")
    text_overflow: Literal["truncate", "refuse"] = Field(
        default="truncate",
        description="A longer text value is cut to max_text_chars (counted in batch_files."
        "truncated_values) or, with 'refuse', its file is quarantined naming column and row.")
    max_file_bytes: int | None = Field(
        default=20 * 2**30, gt=0,
        description="An input object larger than this is refused before download (S3, SQS); "
        "unset for no limit.")

    train_uri: str | None = Field(
        default=None, description="Training parquet for scheduled training (path or s3://).")
    valid_uri: str | None = Field(
        default=None, description="Validation parquet for scheduled training.")
    text_column: str | None = Field(
        default="review", description="Text column scheduled training learns from.")
    feature_columns: list[str] | None = Field(
        default=None, description="Feature columns for tabular scheduled training (JSON list); "
        "set BATCHML_TEXT_COLUMN to an empty value to use them.")
    label_column: str = Field(default="labels", description="Label column for training.")
    smoke_path: str | None = Field(
        default=None, description="Smoke examples for training's gate: parquet or .csv (path or "
        "s3://) with the model's input columns and the expected label column. Default: none, "
        "the gate runs only its checks derived from the data.")
    decision_threshold: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Binary decision threshold for scoring, "
        "overriding the one each model recorded at training (chosen on validation; 0.5 for "
        "models trained before thresholds were recorded). Default: the model's.")
    params: dict[str, Any] = Field(
        default_factory=dict, description="Inference parameters for the service's inbox, a JSON "
        "object of name -> value (e.g. {\"threshold\": 0.3, \"explain\": 3}): over the "
        "model's defaults and the deployment's flow parameter `params`, under `batchml "
        "predict --param` and HTTP requests. Checked against the model before any file is "
        "scored.")
    log_format: Literal["text", "json"] = Field(
        default="text", description="Service log lines: human text or one JSON object a line.")
    train_cron: str = Field(default="0 2 * * *",
                            description="When scheduled training runs (cron, server time).")
    isolate_scoring: bool = Field(
        default=True,
        description="batchml serve / watch score each file in a scorer child process, so a file "
        "that kills its scorer (out of memory, a crash in native code) cannot kill the service.")
    poison_attempts: int = Field(
        default=2, ge=1, le=5,
        description="A file that killed the scorer process this many times is quarantined as "
        "poison, with the signal and the peak memory in its reason.")
    scorer_memory_mb: int | None = Field(
        default=None, ge=0,
        description="The scorer process is killed above this resident memory, MiB (its file "
        "then counts an attempt). Default: BATCHML_MEMORY_BUDGET_MB + 512; 0 turns it off.")
    fault_kill_marker: str | None = Field(
        default=None,
        description="Test hook: the scorer process SIGKILLs itself on an input whose file name "
        "contains this string (a poison file without a real OOM). Never set in production.")
    fault_alloc_marker: str | None = Field(
        default=None,
        description="Test hook: the scorer process allocates memory until killed on an input "
        "whose file name contains this string (exercises the memory guard).")

    # --- late labels and shadow scoring (batchml/labels.py, batchml/shadow.py) ---------------
    id_column: str | None = Field(
        default=None, description="The input column that identifies a row (your data's id). "
        "Carried through to every prediction output, even when it is a model input, so late "
        "labels can be joined to predictions. Default: none (late labels are off).")
    labels_inbox: str | None = Field(
        default=None, description="Where label files land (a directory or s3://bucket/prefix):"
        " parquet with BATCHML_ID_COLUMN and BATCHML_LABEL_COLUMN, ingested exactly once by "
        "batchml serve / watch. Default: none (batchml labels ingest PATH still works).")
    labels_lookback_days: float = Field(
        default=30.0, gt=0, description="Labels are looked up in the prediction outputs of "
        "this many days back.")
    shadow: bool = Field(
        default=True, description="When scoring with NAME@ALIAS and NAME@challenger is another "
        "version, also score each file with the challenger into the shadow area and record "
        "the comparison (shadow_comparisons, shadow_batches).")
    shadow_outbox: str | None = Field(
        default=None, description="The shadow area (a directory or s3://bucket/prefix), never "
        "read as outputs. Default: beside the outbox, OUTBOX-shadow.")

    # --- drift per batch (batchml/drift.py) ---------------------------------------------------
    drift: bool = Field(default=True, description="Measure each prediction batch's drift from "
                        "the model's training reference (its drift_reference.json) while it "
                        "is scored; stored in the catalog's batch_drift table.")
    drift_psi_alert: float = Field(default=0.2, ge=0, description="Drift alert: PSI of a "
                                   "numeric feature, a text length or the score above this.")
    drift_js_alert: float = Field(default=0.1, ge=0, le=1, description="Drift alert: "
                                  "Jensen-Shannon distance (base 2) of a categorical feature "
                                  "or a text column's top tokens above this.")
    drift_oov_alert: float = Field(default=0.1, ge=0, le=1, description="Drift alert: a text "
                                   "column's out-of-vocabulary rate this much above the "
                                   "reference's.")
    drift_min_rows: int = Field(default=100, ge=0, description="Batches with fewer rows are "
                                "measured but never alert (too few to judge).")

    # --- online scoring (batchml serve-api) ---------------------------------------------------
    api_host: str = Field(default="127.0.0.1", description="Address `batchml serve-api` "
                          "binds (loopback by default; 0.0.0.0 to serve other hosts).")
    api_port: int = Field(default=8080, ge=0, le=65535, description="Port of the HTTP API.")
    api_max_body_mb: float = Field(default=16.0, gt=0, description="Largest request body "
                                   "accepted, MiB (larger: 413 before it is read).")
    api_max_rows: int = Field(default=10_000, gt=0, description="Most rows one request may "
                              "hold.")
    api_timeout_s: float = Field(default=30.0, gt=0, description="Longest time one request "
                                 "may take (then 504).")
    api_batch_rows: int = Field(default=256, ge=0, description="Micro-batching: most rows "
                                "coalesced into one model call (0: one call per request).")
    api_batch_wait_ms: float = Field(default=2.0, ge=0, description="Micro-batching: under "
                                     "load, how long a model call waits for more requests to "
                                     "join (a lone request is scored at once).")
    api_token: SecretStr | None = Field(default=None, exclude=True, description="Bearer token that state "
                                        "changes need (moving an alias, reprocessing); unset: "
                                        "the web page and API are read-only.")
    api_log_predictions: bool = Field(default=True, description="Append each request's "
                                      "inputs, outputs, model version and latency to parquet "
                                      "by hour under HOME/online (the online_predictions view).")
    api_cors_origins: list[str] = Field(default_factory=list, description="Origins allowed "
                                        "by CORS (none by default: CORS off).")

    # --- metrics (batchml/metrics.py) and the outbox's layout --------------------------------
    metrics_port: int = Field(default=0, ge=0, le=65535, description="`batchml serve` without "
                              "--api serves Prometheus metrics at /metrics on this port (0: "
                              "off; with --api they are at the HTTP API's /metrics).")
    metrics_host: str = Field(default="127.0.0.1", description="Address the metrics port "
                              "binds (loopback by default).")
    output_layout: Literal["flat", "hive"] = Field(
        default="flat",
        description="How outputs are laid out under the outbox: 'flat' is "
        "OUTBOX/<model run>/<input>-<id>.parquet; 'hive' is OUTBOX/date=YYYY-MM-DD/model=NAME-vN/"
        "<input>-<id>.parquet (the UTC date scoring started; the registered version the batch "
        "scored with, else the run id as train-12), read with hive_partitioning (batchml.layout).")

    @field_validator("model_name")
    @classmethod
    def _check_model_name(cls, value: str | None) -> str | None:
        if not value:  # unset, or BATCHML_MODEL_NAME= (empty): the derived default
            return None
        from .catalog.registry import check_registry_name

        return check_registry_name("model", value)

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        self.home = self.home.expanduser().absolute()
        if self.feature_columns or not self.text_column:
            self.text_column = None
        if self.catalog_url is not None:
            self._split_catalog_url()
        if self.catalog_path is None:
            self.catalog_path = self.home / "catalog.duckdb"
        if self.published_catalog_path is None:
            from .catalog.publication import published_path

            self.published_catalog_path = published_path(self.catalog_path)
        for name, sub in [
            ("artifact_root", "artifacts"),
            ("inbox", "inbox"),
            ("outbox", "outbox"),
            ("quarantine", "quarantine"),
        ]:
            if getattr(self, name) is None:
                setattr(self, name, str(self.home / sub))
        return self

    def _split_catalog_url(self) -> None:
        from urllib.parse import unquote, urlsplit, urlunsplit

        url = str(self.catalog_url)
        scheme, sep, rest = url.partition("://")
        if not sep or scheme.lower() == "duckdb":  # a DuckDB file, as a path or a URL
            self.catalog_path = Path(rest if sep else url).expanduser()
            self.catalog_url = None
            return
        scheme = scheme.lower()
        if scheme not in ("postgresql", "postgres"):
            return  # another registered backend; open_backend says if it is unknown
        parts = urlsplit(url)
        if parts.password is not None:
            if self.catalog_password is None:
                self.catalog_password = SecretStr(unquote(parts.password))
            host = parts.netloc.rsplit("@", 1)[1]
            self.catalog_url = urlunsplit(parts._replace(netloc=f"{parts.username or ''}@{host}"))

    @property
    def catalog_file(self) -> Path:
        """The DuckDB catalog path, never None after validation (unused with a URL)."""
        assert self.catalog_path is not None
        return self.catalog_path

    @property
    def catalog_target(self) -> str | Path:
        """What :class:`~batchml.catalog.Catalog` opens: the URL when one is set, else the
        DuckDB file."""
        return self.catalog_url or self.catalog_file
