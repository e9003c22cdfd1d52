"""A real single-node Slurm cluster in a scratch folder for the tests: munged, slurmctld and slurmd on 127.0.0.1,
started as background processes and stopped by pid (no systemd). Needs Debian's ``slurm-wlm`` and ``munge``
(``.ci/run`` installs them) and root; without them the Slurm tests skip with one line.

No accounting daemon: ``sacct`` is disabled, as on many small clusters, so job states come from ``squeue`` and
``scontrol`` (``MinJobAge`` keeps finished jobs visible to them for an hour).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")


def missing() -> str:
    """Why a cluster cannot start here ('' when it can)."""
    absent = [b for b in BINARIES if shutil.which(b) is None and not Path(f"/usr/sbin/{b}").exists()]
    if absent:
        return f"Slurm/munge not installed ({', '.join(absent)} missing; apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "the test cluster runs its daemons as root"
    return ""


def _bin(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


class Cluster:
    """``start()`` the daemons in ``folder``; ``env`` is what a client needs (SLURM_CONF); ``stop()``."""

    def __init__(self, folder: Path, partition: str = "debug"):
        self.folder, self.partition = Path(folder), partition
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.folder / "slurm.conf"
        self.pids: dict[str, int] = {}
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def _write_conf(self) -> None:
        f = self.folder
        for d in ("munge", "state", "spool", "log"):
            (f / d).mkdir(parents=True, exist_ok=True)
        (f / "munge").chmod(0o755)  # munged refuses a socket folder others cannot enter
        node = subprocess.run([_bin("slurmd"), "-C"], capture_output=True, text=True).stdout.splitlines()[0]
        node = node.replace(f"NodeName={node.split()[0].split('=')[1]}", f"NodeName={self.host}")
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=stepadapt-test",
                    f"SlurmctldHost={self.host}(127.0.0.1)",
                    "SlurmUser=root",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    f"AuthInfo=socket={f / 'munge' / 'sock'}",
                    f"StateSaveLocation={f / 'state'}",
                    f"SlurmdSpoolDir={f / 'spool'}",
                    f"SlurmctldPidFile={f / 'slurmctld.pid'}",
                    f"SlurmdPidFile={f / 'slurmd.pid'}",
                    f"SlurmctldLogFile={f / 'log' / 'slurmctld.log'}",
                    f"SlurmdLogFile={f / 'log' / 'slurmd.log'}",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core",
                    "MpiDefault=none",
                    "ReturnToService=2",
                    "JobAcctGatherType=jobacct_gather/none",
                    "AccountingStorageType=accounting_storage/none",
                    "MailProg=/bin/true",
                    "SchedulerParameters=batch_sched_delay=0",
                    "MinJobAge=3600",
                    "KillWait=10",
                    f"SlurmctldPort={_free_port()}",
                    f"SlurmdPort={_free_port()}",
                    f"{node} NodeAddr=127.0.0.1",
                    f"PartitionName={self.partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )

    def _daemon(self, name: str, argv: list[str]) -> None:
        log = open(self.folder / "log" / f"{name}.out", "ab")
        p = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env, start_new_session=True
        )
        log.close()
        self.pids[name] = p.pid

    def start(self, timeout: float = 30.0) -> "Cluster":
        f = self.folder
        self._write_conf()
        key = f / "munge" / "munge.key"
        subprocess.run([_bin("mungekey"), "--create", f"--keyfile={key}"], check=True, capture_output=True)
        key.chmod(0o600)
        self._daemon(
            "munged",
            [
                _bin("munged"),
                "--foreground",
                f"--socket={f / 'munge' / 'sock'}",
                f"--key-file={key}",
                f"--pid-file={f / 'munge' / 'munged.pid'}",
                f"--seed-file={f / 'munge' / 'seed'}",
                f"--log-file={f / 'log' / 'munged.log'}",
                "--force",
            ],
        )
        self._wait(lambda: (f / "munge" / "sock").exists(), timeout, "munged")
        self._daemon("slurmctld", [_bin("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._daemon("slurmd", [_bin("slurmd"), "-D", "-f", str(self.conf)])
        self._wait(lambda: self.sinfo() == "idle", timeout, "the node to become idle")
        return self

    def stop_controller(self) -> None:
        """slurmctld goes away (its jobs keep running on slurmd)."""
        pid = self.pids.pop("slurmctld")
        os.killpg(pid, signal.SIGTERM)
        end = time.time() + 10
        while time.time() < end and _alive(pid):
            time.sleep(0.1)

    def start_controller(self, timeout: float = 30.0) -> None:
        """slurmctld back, recovering its state (the jobs it knew) from StateSaveLocation."""
        self._daemon("slurmctld", [_bin("slurmctld"), "-D", "-f", str(self.conf)])
        self._wait(lambda: self.run("squeue", "-h").returncode == 0, timeout, "slurmctld to answer again")

    def sinfo(self) -> str:
        p = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=self.env)
        return p.stdout.strip()

    def _wait(self, ok, timeout: float, what: str) -> None:
        end = time.time() + timeout
        while time.time() < end:
            if ok():
                return
            time.sleep(0.2)
        logs = "\n".join(p.read_text()[-2000:] for p in (self.folder / "log").glob("*") if p.is_file())
        self.stop()
        raise RuntimeError(f"test Slurm: timed out waiting for {what}\n{logs}")

    def run(self, *argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), capture_output=True, text=True, env=self.env)

    def stop(self) -> None:
        """Cancel what is left, wait for it to go, then slurmd, slurmctld and munged (SIGKILL if they linger)."""
        if self.pids.get("slurmctld"):
            self.run("scancel", "--full", "-u", "root")
            end = time.time() + 20
            while time.time() < end and self.run("squeue", "-h", "-t", "PD,R,CG").stdout.strip():
                time.sleep(0.3)
        for name in ("slurmd", "slurmctld", "munged"):
            pid = self.pids.pop(name, None)
            if pid is None:
                continue
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            end = time.time() + 5
            while time.time() < end and _alive(pid):
                time.sleep(0.1)
            if _alive(pid):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ")[-1][:1] not in ("Z", "X")
