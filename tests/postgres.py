"""A throwaway PostgreSQL server for the tests that check "a PostgreSQL URL must also work" (issue #4).

Debian's `postgresql` package (installed by scripts/setup-system.sh) provides `initdb` and `postgres` under
/usr/lib/postgresql/<version>/bin. The server runs in a temporary directory on a free loopback port, with password
(SCRAM) authentication, like a real installation. PostgreSQL refuses to run as root, so when the tests run as root
(CI containers do), the server runs as the `postgres` system user that the package creates, through `runuser`.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

from copeau.services import free_port

USER = "copeau"
PASSWORD = "mot-de-passe-postgres-des-tests"


def postgres_bin() -> Path | None:
    """The newest installed server's bin directory, or None."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name))
    return versions[-1].parent if versions else None


@dataclass
class PostgresServer:
    port: int
    process: subprocess.Popen[bytes]
    _ids: Iterator[int]

    def new_database(self, prefix: str = "t") -> str:
        """A fresh, empty database; returns its SQLAlchemy URL (with the password, as an operator would set it)."""
        name = f"{prefix}_{next(self._ids)}"
        with psycopg.connect(self._dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{name}"

    def _dsn(self, database: str) -> str:
        return f"host=127.0.0.1 port={self.port} user={USER} password={PASSWORD} dbname={database}"

    def ready(self) -> bool:
        try:
            with psycopg.connect(self._dsn("postgres"), connect_timeout=1):
                return True
        except psycopg.OperationalError:
            return False


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """Start a server in a fresh directory; stop it and remove the directory at the end."""
    bindir = postgres_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed: run `make test` (scripts/setup-system.sh installs it)")
    as_root = os.geteuid() == 0
    run_as: list[str] = ["runuser", "-u", "postgres", "--"] if as_root else []
    # Not under pytest's tmp_path: it is private to root, and the server may run as another user.
    top = Path(tempfile.mkdtemp(prefix="copeau-pg-"))
    data = top / "data"
    pwfile = top / "pwfile"
    pwfile.write_text(PASSWORD + "\n")
    if as_root:
        entry = pwd.getpwnam("postgres")
        top.chmod(0o700)
        for path in (top, pwfile):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    try:
        subprocess.run(
            [*run_as, str(bindir / "initdb"), "-D", str(data), "-U", USER, f"--pwfile={pwfile}", "--auth=scram-sha-256",
             "--encoding=UTF8", "--locale=C", "--no-sync"],
            check=True, capture_output=True,
        )
        port = free_port()
        with (top / "server.log").open("ab") as server_log:  # opened here, inherited: writable as any user
            process = subprocess.Popen(
                [*run_as, str(bindir / "postgres"), "-D", str(data), "-p", str(port),
                 "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={top}",
                 "-c", "fsync=off", "-c", "full_page_writes=off"],
                stdout=subprocess.DEVNULL, stderr=server_log,
            )
        server = PostgresServer(port=port, process=process, _ids=itertools.count(1))
        deadline = time.monotonic() + 30
        while not server.ready():
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"PostgreSQL did not start (exit code {process.poll()}), data in {data}")
            time.sleep(0.1)
        try:
            yield server
        finally:
            process.terminate()  # SIGTERM: "smart" shutdown; the tests have closed their connections
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    finally:
        shutil.rmtree(top, ignore_errors=True)
