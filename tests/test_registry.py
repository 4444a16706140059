"""The model registry on both catalog backends: versions numbered per name, aliases moved by
compare-and-set with every move recorded, "what was champion at T", the batch columns that
make it joinable, and the refusals (bad names, missing or failed versions, deleting a held
version, conflicts)."""

from __future__ import annotations

import multiprocessing
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from batchml.catalog import Ledger
from batchml.catalog.records import FileRef
from batchml.errors import AliasConflict, RegistryError


def _completed_run(catalog: Any, *, model: str = "m", status: str = "completed") -> str:
    """A run with a (recorded, not stored) primary model, ended with ``status``."""
    run = catalog.create_run("train")
    catalog.backend.record_model(run.id, model, flavor="baseline",
                                 signature={"inputs": [], "outputs": []},
                                 artifact="model.bin", primary=True)
    run.finish(status)
    return run.id


def test_versions_are_numbered_per_name_and_registering_again_is_idempotent(catalog: Any) -> None:
    a, b = _completed_run(catalog), _completed_run(catalog)
    reviews, other = catalog.model("reviews"), catalog.model("other")
    v1 = reviews.register(a)
    assert (v1.version, v1.run_id, v1.model_name) == (1, a, "m")
    assert reviews.register(a) == v1  # a retried flow registers nothing new
    assert reviews.register(b).version == 2
    assert other.register(b).version == 1
    assert [v.version for v in reviews.versions()] == [1, 2]
    assert catalog.backend.versions_of_run(b) == [("other", 1), ("reviews", 2)]
    catalog.create_model("reviews", description="sentiment", tags={"team": "ml"})
    assert (reviews.description, reviews.tags) == ("sentiment", {"team": "ml"})
    assert [m.name for m in catalog.registered_models()] == ["other", "reviews"]


def test_aliases_compare_and_set_with_history(catalog: Any) -> None:
    runs = [_completed_run(catalog) for _ in range(3)]
    model = catalog.model("reviews")
    v1, v2, v3 = (model.register(r) for r in runs)
    model.set_alias("champion", v1, expect=None, reason="first")
    model.set_alias("champion", 2, expect=1, reason="better")
    with pytest.raises(AliasConflict, match=r"reviews@champion is held by version 2, not "
                                            r"version 1") as err:
        model.set_alias("champion", 3, expect=1)
    assert err.value.current == 2 and not err.value.transient
    assert model.alias("champion") == v2
    model.set_alias("challenger", v3, expect=None)
    moves = model.history("champion")
    assert [(m.seq, m.from_version, m.to_version, m.reason) for m in moves] == [
        (1, None, 1, "first"), (2, 1, 2, "better")]
    assert moves[0].valid_to == moves[1].valid_from and moves[1].valid_to is None
    assert "@" in moves[0].moved_by and moves[0].run_id == runs[0]
    assert model.aliases == {"champion": 2, "challenger": 3}
    assert v2.aliases == ["champion"]
    back = model.rollback(reason="v2 misbehaves")
    assert (back.from_version, back.to_version, back.reason) == (2, 1, "v2 misbehaves")
    assert model.alias("champion") == v1
    # what was champion at a time: between the moves, and before the first
    assert model.alias_at("champion", moves[1].valid_from) == v2
    assert model.alias_at("champion", datetime(2000, 1, 1, tzinfo=UTC)) is None
    model.set_alias("challenger", None, expect=3, reason="retired")
    assert model.alias("challenger") is None
    assert [m.to_version for m in model.history("challenger")] == [3, None]


@pytest.mark.parametrize(("action", "message"), [
    (lambda m, v: m.set_alias("champion", 9, expect=None), "has no version 9"),
    (lambda m, v: m.set_alias("champion", v["failed"], expect=None), "is failed"),
    (lambda m, v: m.set_alias("champion", v["other"], expect=None),
     "belongs to model 'other'"),
    (lambda m, v: m.delete_version(v["held"].version), "is held by alias"),
    (lambda m, v: m.set_alias("a/b", 1, expect=None), "Invalid alias name 'a/b'"),
    (lambda m, v: m.catalog.model("../x"), "Invalid model name '../x'"),
    (lambda m, v: m.catalog.model("x" * 129), "Invalid model name"),
    (lambda m, v: m.rollback(alias="nobody"), "is not set"),
    (lambda m, v: m.rollback(), "has had one holder only"),
    (lambda m, v: m.set_alias("champion", 0, expect=1), "is not a version number"),
], ids=["missing", "failed-run", "other-name", "delete-held", "bad-alias", "path-name",
        "long-name", "rollback-unset", "rollback-single", "bad-number"])
def test_refused_changes_name_the_reason(catalog: Any, action: Any, message: str) -> None:
    model = catalog.model("reviews")
    held = model.register(_completed_run(catalog))
    model.set_alias("champion", held, expect=None)
    failed_id = _completed_run(catalog)
    # a version whose run failed later cannot exist by registration: force the state
    failed = model.register(failed_id)
    catalog.backend.sql("UPDATE runs SET status = 'failed' WHERE run_id = ?", [failed_id],
                        write=True)
    other = catalog.model("other").register(_completed_run(catalog))
    before = model.history()
    with pytest.raises(RegistryError, match=message):
        action(model, {"held": held, "failed": failed.version, "other": other})
    assert model.history() == before  # nothing recorded
    assert model.alias("champion") == held


def test_registering_a_failed_or_running_run_is_refused(catalog: Any) -> None:
    running = catalog.create_run("train")
    with pytest.raises(RegistryError, match="is running; only a completed run"):
        catalog.model("reviews").register(running.id, model="m")
    with pytest.raises(RegistryError, match="has no model named 'nope'"):
        catalog.model("reviews").register(_completed_run(catalog), model="nope")
    assert not catalog.model("reviews").versions()


def test_deleting_a_free_version_keeps_its_number(catalog: Any) -> None:
    model = catalog.model("reviews")
    model.register(_completed_run(catalog))
    model.delete_version(1)
    assert model.versions() == [] and len(model.versions(deleted=True)) == 1
    assert model.register(_completed_run(catalog)).version == 2
    with pytest.raises(RegistryError, match="has no version 1"):
        model.version(1)


def test_batches_record_model_version_and_alias(catalog: Any) -> None:
    """A claim through name@alias resolves in its transaction and records name, version and
    alias on the batch; a claim by tag records the version the run is registered as; the
    "what was champion at T and which files did it score" query answers from them."""
    model = catalog.model("reviews")
    v1 = model.register(_completed_run(catalog))
    v2 = model.register(_completed_run(catalog))
    model.set_alias("champion", v1, expect=None)
    ledger = Ledger(catalog)
    ledger.discover([FileRef(f"file:///in/{i}.parquet", None, 1, None) for i in range(4)])
    first = ledger.claim_batch("w", limit=2, lease_s=30, registered="reviews",
                               alias="champion")
    assert (first.model_run_id, first.model_name, first.model_version, first.model_alias) == (
        v1.run_id, "reviews", 1, "champion")
    time.sleep(0.01)  # distinct timestamps for the two periods (ordering, not a wait)
    model.set_alias("champion", v2, expect=v1)
    second = ledger.claim_batch("w", limit=2, lease_s=30, registered="reviews",
                                alias="champion", expect_run_id=v1.run_id)
    assert second.batch_id is None and second.model_run_id == v2.run_id  # load, ask again
    second = ledger.claim_batch("w", limit=2, lease_s=30, registered="reviews",
                                alias="champion", expect_run_id=v2.run_id)
    assert second.model_version == 2
    catalog.run(v2.run_id).add_tag("deployment_candidate")
    tagged = ledger.claim_batch("w", limit=1, lease_s=30, tag="deployment_candidate")
    assert tagged.batch_id is None  # nothing left to claim, but the model resolves
    for claim in (first, second):
        from batchml.scoring import FileOutcome

        outcomes = [FileOutcome(r.file_id, r.source_uri, "scored", claim.model_run_id,
                                output_uri=f"file:///out/{r.file_id}.parquet", rows=1)
                    for r in claim.records]
        ledger.record_files(claim.batch_id, outcomes, "w",
                            end={"files": 0, "rows": 0, "error": None, "duration_ms": 1.0})
    at = model.history("champion")[0].valid_from
    answer = catalog.sql(
        "SELECT h.to_version, f.source_uri FROM alias_history h"
        " JOIN prediction_batches b ON b.model_name = h.name AND b.model_version = h.to_version"
        "  AND b.model_alias = h.alias AND b.started_at >= h.valid_from"
        "  AND (h.valid_to IS NULL OR b.started_at < h.valid_to)"
        " JOIN batch_files bf ON bf.batch_id = b.batch_id"
        " JOIN files f ON f.file_id = bf.file_id"
        " WHERE h.name = 'reviews' AND h.alias = 'champion' AND h.valid_from <= ?"
        "  AND (h.valid_to IS NULL OR ? < h.valid_to) ORDER BY f.source_uri", [at, at])
    assert answer["to_version"].tolist() == [1, 1]
    assert answer["source_uri"].tolist() == sorted(r.source_uri for r in first.records)
    # the README's recipes, as printed there, on this catalog
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## The model registry"):]
    recipes = section[section.index("```sql") + 6:section.index("```", section.index("```sql") + 6)]
    queries = [q.strip() for q in recipes.split(";") if q.strip()]
    assert len(queries) == 3
    literal = "TIMESTAMPTZ '2026-11-24 14:00:00+00'"
    champion_at = catalog.sql(queries[0].replace(literal, f"TIMESTAMPTZ '{at.isoformat()}'"))
    assert sorted(champion_at["source_uri"]) == sorted(r.source_uri for r in first.records)
    assert set(champion_at["to_version"]) == {1}
    moves = catalog.sql(queries[1])
    assert moves["to_version"].tolist() == [1, 2]
    per_version = catalog.sql(queries[2])
    assert per_version["model_version"].tolist() == [1, 2]


def _mover(url: str, rounds: int, me: int, barrier: Any, out: Any) -> None:
    from batchml import Catalog
    from batchml.errors import AliasConflict

    model = Catalog(url).model("reviews")
    wins = []
    for r in range(rounds):
        barrier.wait()
        expect = r + 1  # every process expects the holder of the round before
        try:
            model.set_alias("champion", r + 2, expect=expect, reason=f"p{me} round {r}")
            wins.append(r)
        except AliasConflict as exc:
            assert exc.current == r + 2, exc
        barrier.wait()
    out.put((me, wins))


def test_concurrent_moves_have_exactly_one_winner_per_round(catalog: Any,
                                                            catalog_url: str) -> None:
    """Four processes move one alias at once, round after round, each expecting the last
    round's holder: exactly one wins each round, the others get a conflict naming the winner,
    and the history holds one move per round, in order."""
    rounds, procs = 8, 4
    model = catalog.model("reviews")
    for _ in range(rounds + 1):
        model.register(_completed_run(catalog))
    model.set_alias("champion", 1, expect=None)
    catalog.close()
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(procs), ctx.Queue()
    workers = [ctx.Process(target=_mover, args=(str(catalog_url), rounds, i, barrier, out))
               for i in range(procs)]
    for w in workers:
        w.start()
    results = dict(out.get(timeout=300) for _ in workers)
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    wins = sorted(r for won in results.values() for r in won)
    assert wins == list(range(rounds))  # one winner per round, none twice
    moves = model.history("champion")
    assert [(m.seq, m.from_version, m.to_version) for m in moves] == [
        (1, None, 1)] + [(r + 2, r + 1, r + 2) for r in range(rounds)]
    assert all(a.valid_to == b.valid_from for a, b in zip(moves, moves[1:], strict=False))
