"""Sources are a registered extension point: built-in schemes, plus a scheme a package adds
through the entry point group ``batchml.sources`` (read by importlib.metadata from a real
distribution on the path), scored end to end by a worker."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from batchml import Settings
from batchml.errors import ConfigError
from batchml.sources import DirectorySource, open_source, source_opener

TOY = '''
"""A toy source: ``toy://DIR`` reads the parquet files of DIR, claimed by the toy prefix."""
from batchml.sources import DirectorySource

NOT_A_FUNCTION = 3


class ToySource(DirectorySource):
    pass


def open_toy(uri, *, settings, on_rejected, health):
    source = ToySource(uri[len("toy://"):], quarantine_dir=settings.quarantine)
    source.opened_by = "toy"
    return source
'''


def _install(site: Path, entry_points: str) -> None:
    """A minimal installed distribution in ``site``: its module and its dist-info with the
    entry points, as pip lays them out."""
    site.mkdir(parents=True, exist_ok=True)
    (site / "toy_source.py").write_text(TOY)
    info = site / "toy_source-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-source\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


def test_builtin_schemes(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    source = open_source(str(tmp_path / "in"), settings=settings)
    assert isinstance(source, DirectorySource)
    assert source.claim_prefix == str((tmp_path / "in").resolve()) + "/"
    same = open_source(f"file://{tmp_path / 'in'}", settings=settings)
    assert isinstance(same, DirectorySource) and same.uri == source.uri
    assert {source_opener(s).__name__ for s in ("file", "s3", "sqs")} == {
        "_open_directory", "_open_s3", "_open_sqs"}


@pytest.mark.parametrize(("entry", "uri", "message"), [
    ("", "ftp://host/dir", "Unsupported source scheme 'ftp': no built-in source and no entry "
                           "point 'ftp' in group 'batchml.sources'"),
    ("[batchml.sources]\nbroken = toy_source_missing:open\n", "broken://x",
     "The source for 'broken' could not be loaded: entry point 'toy_source_missing:open' in "
     "group 'batchml.sources' raised ModuleNotFoundError"),
    ("[batchml.sources]\nnotcallable = toy_source:NOT_A_FUNCTION\n", "notcallable://x",
     "Entry point 'toy_source:NOT_A_FUNCTION' for source 'notcallable' is not callable"),
])
def test_unknown_or_broken_scheme_is_a_clear_error(tmp_path: Path, entry: str, uri: str,
                                                   message: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _install(tmp_path / "site", entry)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(ConfigError) as err:
        open_source(uri, settings=Settings(home=tmp_path))
    assert message in str(err.value)
    assert err.value.hint  # says what to do


def test_a_package_adds_a_scheme_and_a_worker_scores_from_it(tmp_path: Path,
                                                             tagged_home: Settings) -> None:
    from batchml.synthetic import write_reviews

    site = tmp_path / "site"
    _install(site, "[batchml.sources]\ntoy = toy_source:open_toy\n")
    inbox = tmp_path / "toy-inbox"
    inbox.mkdir()
    write_reviews(inbox / "a.parquet", 50, seed=1)
    write_reviews(inbox / "b.parquet", 70, seed=2)
    # a fresh interpreter that sees the distribution only through its path, as pip leaves it
    script = textwrap.dedent(f"""
        from batchml import Settings
        from batchml.worker import Worker
        settings = Settings(home={str(tagged_home.home)!r})
        worker = Worker.for_source(settings, "toy://{inbox}")
        assert type(worker.source).__name__ == "ToySource", type(worker.source)
        assert worker.source.opened_by == "toy"
        worker.discover()
        report = worker.run_batch()
        worker.close()
        print(sorted((o.status, o.rows) for o in report.outcomes))
    """)
    env = {"PYTHONPATH": f"{site}:{Path(__file__).resolve().parents[1]}", "PATH": "/usr/bin:/bin",
           "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[('scored', 50), ('scored', 70)]"
