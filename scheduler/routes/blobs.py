"""Blobs: upload and download archives, a job's outputs, an attempt's checkpoint.

Bodies are streamed (``request.content``), not read whole, so the blob size limit of
:mod:`scheduler.blobs` applies here instead of the JSON body limit.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from common.errors import Forbidden, InvalidRequest, NotFound
from scheduler.blobs import BlobStore, Stored, check_digest
from scheduler.http import NOT_ALLOWED, json_response, principal, query_int, require_node
from scheduler.routes import service, visible_job

routes = web.RouteTableDef()

#: bytes read from a request body at a time
READ_CHUNK = 256 * 1024
#: roles that may read blobs (node tokens too: agents fetch inputs and checkpoints)
READERS = frozenset({"admin", "read", "submit", "node"})
#: roles that may store blobs (node tokens too: agents upload outputs)
WRITERS = frozenset({"admin", "submit", "node"})


def _store(request: web.Request) -> BlobStore:
    return BlobStore.in_state_dir(service(request).config.state_dir)


def _allow(request: web.Request, roles: frozenset[str]) -> None:
    if principal(request).role not in roles:
        raise Forbidden(NOT_ALLOWED)


async def _receive(request: web.Request) -> Stored:
    return await _store(request).put(
        request.content.iter_chunked(READ_CHUNK), declared=request.content_length
    )


def _send(path: Path, digest: str, filename: str | None = None) -> web.FileResponse:
    headers = {"Content-Type": "application/octet-stream", "X-Berth-Digest": digest}
    if filename:
        headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return web.FileResponse(path, headers=headers)


@routes.post("/api/v1/blobs")
async def upload(request: web.Request) -> web.Response:
    """Store the raw body; 201 with its digest, or 200 when it was stored already."""
    _allow(request, WRITERS)
    stored = await _receive(request)
    body = {"digest": stored.digest, "size": stored.size}
    return json_response(body, status=201 if stored.created else 200)


@routes.get("/api/v1/blobs/{digest}")
async def download(request: web.Request) -> web.FileResponse:
    _allow(request, READERS)
    digest = check_digest(request.match_info["digest"])
    return _send(_store(request).find(digest), digest)


@routes.get("/api/v1/jobs/{id}/outputs")
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


@routes.post("/api/v1/nodes/{id}/jobs/{job}/checkpoint")
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
    stored = await _receive(request)
    # Checked again: the job may have moved on while the body arrived.
    svc.cluster.record_checkpoint(node_id, job_id, attempt, stored.digest)
    await svc.commit()
    return json_response({"digest": stored.digest})
