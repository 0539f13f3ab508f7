"""The browser worker's node side: its page, one-click registration, and the model file it
downloads (signed-in users only, one byte range, cacheable by its digest).

The tab itself is tested in Chromium: tests/e2e/test_browser_worker.py.
"""

import hashlib
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from django.urls import reverse

from apps.marketplace.demo import catalogue_seed_builtin
from apps.workers.browser import ByteRange, RangeNotSatisfiable, byte_range
from apps.workers.models import Worker
from apps.workers.services import worker_token_hash


@pytest.fixture
def model():
    model_id, digest, path = catalogue_seed_builtin()
    path = Path(path)
    hex_digest = digest.removeprefix("sha256:")
    return {"id": model_id, "digest": digest, "path": path, "size": path.stat().st_size,
            "url": reverse("browser-worker-model", args=[hex_digest, f"{model_id}.gguf"])}


@pytest.fixture
def bob_client(client, bob):
    client.force_login(bob)
    return client


def _body(response) -> bytes:
    async def collect(parts):
        return b"".join([part async for part in parts])

    return async_to_sync(collect)(response.streaming_content)


def _file_bytes(path: Path, start: int, count: int) -> bytes:
    with path.open("rb") as handle:
        handle.seek(start)
        return handle.read(count)


@pytest.mark.parametrize(("header", "expected"), [
    (None, None), ("", None), ("items=0-1", None), ("bytes=0-1,4-5", None), ("bytes=x-1", None), ("bytes=-", None),
    ("bytes=5-2", None), ("bytes=0-0", ByteRange(0, 0)), ("bytes=2-", ByteRange(2, 9)),
    ("bytes=3-99", ByteRange(3, 9)), ("bytes=-4", ByteRange(6, 9)), ("bytes=-40", ByteRange(0, 9)),
])
def test_a_range_header_gives_one_span_or_none(header, expected):
    assert byte_range(header, 10) == expected


@pytest.mark.parametrize("header", ["bytes=10-", "bytes=12-20", "bytes=-0"])
def test_a_range_past_the_end_is_not_satisfiable(header):
    with pytest.raises(RangeNotSatisfiable):
        byte_range(header, 10)


@pytest.mark.django_db
def test_the_page_and_the_model_file_are_for_signed_in_users_only(client, model):
    for response in (client.get(reverse("browser-worker")), client.get(model["url"]), client.head(model["url"]),
                     client.post(reverse("browser-worker-register"), {"name": "tab"})):
        assert response.status_code == 302 and response["Location"].startswith(reverse("account_login"))
    assert Worker.objects.count() == 0


@pytest.mark.django_db
def test_the_page_is_cross_origin_isolated_and_names_the_builtin_model(bob_client, model):
    response = bob_client.get(reverse("browser-worker"))
    assert response.status_code == 200
    # SharedArrayBuffer, hence wllama's threads: on this page only.
    assert response["Cross-Origin-Opener-Policy"] == "same-origin"
    assert response["Cross-Origin-Embedder-Policy"] == "require-corp"
    page = response.content.decode()
    assert f'data-model-id="{model["id"]}"' in page and f'data-model-digest="{model["digest"]}"' in page
    assert f'data-model-url="{model["url"]}"' in page
    assert "gemma-3-270m, peer-mixtral" in page  # the catalogue names its jobs come from
    assert "@mlc-ai/web-llm</code> is not part" in page
    assert "Cross-Origin-Embedder-Policy" not in bob_client.get(reverse("operator")).headers


@pytest.mark.django_db
def test_one_click_registers_an_open_tier_worker_whose_token_only_this_response_holds(bob_client, bob):
    response = bob_client.post(reverse("browser-worker-register"), {"name": " bob-tab "})
    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    body = response.json()
    worker = Worker.objects.get(id=body["worker_id"])
    assert (worker.operator, worker.name, worker.tiers) == (bob, "bob-tab", ["open"])
    assert worker.token_hash == worker_token_hash(body["token"])

    refused = bob_client.post(reverse("browser-worker-register"), {"name": "   "})
    assert refused.status_code == 400 and "name" in refused.json()["errors"]
    assert bob_client.get(reverse("browser-worker-register")).status_code == 405
    assert Worker.objects.count() == 1


@pytest.mark.django_db
def test_the_model_file_is_served_whole_with_its_length_and_digest_as_etag(bob_client, model):
    response = bob_client.head(model["url"])
    assert response.status_code == 200 and response.content == b""
    assert int(response["Content-Length"]) == model["size"]
    assert response["ETag"] == f'"{model["digest"]}"' and response["Accept-Ranges"] == "bytes"
    assert "immutable" in response["Cache-Control"]

    whole = bob_client.get(model["url"])
    assert whole.status_code == 200 and whole.streaming and int(whole["Content-Length"]) == model["size"]
    # Not read here (250 MB): the browser test downloads it whole and checks its digest.


@pytest.mark.django_db
def test_a_range_request_gets_those_bytes_and_a_cached_copy_gets_304(bob_client, model):
    head = bob_client.get(model["url"], headers={"Range": "bytes=0-3"})
    assert head.status_code == 206 and _body(head) == b"GGUF"
    assert head["Content-Range"] == f"bytes 0-3/{model['size']}" and head["Content-Length"] == "4"

    start, count = 1_000_000, 3 * 1024 * 1024 + 17  # across several of the view's 1 MiB chunks
    middle = bob_client.get(model["url"], headers={"Range": f"bytes={start}-{start + count - 1}"})
    assert middle.status_code == 206
    assert hashlib.sha256(_body(middle)).digest() == hashlib.sha256(_file_bytes(model["path"], start, count)).digest()

    tail = bob_client.get(model["url"], headers={"Range": "bytes=-16", "If-Range": f'"{model["digest"]}"'})
    assert tail.status_code == 206 and _body(tail) == _file_bytes(model["path"], model["size"] - 16, 16)

    stale = bob_client.get(model["url"], headers={"Range": "bytes=0-3", "If-Range": '"sha256:00"'})
    assert stale.status_code == 200 and int(stale["Content-Length"]) == model["size"]

    past = bob_client.get(model["url"], headers={"Range": f"bytes={model['size']}-"})
    assert past.status_code == 416 and past["Content-Range"] == f"bytes */{model['size']}"

    cached = bob_client.get(model["url"], headers={"If-None-Match": f'"{model["digest"]}"'})
    assert cached.status_code == 304 and cached["ETag"] == f'"{model["digest"]}"'


@pytest.mark.django_db
def test_another_digest_or_file_name_is_not_found(bob_client, model):
    other = reverse("browser-worker-model", args=["0" * 64, f"{model['id']}.gguf"])
    renamed = model["url"].replace(".gguf", "-x.gguf")
    assert bob_client.get(other).status_code == 404 and bob_client.get(renamed).status_code == 404
