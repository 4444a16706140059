"""batchml.events: real S3 / SQS / SNS / EventBridge payloads, key decoding, and fuzzing."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchml.errors import BatchMLError, is_transient
from batchml.events import EventParseError, ObjectEvent, parse_message

EVENTS_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "s3-events"
FILES = sorted(p for p in EVENTS_DIR.rglob("*") if p.is_file() and p.suffix != ".md")


def rel(path: Path) -> str:
    return path.relative_to(EVENTS_DIR).as_posix()


# --- expectations for the shared payloads ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Expect:
    # (kind, bucket, decoded key, etag, size) per event, in order
    events: tuple[tuple[str, str, str, str | None, int | None], ...] = ()
    source: str = "s3"
    error: str | None = None  # fragment of the EventParseError message, when parsing must fail


DOC_BUCKET = "DOC-EXAMPLE-BUCKET1"
PT_KEY, PT_ETAG = "IMG_m7fzo3.jpg", "4e68adba0abe2dc8653dc3354e14c01d"
LAMBDA_BUCKET = "lambda-artifacts-deafc19498e3f2df"
LAMBDA_KEY = "b21b84d653bb07b05b1e6b33684dc11b"
CT_BUCKET = "aws-cloudtrail-111111111111-3abc4c4f"
CT_PREFIX = (
    "AWSLogs/111111111111/CloudTrail/eu-west-2/2022/02/21/111111111111_CloudTrail_eu-west-2_"
)
CT_0 = (
    "created",
    CT_BUCKET,
    CT_PREFIX + "20220221T1020Z_nTGkKkyO0OcwEIvv.json.gz",
    "0cdef8885755dff42b6fbd91732ae506",
    9234,
)
CT_2 = (
    "created",
    CT_BUCKET,
    CT_PREFIX + "20220221T1055Z_YhegGgxhib9WTAx8.json.gz",
    "54a88e9fdedaeda828710cd3ad23a83c",
    1084,
)

EXPECTED: dict[str, Expect] = {
    # EventBridge: detail-type decides the kind; keys verbatim; etag lower-case "etag"
    "eventbridge/awsdocs_0_ObjectCreated_PutObject.json": Expect(
        (("created", DOC_BUCKET, "example-key", "b1946ac92492d2347c6235b4d2611184", 5),),
        source="eventbridge",
    ),
    "eventbridge/awsdocs_1_ObjectDeleted_DeleteObject.json": Expect(
        (("removed", DOC_BUCKET, "example-key", "d41d8cd98f00b204e9800998ecf8427e", None),),
        source="eventbridge",
    ),
    "eventbridge/awsdocs_2_ObjectDeleted_LifecycleExpiration.json": Expect(
        (("removed", DOC_BUCKET, "example-key", "d41d8cd98f00b204e9800998ecf8427e", None),),
        source="eventbridge",
    ),
    "eventbridge/awsdocs_3_ObjectRestoreCompleted_restore.json": Expect(
        (("other", DOC_BUCKET, "example-key", "b1946ac92492d2347c6235b4d2611184", 5),),
        source="eventbridge",
    ),
    "eventbridge/powertools_s3EventBridgeNotificationObjectCreatedEvent.json": Expect(
        (("created", "example-bucket", PT_KEY, PT_ETAG, 184662),), source="eventbridge"
    ),
    "eventbridge/powertools_s3EventBridgeNotificationObjectDeletedEvent.json": Expect(
        (("removed", "example-bucket", PT_KEY, None, None),), source="eventbridge"
    ),
    "eventbridge/powertools_s3EventBridgeNotificationObjectExpiredEvent.json": Expect(
        (("removed", "example-bucket", PT_KEY, PT_ETAG, 184662),), source="eventbridge"
    ),
    "eventbridge/powertools_s3EventBridgeNotificationObjectRestoreCompletedEvent.json": Expect(
        (("other", "example-bucket", PT_KEY, PT_ETAG, 184662),), source="eventbridge"
    ),
    # direct S3 notifications
    "s3-notification/awsdocs_ObjectCreated-Put_example.json": Expect(
        (("created", "mybucket", "HappyFace.jpg", "d41d8cd98f00b204e9800998ecf8427e", 1024),)
    ),
    # The v2.2 field template: bucket and key are (placeholder) strings, so it parses; the
    # event name "event-type" is no known family -> "other" (ignored downstream); the
    # description strings in size/eventTime are not data -> None.
    "s3-notification/awsdocs_structure_v2.2_field-descriptions-template.json": Expect(
        (("other", "bucket-name", "object-key", "object eTag", None),)
    ),
    "s3-notification/powertools_s3EventDecodedKey_urlencoded-key.json": Expect(
        (("created", "sourcebucket", "Happy Face.jpg", "d41d8cd98f00b204e9800998ecf8427e", 1024),)
    ),
    "s3-notification/powertools_s3EventDeleteObject_ObjectRemoved-no-size.json": Expect(
        (("removed", LAMBDA_BUCKET, LAMBDA_KEY, None, None),)
    ),
    "s3-notification/powertools_s3EventGlacier_glacierEventData.json": Expect(
        (("created", LAMBDA_BUCKET, LAMBDA_KEY, LAMBDA_KEY, 1305107),)
    ),
    "s3-notification/powertools_s3Event_ObjectCreated-Put.json": Expect(
        (("created", LAMBDA_BUCKET, LAMBDA_KEY, LAMBDA_KEY, 1305107),)
    ),
    # Lambda SQS event whose body is an S3 notification string
    "sqs-wrapped/powertools_s3SqsEvent_lambda-sqs-record-with-s3-body.json": Expect(
        (("created", "xxx", "test.pdf", "2e3ad1e983318bbd8e73b080e2997980", 104681),)
    ),
    # Lambda SQS event -> SNS envelope -> {"message": "hello world", ...}: not S3 at all
    "sqs-wrapped/powertools_snsSqsEvent_sns-envelope-in-sqs-body.json": Expect(
        error="message.Records[0].body.Message: unrecognised message shape"
    ),
    # plain SQS bodies: "Test message." is not JSON (the first bad body fails the batch)
    "sqs-wrapped/powertools_sqsEvent_plain.json": Expect(
        error="message.Records[0].body is not valid JSON"
    ),
    # a container of captured bodies, not a message (its bodies are tested separately below)
    "sqs-wrapped/sekoia_real-captured_sqs-bodies_cloudtrail-bucket.json": Expect(
        error="unrecognised message shape (top-level keys: '_provenance', 'bodies')"
    ),
    "sqs-wrapped/sekoia_sqs-body_0_ObjectCreated-Put.body.txt": Expect((CT_0,)),
    "sqs-wrapped/sekoia_sqs-body_1_s3-TestEvent.body.txt": Expect(()),
    "sqs-wrapped/sekoia_sqs-body_2_ObjectCreated-Put.body.txt": Expect((CT_2,)),
    "test-event/awsdocs_s3-TestEvent.json": Expect(()),
    "test-event/sekoia_real-captured_s3-TestEvent.json": Expect(()),
}


def summary(events: list[ObjectEvent]) -> list[tuple[str, str, str, str | None, int | None]]:
    return [(e.kind, e.bucket, e.key, e.etag, e.size) for e in events]


def assert_well_formed(events: object) -> None:
    assert isinstance(events, list)
    for event in events:
        assert isinstance(event, ObjectEvent)
        assert isinstance(event.bucket, str) and event.bucket
        assert isinstance(event.key, str) and event.key
        assert event.kind in ("created", "removed", "other")
        assert isinstance(event.event_name, str) and event.event_name
        assert event.source in ("s3", "eventbridge")
        assert event.size is None or (isinstance(event.size, int) and event.size >= 0)
        for text in (event.etag, event.version_id, event.sequencer):
            assert text is None or (isinstance(text, str) and text)
        if event.event_time is not None:
            assert event.event_time.utcoffset() == timedelta(0)
        assert event.uri == f"s3://{event.bucket}/{event.key}"


def test_shared_payload_folder_is_there() -> None:
    assert EVENTS_DIR.is_dir(), f"{EVENTS_DIR} is missing: clone the project beside ../shared"
    assert FILES


def test_expectation_table_has_no_stale_entries() -> None:
    assert set(EXPECTED) <= {rel(p) for p in FILES}


@pytest.mark.parametrize("path", FILES, ids=rel)
def test_shared_payload(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    expect = EXPECTED.get(rel(path))
    if expect is None:  # a new file nobody has described yet: it must not crash the parser
        with contextlib.suppress(EventParseError):
            assert_well_formed(parse_message(text))
        return
    if expect.error is not None:
        with pytest.raises(EventParseError, match=re.escape(expect.error)):
            parse_message(text)
        return
    events = parse_message(text)
    assert summary(events) == list(expect.events)
    assert all(e.source == expect.source for e in events)
    assert_well_formed(events)
    # the same message as bytes or as an already-decoded mapping gives the same events
    assert parse_message(text.encode("utf-8")) == events
    assert parse_message(json.loads(text)) == events


def test_captured_sqs_bodies_match_the_single_body_files() -> None:
    container = json.loads(
        (
            EVENTS_DIR / "sqs-wrapped/sekoia_real-captured_sqs-bodies_cloudtrail-bucket.json"
        ).read_text()
    )
    bodies = container["bodies"]
    assert [summary(parse_message(b)) for b in bodies] == [[CT_0], [], [CT_2]]
    for i, body in enumerate(bodies):
        (single,) = EVENTS_DIR.glob(f"sqs-wrapped/sekoia_sqs-body_{i}_*.body.txt")
        assert single.read_text(encoding="utf-8").strip() == body


def load(name: str) -> dict[str, Any]:
    return json.loads((EVENTS_DIR / name).read_text(encoding="utf-8"))


def test_awsdocs_put_example_all_fields() -> None:
    (event,) = parse_message(load("s3-notification/awsdocs_ObjectCreated-Put_example.json"))
    assert event == ObjectEvent(
        bucket="mybucket",
        key="HappyFace.jpg",
        kind="created",
        event_name="ObjectCreated:Put",
        etag="d41d8cd98f00b204e9800998ecf8427e",
        size=1024,
        version_id="096fKKXTRTtl3on89fVO.nfljtsv6qko",
        sequencer="0055AED6DCD90281E5",
        event_time=datetime(1970, 1, 1, tzinfo=UTC),
        source="s3",
    )
    assert event.uri == "s3://mybucket/HappyFace.jpg"


def test_eventbridge_example_all_fields() -> None:
    (event,) = parse_message(load("eventbridge/awsdocs_0_ObjectCreated_PutObject.json"))
    assert event.event_name == "Object Created"
    assert event.version_id == "IYV3p45BT0ac8hjHg1houSdS1a.Mro8e"
    assert event.sequencer == "617f08299329d189"
    assert event.event_time == datetime(2021, 11, 12, tzinfo=UTC)
    assert event.source == "eventbridge"


def test_field_template_yields_placeholder_event_without_time() -> None:
    (event,) = parse_message(
        load("s3-notification/awsdocs_structure_v2.2_field-descriptions-template.json")
    )
    assert (event.kind, event.event_name, event.size, event.event_time) == (
        "other",
        "event-type",
        None,
        None,
    )


def test_delete_event_has_no_size_or_etag_but_keeps_time() -> None:
    name = "s3-notification/powertools_s3EventDeleteObject_ObjectRemoved-no-size.json"
    (event,) = parse_message(load(name))
    assert (event.size, event.etag, event.version_id) == (None, None, None)
    assert event.event_time == datetime(2019, 9, 3, 19, 37, 27, 192000, tzinfo=UTC)


def test_object_event_is_frozen() -> None:
    (event,) = parse_message(load("s3-notification/awsdocs_ObjectCreated-Put_example.json"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.key = "other"  # type: ignore[misc]


def test_error_type() -> None:
    with pytest.raises(EventParseError) as info:
        parse_message("nope")
    assert isinstance(info.value, BatchMLError) and isinstance(info.value, ValueError)
    assert not is_transient(info.value)


# --- builders ----------------------------------------------------------------------------------


def s3_record(key: str = "data/x.parquet", **overrides: Any) -> dict[str, Any]:
    record = copy.deepcopy(load("s3-notification/awsdocs_ObjectCreated-Put_example.json"))[
        "Records"
    ][0]
    record["s3"]["object"]["key"] = key
    record.update(overrides)
    return record


def s3_notification(*records: dict[str, Any]) -> dict[str, Any]:
    return {"Records": list(records) or [s3_record()]}


def eventbridge(key: str = "data/x.parquet", **detail_object: Any) -> dict[str, Any]:
    event = copy.deepcopy(load("eventbridge/awsdocs_0_ObjectCreated_PutObject.json"))
    event["detail"]["object"]["key"] = key
    event["detail"]["object"].update(detail_object)
    return event


def via_sqs_body(message: dict[str, Any]) -> str:
    return json.dumps(message)


def via_sns(message: dict[str, Any]) -> str:
    return json.dumps(
        {
            "Type": "Notification",
            "MessageId": "d88d4479-6ec0-54fe-b63f-1cf9df4bb16e",
            "TopicArn": "arn:aws:sns:eu-west-1:123456789012:uploads",
            "Message": json.dumps(message),
            "Timestamp": "2021-01-19T10:07:07.287Z",
        },
        indent=2,
    )


def via_lambda_sqs(*bodies: str) -> str:
    return json.dumps(
        {
            "Records": [
                {"messageId": str(i), "body": b, "eventSource": "aws:sqs"}
                for i, b in enumerate(bodies)
            ]
        }
    )


def via_lambda_sns(message: dict[str, Any]) -> str:
    return json.dumps(
        {
            "Records": [
                {
                    "EventSource": "aws:sns",
                    "Sns": {"Type": "Notification", "Message": json.dumps(message)},
                }
            ]
        }
    )


ENVELOPES = {
    "direct": lambda m: m,
    "sqs-body": via_sqs_body,
    "sns-in-sqs": via_sns,
    "lambda-sqs": lambda m: via_lambda_sqs(via_sqs_body(m)),
    "lambda-sqs-sns": lambda m: via_lambda_sqs(via_sns(m)),
    "lambda-sns": via_lambda_sns,
}


@pytest.mark.parametrize("envelope", ENVELOPES)
@pytest.mark.parametrize(
    "name",
    [
        "s3-notification/awsdocs_ObjectCreated-Put_example.json",
        "eventbridge/awsdocs_0_ObjectCreated_PutObject.json",
        "test-event/awsdocs_s3-TestEvent.json",
    ],
)
def test_every_envelope_gives_the_same_events(name: str, envelope: str) -> None:
    message = load(name)
    assert parse_message(ENVELOPES[envelope](message)) == parse_message(message)


def test_several_records_and_several_bodies_give_several_events_in_order() -> None:
    message = s3_notification(
        s3_record("a.parquet"),
        s3_record("b.parquet", eventName="ObjectRemoved:Delete"),
        s3_record("c.parquet"),
    )
    assert [(e.key, e.kind) for e in parse_message(message)] == [
        ("a.parquet", "created"),
        ("b.parquet", "removed"),
        ("c.parquet", "created"),
    ]
    batch = via_lambda_sqs(
        via_sqs_body(s3_notification(s3_record("1.parquet"))),
        json.dumps(load("test-event/awsdocs_s3-TestEvent.json")),
        via_sns(eventbridge("2.parquet")),
    )
    assert [e.key for e in parse_message(batch)] == ["1.parquet", "2.parquet"]


def test_empty_records_list_is_no_events() -> None:
    assert parse_message('{"Records": []}') == []


# --- keys --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [
        ("red+flower.jpg", "red flower.jpg"),  # the AWS doc's example
        ("Happy%20Face.jpg", "Happy Face.jpg"),
        ("year%3D2026/month%3D11/x.parquet", "year=2026/month=11/x.parquet"),
        ("caf%C3%A9/%E6%97%A5%E6%9C%AC+%F0%9F%98%80.parquet", "café/日本 😀.parquet"),
        ("a%2Bb.parquet", "a+b.parquet"),  # a literal plus arrives as %2B
        ("100%25.csv", "100%.csv"),
        ("test%2F10%3A47%3A07.log.bz2", "test/10:47:07.log.bz2"),
        ("café.parquet", "café.parquet"),  # raw non-ASCII (emulators) survives decoding
        ("with space.parquet", "with space.parquet"),  # raw space (old moto) survives too
    ],
)
def test_notification_keys_are_form_url_decoded(raw: str, decoded: str) -> None:
    (event,) = parse_message(via_sqs_body(s3_notification(s3_record(raw))))
    assert event.key == decoded
    assert event.uri == f"s3://mybucket/{decoded}"


@pytest.mark.parametrize(
    "key", ["red+flower.jpg", "Happy%20Face.jpg", "year=2026/x.parquet", "日本/a b+c%.parquet"]
)
def test_eventbridge_keys_are_verbatim(key: str) -> None:
    (event,) = parse_message(via_sqs_body(eventbridge(key)))
    assert event.key == key


def test_percent_escapes_that_are_not_utf8_are_rejected() -> None:
    with pytest.raises(EventParseError, match="not UTF-8"):
        parse_message(s3_notification(s3_record("a%FF.parquet")))


# --- other fields ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (1024, 1024),
        (0, 0),
        ("1024", 1024),
        (1024.0, 1024),
        ("object-size in bytes", None),
        (-1, None),
        (1.5, None),
        (True, None),
        (None, None),
        ("", None),
        ("1e3", None),
        ("١٢", None),
    ],
)
def test_size_coercion(size: object, expected: int | None) -> None:
    record = s3_record()
    record["s3"]["object"]["size"] = size
    (event,) = parse_message(s3_notification(record))
    assert event.size == expected
    (event,) = parse_message(eventbridge(size=size))
    assert event.size == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2019-09-03T19:37:27.192Z", datetime(2019, 9, 3, 19, 37, 27, 192000, tzinfo=UTC)),
        ("2023-01-01T12:00:00.123456", datetime(2023, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)),
        ("2021-11-12T00:00:00Z", datetime(2021, 11, 12, tzinfo=UTC)),
        ("2021-11-12T02:00:00+02:00", datetime(2021, 11, 12, tzinfo=UTC)),
        (1636675200, datetime(2021, 11, 12, tzinfo=UTC)),  # moto's EventBridge "time"
        ("The time, in ISO-8601 format", None),
        (None, None),
        ([], None),
    ],
)
def test_event_time(value: object, expected: datetime | None) -> None:
    (event,) = parse_message(s3_notification(s3_record(eventTime=value)))
    assert event.event_time == expected
    message = eventbridge()
    message["time"] = value
    (event,) = parse_message(message)
    assert event.event_time == expected
    if expected is not None:
        assert event.event_time is not None and event.event_time.tzinfo == UTC


def test_event_time_with_offset_is_converted_to_utc() -> None:
    (event,) = parse_message(s3_notification(s3_record(eventTime="2021-11-12T05:30:00+05:30")))
    assert event.event_time == datetime(2021, 11, 12, tzinfo=timezone.utc)  # noqa: UP017
    assert event.event_time is not None and event.event_time.utcoffset() == timedelta(0)


def test_etag_quotes_are_stripped_and_moto_eTag_is_read() -> None:
    record = s3_record()
    record["s3"]["object"]["eTag"] = '"abc123"'
    assert parse_message(s3_notification(record))[0].etag == "abc123"
    message = eventbridge()
    del message["detail"]["object"]["etag"]
    message["detail"]["object"]["eTag"] = "moto-etag"
    assert parse_message(message)[0].etag == "moto-etag"


@pytest.mark.parametrize(
    ("event_name", "kind"),
    [
        ("ObjectCreated:Put", "created"),
        ("ObjectCreated:Post", "created"),
        ("ObjectCreated:Copy", "created"),
        ("ObjectCreated:CompleteMultipartUpload", "created"),
        ("s3:ObjectCreated:Put", "created"),
        ("ObjectRemoved:Delete", "removed"),
        ("ObjectRemoved:DeleteMarkerCreated", "removed"),
        ("LifecycleExpiration:Delete", "removed"),
        ("ObjectRestore:Completed", "other"),
        ("ObjectTagging:Put", "other"),
        ("LifecycleTransition", "other"),
        ("event-type", "other"),
    ],
)
def test_notification_kinds(event_name: str, kind: str) -> None:
    (event,) = parse_message(s3_notification(s3_record(eventName=event_name)))
    assert (event.kind, event.event_name) == (kind, event_name)


@pytest.mark.parametrize(
    ("detail_type", "kind"),
    [
        ("Object Created", "created"),
        ("Object Deleted", "removed"),
        ("Object Restore Completed", "other"),
        ("Object Tags Added", "other"),
    ],
)
def test_eventbridge_kinds(detail_type: str, kind: str) -> None:
    message = eventbridge()
    message["detail-type"] = detail_type
    (event,) = parse_message(message)
    assert (event.kind, event.event_name) == (kind, detail_type)


@pytest.mark.parametrize("version", ["2.0", "2.1", "2.2", "2.3", "2.5", "2"])
def test_event_version_2_is_accepted(version: str) -> None:
    assert len(parse_message(s3_notification(s3_record(eventVersion=version)))) == 1


# --- negative cases ----------------------------------------------------------------------------


def _without(path: tuple[str, ...], message: dict[str, Any] | None = None) -> dict[str, Any]:
    message = message if message is not None else s3_notification()
    node: Any = message["Records"][0] if "Records" in message else message
    for part in path[:-1]:
        node = node[part]
    del node[path[-1]]
    return message


def _nested_sns(depth: int) -> str:
    body = json.dumps(s3_notification())
    for _ in range(depth):
        body = json.dumps({"Type": "Notification", "Message": body})
    return body


NEGATIVE: list[tuple[str, Any, str]] = [
    ("non-json", "Test message.", "message is not valid JSON"),
    ("empty-body", "", "message is not valid JSON"),
    ("json-list", "[1, 2]", "message: expected a JSON object, got an array"),
    ("json-null", "null", "message: expected a JSON object, got null"),
    ("json-string", '"hello"', "got a string"),
    ("not-utf8-bytes", b"\xff\xfe{}", "message is not UTF-8 text"),
    ("wrong-python-type", 42, "must be JSON text, bytes or a mapping"),
    (
        "event-version-3",
        s3_notification(s3_record(eventVersion="3.0")),
        "unsupported eventVersion '3.0' (only 2.x is understood)",
    ),
    (
        "event-version-1",
        s3_notification(s3_record(eventVersion="1.0")),
        "unsupported eventVersion '1.0'",
    ),
    ("event-version-missing", _without(("eventVersion",)), "missing eventVersion"),
    (
        "event-version-number",
        s3_notification(s3_record(eventVersion=2.1)),
        "eventVersion must be a non-empty string, got a number",
    ),
    (
        "missing-bucket-name",
        _without(("s3", "bucket", "name")),
        "message.Records[0]: missing s3.bucket.name",
    ),
    ("missing-bucket", _without(("s3", "bucket")), "missing s3.bucket.name"),
    ("missing-key", _without(("s3", "object", "key")), "missing s3.object.key"),
    (
        "empty-key",
        s3_notification(s3_record("")),
        "s3.object.key must be a non-empty string, got an empty string",
    ),
    ("missing-event-name", _without(("eventName",)), "missing eventName"),
    ("records-not-a-list", {"Records": {"s3": {}}}, "Records must be a list, got an object"),
    ("record-not-an-object", {"Records": ["x"]}, "message.Records[0]: expected a JSON object"),
    (
        "unknown-record-source",
        {"Records": [{"eventSource": "aws:kinesis"}]},
        "not an S3, SQS or SNS record (eventSource 'aws:kinesis')",
    ),
    ("plain-json", '{"message": "foo1"}', "unrecognised message shape (top-level keys: 'message')"),
    (
        "sns-not-s3",
        json.dumps({"Type": "Notification", "Message": '{"message": "hello world"}'}),
        "message.Message: unrecognised message shape",
    ),
    (
        "sns-message-not-json",
        json.dumps({"Type": "Notification", "Message": "hello"}),
        "message.Message is not valid JSON",
    ),
    (
        "sns-subscription-confirmation",
        {
            "Type": "SubscriptionConfirmation",
            "Message": "You have chosen to subscribe",
            "TopicArn": "arn:aws:sns:us-east-1:123456789012:t",
        },
        "SNS message of Type 'SubscriptionConfirmation' is not a notification",
    ),
    (
        "lambda-sqs-bad-body",
        via_lambda_sqs("Test message."),
        "message.Records[0].body is not valid JSON",
    ),
    (
        "eventbridge-missing-key",
        _without(("detail", "object", "key"), eventbridge()),
        "missing detail.object.key",
    ),
    (
        "eventbridge-missing-detail",
        _without(("detail",), eventbridge()),
        "missing detail.bucket.name",
    ),
    (
        "eventbridge-other-source",
        {**eventbridge(), "source": "aws.ec2"},
        "unrecognised message shape",
    ),
    ("too-deeply-nested", _nested_sns(10), "nested more than"),
]


@pytest.mark.parametrize(
    ("body", "fragment"), [c[1:] for c in NEGATIVE], ids=[c[0] for c in NEGATIVE]
)
def test_negative(body: Any, fragment: str) -> None:
    with pytest.raises(EventParseError, match=re.escape(fragment)):
        parse_message(body)


# --- properties --------------------------------------------------------------------------------

KEYS = st.text(min_size=1, max_size=200)
PROPERTY_SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@pytest.mark.reliability  # property-based (issue 7, item 8)
@PROPERTY_SETTINGS
@given(key=KEYS, envelope=st.sampled_from(sorted(ENVELOPES)))
def test_property_encoded_notification_key_round_trips(key: str, envelope: str) -> None:
    message = s3_notification(s3_record(quote_plus(key, safe="/")))
    (event,) = parse_message(ENVELOPES[envelope](message))
    assert event.key == key


@pytest.mark.reliability  # property-based (issue 7, item 8)
@PROPERTY_SETTINGS
@given(key=KEYS, envelope=st.sampled_from(sorted(ENVELOPES)))
def test_property_eventbridge_key_is_verbatim(key: str, envelope: str) -> None:
    (event,) = parse_message(ENVELOPES[envelope](eventbridge(key)))
    assert event.key == key


# Keys and strings that steer random JSON into the parser's branches.
MEANINGFUL_KEYS = [
    "Records",
    "Event",
    "Type",
    "Message",
    "TopicArn",
    "source",
    "detail-type",
    "detail",
    "bucket",
    "object",
    "name",
    "key",
    "size",
    "eTag",
    "etag",
    "version-id",
    "versionId",
    "sequencer",
    "eventVersion",
    "eventName",
    "eventSource",
    "EventSource",
    "eventTime",
    "time",
    "s3",
    "body",
    "Sns",
]
MEANINGFUL_TEXT = [
    "s3:TestEvent",
    "Notification",
    "aws.s3",
    "aws:s3",
    "aws:sqs",
    "aws:sns",
    "Object Created",
    "ObjectCreated:Put",
    "2.1",
    "3.0",
    "2",
    "",
    "red+flower.jpg",
    "a%FF",
    "%",
    "1024",
    "2019-09-03T19:37:27.192Z",
    '{"Records": []}',
    '{"Event": "s3:TestEvent"}',
    "[]",
    "{",
]

JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(MEANINGFUL_TEXT)
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(MEANINGFUL_KEYS) | st.text(max_size=10), children, max_size=6
        )
    ),
    max_leaves=30,
)


# Mostly objects with the parser's own keys at the top, so the fuzz gets past the first check.
JSON_MESSAGES = (
    st.dictionaries(
        st.sampled_from(MEANINGFUL_KEYS) | st.text(max_size=10), JSON_VALUES, min_size=1, max_size=6
    )
    | JSON_VALUES
)


@pytest.mark.reliability  # property-based (issue 7, item 8)
@PROPERTY_SETTINGS
@given(value=JSON_MESSAGES)
def test_property_arbitrary_json_raises_only_event_parse_error(value: Any) -> None:
    bodies: list[Any] = [json.dumps(value)]
    if isinstance(value, dict):
        bodies += [value, via_sns(value), via_lambda_sqs(json.dumps(value))]
    for body in bodies:
        with contextlib.suppress(EventParseError):
            assert_well_formed(parse_message(body))


@pytest.mark.reliability  # property-based (issue 7, item 8)
@PROPERTY_SETTINGS
@given(body=st.text() | st.binary())
def test_property_arbitrary_text_raises_only_event_parse_error(body: str | bytes) -> None:
    with contextlib.suppress(EventParseError):
        assert_well_formed(parse_message(body))


def _paths(node: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append((*prefix, k))
            out += _paths(v, (*prefix, k))
    return out


RECORD = s3_record("dir/red+flower%2B1.parquet")
EVENTBRIDGE = eventbridge("dir/red flower+1.parquet")
RECORD_PATHS = _paths(RECORD)
EVENTBRIDGE_PATHS = _paths(EVENTBRIDGE)


def _mutate(
    node: dict[str, Any], removed: set[tuple[str, ...]], replaced: dict[tuple[str, ...], Any]
) -> dict[str, Any]:
    node = copy.deepcopy(node)
    for path, value in sorted(replaced.items()):
        parent: Any = node
        for part in path[:-1]:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if isinstance(parent, dict):
            parent[path[-1]] = value
    for path in sorted(removed, key=len, reverse=True):
        parent = node
        for part in path[:-1]:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if isinstance(parent, dict):
            parent.pop(path[-1], None)
    return node


@pytest.mark.reliability  # property-based (issue 7, item 8)
@PROPERTY_SETTINGS
@given(
    removed=st.sets(st.sampled_from(RECORD_PATHS), max_size=3),
    replaced=st.dictionaries(st.sampled_from(RECORD_PATHS), JSON_VALUES, max_size=2),
    envelope=st.sampled_from(sorted(ENVELOPES)),
)
def test_property_damaged_notification_record(
    removed: set[tuple[str, ...]], replaced: dict[tuple[str, ...], Any], envelope: str
) -> None:
    record = _mutate(RECORD, removed, replaced)
    try:
        events = parse_message(ENVELOPES[envelope]({"Records": [record]}))
    except EventParseError:
        return
    assert_well_formed(events)
    assert len(events) == 1
    if not replaced:  # only removals: what is left is the original data
        assert events[0].bucket == "mybucket"
        assert events[0].key == "dir/red flower+1.parquet"


@pytest.mark.reliability  # property-based (issue 7, item 8)
@PROPERTY_SETTINGS
@given(
    removed=st.sets(st.sampled_from(EVENTBRIDGE_PATHS), max_size=3),
    replaced=st.dictionaries(st.sampled_from(EVENTBRIDGE_PATHS), JSON_VALUES, max_size=2),
    envelope=st.sampled_from(sorted(ENVELOPES)),
)
def test_property_damaged_eventbridge_event(
    removed: set[tuple[str, ...]], replaced: dict[tuple[str, ...], Any], envelope: str
) -> None:
    message = _mutate(EVENTBRIDGE, removed, replaced)
    try:
        events = parse_message(ENVELOPES[envelope](message))
    except EventParseError:
        return
    assert_well_formed(events)
    if not replaced and events:
        assert [(e.bucket, e.key) for e in events] == [(DOC_BUCKET, "dir/red flower+1.parquet")]


# --- against moto's S3 -> SQS notifications ----------------------------------------------------


def test_moto_s3_to_sqs_round_trip(aws_env: str) -> None:
    """What the moto version in use actually sends: a TestEvent, then an encoded key."""
    import uuid

    import boto3

    s3 = boto3.client("s3", endpoint_url=aws_env, region_name="us-east-1")
    sqs = boto3.client("sqs", endpoint_url=aws_env, region_name="us-east-1")
    bucket = f"events-{uuid.uuid4().hex[:10]}"
    queue_url = sqs.create_queue(QueueName=bucket)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [{"QueueArn": queue_arn, "Events": ["s3:ObjectCreated:*"]}]
        },
    )
    key = "year=2026/red flower+1%/日本.parquet"
    s3.put_object(Bucket=bucket, Key=key, Body=b"12345")
    etag = s3.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')

    events: list[ObjectEvent] = []
    bodies = 0
    for _ in range(5):
        messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get(
            "Messages", []
        )
        for m in messages:
            bodies += 1
            events += parse_message(m["Body"])
        if events:
            break
    assert bodies >= 2  # the s3:TestEvent parsed to [] and the put
    assert summary(events) == [("created", bucket, key, etag, 5)]
    assert events[0].event_time is not None and events[0].event_time.tzinfo == UTC
