"""What the gateway (`app/`) and the workers (`worker/`) share: settings, the Redis connection and key
names, the job store (records, progress, cancel flags, end-of-job hooks), results storage, signing, the
webhook guard, provenance, metrics and logging. It imports nothing from HTTP (FastAPI, Starlette,
uvicorn) and nothing from `app/` or `worker/`; tests/project/test_layout.py holds it to that."""
