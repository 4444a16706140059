"""Turn one queue message into S3 object events: a pure parser, no I/O.

Shapes understood by :func:`parse_message` (they may nest, up to a fixed depth):

* an S3 event notification ``{"Records": [{"eventSource": "aws:s3", "s3": {...}}, ...]}`` -
  what Lambda receives directly and what S3 -> SQS puts in the message body;
* the ``s3:TestEvent`` S3 sends when notifications are configured (yields no events);
* an SNS envelope ``{"Type": "Notification", "Message": "<json>"}`` (S3 -> SNS -> SQS);
* an EventBridge event ``{"source": "aws.s3", "detail-type": "Object Created", ...}``
  (EventBridge -> SQS puts the whole event in the body);
* a Lambda SQS event ``{"Records": [{"eventSource": "aws:sqs", "body": "<json>"}, ...]}`` and a
  Lambda SNS event ``{"Records": [{"EventSource": "aws:sns", "Sns": {"Message": "<json>"}}]}``.

Object keys: S3 notifications carry keys form-URL-encoded ("red flower.jpg" arrives as
"red+flower.jpg", "a+b" as "a%2Bb"), so they are decoded with :func:`urllib.parse.unquote_plus`.
EventBridge keys are used verbatim: no source we have shows them encoded (AWS documents the
encoding only for notification records, and moto sends EventBridge keys raw). Decoding them
would turn a literal "+" into a space, i.e. point at another object.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import unquote_plus

from .errors import BatchMLError

__all__ = ["EventParseError", "ObjectEvent", "parse_message"]

Kind = Literal["created", "removed", "other"]

# Lambda(SQS) -> SNS envelope -> S3 notification is 2 levels; leave room, stop crafted nesting.
_MAX_DEPTH = 5
_MISSING: Any = object()
_NOT_S3_HINT = "The message is not an S3 object event: record it and delete or dead-letter it."


class EventParseError(BatchMLError, ValueError):
    """A message body is not JSON, not a recognised S3 event shape, or a record is malformed.

    Terminal: the same body will never parse, so delete or dead-letter the message.
    """


@dataclass(frozen=True, slots=True)
class ObjectEvent:
    """One S3 object event, whichever way it was delivered."""

    bucket: str
    key: str  # decoded: usable as-is with GetObject
    kind: Kind
    event_name: str  # "ObjectCreated:Put" (notification) or "Object Created" (EventBridge)
    etag: str | None  # without surrounding quotes
    size: int | None
    version_id: str | None
    sequencer: str | None
    event_time: datetime | None  # tz-aware UTC
    source: str  # "s3" (notification, possibly via SQS/SNS/Lambda) or "eventbridge"

    @property
    def uri(self) -> str:
        """``s3://bucket/key``."""
        return f"s3://{self.bucket}/{self.key}"


def parse_message(body: str | bytes | Mapping[str, Any]) -> list[ObjectEvent]:
    """Parse one message body (JSON text, UTF-8 bytes or an already decoded mapping).

    Returns one :class:`ObjectEvent` per record, in message order (several records give several
    events; a Lambda batch gives the events of all its bodies). Returns ``[]`` for recognised
    messages that carry no object event: the ``s3:TestEvent`` and an empty ``Records`` list.

    Raises :class:`EventParseError` (terminal) for anything else, so the caller can record the
    message and delete or dead-letter it: a body that is not JSON, JSON that is not an object, an
    object of no recognised shape (a plain SQS message, an SNS notification whose ``Message`` is
    not an S3 event, an SNS subscription confirmation), an ``eventVersion`` whose major version is
    not 2, and records lacking the bucket name, the key or the event name. One bad body fails the
    whole Lambda batch; to handle bodies separately, call this once per ``Records[i].body``.

    Optional fields are lenient: an ``eventTime``/``time`` that does not parse, a ``size`` that
    is not a whole number and a non-string etag/version id/sequencer become ``None``.
    """
    return _parse(_load(body, "message"), 0, "message")


# --- shapes ------------------------------------------------------------------------------------


def _load(body: object, where: str) -> Any:
    if isinstance(body, Mapping):
        return body
    if isinstance(body, bytes | bytearray | memoryview):
        try:
            body = bytes(body).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise EventParseError(f"{where} is not UTF-8 text ({exc}).", hint=_NOT_S3_HINT) from exc
    if not isinstance(body, str):
        raise EventParseError(
            f"{where} must be JSON text, bytes or a mapping, got {_kind_of(body)}.",
            hint=_NOT_S3_HINT,
        )
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, int-digit limit, deep nesting
        snippet = body[:60] + ("..." if len(body) > 60 else "")
        raise EventParseError(
            f"{where} is not valid JSON ({exc}): {snippet!r}.", hint=_NOT_S3_HINT
        ) from exc


def _parse(obj: Any, depth: int, where: str) -> list[ObjectEvent]:
    if depth > _MAX_DEPTH:
        raise EventParseError(f"{where}: envelopes nested more than {_MAX_DEPTH} levels deep.")
    if not isinstance(obj, Mapping):
        raise EventParseError(
            f"{where}: expected a JSON object, got {_kind_of(obj)}.", hint=_NOT_S3_HINT
        )
    if obj.get("Event") == "s3:TestEvent":
        return []
    if "Records" in obj:
        return _parse_records(obj["Records"], depth, where)
    if obj.get("source") == "aws.s3" and "detail-type" in obj:
        return [_parse_eventbridge(obj, where)]
    if "Type" in obj and ("Message" in obj or "TopicArn" in obj):
        if obj["Type"] != "Notification":
            raise EventParseError(
                f"{where}: SNS message of Type {_short(obj['Type'])} is not a notification.",
                hint=_NOT_S3_HINT,
            )
        inner = f"{where}.Message"
        return _parse(_load(obj.get("Message"), inner), depth + 1, inner)
    keys = ", ".join(repr(k) for k in sorted(map(str, obj))[:8]) or "none"
    raise EventParseError(
        f"{where}: unrecognised message shape (top-level keys: {keys}); expected an S3 "
        "notification, s3:TestEvent, SNS envelope, EventBridge aws.s3 event or Lambda SQS event.",
        hint=_NOT_S3_HINT,
    )


def _parse_records(records: Any, depth: int, where: str) -> list[ObjectEvent]:
    if not isinstance(records, list):
        raise EventParseError(f"{where}: Records must be a list, got {_kind_of(records)}.")
    events: list[ObjectEvent] = []
    for i, record in enumerate(records):
        here = f"{where}.Records[{i}]"
        if not isinstance(record, Mapping):
            raise EventParseError(f"{here}: expected a JSON object, got {_kind_of(record)}.")
        source = record.get("eventSource", record.get("EventSource"))
        if source == "aws:sqs" or (source is None and "body" in record and "s3" not in record):
            inner = f"{here}.body"
            events += _parse(_load(record.get("body"), inner), depth + 1, inner)
        elif source == "aws:sns" or (source is None and "Sns" in record):
            sns = record.get("Sns")
            inner = f"{here}.Sns.Message"
            message = sns.get("Message") if isinstance(sns, Mapping) else None
            events += _parse(_load(message, inner), depth + 1, inner)
        elif source == "aws:s3" or (source is None and "s3" in record):
            events.append(_parse_s3_record(record, here))
        else:
            raise EventParseError(
                f"{here}: not an S3, SQS or SNS record (eventSource {_short(source)}).",
                hint=_NOT_S3_HINT,
            )
    return events


def _parse_s3_record(record: Mapping[str, Any], where: str) -> ObjectEvent:
    version = _require_str(record, ("eventVersion",), where)
    if version.split(".", 1)[0].strip() != "2":
        raise EventParseError(
            f"{where}: unsupported eventVersion {_short(version)} (only 2.x is understood).",
            hint="Upgrade batchml to a release that knows this S3 event format.",
        )
    name = _require_str(record, ("eventName",), where)
    bucket = _require_str(record, ("s3", "bucket", "name"), where)
    raw_key = _require_str(record, ("s3", "object", "key"), where)
    # AWS form-URL-encodes notification keys; the contract is AWS. An emulator that sent keys
    # raw would be mis-decoded here when they contain "+" or "%XX" (spaces and other characters
    # survive unquote_plus unchanged). The moto revision cited in the test-data README sent raw
    # keys; moto 5.2.5 (constraints.txt) uses quote_plus like AWS.
    try:
        key = unquote_plus(raw_key, errors="strict")
    except UnicodeDecodeError as exc:
        raise EventParseError(
            f"{where}: s3.object.key {_short(raw_key, 300)} has %-escapes that are not UTF-8.",
            hint=_NOT_S3_HINT,
        ) from exc
    obj = _walk(record, ("s3", "object"))
    short = name[3:] if name.startswith("s3:") else name  # minio & co. keep the "s3:" prefix
    family = short.split(":", 1)[0]
    kind: Kind = (
        "created"
        if family == "ObjectCreated"
        else "removed"
        if family in ("ObjectRemoved", "LifecycleExpiration")
        else "other"
    )
    return ObjectEvent(
        bucket=bucket,
        key=key,
        kind=kind,
        event_name=name,
        etag=_etag(obj.get("eTag")),
        size=_size(obj.get("size")),
        version_id=_opt_str(obj.get("versionId")),
        sequencer=_opt_str(obj.get("sequencer")),
        event_time=_time(record.get("eventTime")),
        source="s3",
    )


def _parse_eventbridge(event: Mapping[str, Any], where: str) -> ObjectEvent:
    detail_type = _require_str(event, ("detail-type",), where)
    bucket = _require_str(event, ("detail", "bucket", "name"), where)
    key = _require_str(event, ("detail", "object", "key"), where)  # verbatim: see module doc
    obj = _walk(event, ("detail", "object"))
    kind: Kind = (
        "created"
        if detail_type == "Object Created"
        else "removed"
        if detail_type == "Object Deleted"
        else "other"
    )
    return ObjectEvent(
        bucket=bucket,
        key=key,
        kind=kind,
        event_name=detail_type,
        etag=_etag(obj["etag"] if "etag" in obj else obj.get("eTag")),  # moto says "eTag"
        size=_size(obj.get("size")),
        version_id=_opt_str(obj.get("version-id")),
        sequencer=_opt_str(obj.get("sequencer")),
        event_time=_time(event.get("time")),
        source="eventbridge",
    )


# --- fields ------------------------------------------------------------------------------------


def _walk(root: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = root
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _require_str(root: Mapping[str, Any], path: tuple[str, ...], where: str) -> str:
    value = _walk(root, path)
    dotted = ".".join(path)
    if value is _MISSING or value is None:
        raise EventParseError(f"{where}: missing {dotted}.", hint=_NOT_S3_HINT)
    if not isinstance(value, str) or not value:
        raise EventParseError(
            f"{where}: {dotted} must be a non-empty string, got {_kind_of(value)}.",
            hint=_NOT_S3_HINT,
        )
    return value


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _etag(value: Any) -> str | None:
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    return _opt_str(value)


def _size(value: Any) -> int | None:
    """A byte count from a JSON number or a decimal string; anything else is None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value >= 0 and value.is_integer() else None
    if isinstance(value, str):
        text = value.strip()
        if text.isascii() and text.isdigit() and len(text) <= 20:
            return int(text)
    return None


def _time(value: Any) -> datetime | None:
    """ISO-8601 text (AWS "...27.192Z", EventBridge "...00Z", naive = UTC) or epoch seconds."""
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return datetime.fromtimestamp(value, tz=UTC)  # moto's EventBridge "time"
        if isinstance(value, str):
            parsed = datetime.fromisoformat(value.strip())
            if parsed.tzinfo is None:
                return parsed.replace(tzinfo=UTC)
            return parsed.astimezone(UTC)
    except (ValueError, OverflowError, OSError):
        return None
    return None


def _short(value: object, limit: int = 80) -> str:
    """repr() of a value from the message, cut to ``limit`` characters for error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind_of(value: object) -> str:
    """JSON-ish name of a value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string" if value else "an empty string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return f"a {type(value).__name__}"
