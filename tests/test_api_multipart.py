"""The API's own multipart reader gives what werkzeug's parser gives, and clear errors otherwise.

``imgcls_api.multipart`` replaced ``request.files`` on the ``/predict`` path for speed; these
tests hold it to werkzeug's answers on bodies from three encoders (requests/urllib3, werkzeug's
test client, a hand-written curl-like body with preamble, epilogue and bare LF line breaks),
with contents chosen to look like delimiters, and check what a client sees for broken bodies.
"""

from __future__ import annotations

import io
import random

import pytest
from werkzeug.http import parse_options_header
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from imgcls_api.multipart import file_parts
from tests import images

TRICKY = [
    b"",
    b"\r\n",
    b"--",
    b"\r\n--",
    b"plain text",
    b"line\r\n\r\nwith blank lines\r\n",
    b"\n\n--not-the-boundary\r\n--\r\n",
    bytes(range(256)) * 3,
]


def _werkzeug_files(body: bytes, content_type: str) -> list[tuple[str, str, bytes]]:
    environ = EnvironBuilder(method="POST", data=body, content_type=content_type).get_environ()
    request = Request(environ)
    return [(name, f.filename, f.read()) for name, f in request.files.items(multi=True)]


def _ours(body: bytes, content_type: str) -> list[tuple[str, str, bytes]]:
    boundary = parse_options_header(content_type)[1].get("boundary")
    parts = file_parts(body, boundary, 1000)
    return [(p.name, p.filename, p.data) for p in parts]


def _urllib3(fields: list) -> tuple[bytes, str]:
    from urllib3 import encode_multipart_formdata

    return encode_multipart_formdata(fields)


def _werkzeug(fields: list) -> tuple[bytes, str]:
    data: dict = {}
    for name, value in fields:
        item = (io.BytesIO(value[1]), value[0]) if isinstance(value, tuple) else value
        data.setdefault(name, []).append(item)
    environ = EnvironBuilder(method="POST", data=data).get_environ()
    return environ["wsgi.input"].read(), environ["CONTENT_TYPE"]


def _curl_like(fields: list) -> tuple[bytes, str]:
    """Preamble, epilogue, bare LF line breaks, transport padding after a delimiter."""
    boundary = "------------------------d74496d66958873e"
    out = [b"This is the preamble; it is ignored.\n"]
    for name, value in fields:
        out.append(f"--{boundary}  \n".encode())
        if isinstance(value, tuple):
            head = f'content-disposition: form-data; name="{name}"; filename="{value[0]}"\n'
            out += [head.encode(), b"Content-Type: application/octet-stream\n\n", value[1]]
        else:
            out += [f'Content-Disposition: form-data; name="{name}"\n\n'.encode(), value.encode()]
        out.append(b"\n")
    out.append(f"--{boundary}--\nepilogue, also ignored\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize("encode", [_urllib3, _werkzeug, _curl_like])
@pytest.mark.parametrize("seed", range(6))
def test_the_same_files_as_werkzeug(encode, seed):
    rng = random.Random(seed)
    fields: list = [("note", "a text field, not a file")]
    for i in range(rng.randint(1, 4)):
        data = rng.choice(TRICKY) + rng.randbytes(rng.randint(0, 300)) + rng.choice(TRICKY)
        fields.append((rng.choice(["image", "image", "other"]), (f"f{i}.jpg", data)))
    body, content_type = encode(fields)
    expected = _werkzeug_files(body, content_type)
    assert len(expected) == len(fields) - 1
    assert _ours(body, content_type) == expected


def test_unicode_and_rfc5987_filenames():
    body, content_type = _urllib3([("image", ("café.jpg", b"x"))])
    assert _ours(body, content_type) == [("image", "café.jpg", b"x")]
    boundary = "b0undary"
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=image; "
        f"filename*=UTF-8''%E2%82%AC.png\r\n\r\nxyz\r\n--{boundary}--\r\n"
    ).encode()
    assert _ours(body, f"multipart/form-data; boundary={boundary}") == [("image", "€.png", b"xyz")]


def test_a_real_image_through_the_api(client, gateway):
    body, content_type = _curl_like([("image", ("a.jpg", images.jpeg()))])
    resp = client.post("/predict", data=body, content_type=content_type)
    assert resp.status_code == 200, resp.json
    assert resp.json["label"] in {"circle", "square", "triangle"}


def _body(*chunks: str) -> bytes:
    return "\r\n".join(chunks).encode()


PART = 'Content-Disposition: form-data; name="image"; filename="a.jpg"'


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (_body("--b", PART, "", "x", "--b--"), "multipart/form-data", 400, "invalid_multipart"),
        (_body("--b", PART, "", "x", "--b--"), "multipart/form-data; boundary=zz", 400,
         "invalid_multipart"),
        (_body("--b", PART, "", "xxxx"), "multipart/form-data; boundary=b", 400,
         "invalid_multipart"),
        (_body("--b", PART + " no blank line"), "multipart/form-data; boundary=b", 400,
         "invalid_multipart"),
        (_body("--bc", PART, "", "x", "--b--"), "multipart/form-data; boundary=b", 400,
         "invalid_multipart"),
        (_body("--b", "Content-Disposition: form-data; name=image", "", "x", "--b--"),
         "multipart/form-data; boundary=b", 400, "missing_field"),
        (_body("--b--"), "multipart/form-data; boundary=b", 400, "missing_field"),
        (_body(*["--b", 'Content-Disposition: form-data; name="n"', "", "v"] * 1001, "--b--"),
         "multipart/form-data; boundary=b", 413, "too_many_parts"),
    ],
    ids=["no-boundary-param", "boundary-not-in-body", "truncated", "headers-never-end",
         "boundary-prefix-only", "not-a-file", "no-parts", "too-many-parts"],
)  # fmt: skip
def test_broken_bodies_get_a_clear_json_error(client, body, content_type, status, code):
    resp = client.post("/predict", data=body, content_type=content_type)
    assert resp.status_code == status, resp.json
    assert resp.json["error"]["code"] == code and resp.json["error"]["message"]


def test_a_non_ascii_boundary_is_a_400(client):
    body = "--é\r\n\r\nx\r\n--é--\r\n".encode()
    resp = client.post("/predict", data=body, content_type="multipart/form-data; boundary=é")
    assert resp.status_code == 400
    assert resp.json["error"]["code"] == "invalid_multipart"
