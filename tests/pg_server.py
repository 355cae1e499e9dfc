"""A throwaway PostgreSQL server for the tests: `initdb` in a temporary folder, listening
on a free loopback port only, stopped by `pg_ctl` (its postmaster PID) and removed.

The binaries come from PATH or Debian's `/usr/lib/postgresql/<version>/bin`; without them
the tests that need a server are skipped, naming the package (`.ci/run` installs it
where it runs as root). PostgreSQL refuses to run as root, so under uid 0 the server
runs as the `postgres` user (or `nobody`) from a folder that user owns.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

USER = "opensora"
PASSWORD = "opensora-test"  # scram over TCP, as a real deployment would ask for
START_TIMEOUT_S = 120
MISSING = ("PostgreSQL server binaries (initdb, pg_ctl, postgres) are not on PATH nor in "
           "/usr/lib/postgresql/*/bin; install Debian's postgresql package (.ci/run does as root)")


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    password: str

    def url(self, database: str, driver: str = "postgresql") -> str:
        return f"{driver}://{self.user}:{self.password}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str) -> None:
        import psycopg2

        connection = psycopg2.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                                      dbname="postgres")
        try:
            connection.autocommit = True  # CREATE DATABASE cannot run inside a transaction
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()


def server_binaries() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres, or None."""
    names = ("initdb", "pg_ctl", "postgres")
    found = shutil.which("initdb")
    if found:  # Debian links only some of them into /usr/bin: use the real folder
        folder = Path(found).resolve().parent
        if all((folder / n).is_file() for n in names):
            return folder

    def version(folder: Path) -> tuple[int, ...]:
        return tuple(int(p) for p in folder.parent.name.split(".") if p.isdigit())

    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    return next((c for c in candidates if all((c / n).is_file() for n in names)), None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_user() -> pwd.struct_passwd | None:
    """None when this process may run the server itself; else the unprivileged user to use."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' user exists to run PostgreSQL")


@contextlib.contextmanager
def running_postgres(databases: tuple[str, ...] = ()) -> Iterator[PostgresServer]:
    """Start a server (creating `databases`), yield it, stop it and delete its files.

    Raises LookupError (with MISSING) when the binaries are absent."""
    binaries = server_binaries()
    if binaries is None:
        raise LookupError(MISSING)
    user = _server_user()
    as_user = {} if user is None else {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    # Under /tmp, not pytest's tmp_path: the server's user must reach the folder.
    folder = Path(tempfile.mkdtemp(prefix="opensora-pg-"))
    data, log, secret = folder / "data", folder / "server.log", folder / "password"
    secret.write_text(PASSWORD + "\n")
    if user is not None:
        for path in (folder, secret):
            os.chown(path, user.pw_uid, user.pw_gid)
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    if user is not None:
        env["HOME"] = str(folder)
    started = False
    try:
        _run([binaries / "initdb", "-D", data, "-U", USER, f"--pwfile={secret}", "--auth-local=trust",
              "--auth-host=scram-sha-256", "-E", "UTF8", "--no-locale", "--no-sync"], as_user, env)
        for _attempt in range(3):  # another process may take the free port before the server binds it
            port = _free_port()
            # fsync off: a test server's data need not survive a power cut.
            options = (f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={folder} "
                       "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
            result = subprocess.run([binaries / "pg_ctl", "-D", data, "-l", log, "-o", options, "-w",
                                     "-t", str(START_TIMEOUT_S), "start"], check=False, capture_output=True,
                                    text=True, env=env, **as_user)
            if result.returncode == 0:
                started = True
                break
            if "could not bind" not in _read(log) and "already in use" not in _read(log):
                raise RuntimeError(f"pg_ctl start failed ({result.returncode}): {result.stderr}\n{_read(log)[-2000:]}")
        else:
            raise RuntimeError(f"PostgreSQL found no free port in 3 tries:\n{_read(log)[-2000:]}")
        server = PostgresServer("127.0.0.1", port, USER, PASSWORD)
        for name in databases:
            server.create_database(name)
        yield server
    finally:
        if started:
            subprocess.run([binaries / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop"], check=False,
                           capture_output=True, env=env, **as_user)
        shutil.rmtree(folder, ignore_errors=True)


def _run(argv: list, as_user: dict, env: dict) -> None:
    result = subprocess.run([str(a) for a in argv], check=False, capture_output=True, text=True, env=env,
                            **as_user)
    if result.returncode != 0:
        raise RuntimeError(f"{Path(argv[0]).name} failed ({result.returncode}): {result.stderr or result.stdout}")


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
