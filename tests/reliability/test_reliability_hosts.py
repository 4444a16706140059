"""Hosts, for real (issue 16, item 4): several ``batchml watch`` workers that share nothing but
PostgreSQL and S3, killed, cut off and restarted while files land.

**Hosts.** Each worker runs on its own "host": its own network namespace (``netns.py``: a veth
pair to a bridge in the root namespace, its own address ``10.A.B.<10+i>``, its own loopback),
its own session and process group, its own ``BATCHML_HOME`` (model cache, heartbeat, S3
health, temp directory for downloads and output temps). What the hosts share is a PostgreSQL
server (the catalog, ``BATCHML_CATALOG_URL``) and moto's S3 server (inbox ``in/``, outbox
``out/`` and the model artifacts), both listening on the bridge's address ``10.A.B.1``, so
every byte between a worker and them crosses that worker's veth pair and the bridge. The test
checks that it did, from both ends (``/proc/PID/net/tcp``, sampled every 0.3 s): each host's
namespace held a catalog connection from the host's own address to the bridge's, both servers
saw each host's address as a peer, they saw no other peer than the hosts and the test itself
(on the bridge's address), no host had a connection on 127.0.0.1, and every veth carried
bytes. The PostgreSQL server is ``pgserver.PostgresServer`` with two options of this module
(:class:`BridgePostgres`: it listens on the bridge's address too, with an ``hba_file`` that
trusts the hosts' subnet); the model is trained into it once per module (artifacts in S3) and
each scenario copies that database (``CREATE DATABASE ... TEMPLATE``). Without namespaces
(not root, no ``ip``) the hosts fall back to plain processes on 127.0.0.1 (``mode=loopback``
in the summary line) and the network checks are skipped.

**Schedule** (seeded). Objects land in ``s3://BUCKET/in/`` at a steady rate while the workers
run; meanwhile, at random times: workers are SIGKILLed (half of them as a host losing power:
the worker's process group and every other process in its namespace, i.e. its scorer child,
which lives in a session of its own; the other half only the worker's process group, so the
orphaned scorer child must notice and exit by itself without committing) and a replacement
starts on the same host at once; each kill waits (up to 6 s) for a victim that holds claims,
so its batch dies with it and its files are taken over when their lease expires
(``BATCHML_LEASE_S=5``); the workers' PostgreSQL sessions are terminated while a worker is in
a batch (``pg_terminate_backend``: all of them, or every other time one host's, chosen by its
client address); PostgreSQL is restarted once (``pg_ctl restart -m fast``), also mid-batch.
A worker that exits by itself is replaced, as a service manager would; exiting at start
because the catalog's server was away (the restart) is a known defect, counted apart and
pinned by ``test_a_host_that_boots_while_the_catalog_is_away_waits_for_it``; any other exit
fails the test.

**Then** the test waits until the ledger says every file is ``scored``, stops the workers
cleanly (SIGTERM, exit status 0) and checks: one output object per input (lineage
``input_uri``), complete, nothing else under ``out/``, no unfinished multipart upload; every
file ``scored`` in ``files`` with exactly one scored ``batch_files`` row; ``files.output_uri``
is that object, and the object's lineage names the recorded batch and model (no late commit
replaced it); the orphaned scorer children are gone. ``test_no_batch_left_running`` (strict
xfail) asks that no ``prediction_batches`` row is left ``running``: batches of SIGKILLed
workers, and of live workers whose session was dropped as they recorded the batch's end, are.

Quick variant (the normal suite): 4 hosts, 120 files, 4 kills, 3 terminations, 1 restart,
~20 s of run after ~15 s of set-up. ``BATCHML_RELIABILITY_SCALE`` > 1 (marked slow): 8 hosts,
100 x scale files (500 at 5), max(8, 2.4 x scale) kills, max(4, scale) terminations.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import random
import re
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pyarrow.parquet as pq
import pytest
import relhelp
from netns import Host, HostLauncher, Network, tcp_sockets
from pgserver import HOST as PG_LOOPBACK
from pgserver import RUN_AS, PostgresServer

pytestmark = pytest.mark.reliability

REGION = "us-east-1"
LEASE_S = 5.0
OUTPUT_KEY = re.compile(r"^out/train-\d+/[A-Za-z0-9._=-]+-[0-9a-f]{16}\.parquet$")
MONITOR = "hosts-monitor"  # application_name of the test's own PostgreSQL sessions


# --- the shared servers ------------------------------------------------------------------------


class BridgePostgres(PostgresServer):
    """``PostgresServer`` listening on the hosts' bridge address too, trusting their subnet
    (its own ``hba_file``); URLs name the bridge address, so the test talks to it the way the
    hosts do."""

    def __init__(self, address: str, subnet: str | None) -> None:
        super().__init__()
        self.address = address
        self.subnet = subnet

    def _server_options(self) -> str:
        hba = self._base() / "hosts_hba.conf"
        if not hba.exists():
            lines = ["local all all trust", f"host all all {PG_LOOPBACK}/32 trust"]
            if self.subnet:
                lines.append(f"host all all {self.subnet} trust")
            hba.write_text("\n".join(lines) + "\n")
            hba.chmod(0o644)
            if self._run_as_root:
                import pwd

                user = pwd.getpwnam(RUN_AS)
                os.chown(hba, user.pw_uid, user.pw_gid)
        listen = ",".join(dict.fromkeys([PG_LOOPBACK, self.address]))
        options = super()._server_options()
        assert f"listen_addresses={PG_LOOPBACK}" in options, options
        return options.replace(f"listen_addresses={PG_LOOPBACK}",
                               f"listen_addresses={listen}") + f" -c hba_file={hba}"

    def url(self, dbname: str = "postgres", *, password: str | None = None) -> str:
        return super().url(dbname, password=password).replace(
            f"@{PG_LOOPBACK}:", f"@{self.address}:", 1)


def _free_port(address: str) -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def query(url: str, sql: str, args: Any = None, *, timeout: float = 60) -> list[tuple[Any, ...]]:
    """One statement on a fresh connection, retried while the server is away (a restart, or a
    terminated session: this one may be among them)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(url, connect_timeout=5, autocommit=True,
                                 application_name=MONITOR) as con:
                cur = con.execute(sql, args)
                return cur.fetchall() if cur.description else []
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@dataclass
class Lab:
    net: Network
    pg: BridgePostgres
    endpoint: str  # moto, on the bridge address
    template: str  # the database holding the trained, tagged model
    launcher: HostLauncher
    root: Path
    n_hosts: int


def _hosts_for_module() -> int:
    return 8 if relhelp.scale() > 1 else 4


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto logs every request
    root = tmp_path_factory.mktemp("hosts")
    n_hosts = _hosts_for_module()
    net = Network(n_hosts)
    launcher = pg = moto = None
    try:
        launcher = HostLauncher(root / "logs", relhelp.PYTHON)  # imports while we set up
        pg = BridgePostgres(net.address, str(net.subnet) if net.subnet else None).start()
        port = _free_port(net.address)
        moto = ThreadedMotoServer(ip_address=net.address, port=port, verbose=False)
        moto.start()
        endpoint = f"http://{net.address}:{port}"
        with pytest.MonkeyPatch.context() as mp:
            for key, value in _aws_env().items():
                mp.setenv(key, value)
            template = _train(pg, endpoint, root)
        yield Lab(net, pg, endpoint, template, launcher, root, n_hosts)
    finally:
        if launcher is not None:
            launcher.close()
        if moto is not None:
            moto.stop()
        if pg is not None:
            pg.stop()
        problems = net.close()
        assert not problems and not net.leftovers(), (problems, net.leftovers())


def _aws_env() -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION}


def host_env(lab: Lab, home: Path, url: str, bucket: str) -> dict[str, str]:
    """A worker's environment on a host: its own home (model cache, heartbeat, S3 health, temp
    directory), the shared catalog and S3 at the bridge's address, a 5 s lease."""
    from batchml import Settings

    (home / "tmp").mkdir(parents=True, exist_ok=True)
    settings = Settings(home=home, catalog_url=url, artifact_root="s3://hosts-artifacts/models",
                        inbox=f"s3://{bucket}/in", outbox=f"s3://{bucket}/out",
                        quarantine=str(home / "quarantine"), lease_s=LEASE_S)
    return relhelp.worker_env(settings, BATCHML_S3_ENDPOINT_URL=lab.endpoint,
                              BATCHML_S3_REGION=REGION, TMPDIR=str(home / "tmp"), **_aws_env())


def _train(pg: BridgePostgres, endpoint: str, root: Path) -> str:
    """Train the scikit-learn text model into a new database, its artifacts in S3; that
    database is the template every scenario copies."""
    from batchml import Catalog, Settings
    from batchml import training as tr
    from batchml.store import s3_client
    from batchml.synthetic import synthetic_reviews

    s3_client(endpoint, REGION).create_bucket(Bucket="hosts-artifacts")
    name = f"hosts_base_{uuid.uuid4().hex[:8]}"
    url = pg.create_database(name)
    data = root / "data"
    data.mkdir()
    synthetic_reviews(1200, seed=1).to_parquet(data / "train.parquet")
    synthetic_reviews(400, seed=2).to_parquet(data / "valid.parquet")
    settings = Settings(home=root / "trainer", catalog_url=url,
                        artifact_root="s3://hosts-artifacts/models",
                        s3_endpoint_url=endpoint, s3_region=REGION)
    cat = Catalog.from_settings(settings)
    outcome = tr.train(cat, tr.TrainingConfig(
        train_uri=str(data / "train.parquet"), valid_uri=str(data / "valid.parquet"),
        text_column="review", candidates=["sklearn_text"]))
    assert outcome.decision.tagged, outcome.decision.reasons
    assert outcome.run.artifacts and all(
        a["uri"].startswith("s3://hosts-artifacts/") for a in outcome.run.artifacts.values())
    cat.close()  # a template database must have no sessions
    return name


# --- one run -----------------------------------------------------------------------------------


@dataclass
class Incarnation:
    host: Host
    child: Any  # relhelp.Child
    end: str | None = None  # "host-kill", "group-kill", "sigterm", "crashed"


@dataclass
class HostsRun:
    size: str
    mode: str
    n_hosts: int
    url: str
    bucket: str
    client: Any
    expected: dict[str, int] = field(default_factory=dict)
    incarnations: list[Incarnation] = field(default_factory=list)
    kills: list[dict[str, Any]] = field(default_factory=list)
    terminations: list[dict[str, Any]] = field(default_factory=list)
    restarts: list[float] = field(default_factory=list)  # seconds each restart took
    restart_mid_batch: bool = False
    killed_batches: set[str] = field(default_factory=set)
    orphans: list[int] = field(default_factory=list)  # scorer children of group-killed workers
    orphans_left: list[int] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)
    refused_at_start: list[str] = field(default_factory=list)  # the known startup defect
    stop_rcs: list[int | None] = field(default_factory=list)
    seen: dict[int, set[tuple[str, int]]] = field(default_factory=dict)  # host -> (local ip, port)
    loopback_conns: list[tuple[int, tuple[str, str, int]]] = field(default_factory=list)
    peers: dict[int, set[str]] = field(default_factory=dict)  # server port -> client addresses
    traffic: dict[int, int] = field(default_factory=dict)
    ports: tuple[int, int] = (0, 0)  # PostgreSQL, moto
    gateway: str = ""  # the bridge's address, where both listen
    feed_s: float = 0.0
    drain_s: float = 0.0
    seconds: float = 0.0
    setup_s: float = 0.0


def sizes(size: str) -> dict[str, Any]:
    s = relhelp.scale()
    if size == "quick":
        return dict(n_hosts=4, n_files=120, interval_s=0.12, n_kills=4, n_terminations=3,
                    big_every=12, big_rows=4000, seed=1604)
    return dict(n_hosts=8, n_files=int(100 * s), interval_s=0.1, n_kills=max(8, int(2.4 * s)),
                n_terminations=max(4, int(s)), big_every=10, big_rows=5000, seed=1608)


def _descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _wait(pred: Any, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


class Scenario:
    def __init__(self, lab: Lab, size: str) -> None:
        from batchml.store import s3_client
        from batchml.synthetic import synthetic_reviews

        self.lab = lab
        self.p = sizes(size)
        self.rng = random.Random(self.p["seed"])
        db = f"hosts_{size}_{uuid.uuid4().hex[:8]}"
        with lab.pg.admin() as con:
            con.execute(f'CREATE DATABASE "{db}" TEMPLATE "{lab.template}"')
        bucket = f"hosts-{size}-{uuid.uuid4().hex[:8]}"
        client = s3_client(lab.endpoint, REGION)
        client.create_bucket(Bucket=bucket)
        self.db = db
        self.run = HostsRun(size, lab.net.mode, self.p["n_hosts"], lab.pg.url(db), bucket,
                            client)
        self.run.ports = (int(lab.pg.port or 0), int(lab.endpoint.rsplit(":", 1)[1]))
        self.run.gateway = lab.net.address
        self.hosts = lab.net.hosts[:self.p["n_hosts"]]
        self.current: dict[int, Incarnation] = {}
        self.frames = [synthetic_reviews(60 + 25 * i, seed=500 + i) for i in range(6)]
        self.big = synthetic_reviews(self.p["big_rows"], seed=599)
        self._lock = threading.Lock()
        self._sampling = threading.Event()
        self._counts: Counter[int] = Counter()

    # ------------------------------------------------------------------ workers

    def env(self, host: Host) -> dict[str, str]:
        return host_env(self.lab, self.lab.root / self.run.size / f"host{host.index}",
                        self.run.url, self.run.bucket)

    def start(self, host: Host) -> Incarnation:
        self._counts[host.index] += 1
        env = self.env(host)
        child = self.lab.launcher.spawn(
            host, ["watch", f"s3://{self.run.bucket}/in/"], env, Path(env["BATCHML_HOME"]),
            f"{self.run.size}-h{host.index}-{self._counts[host.index]}")
        inc = Incarnation(host, child)
        with self._lock:
            self.current[host.index] = inc
            self.run.incarnations.append(inc)
        return inc

    def check_alive(self) -> None:
        """Note incarnations that died by themselves and start a replacement, as a service
        manager would (``Restart=on-failure``). One kind of death is a known defect, counted
        apart: ``batchml watch`` exits 1 at start when it cannot reach the catalog's server
        (started during the restart), see test_a_host_that_boots_while_the_catalog_is_away_*."""
        for idx, inc in list(self.current.items()):
            if inc.end is None and not inc.child.alive():
                err, out = inc.child.err(), inc.child.out()
                if inc.child.rc == 1 and "watching " not in out and \
                        err.startswith("error: Cannot connect to the PostgreSQL catalog"):
                    inc.end = "refused-at-start"
                    self.run.refused_at_start.append(f"host {idx}: {err.strip()[:300]}")
                else:
                    inc.end = "crashed"
                    self.run.crashes.append(f"host {idx} pid {inc.child.pid} rc={inc.child.rc}:"
                                            f" {err[-2500:]}")
                self.start(inc.host)

    # ------------------------------------------------------------------ network evidence

    def sampler(self) -> None:
        """Every 0.3 s: the TCP sockets of each host's namespace (client side) and of the root
        namespace on the servers' ports (server side, where the closed HTTP connections of
        moto linger in TIME_WAIT for a minute)."""
        gateway, ports = self.lab.net.address, self.run.ports
        while not self._sampling.wait(0.3):
            with self._lock:
                incs = [i for i in self.current.values() if i.end is None]
            for inc in incs:
                for lip, _, rip, rport, state in tcp_sockets(inc.child.pid):
                    if state == "0A":
                        continue
                    if rip == gateway and rport in ports:
                        self.run.seen.setdefault(inc.host.index, set()).add((lip, rport))
                    if rip.startswith("127."):
                        self.run.loopback_conns.append((inc.host.index, (lip, rip, rport)))
            for lip, lport, rip, _, state in tcp_sockets():
                if lport in ports and state != "0A" and lip == gateway:
                    self.run.peers.setdefault(lport, set()).add(rip)

    # ------------------------------------------------------------------ faults

    def claims(self) -> dict[int, list[Any]]:
        """pid -> claimed_at of the files each worker holds now (worker names are
        host:pid:random)."""
        rows = query(self.run.url, "SELECT claimed_by, claimed_at FROM files"
                                   " WHERE state = 'claimed' AND claimed_by IS NOT NULL")
        out: dict[int, list[Any]] = {}
        for by, at in rows:
            parts = str(by).split(":")
            if len(parts) >= 3 and parts[-2].isdigit():
                out.setdefault(int(parts[-2]), []).append(at)
        return out

    def busy_worker(self, timeout: float = 6) -> Incarnation | None:
        """A live worker that holds claims (is in a batch), waiting up to ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = {i.child.pid: i for i in self.current.values() if i.end is None}
            busy = [pid for pid in self.claims() if pid in live]
            if busy:
                return live[self.rng.choice(sorted(busy))]
            time.sleep(0.05)
        return None

    def kill(self, k: int) -> None:
        kind = "host-kill" if k % 2 == 0 else "group-kill"
        victim = self.busy_worker()
        busy = victim is not None
        if victim is None:
            live = [i for i in self.current.values() if i.end is None]
            victim = self.rng.choice(live)
        if k > 0:  # somewhere in its batch (the first kill at once: surely mid-batch)
            time.sleep(self.rng.uniform(0, 0.3))
        pid = victim.child.pid
        family = _descendants(pid)  # its scorer child (own session) and anything else
        victim.end = kind
        os.killpg(pid, signal.SIGKILL)
        assert victim.child.wait(10), f"pid {pid} survived SIGKILL"
        if kind == "host-kill":  # the host lost power: everything on it dies
            for other in [*family, *victim.host.pids()]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(other, signal.SIGKILL)
            assert _wait(lambda: not any(relhelp.alive(p) for p in family), 10)
            if victim.host.netns:
                assert _wait(lambda: not victim.host.pids(), 10), victim.host.pids()
        else:
            self.run.orphans.extend(p for p in family if relhelp.alive(p))
        # the batch it had open: started_at is the claimed_at of its files (one transaction);
        # the latest, since files of an earlier batch whose end it failed to record may still
        # be claimed in its name
        rows = query(self.run.url, "SELECT batch_id FROM prediction_batches"
                                   " WHERE status = 'running' AND started_at ="
                                   " (SELECT max(claimed_at) FROM files WHERE state = 'claimed'"
                                   "  AND split_part(claimed_by, ':', 2) = %s)", [str(pid)])
        batches = [r[0] for r in rows]
        self.run.killed_batches.update(batches)
        self.run.kills.append({"host": victim.host.index, "kind": kind, "pid": pid,
                               "mid_batch": busy and bool(batches), "batches": batches})
        self.start(victim.host)  # the host comes back

    def terminate(self, k: int) -> None:
        """End the workers' sessions while one of them is in a batch: all of them, or (every
        other time) one host's, chosen by its client address."""
        pg = self.lab.pg
        busy = self.busy_worker()
        time.sleep(self.rng.uniform(0, 0.2))
        if k % 2 == 1 and self.lab.net.mode == "netns":
            host = (busy or self.rng.choice(list(self.current.values()))).host
            rows = query(pg.url(), "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid,"
                                   " 10000)) FROM pg_stat_activity WHERE datname = %s"
                                   " AND client_addr = %s::inet AND application_name <> %s",
                         [self.db, host.address, MONITOR])
            scope, n = f"host{host.index}", int(rows[0][0])
        else:
            scope, n = "all", pg.terminate_backends(dbname=self.db, application_name="batchml")
        self.run.terminations.append({"scope": scope, "sessions": n, "mid_batch": bool(busy)})

    def restart(self) -> None:
        busy = self.busy_worker()
        time.sleep(self.rng.uniform(0, 0.2))
        t = time.monotonic()
        self.lab.pg.restart()
        self.run.restarts.append(time.monotonic() - t)
        self.run.restart_mid_batch = busy is not None

    # ------------------------------------------------------------------ the run

    def feed(self) -> None:
        buf_cache: dict[int, bytes] = {}
        for i in range(self.p["n_files"]):
            big = i % self.p["big_every"] == self.p["big_every"] - 1
            frame = self.big if big else self.frames[i % len(self.frames)]
            key = -1 if big else i % len(self.frames)
            if key not in buf_cache:
                buf = io.BytesIO()
                frame.to_parquet(buf)
                buf_cache[key] = buf.getvalue()
            self.run.client.put_object(Bucket=self.run.bucket, Key=f"in/f-{i:04d}.parquet",
                                       Body=buf_cache[key])
            with self._lock:
                self.run.expected[f"s3://{self.run.bucket}/in/f-{i:04d}.parquet"] = len(frame)
            time.sleep(self.p["interval_s"])

    def scored(self) -> int:
        return int(query(self.run.url, "SELECT count(*) FROM files WHERE state = 'scored'")[0][0])

    def go(self) -> HostsRun:
        run, p = self.run, self.p
        t0 = time.monotonic()
        traffic0 = {h.index: h.traffic_bytes() for h in self.hosts}
        for host in self.hosts:
            self.start(host)
        assert _wait(lambda: all("watching " in i.child.out() for i in self.current.values()),
                     120), [i.child.err()[-2000:] for i in self.current.values()]
        run.setup_s = time.monotonic() - t0
        sampler = threading.Thread(target=self.sampler, daemon=True)
        sampler.start()
        start = time.monotonic()
        feeder = threading.Thread(target=self.feed, name="feeder", daemon=True)
        feeder.start()
        feed_s = p["n_files"] * p["interval_s"]
        span = feed_s + 3.0
        events = [(self.rng.uniform(2.0, span), "kill") for _ in range(p["n_kills"])]
        events += [(self.rng.uniform(2.0, span), "terminate")
                   for _ in range(p["n_terminations"])]
        events.append((self.rng.uniform(0.35, 0.65) * span, "restart"))
        kills = terms = 0
        for at, what in sorted(events):
            while time.monotonic() - start < at:
                self.check_alive()
                time.sleep(0.05)
            if what == "kill":
                self.kill(kills)
                kills += 1
            elif what == "terminate":
                self.terminate(terms)
                terms += 1
            else:
                self.restart()
        feeder.join(timeout=600)
        assert not feeder.is_alive()
        run.feed_s = time.monotonic() - start
        drain = time.monotonic()
        deadline = drain + 300
        while self.scored() < p["n_files"] and time.monotonic() < deadline:
            self.check_alive()
            time.sleep(0.25)
        run.drain_s = time.monotonic() - drain
        # stop cleanly: SIGTERM, each worker finishes its batch and exits 0
        self._sampling.set()
        sampler.join(5)
        live = [i for i in self.current.values() if i.end is None]
        for inc in live:
            inc.child.kill(signal.SIGTERM)
        for inc in live:
            if not inc.child.wait(60):
                os.killpg(inc.child.pid, signal.SIGKILL)
            inc.end = "sigterm"
            run.stop_rcs.append(inc.child.rc)
        for host in self.hosts:  # their scorer children stop with them
            _wait(lambda host=host: not host.pids(), 30)
        _wait(lambda: not any(relhelp.alive(p) for p in run.orphans), 30)
        run.orphans_left = [p for p in run.orphans if relhelp.alive(p)]
        run.traffic = {h.index: h.traffic_bytes() - traffic0[h.index] for h in self.hosts}
        run.seconds = time.monotonic() - start
        return run


@pytest.fixture(scope="module", params=["quick", pytest.param("full", marks=pytest.mark.slow)])
def hosts_run(request: pytest.FixtureRequest, lab: Lab) -> HostsRun:
    size = str(request.param)
    if size == "full" and relhelp.scale() <= 1:
        pytest.skip("the 8-host variant runs with BATCHML_RELIABILITY_SCALE > 1")
    return Scenario(lab, size).go()


# --- what the run left -------------------------------------------------------------------------


@dataclass
class Outputs:
    by_input: dict[str, list[str]]
    lineage: dict[str, dict[str, Any]]  # key -> lineage
    rows: dict[str, int]
    stray: list[str]
    uploads: list[str]


def s3_outputs(client: Any, bucket: str) -> Outputs:
    by_input: dict[str, list[str]] = {}
    lineage: dict[str, dict[str, Any]] = {}
    rows: dict[str, int] = {}
    stray: list[str] = []
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="out/"):
        keys += [o["Key"] for o in page.get("Contents", [])]
    for key in sorted(keys):
        if not OUTPUT_KEY.match(key):
            stray.append(key)
            continue
        meta = pq.read_metadata(io.BytesIO(client.get_object(Bucket=bucket, Key=key)["Body"]
                                           .read()))
        lin = json.loads((meta.metadata or {})[b"batchml.lineage"])
        by_input.setdefault(lin["input_uri"], []).append(key)
        lineage[key] = lin
        rows[key] = meta.num_rows
    uploads = [u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    return Outputs(by_input, lineage, rows, stray, uploads)


def _summary(run: HostsRun, outs: Outputs, facts: dict[str, Any]) -> str:
    kinds = Counter(k["kind"] for k in run.kills)
    return (f"[hosts-{run.size}] mode={run.mode} hosts={run.n_hosts} files={len(run.expected)} "
            f"kills={len(run.kills)} (host {kinds['host-kill']}, group {kinds['group-kill']}, "
            f"mid-batch {sum(k['mid_batch'] for k in run.kills)}) "
            f"incarnations={len(run.incarnations)} "
            f"(exited at start, catalog away: {len(run.refused_at_start)}) "
            f"terminations={len(run.terminations)} "
            f"(mid-batch {sum(t['mid_batch'] for t in run.terminations)}, "
            f"sessions {sum(t['sessions'] for t in run.terminations)}: "
            f"{', '.join(str(t['scope']) + ':' + str(t['sessions']) for t in run.terminations)}) "
            f"restarts={len(run.restarts)} ({', '.join(f'{s:.1f}s' for s in run.restarts)}"
            f"{', mid-batch' if run.restart_mid_batch else ''}) "
            f"duplicates={facts['duplicates']} lost={facts['lost']} "
            f"takeovers={facts['takeovers']} (attempts>1; max {facts['max_attempts']}) "
            f"batches={facts['batches']} running_left={facts['running']} "
            f"(of SIGKILLed workers {facts['running_killed']}, of live workers that lost their "
            f"session {facts['running'] - facts['running_killed']}) "
            f"orphan_scorers={len(run.orphans)} (left {len(run.orphans_left)}) "
            f"veth_MB={sum(run.traffic.values()) / 1e6:.1f} "
            f"setup={run.setup_s:.1f}s feed={run.feed_s:.1f}s drain={run.drain_s:.1f}s "
            f"seconds={run.seconds:.1f}")


def catalog_facts(run: HostsRun, outs: Outputs) -> dict[str, Any]:
    files = query(run.url, "SELECT source_uri, state, attempts, output_uri, batch_id,"
                           " model_run_id FROM files")
    bf = query(run.url, "SELECT file_id, source_uri, batch_id, output_uri FROM batch_files"
                        " WHERE status = 'scored'")
    batches = dict(query(run.url, "SELECT batch_id, status FROM prediction_batches"))
    running = sorted(b for b, s in batches.items() if s == "running")
    attempts = [int(r[2]) for r in files]
    return {
        "files": files, "batch_files": bf, "batch_status": batches, "running": len(running),
        "running_ids": running,
        "running_killed": len(set(running) & run.killed_batches),
        "duplicates": sum(len(v) - 1 for v in outs.by_input.values() if len(v) > 1),
        "lost": len(set(run.expected) - set(outs.by_input)),
        "takeovers": sum(a > 1 for a in attempts), "max_attempts": max(attempts, default=0),
        "batches": len(batches),
    }


@pytest.fixture(scope="module")
def hosts_checked(hosts_run: HostsRun) -> tuple[HostsRun, Outputs, dict[str, Any]]:
    outs = s3_outputs(hosts_run.client, hosts_run.bucket)
    facts = catalog_facts(hosts_run, outs)
    print("\n" + _summary(hosts_run, outs, facts))
    return hosts_run, outs, facts


def test_hosts_score_every_file_exactly_once(
        hosts_checked: tuple[HostsRun, Outputs, dict[str, Any]]) -> None:
    run, outs, facts = hosts_checked
    n = sizes(run.size)["n_files"]
    assert len(run.expected) == n
    # the schedule happened
    assert len(run.kills) >= sizes(run.size)["n_kills"]
    assert any(k["mid_batch"] for k in run.kills), run.kills
    assert len(run.terminations) >= sizes(run.size)["n_terminations"]
    assert len(run.restarts) == 1
    assert not run.crashes, run.crashes
    assert run.stop_rcs and all(rc == 0 for rc in run.stop_rcs), run.stop_rcs
    assert run.orphans_left == [], run.orphans_left  # orphaned scorer children went away

    # S3: one complete output per input, nothing else
    lost = sorted(set(run.expected) - set(outs.by_input))
    unexpected = sorted(set(outs.by_input) - set(run.expected))
    duplicates = {k: v for k, v in outs.by_input.items() if len(v) != 1}
    assert (lost, unexpected, duplicates) == ([], [], {})
    for uri, (key,) in outs.by_input.items():
        assert outs.rows[key] == run.expected[uri], (uri, key)
    assert outs.stray == [], outs.stray  # no temp or partial object under a final name
    assert outs.uploads == [], outs.uploads

    # the ledger: every file scored once, recorded where the object is
    files = {r[0]: r for r in facts["files"]}
    assert set(files) == set(run.expected)
    assert Counter(r[1] for r in files.values()) == {"scored": n}
    bf = facts["batch_files"]
    assert len(bf) == len({r[0] for r in bf}) == n  # one scored batch_files row per file
    recorded = {r[1]: r for r in bf}
    for uri, (key,) in outs.by_input.items():
        _, _, _, output_uri, batch_id, model_run_id = files[uri]
        assert output_uri == f"s3://{run.bucket}/{key}", (uri, output_uri, key)
        assert recorded[uri][2] == batch_id and recorded[uri][3] == output_uri, recorded[uri]
        lin = outs.lineage[key]
        # the object is the one the recorded batch wrote (no late commit replaced it)
        assert (lin["batch_id"], lin["model_run_id"]) == (batch_id, model_run_id), (uri, lin)
        assert batch_id in facts["batch_status"]

    # every byte crossed a network: each host reached both servers from its own address
    if run.mode == "netns":
        pg_port, moto_port = run.ports
        hosts = {i.host.index: i.host for i in run.incarnations}
        for idx, host in hosts.items():
            # the servers saw the host's address as a peer
            assert host.address in run.peers.get(pg_port, set()), (idx, run.peers)
            assert host.address in run.peers.get(moto_port, set()), (idx, run.peers)
            # and the host's own namespace held a catalog connection from that address
            assert (host.address, pg_port) in run.seen.get(idx, set()), (idx, run.seen)
            assert run.traffic[idx] > 0, run.traffic
        # no other peer (the test's own connections come from the bridge address), no loopback
        known = {h.address for h in hosts.values()} | {run.gateway}
        assert set().union(*run.peers.values()) <= known, run.peers
        assert run.loopback_conns == [], run.loopback_conns[:5]


def test_no_batch_left_running(hosts_checked: tuple[HostsRun, Outputs, dict[str, Any]]) -> None:
    run, _, facts = hosts_checked
    assert run.killed_batches, "no kill landed mid-batch: nothing to check"
    assert facts["running_ids"] == []


def test_a_host_that_boots_while_the_catalog_is_away_waits_for_it(lab: Lab) -> None:
    host = lab.net.hosts[0]
    closed = _free_port(lab.net.address)  # nothing listens there: the server is down
    url = f"postgresql://batchml@{lab.net.address}:{closed}/hosts_away"
    env = host_env(lab, lab.root / "boot" / "host0", url, "hosts-artifacts")
    child: Any = lab.launcher.spawn(host, ["watch", "s3://hosts-artifacts/in/"], env,
                                    Path(env["BATCHML_HOME"]), "boot-while-away")
    exited = _wait(lambda: not child.alive(), 6)
    if not exited:  # it waits for the server, as it says: stop it cleanly
        child.kill(signal.SIGTERM)
        assert child.wait(30)
    assert not exited, f"rc={child.rc}: {child.err()[-1000:]}"
