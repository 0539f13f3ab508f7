"""The browser worker (/workers/browser/): a signed-in user's tab serves open-tier jobs over the
agent protocol, running the builtin model in WebAssembly (static/js/browser_worker.js).

The page registers the worker with one click (its token goes to that page only, never to a
cache), and the node serves the model file the tab runs: the builtin agent's GGUF, under a URL
that names its digest, so a browser cache can keep it for good.
"""

import asyncio

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils.http import parse_etags
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from .browser import (CONTEXT_LENGTH, ByteRange, RangeNotSatisfiable, browser_model, byte_range,
                      catalogue_names_for, digest_hex, model_file_name)
from .services import WorkerInputError, check_worker_name, worker_register

CHUNK_BYTES = 1024 * 1024
# A year: the URL names the file's digest, so whatever it serves never changes.
_MODEL_CACHE_CONTROL = "private, max-age=31536000, immutable"


@login_required
@require_GET
def browser_worker(request):
    model = browser_model()
    model_url = reverse("browser-worker-model", args=[digest_hex(model), model_file_name(model)])
    response = render(request, "workers/browser.html", {
        "model": model, "model_url": model_url, "context_length": CONTEXT_LENGTH,
        "model_size": model.path.stat().st_size, "catalogue_names": catalogue_names_for(model)})
    # Cross-origin isolation (this page only): SharedArrayBuffer, hence wllama's multi-thread
    # WebAssembly. The page loads nothing from other origins, so require-corp costs nothing.
    response["Cross-Origin-Opener-Policy"] = "same-origin"
    response["Cross-Origin-Embedder-Policy"] = "require-corp"
    return response


@login_required
@require_POST
def browser_worker_register(request):
    """Register an open-tier worker for the signed-in user; its one-time token is in this
    response only (the tab keeps it in memory)."""
    try:
        name = check_worker_name(request.POST.get("name", ""))
    except WorkerInputError as exc:
        return JsonResponse({"errors": exc.errors}, status=400)
    worker, raw_token = worker_register(operator=request.user, name=name, tiers=["open"])
    response = JsonResponse({"worker_id": str(worker.id), "name": worker.name, "token": raw_token})
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_http_methods(["GET", "HEAD"])
def browser_model_file(request, digest: str, filename: str):
    """The builtin GGUF, for signed-in users (the page that runs it is theirs only, and it is
    250 MB a download). One byte range when asked (206), 304 for a cached copy."""
    model = browser_model()
    if digest != digest_hex(model) or filename != model_file_name(model):
        raise Http404("This node serves another model file now; reload the page.")
    size = model.path.stat().st_size
    etag = f'"{model.digest}"'
    headers = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": _MODEL_CACHE_CONTROL}
    if etag in parse_etags(request.headers.get("If-None-Match", "")):
        return HttpResponse(status=304, headers=headers)
    wanted = None
    if request.headers.get("If-Range") in (None, etag):  # a stale If-Range gets the whole file
        try:
            wanted = byte_range(request.headers.get("Range"), size)
        except RangeNotSatisfiable:
            return HttpResponse(status=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    span = wanted or ByteRange(0, size - 1)
    headers.update({"Content-Type": "application/octet-stream", "Content-Length": str(span.length)})
    status = 200
    if wanted is not None:
        status, headers["Content-Range"] = 206, f"bytes {span.start}-{span.end}/{size}"
    if request.method == "HEAD":
        return HttpResponse(status=status, headers=headers)
    return StreamingHttpResponse(_read_span(model.path, span), status=status, headers=headers)


async def _read_span(path, span: ByteRange):
    """The span's bytes, a chunk at a time: an async iterator, so that Django's ASGI handler
    streams it (a sync one it would first read whole into memory); reads run off the loop."""
    handle = await asyncio.to_thread(open, path, "rb")
    try:
        await asyncio.to_thread(handle.seek, span.start)
        left = span.length
        while left > 0:
            chunk = await asyncio.to_thread(handle.read, min(CHUNK_BYTES, left))
            if not chunk:
                break
            left -= len(chunk)
            yield chunk
    finally:
        handle.close()
