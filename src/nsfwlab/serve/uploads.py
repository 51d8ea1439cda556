"""Reading the images of a scoring request: multipart ``file`` parts, or the raw body as one image.

The body is counted as it streams in (:class:`~nsfwlab.serve.limits.CountingReceive`) and refused
at ``max_body_bytes``; a declared ``Content-Length`` over the cap is refused before reading.
Names are cleaned here, at the edge (:func:`~nsfwlab.serve.review.clean_name`): whatever is
logged, answered or written to the review store carries no control characters.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request

from .config import ServeConfig
from .errors import BadRequestError, TooManyFilesError
from .limits import CountingReceive, check_declared_length
from .review import clean_name

__all__ = ["read_uploads"]


async def read_uploads(request: Request, config: ServeConfig, filename: str | None) -> list[tuple[str, bytes]]:
    """The ``(name, bytes)`` uploads of a request."""
    check_declared_length(request.headers, config.max_body_bytes, "max_body_bytes")
    counted = Request(request.scope, CountingReceive(request.receive, config.max_body_bytes, config.body_timeout_s))
    try:
        return await _parse_uploads(counted, request.headers.get("content-type", "").lower(), config, filename)
    except ClientDisconnect:
        raise BadRequestError("the client disconnected before sending the whole body") from None


async def _parse_uploads(counted: Request, ctype: str, config: ServeConfig,
                         filename: str | None) -> list[tuple[str, bytes]]:
    if ctype.startswith("multipart/form-data"):
        try:
            form = await counted.form(max_files=config.max_files, max_fields=config.max_files + 16)
        except StarletteHTTPException as exc:
            if "too many files" in str(exc.detail).lower():
                raise TooManyFilesError(
                    f"more than {config.max_files} files in one request; split it (or raise max_files)",
                    param="max_files") from None
            raise BadRequestError(f"malformed multipart body: {exc.detail}") from None
        try:
            uploads: list[tuple[str, bytes]] = []
            for i, value in enumerate(form.getlist("file")):
                if isinstance(value, str):
                    raise BadRequestError("the 'file' field must be a file upload, not a text field")
                uploads.append((clean_name(value.filename or "", f"file{i}"), await value.read()))
        finally:
            await form.close()
        if not uploads:
            raise BadRequestError(
                "no image in the request: send multipart field 'file' (repeatable) or a raw image body"
            )
        return uploads
    # Anything else is one raw image, judged by its bytes, not by its Content-Type (curl's
    # --data-binary sends application/x-www-form-urlencoded). A URL in a JSON or form body is text:
    # 415, never fetched.
    return [(clean_name(filename or ""), await counted.body())]
