"""The ids in request paths: jobs, batches and webhook deliveries. The service makes them with
`core.job_store.new_id` (32 hex digits); a path id must be 1 to 64 letters, digits, `_` or `-`, so a
malformed one is a 422 before anything is looked up."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path

ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"

JobId = Annotated[str, Path(pattern=ID_PATTERN, description="The id returned when the job was submitted")]
BatchId = Annotated[str, Path(pattern=ID_PATTERN, description="The id returned when the batch was submitted")]
DeliveryId = Annotated[str, Path(pattern=ID_PATTERN, description="The delivery's id (from the deliveries list)")]
