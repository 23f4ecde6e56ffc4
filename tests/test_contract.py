"""One home per fact: the serving contract and the API's settings live in the code
(``imgcls.contract``, ``imgcls_api.settings``); docker-compose.yml, the Helm values, .env.example
and the README's settings table are held to them here, so none of them can drift."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from imgcls import contract
from imgcls_api.settings import ServerSettings, Settings

REPO = Path(__file__).resolve().parents[1]


def _defaults() -> dict[str, object]:
    """Every API setting's variable and default, the app's and gunicorn's."""
    return {f.name.upper(): f.default for cls in (Settings, ServerSettings)
            for f in dataclasses.fields(cls)}  # fmt: skip


def _same(default: object, written: str) -> bool:
    """``written`` (a file's text) says ``default``: numbers by value, "" as unset/empty."""
    written = written.strip().strip("`'\"")
    if isinstance(default, bool):
        return written.lower() == str(default).lower()
    if isinstance(default, int | float):
        try:
            return float(written) == float(default)
        except ValueError:
            return False
    return written in ({"", "unset"} if default == "" else {str(default)})


DEFAULTS = _defaults()


def test_the_contract_is_what_the_settings_default_to():
    assert Settings.model_name == contract.DEFAULT_MODEL
    assert Settings.models.split(",") == list(contract.DEFAULT_MODELS)
    assert Settings.max_image_pixels == contract.MAX_IMAGE_PIXELS
    # what users type (?model=, MODELS): the variant table's names of the default model
    assert contract.DEFAULT_MODELS == ("resnet50v2", "resnet50v2_int8", "resnet50v2_bf16")


def test_compose_defaults_are_the_codes():
    api = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["api"]
    found = {}
    for name, value in api["environment"].items():
        match = re.fullmatch(r"\$\{(\w+):-([^}]*)\}", str(value))
        if match and name in DEFAULTS:
            found[name] = match[2]
    assert {"MODEL_NAME", "MODELS", "WEB_CONCURRENCY", "BATCH_SLOTS"} <= set(found), found
    wrong = {n: v for n, v in found.items() if not _same(DEFAULTS[n], v)}
    assert not wrong, f"docker-compose.yml defaults differ from the code's: {wrong}"


def test_helm_values_are_the_codes_defaults():
    env = yaml.safe_load((REPO / "deploy/helm/imgcls/values.yaml").read_text())["api"]["env"]
    unknown = sorted(set(env) - set(DEFAULTS))
    assert not unknown, f"Helm api.env sets variables the API does not read: {unknown}"
    wrong = {n: v for n, v in env.items() if not _same(DEFAULTS[n], str(v))}
    assert not wrong, f"Helm values differ from the code's defaults: {wrong}"


def test_env_example_shows_the_codes_defaults():
    lines = (REPO / ".env.example").read_text().splitlines()
    found = dict(line.split("=", 1) for line in lines if re.match(r"^[A-Z_]+=", line))
    api = {n: v for n, v in found.items() if n in DEFAULTS}
    assert api, "no API setting in .env.example"
    wrong = {n: v for n, v in api.items() if not _same(DEFAULTS[n], v)}
    assert not wrong, f".env.example differs from the code's defaults: {wrong}"


def _readme_table() -> dict[str, str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Settings (environment)", 1)[1].split("\n#", 1)[0]
    return dict(re.findall(r"^\| `([A-Z_]+)` \| ([^|]+) \|", section, re.M))


def test_the_readme_settings_table_lists_every_setting_with_its_default():
    table = _readme_table()
    assert sorted(table) == sorted(DEFAULTS), set(table) ^ set(DEFAULTS)
    wrong = {n: v for n, v in table.items() if not _same(DEFAULTS[n], v)}
    assert not wrong, f"README's settings table differs from the code's defaults: {wrong}"


@pytest.mark.parametrize(
    ("written", "default", "same"),
    [("`10`", 10.0, True), ("10", 2.0, False), ("unset", "", True), ("`false`", False, True),
     ("`gevent`", "gevent", True), ("gthread", "gevent", False)],
)  # fmt: skip
def test_the_comparison_can_fail(written, default, same):
    assert _same(default, written) is same
