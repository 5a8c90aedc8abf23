"""Job outputs, served from the result store in the format asked: to the job's tenant, or to anyone
holding an unexpired signed URL. With object storage (STORAGE_URL) the answer is a 307 to a presigned URL
of the bucket, so output bytes never pass through the API."""

from __future__ import annotations

from typing import Literal, Optional

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from core.job_store import JobNotFound
from core.storage import SAFE_NAME, BlobStore, LossyConversion, convert, converted_name, source_of

from ..callers import Caller, optional_caller
from ..errors import ApiError
from ..ids import ID_PATTERN
from ..schemas import ErrorBody
from ..state import Jobs, ServerSettings, Store

router = APIRouter(prefix="/v1/files", tags=["files"])
NOT_FOUND = "no such file (outputs expire with their job)"
# what this route serves (storage.convert's formats), and `image/*` for clients that accept any of them
MEDIA_TYPES = ("image/png", "image/webp", "image/jpeg", "image/*")


@router.get(
    "/{job_id}/{name}",
    summary="Download an output",
    description="With the API key of the job's tenant, or with the `expires` and `sig` of a signed URL. "
    "The name's suffix picks the format (`image.jpeg`, `image.webp` of a stored `image.png`), as does `format`; "
    "16-bit outputs (depth) are served as PNG only (422 otherwise). With object storage (STORAGE_URL) the "
    "answer is 307 to a presigned URL of the bucket.",
    response_class=Response,
    responses={
        200: {"description": "The file's bytes, in the media type the name's suffix or `format` picks",
              "content": {media: {"schema": {"type": "string", "format": "binary"}} for media in MEDIA_TYPES},
              "headers": {"ETag": {"schema": {"type": "string"}, "description": "Send as If-None-Match to get 304"},
                          "Cache-Control": {"schema": {"type": "string"}}}},
        304: {"description": "Not modified (If-None-Match matched the ETag)"},
        307: {"description": "Object storage: fetch the file from the presigned URL in Location",
              "headers": {"Location": {"schema": {"type": "string"}}}},
        401: {"model": ErrorBody, "description": "No key and no valid signature"},
        404: {"model": ErrorBody, "description": "No such file (or not yours)"},
        422: {"model": ErrorBody, "description": "A format this output cannot take without losing its meaning"},
        503: {"model": ErrorBody, "description": "The object storage is unreachable"},
    },
)
def get_file(
    request: Request,
    service: Jobs,
    store: Store,
    settings: ServerSettings,
    job_id: str = Path(pattern=ID_PATTERN),
    name: str = Path(pattern=SAFE_NAME.pattern),  # a name the store takes
    format: Optional[Literal["png", "webp", "jpeg"]] = Query(
        None, description="Re-encode the stored PNG (default: the format the name's suffix says, else png)"
    ),
    expires: Optional[int] = Query(None, description="Expiry of a signed URL (unix seconds)"),
    sig: Optional[str] = Query(None, max_length=128, description="Signature of a signed URL"),
    caller: Optional[Caller] = Depends(optional_caller),
):
    if not service.signer.valid(job_id, name, expires, sig):
        if caller is None:
            raise ApiError(401, "unauthorized", "send an API key, or use the output's signed_url (it may have expired)",
                           {"WWW-Authenticate": "Bearer"})
        try:
            service.view(job_id, tenant=caller.tenant)
        except JobNotFound:
            raise ApiError(404, "not_found", NOT_FOUND) from None
    if store.redirects:
        return _redirect(store, job_id, name, format, settings.signed_url_ttl_s)
    path = store.path(job_id, name)
    fmt = format or "png"
    if path is None:  # `image.jpeg`: the stored `image.png` in another format
        stored, by_suffix = source_of(name)
        path = store.path(job_id, stored) if stored != name else None
        fmt = format or by_suffix
    if path is None:
        raise ApiError(404, "not_found", NOT_FOUND)
    # Outputs never change once stored: an ETag of the file's identity and the format serves conditional GETs.
    stat = path.stat()
    etag = f'"{stat.st_mtime_ns:x}-{stat.st_size:x}-{fmt}"'
    headers = {"Cache-Control": "private, max-age=3600", "ETag": etag}
    if etag in [tag.strip() for tag in request.headers.get("if-none-match", "").split(",")] or \
            request.headers.get("if-none-match", "").strip() == "*":
        return Response(status_code=304, headers=headers)
    if fmt == "png":
        return FileResponse(path, media_type="image/png", headers=headers)
    try:
        data, media_type = convert(path.read_bytes(), fmt)
    except LossyConversion as exc:
        raise ApiError(422, "invalid_request", f"format: {exc}") from None
    return Response(data, media_type=media_type, headers=headers)


def _redirect(store: BlobStore, job_id: str, name: str, format: Optional[str], ttl_s: int) -> RedirectResponse:
    """307 to a presigned URL of the object in the format asked. The job's own format is stored by the
    worker; another one is converted here once and kept beside it, so later fetches redirect at once."""
    if format is None and store.exists(job_id, name):
        target = name
    else:
        source, fmt = name, format or "png"
        if not store.exists(job_id, name):  # `image.jpeg`: the stored `image.png` in another format
            source, by_suffix = source_of(name)
            fmt = format or by_suffix
            if source == name or not store.exists(job_id, source):
                raise ApiError(404, "not_found", NOT_FOUND)
        target = converted_name(source, fmt)
        if target != source and not store.exists(job_id, target):
            data = store.read(job_id, source)
            if data is None:
                raise ApiError(404, "not_found", NOT_FOUND)
            try:
                converted, _ = convert(data, fmt)
            except LossyConversion as exc:
                raise ApiError(422, "invalid_request", f"format: {exc}") from None
            store.save(job_id, target, converted)
    # the redirect itself is not cached: its URL expires, the object it names does not change
    return RedirectResponse(store.presigned_url(job_id, target, ttl_s), status_code=307,
                            headers={"Cache-Control": "no-store"})


router.add_api_route(
    "/{job_id}/{name}", get_file, methods=["HEAD"], response_class=Response, summary="An output's headers",
    description="As GET without the body: size, type, ETag.", operation_id="head_file",
    responses={401: {"description": "No key and no valid signature"}, 404: {"description": "No such file (or not yours)"},
               422: {"description": "A format this output cannot take"}},
)
