"""The page and the API explorer in a real browser (Debian's Chromium driven by Playwright),
against the real Triton and the real API of the test session.

Chromium is launched by path (never `playwright install`, which downloads a browser).
Screenshots land in tests/artifacts/ (git-ignored) for a person to look at.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests import images

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        if os.environ.get("REQUIRE_BROWSER"):
            pytest.fail(f"no Chromium at {CHROMIUM}")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture()
def page(browser, api):
    """A fresh page on the API's origin that records every request and console error."""
    context = browser.new_context(viewport={"width": 1000, "height": 900})
    page = context.new_page()
    page.requests = []
    page.console_errors = []
    page.on("request", lambda r: page.requests.append(r.url))
    # uncaught script errors and CSP refusals; an HTTP error the test provokes is not one
    page.on("pageerror", lambda e: page.console_errors.append(str(e)))
    page.on(
        "console",
        lambda m: (
            ("Refused" in m.text or "Content Security Policy" in m.text)
            and page.console_errors.append(m.text)
        ),
    )
    page.set_default_timeout(20_000)
    yield page
    context.close()


def _origins(page) -> set[str]:
    return {
        f"{u.scheme}://{u.netloc}"
        for u in map(urlsplit, page.requests)
        if u.scheme in ("http", "https", "ws", "wss")
    }


def _demo_image(tiny_project: Path, shape: str) -> Path:
    return sorted((tiny_project / "data/raw" / shape).glob(f"{shape}_*.jpg"))[0]


def test_upload_a_demo_image_shows_its_label_and_bars(page, api, tiny_project):
    page.goto(api.url + "/")
    page.wait_for_selector("#model option", state="attached")
    page.set_input_files("#files", str(_demo_image(tiny_project, "circle")))
    result = page.locator("#results .result").first
    result.locator(".bars li").nth(2).wait_for()
    assert result.locator(".label").inner_text() in {"circle", "square", "triangle"}
    bars = result.locator(".bars li .name").all_inner_texts()
    assert sorted(bars) == ["circle", "square", "triangle"]
    meta = result.locator(".meta").inner_text()
    assert "model resnet50v2 v1" in meta and "ms round trip" in meta
    assert result.locator(".preview").get_attribute("src").startswith("blob:")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "page.png"), full_page=True)
    assert _origins(page) == {api.url}
    assert not page.console_errors, page.console_errors  # CSP violations would show here


def test_two_files_give_two_results(page, api, tiny_project):
    page.goto(api.url + "/")
    page.wait_for_selector("#model option", state="attached")
    files = [str(_demo_image(tiny_project, s)) for s in ("square", "triangle")]
    page.set_input_files("#files", files)
    page.locator("#results .result .bars li").nth(5).wait_for()
    assert page.locator("#results .result").count() == 2
    metas = page.locator("#results .result .meta").all_inner_texts()
    assert {m.split(" · ")[0] for m in metas} == {Path(f).name for f in files}


def test_a_text_file_shows_the_apis_error_message(page, api, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_bytes(images.TEXT_AS_JPG)
    page.goto(api.url + "/")
    page.wait_for_selector("#model option", state="attached")
    page.set_input_files("#files", str(text))
    error = page.locator("#results .result .error")
    error.wait_for()
    assert "(not_an_image)" in error.inner_text()
    assert "error 400" in page.locator("#results .result .label").inner_text()


def test_switching_to_int8_answers_with_the_int8_model(page, api, tiny_project):
    page.goto(api.url + "/")
    page.wait_for_selector("#model option", state="attached")
    options = page.locator("#model option").all_inner_texts()
    assert options == ["resnet50v2", "resnet50v2_int8", "resnet50v2_bf16"]
    page.select_option("#model", "resnet50v2_int8")
    page.set_input_files("#files", str(_demo_image(tiny_project, "circle")))
    meta = page.locator("#results .result .meta").filter(has_text="round trip")
    meta.wait_for()  # (not wait_for_function: its string predicate is an eval the CSP refuses)
    assert "model resnet50v2_int8 v1" in meta.inner_text()


def test_the_page_is_usable_with_the_keyboard_and_on_a_narrow_screen(browser, api):
    context = browser.new_context(viewport={"width": 360, "height": 740}, is_mobile=True)
    page = context.new_page()
    try:
        page.goto(api.url + "/")
        for control in ("#model", "#files", "#camera"):
            assert page.locator(f"label[for='{control[1:]}']").count() == 1, control
        assert page.locator("#camera").get_attribute("capture") == "environment"
        page.keyboard.press("Tab")
        page.keyboard.press("Tab")
        focused = page.evaluate("document.activeElement.id")
        assert focused in {"model", "explain", "drop", "files"}
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 360  # no horizontal scrolling on a phone
    finally:
        context.close()


def test_swagger_ui_try_it_out_classifies_a_file(page, api, tiny_project):
    page.goto(api.url + "/docs")
    page.locator("#operations-default-post_predict, [id*='post_predict']").first.click()
    page.get_by_role("button", name="Try it out").click()
    page.locator("input[type=file]").first.set_input_files(
        str(_demo_image(tiny_project, "triangle"))
    )
    page.get_by_role("button", name="Execute").click()
    body = page.locator(".responses-wrapper .live-responses-table .response-col_description pre")
    body.first.wait_for()
    text = body.first.inner_text()
    assert '"label"' in text and '"predictions"' in text
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "docs.png"))
    assert _origins(page) == {api.url}
    assert not page.console_errors, page.console_errors


def test_triton_down_shows_the_message_and_the_retry_hint(browser, tmp_path):
    """The page in front of an API whose Triton is gone: the 503 message with Retry-After."""
    from local_stack.api import ApiServer
    from local_stack.procs import free_port

    server = ApiServer(f"127.0.0.1:{free_port()}", workdir=tmp_path, env={"CONNECT_TIMEOUT_S": "1"})
    context = browser.new_context()
    try:
        server.start(wait_ready=False)
        page = context.new_page()
        page.goto(server.url + "/")
        page.locator("#model-note").filter(has_text="no model is ready").wait_for()
        photo = tmp_path / "photo.jpg"
        photo.write_bytes(images.jpeg())
        page.set_input_files("#files", str(photo))
        error = page.locator("#results .result .error")
        error.wait_for()
        text = error.inner_text()
        assert "(triton_unavailable)" in text and "try again in 2 s" in text
    finally:
        context.close()
        server.stop()


def _first_flagged(api, tmp_path: Path, candidates, flag: str, what: str) -> Path:
    """The first of ``candidates`` (H×W×3 pixels) whose answer from the served model has
    ``flag`` false, written as a PNG for the page to upload."""
    import io

    import requests
    from PIL import Image

    for i, pixels in enumerate(candidates):
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        body = requests.post(f"{api.url}/predict", files={"image": buf.getvalue()},
                             timeout=30).json()  # fmt: skip
        if body[flag] is False:
            path = tmp_path / f"{flag}-{i}.png"
            path.write_bytes(buf.getvalue())
            return path
    raise AssertionError(f"the served model flags none of the {what} ({flag} false)")


def _unfamiliar_photo(api, tmp_path: Path) -> Path:
    """A real photo (scikit-image's samples) that the served model flags as unfamiliar."""
    from model_preparation.reference import photos

    return _first_flagged(api, tmp_path, photos(48), "familiar", "sample photos")


def test_an_unfamiliar_photo_is_flagged_and_a_correction_is_stored(
    browser, captured_api, capture_dir, tiny_project, tmp_path
):
    context = browser.new_context(viewport={"width": 1000, "height": 900})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_default_timeout(20_000)
    try:
        page.goto(captured_api.url + "/")
        page.wait_for_selector("#model option", state="attached")
        page.set_input_files("#files", str(_demo_image(tiny_project, "square")))
        familiar = page.locator("#results .result").first
        familiar.locator(".meta").filter(has_text="round trip").wait_for()
        assert familiar.locator(".unfamiliar").is_hidden()

        page.set_input_files("#files", str(_unfamiliar_photo(captured_api, tmp_path)))
        result = page.locator("#results .result").first
        result.locator(".meta").filter(has_text="round trip").wait_for()
        note = result.locator(".unfamiliar")
        assert note.is_visible() and "unlike the images the model was" in note.inner_text()
        form = result.locator(".correct")
        assert form.is_visible()
        assert sorted(form.locator("option").all_inner_texts()) == [
            "a class it does not know…", "circle", "square", "triangle"]  # fmt: skip
        form.locator("select").select_option("triangle")
        form.locator("button").click()
        form.locator(".sent").filter(has_text="Thank you").wait_for()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "page-feedback.png"), full_page=True)
        assert not errors, errors
    finally:
        context.close()
    import json

    stored = [json.loads(p.read_text()) for p in (capture_dir / "feedback").glob("*.json")]
    assert any(entry["label"] == "triangle" for entry in stored)


def _unknown_class_image(api, tmp_path: Path) -> Path:
    """An image the served model says is of no class it knows: a demo shape it was not taught,
    a sample photo, a flat colour or noise, the first it flags."""
    import numpy as np

    from model_preparation.reference import near_shapes, photos

    rng = np.random.default_rng(3)
    candidates = [*near_shapes(("circle", "square", "triangle"), 48, 4), *photos(48),
                  *rng.integers(0, 256, (8, 48, 48, 3)).astype(np.uint8)]  # fmt: skip
    return _first_flagged(api, tmp_path, candidates, "known_class", "shapes, photos or noise")


def test_an_image_of_no_known_class_is_flagged_and_named_as_a_new_class(
    browser, captured_api, capture_dir, tiny_project, tmp_path
):
    context = browser.new_context(viewport={"width": 1000, "height": 900})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_default_timeout(20_000)
    try:
        page.goto(captured_api.url + "/")
        page.wait_for_selector("#model option", state="attached")
        page.set_input_files("#files", str(_unknown_class_image(captured_api, tmp_path)))
        result = page.locator("#results .result").first
        result.locator(".meta").filter(has_text="round trip").wait_for()
        note = result.locator(".unknown-class")
        assert note.is_visible() and "any class the model" in note.inner_text()
        form = result.locator(".correct")
        name = form.locator(".new-class")
        assert name.is_visible()  # the new-class choice is offered first, with a name box
        name.fill("hexagon")
        form.locator("button").click()
        form.locator(".sent").filter(has_text="a new class").wait_for()
        form.locator("select").select_option("circle")
        assert name.is_hidden()  # a known class needs no name
        assert not errors, errors
    finally:
        context.close()
    import json

    from model_preparation.tools.harvest import pending, reject

    stored = [json.loads(p.read_text()) for p in (capture_dir / "feedback").glob("*.json")]
    assert any(entry["label"] == "hexagon" for entry in stored)
    # a reviewer's "no": the shared capture store holds no new class for the harvest tests
    reject(capture_dir, [e.id for e in pending(capture_dir) if e.record["label"] == "hexagon"])


def test_the_toggle_lays_the_map_over_each_preview(page, api, tiny_project):
    page.goto(api.url + "/")
    page.wait_for_selector("#model option", state="attached")
    page.set_input_files("#files", str(_demo_image(tiny_project, "triangle")))
    result = page.locator("#results .result").first
    result.locator(".meta").filter(has_text="round trip").wait_for()
    assert result.locator(".overlay").is_hidden()
    page.locator("#explain").focus()
    page.keyboard.press("Space")  # the toggle works from the keyboard
    legend = result.locator(".legend").filter(has_text="red: where hiding the image")
    legend.wait_for()
    overlay = result.locator(".overlay")
    assert overlay.is_visible() and overlay.get_attribute("src").startswith("data:image/png")
    assert "occlusion map" in overlay.get_attribute("alt")
    over, under = overlay.bounding_box(), result.locator(".preview").bounding_box()
    assert all(abs(over[k] - under[k]) <= 1 for k in ("x", "y", "width", "height")), (over, under)
    assert result.locator(".correct").is_hidden()  # this API keeps no feedback
    page.set_input_files("#files", str(_demo_image(tiny_project, "circle")))  # explained too
    page.locator("#results .result .legend").filter(has_text="red:").nth(1).wait_for()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "page-explain.png"), full_page=True)
    page.locator("#explain").uncheck()
    assert overlay.is_hidden()
    assert _origins(page) == {api.url}
    assert not page.console_errors, page.console_errors
