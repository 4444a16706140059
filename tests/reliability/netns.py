"""Hosts for the reliability tests: Linux network namespaces joined by a bridge, and a
pre-warmed launcher that starts ``batchml`` worker processes inside them.

**The network.** :class:`Network` makes one bridge in the root namespace with the address
``10.A.B.1/24`` and, per host, a network namespace ``bmlh-<run>-<i>`` holding one end of a veth
pair (renamed ``eth0``, address ``10.A.B.<10+i>``, plus its own ``lo``); the other end is a
port of the bridge. The servers the hosts share (PostgreSQL, moto) listen on the bridge's
address, so every byte between a worker and them goes through that worker's veth pair and the
bridge: a host has no route to anything else, and its loopback is its own (nothing listens
there). ``A.B`` is chosen at random among the /24s that no interface or route of this machine
uses. Interface names stay under Linux's 15 characters: bridge ``bmlh<run>br``, host-side
veths ``bmlh<run>v<i>``.

**Cleaning up.** :meth:`Network.close` kills what still runs in the namespaces and removes them
(that removes their veth pairs) and the bridge; it runs on any failure of the test. A run that
was itself killed cannot clean up, so each run writes ``/tmp/bmlh-<run>.owner`` with its pid,
and :func:`reap_leftovers` (called by every new :class:`Network`) removes the namespaces and
links of runs whose owner is gone.

**Fallback.** Where namespaces cannot be made (no CAP_NET_ADMIN, no ``ip``), ``Network`` with
``allow_fallback=True`` gives hosts that are plain separate processes on 127.0.0.1 (the servers
on loopback too) and says so in :attr:`Network.mode`.

**Starting workers.** Run as a script (``python netns.py``), this module is the zygote of
``relhelp.Zygote`` (it imports batchml's scoring stack once, through ``zygote.py``) with two
differences per forked child: it calls ``setsid()`` (each worker leads its own process group,
so ``killpg`` takes the worker and anything it started in its group) and then ``setns()`` into
the host's network namespace, before it runs ``batchml.cli.app``. A child that cannot enter
its namespace exits with status 98 instead of running on the wrong network.
:class:`HostLauncher` is the test's side of it and hands out ``relhelp.Child`` objects.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
PREFIX = "bmlh"
OWNER_DIR = Path("/tmp")
NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
LOOPBACK = "127.0.0.1"


class NetnsError(RuntimeError):
    """A namespace, link or address could not be made."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30,
                          check=False)
    if check and proc.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
    return proc


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def netns_pids(name: str) -> list[int]:
    """The pids of every process in network namespace ``name`` (``ip netns pids``)."""
    proc = _ip("netns", "pids", name, check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def _netns_names() -> list[str]:
    proc = _ip("netns", "list", check=False)
    return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]


def _link_names() -> list[str]:
    proc = _ip("-o", "link", "show", check=False)
    return [m.group(1) for m in re.finditer(r"^\d+:\s+([^:@\s]+)", proc.stdout, re.M)]


def reap_leftovers(prefix: str = PREFIX) -> list[str]:
    """Remove the namespaces and links of earlier runs (names starting with ``prefix``) whose
    owning process is gone (a run killed before its clean-up); returns what was removed."""
    removed: list[str] = []
    runs: set[str] = set()
    for name in _netns_names():
        m = re.fullmatch(rf"{prefix}-([0-9a-f]+)-\d+", name)
        if m:
            runs.add(m.group(1))
    for name in _link_names():
        m = re.fullmatch(rf"{prefix}([0-9a-f]+)(?:br|v\d+)", name)
        if m:
            runs.add(m.group(1))
    for run in runs:
        owner = OWNER_DIR / f"{prefix}-{run}.owner"
        try:
            if _alive(int(owner.read_text().strip())):
                continue  # another live test run's network
        except (OSError, ValueError):
            pass
        for name in _netns_names():
            if name.startswith(f"{prefix}-{run}-"):
                for pid in netns_pids(name):
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                _ip("netns", "del", name, check=False)
                removed.append(name)
        for name in _link_names():
            if re.fullmatch(rf"{prefix}{run}(?:br|v\d+)", name):
                _ip("link", "del", name, check=False)
                removed.append(name)
        owner.unlink(missing_ok=True)
    return removed


@dataclass(frozen=True)
class Host:
    """One host: its namespace (None on loopback), its address and its veth's host side."""

    index: int
    netns: str | None
    address: str
    veth: str | None

    def pids(self) -> list[int]:
        """Every process running in this host's namespace (empty on loopback)."""
        return netns_pids(self.netns) if self.netns else []

    def traffic_bytes(self) -> int:
        """Bytes through this host's veth pair so far, both directions (0 on loopback)."""
        if not self.veth:
            return 0
        total = 0
        for kind in ("rx_bytes", "tx_bytes"):
            with contextlib.suppress(OSError, ValueError):
                total += int(Path(f"/sys/class/net/{self.veth}/statistics/{kind}").read_text())
        return total


def _used_networks() -> list[ipaddress.IPv4Network]:
    used = []
    for args in (("-4", "-o", "addr", "show"), ("-4", "route", "show", "table", "all")):
        out = _ip(*args, check=False).stdout
        for m in re.finditer(r"(\d+\.\d+\.\d+\.\d+(?:/\d+)?)", out):
            with contextlib.suppress(ValueError):
                used.append(ipaddress.ip_network(m.group(1), strict=False))
    return used


class Network:
    """A bridge and ``n_hosts`` network namespaces on it (see the module's docstring)."""

    def __init__(self, n_hosts: int, *, allow_fallback: bool = True, prefix: str = PREFIX,
                 seed: int | None = None) -> None:
        self.n_hosts = n_hosts
        self.prefix = prefix
        self.run = uuid.uuid4().hex[:6]
        self.bridge = f"{prefix}{self.run}br"
        self.hosts: list[Host] = []
        self.mode = "netns"
        self.why_fallback = ""
        self.address = LOOPBACK  # where the shared servers listen
        self.subnet: ipaddress.IPv4Network | None = None
        self._rng = random.Random(seed)
        self._owner = OWNER_DIR / f"{prefix}-{self.run}.owner"
        try:
            self._create()
        except (NetnsError, OSError) as exc:
            self.close()
            if not allow_fallback:
                raise
            self.mode, self.why_fallback = "loopback", str(exc)
            self.address = LOOPBACK
            self.hosts = [Host(i, None, LOOPBACK, None) for i in range(n_hosts)]

    def _pick_subnet(self) -> ipaddress.IPv4Network:
        used = _used_networks()
        for _ in range(200):
            net = ipaddress.ip_network(
                f"10.{self._rng.randrange(100, 250)}.{self._rng.randrange(1, 255)}.0/24")
            if not any(net.overlaps(u) for u in used if u.prefixlen >= 8 and
                       not u.is_loopback and u.prefixlen > 0):
                return net
        raise NetnsError("no free 10.x.y.0/24 for the hosts' bridge")

    def _create(self) -> None:
        if os.geteuid() != 0 or shutil.which("ip") is None:
            raise NetnsError("network namespaces need root and iproute2 (`ip`)")
        reap_leftovers(self.prefix)
        self._owner.write_text(f"{os.getpid()}\n")
        self.subnet = self._pick_subnet()
        hosts = list(self.subnet.hosts())
        gateway, prefixlen = hosts[0], self.subnet.prefixlen
        self.address = str(gateway)
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{gateway}/{prefixlen}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i in range(self.n_hosts):
            ns, veth, peer = f"{self.prefix}-{self.run}-{i}", f"{self.prefix}{self.run}v{i}", \
                f"{self.prefix}{self.run}p{i}"
            address = str(hosts[9 + i])
            _ip("netns", "add", ns)
            self.hosts.append(Host(i, ns, address, veth))
            _ip("link", "add", veth, "type", "veth", "peer", "name", peer)
            _ip("link", "set", peer, "netns", ns)
            _ip("link", "set", veth, "master", self.bridge)
            _ip("link", "set", veth, "up")
            _ip("-n", ns, "link", "set", peer, "name", "eth0")
            _ip("-n", ns, "addr", "add", f"{address}/{prefixlen}", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "route", "add", "default", "via", str(gateway))

    def close(self) -> list[str]:
        """Kill what runs in the namespaces, remove them and the bridge; returns the problems
        (empty when everything went)."""
        problems: list[str] = []
        for host in self.hosts:
            if host.netns is None:
                continue
            for pid in host.pids():
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            proc = _ip("netns", "del", host.netns, check=False)
            if proc.returncode != 0 and host.netns in _netns_names():
                problems.append(f"netns {host.netns}: {proc.stderr.strip()}")
        if self.bridge in _link_names():
            proc = _ip("link", "del", self.bridge, check=False)
            if proc.returncode != 0:
                problems.append(f"bridge {self.bridge}: {proc.stderr.strip()}")
        for name in _link_names():  # veths whose namespace went away take their peer along
            if name.startswith(f"{self.prefix}{self.run}"):
                _ip("link", "del", name, check=False)
        self._owner.unlink(missing_ok=True)
        return problems

    def leftovers(self) -> list[str]:
        """Namespaces and links of this run that still exist."""
        return [n for n in _netns_names() if n.startswith(f"{self.prefix}-{self.run}-")] + \
            [n for n in _link_names() if n.startswith(f"{self.prefix}{self.run}")]

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- what a host's sockets show --------------------------------------------------------------


def tcp_sockets(pid: int | str = "self") -> list[tuple[str, int, str, int, str]]:
    """The IPv4 TCP sockets of the network namespace process ``pid`` lives in, as (local
    address, local port, remote address, remote port, state), read from /proc/PID/net/tcp
    (state "01" is ESTABLISHED, "06" TIME_WAIT, "0A" LISTEN)."""
    out: list[tuple[str, int, str, int, str]] = []
    try:
        lines = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return out

    def addr(field: str) -> tuple[str, int]:
        ip_hex, port_hex = field.split(":")
        ip = ".".join(str(int(ip_hex[i:i + 2], 16)) for i in (6, 4, 2, 0))
        return ip, int(port_hex, 16)

    for line in lines:
        parts = line.split()
        if len(parts) > 3:
            out.append((*addr(parts[1]), *addr(parts[2]), parts[3]))
    return out


# --- the launcher ----------------------------------------------------------------------------


class HostLauncher:
    """The test's side of this module run as a zygote: forks ``batchml`` workers into hosts."""

    def __init__(self, log_dir: Path, python: str) -> None:
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / "launcher.stderr", "ab") as err:
            self.proc = subprocess.Popen(
                [python, str(Path(__file__).resolve())], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1,
                env={**{k: v for k, v in os.environ.items() if not k.startswith("BATCHML_")},
                     "TF_CPP_MIN_LOG_LEVEL": "2"})
        self._ready = False
        self._n = 0
        self.children: list[int] = []

    def wait_ready(self) -> None:
        if self._ready:
            return
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"the host launcher did not start: {line!r}; see "
                               f"{self.log_dir}/launcher.stderr")
        self._ready = True

    def spawn(self, host: Host, argv: list[str], env: dict[str, str], cwd: Path,
              name: str) -> object:
        """Start ``batchml *argv`` on ``host`` (its own session and process group, in the
        host's namespace); returns a ``relhelp.Child``."""
        import relhelp

        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.wait_ready()
        self._n += 1
        base = self.log_dir / f"{self._n:03d}-{name}"
        req = {"argv": argv, "env": env, "cwd": str(cwd), "stdout": f"{base}.out",
               "stderr": f"{base}.err", "rc": f"{base}.rc", "netns": host.netns}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        pid = int(self.proc.stdout.readline())
        self.children.append(pid)
        return relhelp.Child(pid, Path(f"{base}.out"), Path(f"{base}.err"), Path(f"{base}.rc"))

    def close(self) -> None:
        for pid in self.children:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _enter_netns(name: str) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(NETNS_DIR / name, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


def _launcher_main() -> None:
    sys.path.insert(0, str(HERE))
    import zygote  # batchml's scoring stack, imported once before any fork

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    print("ready", flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            try:
                os.setsid()  # its own session and process group (pgid == pid)
                if req.get("netns"):
                    try:
                        _enter_netns(req["netns"])
                    except OSError as exc:
                        with open(req["stderr"], "a") as fh:
                            fh.write(f"cannot enter the host's namespace: {exc}\n")
                        with open(req["rc"], "w") as fh:
                            fh.write("98")
                        os._exit(98)
                zygote.child(req)
            finally:
                os._exit(99)
        print(pid, flush=True)


if __name__ == "__main__":
    _launcher_main()
