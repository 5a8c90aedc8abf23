"""Job outputs, served from the result store in the format asked."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import FileResponse, Response

from ..errors import ApiError
from ..storage import convert

router = APIRouter(prefix="/v1/files", tags=["files"])


@router.get(
    "/{job_id}/{name}",
    summary="Download an output",
    response_class=Response,
    responses={200: {"content": {"image/png": {}, "image/webp": {}, "image/jpeg": {}}}},
)
def get_file(
    request: Request,
    job_id: str = Path(pattern=r"^[A-Za-z0-9_-]{1,64}$"),
    name: str = Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"),
    format: Literal["png", "webp", "jpeg"] = Query("png", description="Re-encode the stored PNG"),
):
    path = request.app.state.store.path(job_id, name)
    if path is None:
        raise ApiError(404, "not_found", "no such file (outputs expire with their job)")
    headers = {"Cache-Control": "private, max-age=3600"}
    if format == "png":
        return FileResponse(path, media_type="image/png", headers=headers)
    data, media_type = convert(path.read_bytes(), format)
    return Response(data, media_type=media_type, headers=headers)
