"""The function RQ jobs name. Our batching worker runs jobs itself and never calls it; a plain RQ worker
(`rq worker onediffusion`) does, running one job at a time with a model loaded on first use."""

from __future__ import annotations

from functools import lru_cache

from rq import get_current_job


@lru_cache(maxsize=1)
def _executor():
    from core.settings import get_settings
    from core.storage import open_store

    from .execution import Executor
    from .model_host import load_model

    settings = get_settings()
    return Executor(load_model(settings), open_store(settings), settings)


def run_job(task: str, payload: dict) -> dict:
    from .execution import WorkItem

    (outcome,) = _executor().run([WorkItem(get_current_job().id, task, payload)])
    if outcome.error:
        raise RuntimeError(outcome.error["message"])
    return outcome.result
