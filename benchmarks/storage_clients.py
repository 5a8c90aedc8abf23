"""Which S3 client the object storage backend uses: boto3 and obstore side by side against one S3 server.

Measures what the service does per job: PUT an output (about the size of a 1024 px PNG), GET an input,
HEAD an object (the /v1/files redirect), and presign a GET URL (every job view and webhook), plus the cost
of making a client. Prints milliseconds per operation and obstore's time as a ratio of boto3's.

    python -m benchmarks.storage_clients                      # starts a local moto S3 server
    python -m benchmarks.storage_clients --endpoint URL --bucket NAME   # any S3 (MinIO, ...): AWS_* credentials

moto is a Python server, so its own cost is in every figure; against MinIO or AWS the client's share of a
request is larger, and the presign and client figures (no network) hold anywhere.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from datetime import timedelta
from pathlib import Path
from tempfile import mkdtemp


def timed(action, repeat: int) -> float:
    """Median milliseconds of `action()` over `repeat` runs (after one warm-up)."""
    action()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def boto3_ops(endpoint: str, bucket: str, key: str, secret: str, region: str) -> dict:
    import boto3
    from botocore.config import Config

    def make():
        return boto3.session.Session().client("s3", endpoint_url=endpoint, aws_access_key_id=key, aws_secret_access_key=secret,
                                              region_name=region, config=Config(signature_version="s3v4"))

    client = make()
    return {
        "client": make,
        "put": lambda name, data: client.put_object(Bucket=bucket, Key=name, Body=data, ContentType="image/png"),
        "get": lambda name: client.get_object(Bucket=bucket, Key=name)["Body"].read(),
        "head": lambda name: client.head_object(Bucket=bucket, Key=name),
        "presign": lambda name: client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": name}, ExpiresIn=86400),
    }


def obstore_ops(endpoint: str, bucket: str, key: str, secret: str, region: str) -> dict:
    import obstore
    from obstore.store import S3Store

    def make():
        return S3Store(bucket, endpoint=endpoint, access_key_id=key, secret_access_key=secret, region=region,
                       client_options={"allow_http": True})

    store = make()
    return {
        "client": make,
        "put": lambda name, data: obstore.put(store, name, data),
        "get": lambda name: obstore.get(store, name).bytes(),
        "head": lambda name: obstore.head(store, name),
        "presign": lambda name: obstore.sign(store, "GET", name, timedelta(seconds=86400)),
    }


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", help="S3 endpoint; default: start a moto server on a free port")
    parser.add_argument("--bucket", default="bench")
    parser.add_argument("--size", type=int, default=1 << 20, help="bytes per object (default 1 MiB)")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args(argv)

    server = None
    key, secret, region = (os.environ.get("AWS_ACCESS_KEY_ID", "test-access-key"),
                           os.environ.get("AWS_SECRET_ACCESS_KEY", "test-secret-key"), os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
    endpoint = args.endpoint
    if endpoint is None:
        from tests.s3_server import ACCESS_KEY, SECRET_KEY, S3Server

        server = S3Server(Path(mkdtemp()))
        server.start()
        server.create_bucket(args.bucket)
        endpoint, key, secret = server.endpoint, ACCESS_KEY, SECRET_KEY
    data = os.urandom(args.size)
    rows = []
    try:
        for name, build in (("boto3", boto3_ops), ("obstore", obstore_ops)):
            ops = build(endpoint, args.bucket, key, secret, region)
            path = f"bench/{name}/image.png"
            ops["put"](path, data)
            rows.append({
                "client": name,
                "new_client_ms": timed(ops["client"], args.repeat),
                "put_ms": timed(lambda: ops["put"](path, data), args.repeat),
                "get_ms": timed(lambda: ops["get"](path), args.repeat),
                "head_ms": timed(lambda: ops["head"](path), args.repeat),
                "presign_ms": timed(lambda: ops["presign"](path), args.repeat * 10),
            })
    finally:
        if server is not None:
            server.stop()
    columns = ["new_client_ms", "put_ms", "get_ms", "head_ms", "presign_ms"]
    print(f"S3 clients against {'moto' if server else endpoint}, {args.size} B objects, median of {args.repeat}")
    print(f"{'client':<10}" + "".join(f"{c:>15}" for c in columns))
    for row in rows:
        print(f"{row['client']:<10}" + "".join(f"{row[c]:>15.3f}" for c in columns))
    base, other = rows
    print(f"{'ratio':<10}" + "".join(f"{other[c] / base[c]:>15.2f}" for c in columns) + "   (obstore / boto3)")
    return rows


if __name__ == "__main__":
    main()
