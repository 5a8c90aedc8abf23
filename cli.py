"""The `onediffusion` command.

    onediffusion up                      API + worker + webhook deliverer (+ a Redis of its own unless REDIS_URL is set)
    onediffusion serve                   the API only
    onediffusion worker                  one GPU worker (one per GPU)
    onediffusion webhooks                the webhook deliverer
    onediffusion run TASK --image a.png  one task from files on disk, without the service
    onediffusion make-demo-checkpoint DIR
    onediffusion keys create --tenant T  an API key (shown once; --priority N); keys list; keys revoke KEY_ID
    onediffusion settings [--table]      the settings in effect (or the table of all of them)
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

DEMO_BANNER = """
==============================================================================================
  DEMO MODE: ONEDIFFUSION_MODEL is not set, so the worker runs the tiny random-weight demo
  checkpoint. Jobs run end to end, but every output image is NOISE. Point ONEDIFFUSION_MODEL at
  a released checkpoint folder (transformer/, vae/, text_encoder/, tokenizer/, scheduler/).
==============================================================================================
"""


AUTH_BANNER = """  AUTH DISABLED: AUTH_DISABLED=true, so /v1 answers without API keys (every caller is tenant
  'public'). Fine on your own machine; for anything reachable by others unset it and create keys
  with `onediffusion keys create --tenant NAME`.
==============================================================================================
"""


def cmd_serve(args) -> None:
    import uvicorn

    from core.settings import get_settings

    # The app reads its settings from the environment: --host/--port become HOST/PORT before the settings
    # are first read (they are cached), so the URLs it derives (PUBLIC_URL unset) point where it listens.
    if args.host:
        os.environ["HOST"] = args.host
    if args.port:
        os.environ["PORT"] = str(args.port)
    get_settings.cache_clear()
    settings = get_settings()
    if _address_in_use(settings.host, settings.port):  # said at once, not after seconds of importing the app
        sys.exit(f"error: cannot listen on {settings.host}:{settings.port}: the address is in use by another "
                 "process (set PORT, or --port)")
    from core.logs import setup_logging

    from app.connections import DeadlineProtocol, limit_error_logs, open_files_limit

    setup_logging("api")  # uvicorn's own lines go through it too (log_config=None: no handlers of its own)
    check_redis_policy(settings)
    limit_error_logs()
    # room for MAX_CONNECTIONS connections plus Redis, files and fetches; fewer connections if the system allows less
    max_connections = min(settings.max_connections, open_files_limit(settings.max_connections + 256) - 128)
    uvicorn.run(
        "app.main:create_app", factory=True, host=settings.host, port=settings.port,
        log_level=os.environ.get("LOG_LEVEL", "info").lower(), access_log=False, log_config=None,
        timeout_keep_alive=settings.keep_alive_s,
        http=DeadlineProtocol.configure(settings.header_timeout_s, settings.body_timeout_s, max(16, max_connections)),
    )


def _address_in_use(host: str, port: int) -> bool:
    """Whether another process listens on host:port (bound as uvicorn binds: SO_REUSEADDR). Any other
    failure is left to uvicorn to report."""
    import errno
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        return exc.errno == errno.EADDRINUSE
    return False


def check_redis_policy(settings) -> None:
    """Refuse to start on a Redis that evicts keys (core/redis_policy.py); a Redis that does not answer
    yet is the API's to wait out (it answers 503 meanwhile)."""
    from redis.exceptions import RedisError

    from core.connection import connect
    from core.redis_policy import check_eviction

    try:
        check_eviction(connect(settings))
    except RedisError:
        pass


def cmd_worker(args) -> None:
    from worker.main import run_gpu_worker

    run_gpu_worker()


def cmd_webhooks(args) -> None:
    from worker.main import run_webhook_deliverer

    run_webhook_deliverer()


def cmd_make_demo(args) -> None:
    from model.demo_checkpoint import make_demo_checkpoint

    print(make_demo_checkpoint(args.dir))


def cmd_keys(args) -> None:
    from app.api_keys import KeyStore
    from core.connection import connect, keys_for
    from core.settings import get_settings

    settings = get_settings()
    store = KeyStore(connect(settings), keys_for(settings.queue_prefix))
    if args.action == "create":
        if not args.tenant:
            raise SystemExit("error: keys create needs --tenant NAME")
        try:
            key, record = store.create(args.tenant, args.name or "", args.priority)
        except ValueError as exc:
            raise SystemExit(f"error: {exc}")
        priority = "" if record.priority is None else f" (priority {record.priority}: its default and most)"
        print(f"key id {record.key_id} for tenant {record.tenant!r}{priority}; the key (shown only now, store it safely):")
        print(key)
    elif args.action == "list":
        records = store.list()
        print(f"{'key id':14} {'tenant':20} {'name':20} {'created (UTC)':20} {'priority':8} revoked")
        for r in records:
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.created_at))
            revoked = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.revoked_at)) if r.revoked_at else "-"
            priority = "-" if r.priority is None else str(r.priority)
            print(f"{r.key_id:14} {r.tenant:20} {r.name:20} {created:20} {priority:8} {revoked}")
    else:
        if not args.key_id:
            raise SystemExit("error: keys revoke needs a KEY_ID (see `onediffusion keys list`)")
        if not store.revoke(args.key_id):
            raise SystemExit(f"error: no key with id {args.key_id}")
        print(f"revoked {args.key_id}")


def cmd_settings(args) -> None:
    from core.settings import Settings, get_settings

    if args.table:
        print(Settings.model_construct().markdown_table())
        return
    for name, value in get_settings().current():
        print(f"{name}={value}")


def cmd_up(args) -> None:
    """Everything a local user needs, in one process tree; Ctrl-C stops it all."""
    from core.local_redis import RedisUnavailable, ensure_redis, start_redis
    from core.settings import get_settings

    settings = get_settings()
    data_dir = Path("var") / "redis"
    try:
        if settings.redis_sentinels.strip():  # a Sentinel-managed Redis is found through the sentinels, never started here
            redis_process = None
            redis_line = f"Redis: the master {settings.redis_sentinel_master!r} of the sentinels {settings.redis_sentinels}"
        elif "redis_url" in settings.model_fields_set:  # REDIS_URL given (environment or .env): that Redis
            redis_process = ensure_redis(settings.redis_url, data_dir)
            redis_line = f"Redis: {settings.redis_url} (REDIS_URL)"
        else:  # never whatever answers on 6379 (somebody else's data): a Redis of our own on a free port
            url = f"redis://127.0.0.1:{_free_port()}/0"
            redis_process = start_redis(url, data_dir)
            redis_line = f"Redis: {url} (started for this run; data in {data_dir}; set REDIS_URL to use another)"
            os.environ["REDIS_URL"] = url
            get_settings.cache_clear()
            settings = get_settings()
    except RedisUnavailable as exc:
        sys.exit(f"error: {exc}")
    env = dict(os.environ)
    if not settings.onediffusion_model:
        # made once here, not by the worker while the API already answers; once made, `up` does not import
        # torch and the model code (seconds) only to find it there
        if not (Path(settings.demo_checkpoint_dir) / "model_index.json").is_file():
            from worker.model_host import checkpoint_path

            checkpoint_path(settings)
        print(DEMO_BANNER, flush=True)
    if settings.auth_disabled:
        print(AUTH_BANNER, flush=True)
    exe = [sys.executable, str(Path(__file__).resolve())]
    children = [subprocess.Popen(exe + [name], env=env) for name in ("serve", "worker", "webhooks")]
    print(f"OneDiffusion API on {settings.public_url} (docs at {settings.public_url}/docs); Ctrl-C stops", flush=True)
    print(redis_line, flush=True)

    def stop(*_, code: int = 0):
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.time() + 20
        for child in children:
            try:
                child.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                child.kill()
        if redis_process is not None:
            redis_process.terminate()
            redis_process.wait(timeout=10)
        sys.exit(code)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while True:
        for child in children:
            if child.poll() is not None:
                name = ("serve", "worker", "webhooks")[children.index(child)]
                print(f"error: `onediffusion {name}` exited with code {child.returncode} (see its log above); "
                      "stopping everything", file=sys.stderr, flush=True)
                stop(code=child.returncode or 1)
        time.sleep(0.25)


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---- run one task from files --------------------------------------------------------------------------
def _b64(path: str) -> str:
    try:
        return base64.b64encode(Path(path).read_bytes()).decode()
    except FileNotFoundError:
        raise SystemExit(f"error: no such file: {path}") from None
    except OSError as exc:
        raise SystemExit(f"error: cannot read {path}: {exc.strerror}") from None


def _read_json(path: str) -> dict:
    try:
        value = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SystemExit(f"error: no such file: {path}") from None
    except json.JSONDecodeError as exc:
        raise SystemExit(f"error: --json {path} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise SystemExit(f"error: --json {path} must hold a JSON object with the request's fields")
    return value


def validation_message(exc) -> str:
    """A pydantic error as one line: each field, what is wrong with it (the CLI names the field to change)."""
    problems = []
    for item in exc.errors():
        field = ".".join(str(p) for p in item["loc"]) or "request"
        problems.append(f"{field}: {item['msg']}")
    return "; ".join(problems)


def build_payload(task_cls, args) -> dict:
    payload: dict = _read_json(args.json) if args.json else {}
    images = [_b64(p) for p in args.image or []]
    fields = task_cls.model_fields
    if images:
        if "images" in fields:
            payload["images"] = images
        elif "image" in fields and len(images) == 1:
            payload["image"] = images[0]
        elif "image" in fields:
            raise SystemExit(f"error: {task_cls.task_name} takes one --image, got {len(images)}")
        else:
            raise SystemExit(f"error: {task_cls.task_name} takes no --image")
    if args.mask:
        payload["mask"] = _b64(args.mask)
    for option, field in (("prompt", "prompt"), ("negative_prompt", "negative_prompt"), ("steps", "num_inference_steps"),
                          ("guidance", "guidance_scale"), ("seed", "seed"), ("width", "width"), ("height", "height")):
        value = getattr(args, option)
        if value is not None:
            payload[field] = value
    for item in args.set or []:
        key, _, raw = item.partition("=")
        try:
            payload[key] = json.loads(raw)
        except json.JSONDecodeError:
            payload[key] = raw
    return payload


def cmd_run(args) -> None:
    from pydantic import ValidationError

    from model.tasks import TASKS, TaskInputError

    if args.task not in TASKS:
        raise SystemExit(f"error: unknown task {args.task!r}; choose one of: {', '.join(TASKS)}")
    task_cls = TASKS[args.task]
    try:
        plan = task_cls.model_validate(build_payload(task_cls, args)).plan()
    except ValidationError as exc:
        raise SystemExit(f"error: {args.task}: {validation_message(exc)} (see `onediffusion run {args.task} --help`)") from None
    except TaskInputError as exc:
        raise SystemExit(f"error: {args.task}: {exc}") from None

    from model.pipeline import OneDiffusion, TaskResult

    from core.settings import get_settings
    from worker.model_host import checkpoint_path

    if not args.checkpoint and not get_settings().onediffusion_model:
        print(DEMO_BANNER, file=sys.stderr)
        print(f"demo checkpoint: {Path(get_settings().demo_checkpoint_dir).resolve()} (DEMO_CHECKPOINT_DIR; made on first use)",
              file=sys.stderr)
    checkpoint = args.checkpoint or str(checkpoint_path(get_settings()))
    model = OneDiffusion.load(checkpoint, device=args.device)
    print(f"{plan.task}: {plan.width}x{plan.height}, {len(plan.frames)} frames, mask {plan.denoise_mask}, "
          f"{plan.num_inference_steps} steps, seed {plan.seed}", file=sys.stderr)
    from tqdm import tqdm

    with tqdm(total=plan.num_inference_steps, desc=plan.task, unit="step", file=sys.stderr) as bar:
        (result,) = model.run([plan], on_step=lambda s, n: bar.update(s - bar.n))
    if not isinstance(result, TaskResult):
        raise SystemExit(f"error: the task failed: {result}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"outputs in {out.resolve()}", file=sys.stderr)
    for file in result.files:
        (out / file.name).write_bytes(file.data)
    summary = {"task": plan.task, "prompt": plan.prompt, "seed": plan.seed, "files": [f.name for f in result.files],
               "data": result.data, "warnings": result.warnings, "timings": result.timings}
    (out / "result.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="onediffusion", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="API + worker + webhook deliverer (+ a Redis of its own unless REDIS_URL is set)").set_defaults(func=cmd_up)
    serve = sub.add_parser("serve", help="the API")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.set_defaults(func=cmd_serve)
    sub.add_parser("worker", help="a GPU worker").set_defaults(func=cmd_worker)
    sub.add_parser("webhooks", help="the webhook deliverer").set_defaults(func=cmd_webhooks)
    demo = sub.add_parser("make-demo-checkpoint", help="write the tiny random-weight checkpoint")
    demo.add_argument("dir")
    demo.set_defaults(func=cmd_make_demo)
    settings_cmd = sub.add_parser("settings", help="the settings as this process sees them (environment and .env)")
    settings_cmd.add_argument("--table", action="store_true", help="the table of every setting, its default and meaning (as in docs/operations.md)")
    settings_cmd.set_defaults(func=cmd_settings)
    keys = sub.add_parser("keys", help="API keys: create, list, revoke")
    keys.add_argument("action", choices=["create", "list", "revoke"])
    keys.add_argument("key_id", nargs="?", help="for revoke")
    keys.add_argument("--tenant", help="for create: the tenant the key acts for")
    keys.add_argument("--name", help="for create: a label")
    keys.add_argument("--priority", type=int, metavar="N",
                      help="for create: 0 to 9, the default priority of the key's jobs and the most its requests may "
                      "ask for (it orders the tenant's own queued jobs); without it, 0 and requests may ask up to 9")
    keys.set_defaults(func=cmd_keys)
    from model.tasks import TASKS

    run = sub.add_parser(
        "run", help="run one task from files on disk", formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="tasks:\n" + "\n".join(f"  {name:28} {(cls.__doc__ or '').strip().splitlines()[0] if cls.__doc__ else ''}"
                                      for name, cls in TASKS.items()),
    )
    run.add_argument("task", metavar="TASK", help="one of the tasks listed below")
    run.add_argument("--image", action="append", help="input image (repeat for tasks that take several)")
    run.add_argument("--mask", help="inpainting mask")
    run.add_argument("--prompt")
    run.add_argument("--negative-prompt", dest="negative_prompt")
    run.add_argument("--steps", type=int)
    run.add_argument("--guidance", type=float)
    run.add_argument("--seed", type=int)
    run.add_argument("--width", type=int)
    run.add_argument("--height", type=int)
    run.add_argument("--set", action="append", help="any other field, KEY=VALUE (VALUE parsed as JSON when it is)")
    run.add_argument("--json", help="a JSON file with the request's fields")
    run.add_argument("--out", default="outputs", help="folder for the outputs (default ./outputs)")
    run.add_argument("--checkpoint", help="checkpoint folder (default ONEDIFFUSION_MODEL, else the demo)")
    run.add_argument("--device", help="cpu, cuda, cuda:1 ...")
    run.set_defaults(func=cmd_run)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except BrokenPipeError:
        # `onediffusion settings | head`: the reader left; say nothing more (and let Python's exit flush
        # go nowhere instead of raising again).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        message = user_error(exc)
        if message is None:
            raise
        sys.exit(f"error: {message}")


def user_error(exc: BaseException):
    """One line for the failures a user causes or can fix (a bad setting, Redis down); None for bugs."""
    from redis.exceptions import ConnectionError as RedisConnectionError, TimeoutError as RedisTimeout

    from core.redis_policy import EvictingRedis
    from core.settings import SettingsError

    if isinstance(exc, (SettingsError, EvictingRedis)):
        return str(exc)
    if isinstance(exc, (RedisConnectionError, RedisTimeout)):
        from core.connection import describe
        from core.settings import get_settings

        return f"cannot reach Redis at {describe(get_settings())} ({exc}); start it, or point REDIS_URL at one"
    return None


if __name__ == "__main__":
    main()
