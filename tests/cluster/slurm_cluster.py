"""A real single-node Slurm on loopback for the tests: munged with a generated key,
slurmctld and slurmd from Debian's packages, every file in one temporary folder.

Used by tests/cluster/conftest.py; runnable alone for a look around:
`python -m tests.cluster.slurm_cluster` starts one and prints the environment to use.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "sinfo", "scontrol")


def missing_programs() -> list[str]:
    """The Slurm and munge programs this machine lacks (Debian: slurmctld, slurmd, munge,
    slurm-client)."""
    paths = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin" + os.pathsep + "/sbin"
    return [p for p in (*DAEMONS, *CLIENTS) if shutil.which(p, path=paths) is None]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def real_memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            # A little under the total: a node whose slurmd counts less memory than
            # slurm.conf gives it is drained.
            return int(line.split()[1]) // 1024 * 9 // 10
    raise RuntimeError("no MemTotal in /proc/meminfo")


def _program(name: str) -> str:
    paths = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin" + os.pathsep + "/sbin"
    found = shutil.which(name, path=paths)
    if found is None:
        raise FileNotFoundError(name)
    return found


@dataclass
class SlurmCluster:
    """One node (this machine, named after its hostname) in partition `debug`."""

    root: Path
    cpus: int = field(default_factory=lambda: os.cpu_count() or 1)
    memory_mb: int = field(default_factory=real_memory_mb)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def munge_socket(self) -> Path:
        return self.root / "munge" / "munge.socket"

    @property
    def node(self) -> str:
        return socket.gethostname().split(".")[0]

    def env(self) -> dict[str, str]:
        """What a Slurm client (and the jobs, which inherit it) needs to find this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def write_conf(self) -> None:
        for sub in ("munge", "state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.conf.write_text("\n".join([
            "ClusterName=opensora-test",
            "SlurmctldHost=localhost(127.0.0.1)",
            f"SlurmctldPort={free_port()}",
            f"SlurmdPort={free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={self.root / 'state'}",
            f"SlurmdSpoolDir={self.root / 'spool'}",
            f"SlurmctldPidFile={self.root / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.root / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={self.root / 'log' / 'slurmd.log'}",
            # No cgroups: the tests run in containers where they are not delegated.
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            # No slurmdbd (it needs MariaDB): sacct has no data, which TorchX's own
            # scheduler relies on (orchestration/launch/slurm.py).
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU_Memory",
            # A job that asks for no memory gets a share, not the whole node.
            "DefMemPerCPU=512",
            "MpiDefault=none",
            "ReturnToService=2",
            # Finished jobs stay visible to scontrol/squeue for the tests' lifetime.
            "MinJobAge=3600",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=30",
            "InactiveLimit=0",
            "KillWait=5",
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN",
            f"PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))

    def start(self, timeout: float = 60.0) -> None:
        self.write_conf()
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.root.chmod(0o755)
        (self.root / "munge").chmod(0o700)
        env = dict(os.environ, **self.env())
        log = self.root / "log"
        self._spawn("munged", [_program("munged"), "--foreground", "--force", f"--socket={self.munge_socket}",
                               f"--key-file={key}", f"--pid-file={self.root / 'munge' / 'munged.pid'}",
                               f"--log-file={log / 'munged.log'}", f"--seed-file={self.root / 'munge' / 'seed'}"],
                    env)
        self._wait(lambda: self.munge_socket.exists(), timeout, "munged's socket")
        self._spawn("slurmctld", [_program("slurmctld"), "-D", "-i", "-f", str(self.conf)], env)
        self._spawn("slurmd", [_program("slurmd"), "-D", "-N", self.node, "-f", str(self.conf)], env)
        self._wait(self._node_idle, timeout, f"node {self.node} idle in sinfo")

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        with open(self.root / "log" / f"{name}.stdout", "wb") as out:  # the daemon keeps its own copy
            self.processes[name] = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                                    stdin=subprocess.DEVNULL, start_new_session=True)

    def _node_idle(self) -> bool:
        p = subprocess.run([_program("sinfo"), "--noheader", "--format=%t", "--nodes", self.node],
                           env=dict(os.environ, **self.env()), capture_output=True, text=True, check=False)
        return p.returncode == 0 and p.stdout.strip() == "idle"

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [name for name, p in self.processes.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited while waiting for {what}:\n{self.logs()}")
            if ready():
                return
            time.sleep(0.2)
        raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}:\n{self.logs()}")

    def logs(self, lines: int = 20) -> str:
        out = []
        for path in sorted((self.root / "log").glob("*")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name} ---\n" + "\n".join(tail))
        return "\n".join(out)

    def stop(self) -> None:
        """Stop the daemons (by the PIDs started here), jobs first."""
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            subprocess.run([_program("scancel"), "--full", "--quiet", "--user", "root"],
                           env=dict(os.environ, **self.env()), capture_output=True, check=False)
        for name in reversed(list(self.processes)):
            p = self.processes[name]
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.processes.clear()


if __name__ == "__main__":
    import tempfile

    cluster = SlurmCluster(Path(tempfile.mkdtemp(prefix="slurm-")))
    cluster.start()
    print(f"export SLURM_CONF={cluster.conf}  # Ctrl-C stops the cluster")
    try:
        signal.pause()
    finally:
        cluster.stop()
