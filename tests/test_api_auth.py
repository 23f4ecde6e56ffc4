"""Optional API keys: off by default; when on, /predict needs one and health stays open."""

from __future__ import annotations

import io
import json

import pytest

from imgcls.gateway.memory import MemoryGateway
from imgcls_api import create_app
from imgcls_api.auth import describe
from imgcls_api.settings import Settings
from tests import images

KEYS = ("k-one-7f3a", "k-two-91cc")


def _client(**config):
    app = create_app(config)
    app.extensions["triton"] = MemoryGateway()
    return app.test_client()


def _predict(client, headers=None):
    data = {"image": (io.BytesIO(images.jpeg()), "a.jpg")}
    return client.post("/predict", data=data, headers=headers or {})


@pytest.fixture()
def keyed():
    return _client(api_keys=",".join(KEYS))


def test_off_by_default(client):
    assert _predict(client).status_code == 200
    assert describe(Settings()).startswith("API key authentication is off")


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer no"},
                                     {"Authorization": "Basic " + KEYS[0]}])  # fmt: skip
def test_missing_or_wrong_key_is_401_json(keyed, headers):
    resp = _predict(keyed, headers)
    assert resp.status_code == 401 and resp.is_json
    assert resp.json["error"]["code"] == "unauthorized"
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="imgcls"'


@pytest.mark.parametrize("headers", [{"Authorization": f"Bearer {KEYS[0]}"},
                                     {"X-API-Key": KEYS[1]}])  # fmt: skip
def test_a_right_key_in_either_header_is_200(keyed, headers):
    assert _predict(keyed, headers).status_code == 200


def test_health_readiness_and_docs_stay_open(keyed):
    for path in ("/healthz", "/readyz", "/openapi.json", "/docs", "/metrics"):
        assert keyed.get(path).status_code == 200, path


def test_metrics_can_require_a_key():
    client = _client(api_keys=KEYS[0], metrics_require_key=True)
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"X-API-Key": KEYS[0]}).status_code == 200


def test_keys_from_a_mounted_secret_file(tmp_path):
    secret = tmp_path / "keys"
    secret.write_text(f"# operators\n{KEYS[0]}\n\n{KEYS[1]}  # ci\n")
    client = _client(api_keys_file=str(secret))
    assert _predict(client, {"X-API-Key": KEYS[1]}).status_code == 200
    assert _predict(client, {"X-API-Key": "ci"}).status_code == 401
    assert "2 key(s)" in describe(Settings(api_keys_file=str(secret)))


def test_an_unreadable_key_file_stops_the_start(tmp_path):
    with pytest.raises(RuntimeError, match="API_KEYS_FILE"):
        create_app({"api_keys_file": str(tmp_path / "missing")})


def test_keys_never_reach_the_logs(keyed, api_log):
    _predict(keyed, {"X-API-Key": KEYS[0]})
    _predict(keyed, {"Authorization": f"Bearer {KEYS[1]}"})
    _predict(keyed, {"X-API-Key": "guess-123"})
    lines = api_log()
    assert [r["status"] for r in lines] == [200, 200, 401]
    assert not any(k in json.dumps(lines) for k in (*KEYS, "guess-123"))
    assert KEYS[0] not in describe(Settings(api_keys=",".join(KEYS)))


@pytest.mark.parametrize(("raw", "value"), [("true", True), ("0", False), ("Off", False)])
def test_boolean_settings_parse_words(raw, value):
    assert Settings.from_env({"METRICS_REQUIRE_KEY": raw}).metrics_require_key is value


@pytest.mark.parametrize(("env", "name"), [({"METRICS_REQUIRE_KEY": "maybe"}, "METRICS_REQUIRE_KEY"),
                                           ({"MAX_BATCH_IMAGES": "many"}, "MAX_BATCH_IMAGES")])  # fmt: skip
def test_a_bad_setting_names_its_variable(env, name):
    with pytest.raises(ValueError, match=name):
        Settings.from_env(env)


def test_unknown_config_keys_fail():
    with pytest.raises(ValueError, match="triton_ulr"):
        create_app({"triton_ulr": "x:1"})
