"""The web page as a person uses it, in Debian's headless Chromium driven by Playwright (issue 14): upload a world
concept's images, train 10 steps and watch the progress end, generate base | customised and download a PNG with
its parameters, compare two methods, look at the attention, rename and delete a library entry; bad uploads and
names get messages. ``INFUSION_APP_SCREENSHOTS=docs/app`` also writes a screenshot of each tab there.

Chromium comes from Debian's packages (``make install-browser``, which ``make test`` runs); a browser downloaded
at run time fails on machines without network, so Playwright launches /usr/bin/chromium.
"""

import os
import shutil
import socket
from pathlib import Path

import pytest

pytest.importorskip("gradio")
playwright = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
LONG = 180_000  # ms: training and generation on a shared 2-core CPU
SHOTS = os.environ.get("INFUSION_APP_SCREENSHOTS")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from infusion.app.ui import serve

    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed: run `make install-browser` (apt-get install chromium)")
    lib = tmp_path_factory.mktemp("library")
    port = _free_port()
    page = serve("world", str(lib), "127.0.0.1", port, block=False)
    yield f"http://127.0.0.1:{port}/", lib
    page.close()


@pytest.fixture(scope="module")
def browser_page(app):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
        page.goto(app[0])
        page.wait_for_selector("#train-start", timeout=LONG)
        yield page
        browser.close()


def _shot(page, name):
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=True)


def _fill(page, elem, text):
    page.locator(f"#{elem}").locator("textarea, input").first.fill(str(text))


def _tab(page, name):
    page.get_by_role("tab", name=name).click()


def _choose(page, elem, label):
    page.locator(f"#{elem}").get_by_text(label, exact=True).click()


@pytest.fixture(scope="module")
def concept_pngs(tmp_path_factory):
    from infusion.world.concepts import write_concept_images

    return [str(p) for p in write_concept_images("sunball", tmp_path_factory.mktemp("sunball"))]


def test_bad_uploads_and_names_get_messages(browser_page, concept_pngs, tmp_path):
    from playwright.sync_api import expect

    page = browser_page
    _fill(page, "train-name", "sunball")
    _fill(page, "train-class", "ball")
    page.click("#train-start")  # no images selected
    expect(page.locator("#train-status")).to_contain_text("no images", timeout=LONG)
    text = tmp_path / "notes.txt"
    text.write_text("these are not photos")
    page.locator("#train-images input[type=file]").set_input_files(concept_pngs[:3] + [str(text)])
    expect(page.locator("#train-preview img")).to_have_count(3, timeout=LONG)  # the upload has landed
    page.click("#train-start")
    expect(page.locator("#train-status")).to_contain_text("notes.txt is not an image", timeout=LONG)
    page.locator("#train-images input[type=file]").set_input_files(concept_pngs)
    _fill(page, "train-name", "../evil")
    page.click("#train-start")
    expect(page.locator("#train-status")).to_contain_text("'../evil' is refused", timeout=LONG)
    assert "Traceback" not in page.content()


def test_train_generate_download_compare_attention_rename_delete(browser_page, app, concept_pngs, tmp_path):
    from playwright.sync_api import expect

    from infusion.core.images import read_png_params
    from infusion.training import TrainConfig, train

    page, lib = browser_page, app[1]
    page.reload()  # a fresh form: the upload box keeps adding files
    page.wait_for_selector("#train-start", timeout=LONG)
    # -- train from the page: 10 steps, a sample every 5
    page.locator("#train-images input[type=file]").set_input_files(concept_pngs)
    expect(page.locator("#train-preview img")).to_have_count(5, timeout=LONG)  # the upload has landed
    _fill(page, "train-name", "sunball")
    _fill(page, "train-class", "ball")
    _fill(page, "train-steps", 10)
    _fill(page, "train-every", 5)
    page.click("#train-start")
    expect(page.locator("#train-status")).to_contain_text("step 10/10", timeout=LONG)
    try:
        expect(page.locator("#train-status")).to_contain_text("is in the library", timeout=LONG)
    except AssertionError as e:  # tell a stalled page from a stalled job
        on_disk = (Path(lib) / "sunball.safetensors").is_file()
        raise AssertionError(f"{e}\n(the library file {'exists' if on_disk else 'does not exist'})") from None
    expect(page.locator("#train-sample img")).to_have_count(1, timeout=LONG)
    _shot(page, "train")
    assert (Path(lib) / "sunball.safetensors").is_file()
    page.reload()  # a reloaded page shows the last job's outcome
    expect(page.locator("#train-status")).to_contain_text("is in the library", timeout=LONG)
    # a second method for Compare, trained by the CLI's function into the library
    train(TrainConfig(model="world", images=str(Path(lib) / ".images" / "sunball"), name="sunball-ti",
                      class_phrase="ball", out=str(Path(lib) / "sunball-ti.safetensors"), method="ti", steps=10),
          progress=False)

    # -- generate: base and customised side by side, PNG download with parameters
    _tab(page, "Generate")
    _fill(page, "gen-prompt", "a photo of <sunball> on the beach")
    expect(page.locator("#gen-concepts")).to_contain_text("sunball-ti", timeout=LONG)  # the list has followed the folder
    _choose(page, "gen-concepts", "sunball")
    _fill(page, "gen-steps", 10)
    page.click("#gen-go")
    expect(page.locator("#gen-status")).to_contain_text("1 image(s): base | customised", timeout=LONG)
    expect(page.locator("#gen-custom img")).to_have_count(1, timeout=LONG)
    expect(page.locator("#gen-base img")).to_have_count(1, timeout=LONG)
    srcs = [page.locator(f"#gen-{k} img").first.get_attribute("src") for k in ("base", "custom")]
    blobs = [page.request.get(s).body() for s in srcs]
    assert blobs[0] != blobs[1]  # base and customised differ
    _shot(page, "generate")
    links = page.locator("#gen-files a")
    expect(links).to_have_count(2, timeout=LONG)
    with page.expect_download() as dl:
        links.nth(1).click()
    path = tmp_path / "download.png"
    dl.value.save_as(path)
    params = read_png_params(path)
    assert params["prompt"] == "a photo of <sunball> on the beach" and params["seed"] == 0 and params["steps"] == 10
    assert params["concepts"] == ["sunball.safetensors"] and params["model"] == "world"

    # -- compare two methods: base first, then one image each
    _tab(page, "Compare")
    _choose(page, "cmp-entries", "sunball")
    _choose(page, "cmp-entries", "sunball-ti")
    _fill(page, "cmp-steps", 10)
    page.click("#cmp-go")
    expect(page.locator("#cmp-status")).to_contain_text("2 entries and the base model", timeout=LONG)
    expect(page.locator("#cmp-out img")).to_have_count(3, timeout=LONG)
    expect(page.locator("#cmp-out")).to_contain_text("text", timeout=LONG)  # probe scores under the images
    _shot(page, "compare")

    # -- attention of the Infusion concept
    _tab(page, "Attention")
    _choose(page, "att-entry", "sunball")
    _fill(page, "att-prompt", "a photo of <sunball> on the beach")
    page.click("#att-go")
    expect(page.locator("#att-status")).to_contain_text("attention maps", timeout=LONG)
    expect(page.locator("#att-out img").first).to_be_visible(timeout=LONG)
    assert page.locator("#att-out img").count() >= 2
    _shot(page, "attention")

    # -- library: rename, delete (asks first)
    _tab(page, "Library")
    expect(page.locator("#lib-table")).to_contain_text("sunball-ti", timeout=LONG)
    _choose(page, "lib-entry", "sunball-ti")
    expect(page.locator("#lib-thumbs img").first).to_be_visible(timeout=LONG)
    _shot(page, "library")
    _fill(page, "lib-newname", "../evil")
    page.click("#lib-rename")
    expect(page.locator("#lib-status")).to_contain_text("refused", timeout=LONG)
    _fill(page, "lib-newname", "ballti")
    page.click("#lib-rename")
    expect(page.locator("#lib-status")).to_contain_text("renamed <sunball-ti> to <ballti>", timeout=LONG)
    expect(page.locator("#lib-table")).to_contain_text("ballti", timeout=LONG)
    assert (Path(lib) / "ballti.safetensors").is_file() and not (Path(lib) / "sunball-ti.safetensors").exists()
    _choose(page, "lib-entry", "ballti")
    page.click("#lib-delete")
    expect(page.locator("#lib-status")).to_contain_text("tick 'yes, delete'", timeout=LONG)
    assert (Path(lib) / "ballti.safetensors").is_file()
    page.locator("#lib-sure").get_by_text("yes, delete").click()
    page.click("#lib-delete")
    expect(page.locator("#lib-status")).to_contain_text("deleted <ballti>", timeout=LONG)
    assert not (Path(lib) / "ballti.safetensors").exists() and (Path(lib) / "sunball.safetensors").is_file()
    assert "Traceback" not in page.content()
