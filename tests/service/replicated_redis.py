"""A replicated Redis under Sentinel, as real processes on loopback ports: a master, a replica and three
sentinels (`redis-server --sentinel`). The master can be killed and brought back (it then rejoins as a
replica of whichever server the sentinels promoted)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Optional

from redis import Redis
from redis.exceptions import RedisError

from tests.service.harness import free_port, stop_processes, wait_until

MASTER_NAME = "odmaster"


class ReplicatedRedis:
    # down-after 3 s: a new master that stalls for a moment (forking for its first replica's full sync on a
    # loaded machine) must not look down to a sentinel, which would fail over again to a replica that has not
    # synced yet and lose what was written meanwhile
    def __init__(self, root: Path, sentinels: int = 3, down_after_ms: int = 3000, failover_timeout_ms: int = 6000):
        from core.local_redis import find_redis_server

        self.binary = find_redis_server()
        self.root = root
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.ports = {"a": free_port(), "b": free_port()}
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.processes: dict[str, subprocess.Popen] = {}

    # ---- addresses ----
    @property
    def sentinels(self) -> str:
        """The REDIS_SENTINELS value for this set."""
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)

    def client(self, name: str) -> Redis:
        return Redis(port=self.ports[name], socket_connect_timeout=1, socket_timeout=5)

    def master(self) -> str:
        """Which server ("a" or "b") the sentinels name as master now."""
        host, port = Redis(port=self.sentinel_ports[0], socket_timeout=2).sentinel_get_master_addr_by_name(MASTER_NAME)
        return next(name for name, p in self.ports.items() if p == int(port))

    # ---- processes ----
    def _server(self, name: str, replica_of: Optional[str] = None) -> None:
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        args = [self.binary, "--port", str(self.ports[name]), "--bind", "127.0.0.1", "--dir", str(folder),
                "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--logfile", str(folder / "redis.log"),
                "--repl-diskless-sync-delay", "0"]  # a replica's full sync starts at once, not 5 s later
        if replica_of:
            args += ["--replicaof", "127.0.0.1", str(self.ports[replica_of])]
        self.processes[name] = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_until(lambda: self._answers(name), 10, what=f"redis-server {name}")

    def _answers(self, name: str) -> bool:
        try:
            return bool(self.client(name).ping())
        except RedisError:
            return False

    def _sentinel(self, index: int) -> None:
        folder = self.root / f"sentinel{index}"
        folder.mkdir(parents=True, exist_ok=True)
        conf = folder / "sentinel.conf"  # a sentinel rewrites its file with what it learns
        conf.write_text(
            f"port {self.sentinel_ports[index]}\nbind 127.0.0.1\ndir {folder}\nlogfile {folder / 'sentinel.log'}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.ports['a']} 2\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}\n"
            f"sentinel failover-timeout {MASTER_NAME} {self.failover_timeout_ms}\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n"
        )
        self.processes[f"sentinel{index}"] = subprocess.Popen(
            [self.binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def start(self) -> None:
        self._server("a")
        self._server("b", replica_of="a")
        for index in range(len(self.sentinel_ports)):
            self._sentinel(index)
        wait_until(self._settled, 30, interval=0.2, what="the sentinels to know each other and the replica")

    def _settled(self) -> bool:
        """Every sentinel sees the master, the replica (in sync) and the other sentinels: a failover can run."""
        try:
            for port in self.sentinel_ports:
                state = Redis(port=port, socket_timeout=2).sentinel_master(MASTER_NAME)
                if state["num-other-sentinels"] < len(self.sentinel_ports) - 1 or state["num-slaves"] < 1:
                    return False
            return self.client("b").info("replication").get("master_link_status") == "up"
        except RedisError:
            return False

    def kill(self, name: str) -> None:
        process = self.processes[name]
        process.kill()  # SIGKILL: no goodbye, no final fsync beyond what every write already did
        process.wait(10)

    def restart(self, name: str) -> None:
        """Bring a killed server back on its data; the sentinels make it a replica of the current master."""
        self._server(name)

    def wait_failover(self, old_master: str, timeout: float = 90) -> str:
        """The server the sentinels promoted. Seconds on an idle machine; on a stalled one (processes not
        scheduled for 2 s) every sentinel enters TILT mode and does nothing for 30 s, then goes on."""
        return wait_until(lambda: (lambda m: m if m != old_master else None)(self._master_or_none()), timeout,
                          interval=0.2, what="the sentinels to promote the replica")

    def _master_or_none(self) -> Optional[str]:
        try:
            return self.master()
        except (RedisError, StopIteration):
            return None

    def wait_replicated(self, master: str, timeout: float = 30) -> None:
        """Until the current master has a replica in sync again."""
        wait_until(lambda: self.client(master).info("replication").get("connected_slaves", 0) >= 1, timeout,
                   interval=0.2, what="a replica of the new master")

    def stop(self) -> None:
        stop_processes(self.processes.values(), 10)

    def logs(self) -> str:
        return "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(self.root.glob("*/*.log")))
