"""Blobs: upload and download archives, a job's outputs, an attempt's checkpoint.

Bodies are streamed (``request.content``), not read whole, so the blob size limit of
:mod:`scheduler.blobs` applies here instead of the JSON body limit. Who may read a
blob is decided in :mod:`scheduler.blobholds`; a refusal is the answer about a blob
that does not exist. An upload reserves its declared size on the state directory's
disk (:meth:`scheduler.writeguard.WriteGuard.reserve`) and counts against its token's
quota of stored blob bytes before its body is read, and is answered 201 whether the
blob was stored already or not.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from common.errors import Forbidden, InvalidRequest, NotFound
from common.models import MAX_ATTEMPT
from scheduler.blobs import BlobStore, check_digest
from scheduler.http import NOT_ALLOWED, json_response, principal, query_int, require_node
from scheduler.routes import service
from scheduler.routes.table import RouteTable
from scheduler.tokens import TokenRow

routes = RouteTable()

#: bytes read from a request body at a time
READ_CHUNK = 256 * 1024
#: an upload whose sender sends nothing for this long is given up (and its space
#: reservation with it)
UPLOAD_IDLE_S = 60.0
#: roles that may read blobs (node tokens too: agents fetch inputs and checkpoints)
READERS = frozenset({"admin", "read", "submit", "node"})
#: roles that may store blobs (node tokens too: agents upload outputs)
WRITERS = frozenset({"admin", "submit", "node"})


def _store(request: web.Request) -> BlobStore:
    return service(request).blobs


def _allow(request: web.Request, roles: frozenset[str]) -> TokenRow:
    who = principal(request)
    if who.role not in roles:
        raise Forbidden(NOT_ALLOWED)
    return who


async def _body(request: web.Request) -> AsyncIterator[bytes]:
    """The request body in chunks; InvalidRequest when the sender stalls."""
    chunks = request.content.iter_chunked(READ_CHUNK)
    while True:
        try:
            async with asyncio.timeout(UPLOAD_IDLE_S):
                chunk = await anext(chunks)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise InvalidRequest(
                f"no byte of the upload arrived for {UPLOAD_IDLE_S:g} s; nothing was stored",
                {"field": "$"},
            ) from None
        yield chunk


def _headers(digest: str, filename: str | None = None) -> dict[str, str]:
    headers = {"Content-Type": "application/octet-stream", "X-Berth-Digest": digest}
    if filename:
        headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return headers


@routes.post(
    "/api/v1/blobs",
    summary="Store an archive (content-addressed)",
    name="uploadBlob",
    body="binary",
    created=True,
)
async def upload(request: web.Request) -> web.Response:
    """Store the raw body; 201 with its digest, whether or not it was stored already
    (another answer would tell that someone else stored it)."""
    who = _allow(request, WRITERS)
    stored = await service(request).upload(who, _body(request), request.content_length)
    return json_response({"digest": stored.digest, "size": stored.size}, status=201)


@routes.get("/api/v1/blobs/{digest}", summary="Fetch an archive", reply="binary")
async def download(request: web.Request) -> web.StreamResponse:
    who = _allow(request, READERS)
    digest = check_digest(request.match_info["digest"])
    service(request).check_blob_readable(who, digest)
    return await _store(request).response(request, digest, _headers(digest))


@routes.get("/api/v1/jobs/{id}/outputs", summary="The archive of a job's outputs", reply="binary")
async def outputs(request: web.Request) -> web.StreamResponse:
    """The archive (tar.gz) of what the job's attempt left in /workspace/out."""
    who = _allow(request, READERS - {"node"})
    job = await service(request).visible_job(who, request.match_info["id"])
    if job.outputs is None:
        raise NotFound(
            f"job {job.id} has no outputs yet (state {job.state.value}); they are stored "
            "when an attempt ends with files in /workspace/out",
            {"field": "outputs", "state": job.state.value},
        )
    headers = _headers(job.outputs, f"{job.id}-outputs.tar.gz")
    try:
        # NotFound comes before a byte of the answer is sent.
        return await _store(request).response(request, job.outputs, headers)
    except NotFound:
        raise NotFound(
            f"the outputs of job {job.id} ({job.outputs}) are no longer stored",
            {"field": "outputs", "digest": job.outputs},
        ) from None


@routes.post(
    "/api/v1/nodes/{id}/jobs/{job}/checkpoint",
    summary="Upload a checkpoint",
    name="uploadCheckpoint",
    body="binary",
    query=(("attempt", "integer"),),
    required=("attempt",),
)
async def checkpoint(request: web.Request) -> web.Response:
    """An agent uploads the archive of an attempt's /checkpoint (raw tar body)."""
    node_id = request.match_info["id"]
    job_id = request.match_info["job"]
    require_node(request, node_id)
    attempt = query_int(request, "attempt", None, lo=1, hi=MAX_ATTEMPT)
    if attempt is None:
        raise InvalidRequest("attempt is required", {"field": "attempt"})
    digest = await service(request).checkpoint(
        node_id, job_id, attempt, principal(request), _body(request), request.content_length
    )
    return json_response({"digest": digest})
