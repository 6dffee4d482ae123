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
from pathlib import Path

from aiohttp import web

from common.errors import Forbidden, InvalidRequest, NotFound
from scheduler import blobholds
from scheduler.blobs import BlobStore, Stored, check_digest
from scheduler.http import NOT_ALLOWED, json_response, principal, query_int, require_node
from scheduler.routes import service, visible_job
from scheduler.routes.table import RouteTable
from scheduler.store.base import TokenRow

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
#: the one answer to a blob the caller may not read, whether or not it is stored
NOT_READABLE = "this token may not read that blob"


def _store(request: web.Request) -> BlobStore:
    return BlobStore.in_state_dir(service(request).config.state_dir)


def _allow(request: web.Request, roles: frozenset[str]) -> TokenRow:
    who = principal(request)
    if who.role not in roles:
        raise Forbidden(NOT_ALLOWED)
    return who


async def _receive(request: web.Request, who: TokenRow) -> Stored:
    """Store the body, its declared size reserved on disk and counted against the
    token's quota before a byte of it is read; the uploader then holds the blob."""
    svc = service(request)
    store = _store(request)
    declared = request.content_length
    store.check_declared(declared)
    # A body without a length may be as long as the largest blob.
    bound = store.max_bytes if declared is None else declared
    with (
        svc.cluster.blob_holds.admit_upload(who, bound, svc.config.max_blob_bytes_per_token),
        svc.guard.reserve(bound) as held,
    ):
        stored = await store.put(_body(request), declared=declared, wrote=held.wrote)
    charged = stored.size if who.role in blobholds.QUOTA_ROLES else 0
    svc.cluster.blob_holds.hold(stored.digest, who.name, charged, svc.cluster.changes)
    return stored


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


def _send(path: Path, digest: str, filename: str | None = None) -> web.FileResponse:
    headers = {"Content-Type": "application/octet-stream", "X-Berth-Digest": digest}
    if filename:
        headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return web.FileResponse(path, headers=headers)


@routes.post(
    "/api/v1/blobs", summary="Store an archive (content-addressed)", body="binary", created=True
)
async def upload(request: web.Request) -> web.Response:
    """Store the raw body; 201 with its digest, whether or not it was stored already
    (another answer would tell that someone else stored it)."""
    who = _allow(request, WRITERS)
    stored = await _receive(request, who)
    await service(request).commit()
    return json_response({"digest": stored.digest, "size": stored.size}, status=201)


@routes.get("/api/v1/blobs/{digest}", summary="Fetch an archive", reply="binary")
async def download(request: web.Request) -> web.FileResponse:
    who = _allow(request, READERS)
    digest = check_digest(request.match_info["digest"])
    if not blobholds.may_read(service(request).cluster, who, digest):
        raise Forbidden(NOT_READABLE)
    return _send(_store(request).find(digest), digest)


@routes.get("/api/v1/jobs/{id}/outputs", summary="The archive of a job's outputs", reply="binary")
async def outputs(request: web.Request) -> web.FileResponse:
    """The archive (tar.gz) of what the job's attempt left in /workspace/out."""
    _allow(request, READERS - {"node"})
    job = visible_job(request, request.match_info["id"])
    if job.outputs is None:
        raise NotFound(
            f"job {job.id} has no outputs yet (state {job.state.value}); they are stored "
            "when an attempt ends with files in /workspace/out",
            {"field": "outputs", "state": job.state.value},
        )
    try:
        path = _store(request).find(job.outputs)
    except NotFound:
        raise NotFound(
            f"the outputs of job {job.id} ({job.outputs}) are no longer stored",
            {"field": "outputs", "digest": job.outputs},
        ) from None
    return _send(path, job.outputs, f"{job.id}-outputs.tar.gz")


@routes.post(
    "/api/v1/nodes/{id}/jobs/{job}/checkpoint",
    summary="Upload a checkpoint",
    body="binary",
    query=(("attempt", "integer"),),
    required=("attempt",),
)
async def checkpoint(request: web.Request) -> web.Response:
    """An agent uploads the archive of an attempt's /checkpoint (raw tar body)."""
    node_id = request.match_info["id"]
    job_id = request.match_info["job"]
    require_node(request, node_id)
    attempt = query_int(request, "attempt", None, lo=1)
    if attempt is None:
        raise InvalidRequest("attempt is required", {"field": "attempt"})
    svc = service(request)
    # Checked before the body is stored: a refused upload leaves no blob behind.
    svc.cluster.check_checkpoint(node_id, job_id, attempt)
    stored = await _receive(request, principal(request))
    # Checked again: the job may have moved on while the body arrived.
    svc.cluster.record_checkpoint(node_id, job_id, attempt, stored.digest)
    await svc.commit()
    return json_response({"digest": stored.digest})
