"""The web page as a person uses it, in Debian's headless Chromium driven by Playwright (issues 14, 32): upload a
world concept's images, train 10 steps and watch the progress end, generate base | customised and download a PNG
with its parameters, compare two methods, look at the attention, see an entry's thumbnails, download, rename and
delete it; Cancel a job; bad uploads, names and seeds get messages; an upload over the limit is refused by the
server; a login is asked for when the page has one; a closed session's files are removed. The library lies in a
folder of the home directory, outside the working directory and the temp directory (where Gradio serves files
without being told), as ``infusion app --library ~/concepts`` puts it. ``INFUSION_APP_SCREENSHOTS=docs/app`` also
writes a screenshot of each tab there.

Chromium comes from Debian's packages (``make install-browser``, which ``make test`` runs); a browser downloaded
at run time fails on machines without network, so Playwright launches /usr/bin/chromium.
"""

import os
import shutil
import socket
import tempfile
import time
import uuid
from pathlib import Path

import gradio  # noqa: F401  (test dependencies, the [test] extra: a missing one fails, never skips)
import httpx
import playwright.sync_api  # noqa: F401
import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
LONG = 180_000  # ms: training and generation on a shared 2-core CPU
SHOTS = os.environ.get("INFUSION_APP_SCREENSHOTS")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _inside(path: Path, folder: str) -> bool:
    return Path(path).resolve().is_relative_to(Path(folder).resolve())


@pytest.fixture(scope="module")
def home_folder():
    """A folder of the home directory, made here and removed afterwards: outside the working directory and the
    temp directory, so Gradio serves its files only because the page allows the library."""
    folder = Path.home() / f".infusion-browser-test-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    try:
        assert not _inside(folder, os.getcwd()) and not _inside(folder, tempfile.gettempdir()), folder
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def app(home_folder):
    from infusion.app.ui import serve

    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed: run `make install-browser` (apt-get install chromium)")
    lib = home_folder / "concepts"
    port = _free_port()
    page = serve("world", str(lib), "127.0.0.1", port, block=False)
    yield f"http://127.0.0.1:{port}/", lib, page
    page.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def browser_page(app, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
    page.goto(app[0])
    page.wait_for_selector("#train-start", timeout=LONG)
    yield page
    page.close()


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


def _working_files(lib: Path) -> list[str]:
    """What a job or a session may leave behind: staging folders, checkpoints, resume states, outputs."""
    return sorted(p.relative_to(lib).as_posix() for p in lib.rglob("*")
                  if p.name in (".staging", ".outputs", ".trash") or "-step" in p.name or ".state." in p.name)


@pytest.fixture(scope="module")
def concept_pngs(tmp_path_factory):
    from infusion.world.concepts import write_concept_images

    return [str(p) for p in write_concept_images("sunball", tmp_path_factory.mktemp("sunball"))]


def test_the_library_is_outside_the_working_and_temp_directories_and_gradio_serves_it_alone(app):
    _, lib, page = app
    assert not _inside(lib, os.getcwd()) and not _inside(lib, tempfile.gettempdir())
    assert page.allowed_paths == [str(lib.resolve())]  # the library folder, nothing wider


def test_bad_uploads_names_and_seeds_get_messages(browser_page, concept_pngs, tmp_path):
    from playwright.sync_api import expect

    page = browser_page
    _fill(page, "train-name", "sunball")
    _fill(page, "train-class", "ball")
    page.click("#train-start")  # no images selected
    expect(page.locator("#train-status")).to_contain_text("⚠ no images", timeout=LONG)
    text = tmp_path / "notes.txt"
    text.write_text("these are not photos")
    page.locator("#train-images input[type=file]").set_input_files(concept_pngs[:3] + [str(text)])
    expect(page.locator("#train-preview img")).to_have_count(3, timeout=LONG)  # the upload has landed
    page.click("#train-start")
    expect(page.locator("#train-status")).to_contain_text("⚠ notes.txt is not an image", timeout=LONG)
    page.locator("#train-images input[type=file]").set_input_files(concept_pngs)
    _fill(page, "train-name", "../evil")
    page.click("#train-start")
    expect(page.locator("#train-status")).to_contain_text("⚠ name '../evil' is refused", timeout=LONG)
    # a billion seeds: answered at once, with what to do
    _tab(page, "Generate")
    _fill(page, "gen-prompt", "a photo of <sunball>")
    _fill(page, "gen-seeds", "0-999999999")
    t0 = time.perf_counter()
    page.click("#gen-go")
    expect(page.locator("#gen-status")).to_contain_text("⚠ seeds: '0-999999999' is 1,000,000,000 seeds; give 1 to 8",
                                                        timeout=LONG)
    took = time.perf_counter() - t0
    print(f"\n0-999999999 seeds answered in the browser in {took:.3f} s")
    assert took < 1.0
    _fill(page, "gen-seeds", "0")
    _tab(page, "Train")


def test_an_upload_over_the_limit_is_refused_by_the_server(app, tmp_path):
    """Gradio's upload route refuses a file over 20 MB (413) before handing it to any handler; 20 MB exactly passes."""
    from gradio.utils import get_upload_folder

    from infusion.app.jobs import MAX_BYTES

    url = app[0]
    before = set(Path(get_upload_folder()).rglob("big.png"))
    t0 = time.perf_counter()
    r = httpx.post(url + "gradio_api/upload", files={"files": ("big.png", b"\0" * (MAX_BYTES + 1))}, timeout=60)
    took = time.perf_counter() - t0
    print(f"\nupload of {MAX_BYTES + 1:,} bytes: HTTP {r.status_code} in {took:.3f} s: {r.text}")
    assert r.status_code == 413 and "maximum allowed size of 20971520 bytes" in r.text
    assert set(Path(get_upload_folder()).rglob("big.png")) == before  # nothing kept
    ok = httpx.post(url + "gradio_api/upload", files={"files": ("ok.png", b"\0" * MAX_BYTES)}, timeout=60)
    assert ok.status_code == 200
    Path(ok.json()[0]).unlink()


def test_train_generate_download_compare_attention_library_rename_delete(browser_page, app, concept_pngs, tmp_path):
    from playwright.sync_api import expect

    from infusion.core.images import read_png_params
    from infusion.training import TrainConfig, train

    page, lib = browser_page, app[1]
    page.reload()  # a fresh form: the upload box keeps adding files
    page.wait_for_selector("#train-start", timeout=LONG)
    # -- train from the page: 10 steps, a sample every 3 (checkpoints at 3, 6, 9: one on disk at a time)
    page.locator("#train-images input[type=file]").set_input_files(concept_pngs)
    expect(page.locator("#train-preview img")).to_have_count(5, timeout=LONG)  # the upload has landed
    _fill(page, "train-name", "sunball")
    _fill(page, "train-class", "ball")
    _fill(page, "train-steps", 10)
    _fill(page, "train-every", 3)
    page.click("#train-start")
    expect(page.locator("#train-status")).to_contain_text("step 10/10", timeout=LONG)
    try:
        expect(page.locator("#train-status")).to_contain_text("is in the library: sunball.safetensors", timeout=LONG)
    except AssertionError as e:  # tell a stalled page from a stalled job
        on_disk = (Path(lib) / "sunball.safetensors").is_file()
        raise AssertionError(f"{e}\n(the library file {'exists' if on_disk else 'does not exist'})") from None
    expect(page.locator("#train-sample img")).to_have_count(1, timeout=LONG)
    _shot(page, "train")
    assert (Path(lib) / "sunball.safetensors").is_file()
    assert _working_files(lib) == []  # no staging folder, no checkpoint, no resume state
    assert str(lib) not in page.content()  # the page shows no file system path of the library
    page.reload()  # a reloaded page shows the last job's outcome
    expect(page.locator("#train-status")).to_contain_text("is in the library", timeout=LONG)
    # a second method for Compare, trained by the CLI's function into the library
    train(TrainConfig(model="world", images=str(Path(lib) / ".images" / "sunball"), name="sunball-ti",
                      class_phrase="ball", out=str(Path(lib) / "sunball-ti.safetensors"), method="ti", steps=10),
          progress=False)
    (Path(lib) / "sunball-ti.state.safetensors").unlink()  # the CLI's resume state: not part of the entry

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
    assert params["stream"] == "custom"

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

    # -- library: thumbnails, download, rename, delete (asks first)
    _tab(page, "Library")
    expect(page.locator("#lib-table")).to_contain_text("sunball-ti", timeout=LONG)
    _choose(page, "lib-entry", "sunball-ti")
    expect(page.locator("#lib-details")).to_contain_text("file: sunball-ti.safetensors", timeout=LONG)
    expect(page.locator("#lib-thumbs img")).to_have_count(5, timeout=LONG)
    thumb = page.request.get(page.locator("#lib-thumbs img").first.get_attribute("src"))
    assert thumb.ok and thumb.body()[:4] in (b"RIFF", b"\x89PNG")  # an image was served
    _shot(page, "library")
    page.click("#lib-download")
    expect(page.locator("#lib-file a")).to_have_count(1, timeout=LONG)
    with page.expect_download() as dl:
        page.locator("#lib-file a").first.click()
    dl.value.save_as(tmp_path / "entry.safetensors")
    assert (tmp_path / "entry.safetensors").read_bytes() == (Path(lib) / "sunball-ti.safetensors").read_bytes()
    _fill(page, "lib-newname", "../evil")
    page.click("#lib-rename")
    expect(page.locator("#lib-status")).to_contain_text("⚠ name '../evil' is refused", timeout=LONG)
    _fill(page, "lib-newname", "ballti")
    page.click("#lib-rename")
    expect(page.locator("#lib-status")).to_contain_text("renamed <sunball-ti> to <ballti>", timeout=LONG)
    expect(page.locator("#lib-table")).to_contain_text("ballti", timeout=LONG)
    assert (Path(lib) / "ballti.safetensors").is_file() and not (Path(lib) / "sunball-ti.safetensors").exists()
    _choose(page, "lib-entry", "ballti")
    page.click("#lib-delete")
    expect(page.locator("#lib-status")).to_contain_text("⚠ tick 'yes, delete'", timeout=LONG)
    assert (Path(lib) / "ballti.safetensors").is_file()
    page.locator("#lib-sure").get_by_text("yes, delete").click()
    page.click("#lib-delete")
    expect(page.locator("#lib-status")).to_contain_text("deleted <ballti>", timeout=LONG)
    assert not (Path(lib) / "ballti.safetensors").exists() and (Path(lib) / "sunball.safetensors").is_file()
    assert str(lib) not in page.content()


def test_cancel_is_answered_within_a_step_and_the_page_says_so(browser_page, app, concept_pngs):
    from playwright.sync_api import expect

    page, lib = browser_page, app[1]
    page.reload()
    page.wait_for_selector("#train-start", timeout=LONG)
    page.locator("#train-images input[type=file]").set_input_files(concept_pngs)
    expect(page.locator("#train-preview img")).to_have_count(5, timeout=LONG)
    _fill(page, "train-name", "longball")
    _fill(page, "train-class", "ball")
    _fill(page, "train-steps", 100000)
    _fill(page, "train-every", 2)
    page.click("#train-start")
    expect(page.locator("#train-status")).to_contain_text("step 5/100000", timeout=LONG)
    page.click("#train-cancel")
    expect(page.locator("#train-status")).to_contain_text("cancelling <longball>: training stops when step",
                                                          timeout=LONG)  # said by the button, then by each tick
    expect(page.locator("#train-status")).to_contain_text("nothing was added to the library", timeout=LONG)
    job = app[2].trainer.job
    assert job.status == "cancelled" and f"cancelled after step {job.step} of 100000" in page.content()
    assert not (Path(lib) / "longball.safetensors").exists() and not (Path(lib) / ".images" / "longball").exists()
    assert _working_files(lib) == []


def test_a_closed_session_leaves_no_files(app, browser, concept_pngs, tmp_path):
    """A session that uploads and generates puts files in Gradio's cache and a folder of PNGs in the library;
    closing its page removes them (Gradio notices the closed page within its 15 s heartbeat). Its uploads are
    its own (the cache is content-addressed: a file another open session holds stays)."""
    import numpy as np
    import PIL.Image
    from playwright.sync_api import expect

    from infusion.training import TrainConfig, train

    url, lib, served = app
    train(TrainConfig(model="world", images=str(Path(concept_pngs[0]).parent), name="snowball", class_phrase="ball",
                      out=str(lib / "snowball.safetensors"), steps=2), progress=False)
    (lib / "snowball.state.safetensors").unlink()
    uploads = []
    for i in range(3):
        uploads.append(str(tmp_path / f"mine{i}.png"))
        PIL.Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(uploads[-1])
    context = browser.new_context()
    page = context.new_page()
    page.goto(url)
    page.wait_for_selector("#train-start", timeout=LONG)
    page.locator("#train-images input[type=file]").set_input_files(uploads)
    expect(page.locator("#train-preview img")).to_have_count(3, timeout=LONG)
    _tab(page, "Generate")
    _fill(page, "gen-prompt", "a photo of <snowball> in the snow")
    expect(page.locator("#gen-concepts")).to_contain_text("snowball", timeout=LONG)
    _choose(page, "gen-concepts", "snowball")
    _fill(page, "gen-steps", 4)
    _fill(page, "gen-seeds", "7")
    page.click("#gen-go")
    expect(page.locator("#gen-files a")).to_have_count(2, timeout=LONG)
    sessions = [p.name for p in (lib / ".outputs").iterdir()]
    assert len(sessions) == 1, sessions
    deadline = time.time() + 30
    # the page reports what it shows as it shows it: wait for this session's own files (a file another open session
    # shows too stays, so it is not counted)
    while len(served.session_files.held(sessions[0], alone=True)) < 6 and time.time() < deadline:
        time.sleep(0.2)
    held = served.session_files.held(sessions[0], alone=True)
    assert len(held) >= 6 and all(p.is_file() for p in held), held  # 3 uploads, 2 gallery images, 2 PNGs (shared)
    kept = set(served.session_files.held(sessions[0])) - set(held)
    context.close()
    deadline = time.time() + 60
    while (any(p.exists() for p in held) or (lib / ".outputs").exists()) and time.time() < deadline:
        time.sleep(0.5)
    left = [str(p) for p in held if p.exists()]
    assert left == [] and not (lib / ".outputs").exists(), (left, _working_files(lib))
    assert all(p.exists() for p in kept)
    (lib / "snowball.safetensors").unlink()


def test_a_page_with_a_login_refuses_the_api_without_it(tmp_path):
    from infusion.app.ui import serve

    port = _free_port()
    page = serve("world", str(tmp_path / "lib"), "127.0.0.1", port, block=False, auth=("me", "secret"))
    try:
        url = f"http://127.0.0.1:{port}/"
        assert httpx.get(url + "config").status_code == 401
        assert "study-participant" not in httpx.get(url + "study").text  # the participants' page: the login form
        assert httpx.post(url + "gradio_api/upload", files={"files": ("a.png", b"x")}).status_code == 401
        with httpx.Client() as c:
            assert c.post(url + "login", data={"username": "me", "password": "wrong"}).status_code == 400
            assert c.post(url + "login", data={"username": "me", "password": "secret"}).status_code == 200
            assert c.get(url + "config").status_code == 200
            assert "study-participant" in c.get(url + "study").text
    finally:
        page.close()


def _pick(page, elem, option):
    """Choose ``option`` in a Gradio dropdown."""
    page.locator(f"#{elem} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def _answer_view(page, study, who):
    from playwright.sync_api import expect

    _tab(page, "Study")
    page.get_by_role("tab", name="Answer", exact=True).click()
    expect(page.locator("#study-pick")).to_be_visible(timeout=LONG)
    _pick(page, "study-pick", study)
    _fill(page, "study-participant", who)
    page.click("#study-start")


def test_a_blind_study_answered_by_two_people_with_a_reload_gives_table_2(app, browser, concept_pngs, tmp_path):
    """Issue 34: a study of two entries (Infusion and TI) is created in the page, its images generated ahead of time;
    ann answers every question (clicks and keys), the page reloaded halfway, bob answers after her on the
    participants' page ``/study``; the question view never names an entry, a method, a path or an image URL; Table 2 on the page and its CSV match the answers given,
    read through the study file's sides (not through the page)."""
    import csv
    import json
    import re
    from collections import defaultdict

    from playwright.sync_api import expect

    from infusion.training import TrainConfig, train

    url, lib, _ = app
    for name, method in (("studyball", "infusion"), ("studyball-ti", "ti")):
        train(TrainConfig(model="world", images=str(Path(concept_pngs[0]).parent), name=name, class_phrase="ball",
                          out=str(lib / f"{name}.safetensors"), method=method, steps=2), progress=False)
        (lib / f"{name}.state.safetensors").unlink()
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.goto(url)
    page.wait_for_selector("#train-start", timeout=LONG)

    # -- set up: two entries, the world's validation prompts by default, 6 questions on seeds 0 and 1
    _tab(page, "Study")
    expect(page.locator("#study-entries")).to_contain_text("studyball-ti", timeout=LONG)
    _fill(page, "study-name", "ballstudy")
    _choose(page, "study-entries", "studyball")
    expect(page.locator("#study-prompts textarea")).to_have_value(re.compile(r"<concept>"), timeout=LONG)
    page.click("#study-create")  # one entry: nothing to compare, said on the page
    expect(page.locator("#study-status")).to_contain_text("⚠ pick at least two library entries", timeout=LONG)
    _choose(page, "study-entries", "studyball-ti")
    _fill(page, "study-seeds", "0, 1")
    _fill(page, "study-count", 6)
    _fill(page, "study-steps", 4)
    page.click("#study-create")
    expect(page.locator("#study-status")).to_contain_text("ready: 6 questions", timeout=LONG)
    page.click("#study-stop")  # nothing left to stop: said so
    expect(page.locator("#study-status")).to_contain_text("no study is generating its images", timeout=LONG)
    assert (lib / "studies" / "ballstudy" / "references").is_dir()  # the concept's photos, copied with the study
    study = json.loads((lib / "studies" / "ballstudy" / "study.json").read_text())
    assert [a["label"] for a in study["arms"]] == ["infusion", "ti"]
    questions = study["questions"]
    for arm in (0, 1):  # the seeded sides put each method on the left and on the right over the study
        assert {q["left"] == arm for q in questions} == {True, False}

    given = defaultdict(list)  # (criterion, prompt) -> wins of arm 0 ("infusion"), as the test answered

    def answer(k: int, text_arm: int | None, concept_arm: int | None, keys: bool):
        q = questions[k]
        expect(page.locator("#study-progress")).to_contain_text(f"question {k + 1} of 6", timeout=LONG)
        view = page.locator("#study-question")
        shown = view.inner_html()
        for secret in ("studyball", str(lib), "/file=", "gradio_api", ".png", ".safetensors"):
            assert secret not in shown, secret
        assert not re.search(r"\b(infusion|ti)\b", shown, re.I), "a method's name is in the question view"
        srcs = view.locator("#study-images img").evaluate_all("els => els.map(e => e.src)")
        assert len(srcs) == 2 and all(s.startswith("data:image/png;base64,") for s in srcs)
        prompt = study["prompts"][q["prompt"]].replace("<concept>", study["concept"])
        expect(view.locator(".study-prompt")).to_have_text(prompt)
        sides = {}
        for what, arm in (("text", text_arm), ("concept", concept_arm)):
            sides[what] = "tie" if arm is None else ("left" if q["left"] == arm else "right")
            given[(what, q["prompt"])].append(0.5 if arm is None else float(arm == 0))
        if keys:
            page.locator("#study-progress").click()  # the focus off the name field: keys answer
            page.keyboard.press({"left": "q", "tie": "w", "right": "e"}[sides["text"]])
            page.keyboard.press({"left": "a", "tie": "s", "right": "d"}[sides["concept"]])
            page.keyboard.press("Enter")
        else:
            for what in ("text", "concept"):
                label = {"left": "left", "tie": "can't tell", "right": "right"}[sides[what]]
                page.locator(f"#study-{what}").get_by_text(label, exact=True).click()
            page.click("#study-next")

    _answer_view(page, "ballstudy", "ann")
    expect(page.locator("#study-progress")).to_contain_text("question 1 of 6", timeout=LONG)
    plan = [(0, 1), (0, None), (1, 0), (0, 0), (None, 1), (0, 1)]  # (text, concept): the arm ann prefers
    for k in range(3):
        answer(k, *plan[k], keys=k % 2 == 1)
    expect(page.locator("#study-progress")).to_contain_text("question 4 of 6", timeout=LONG)
    page.reload()  # halfway: nothing is lost, ann goes on where she stopped
    page.wait_for_selector("#train-start", timeout=LONG)
    _answer_view(page, "ballstudy", "ann")
    for k in range(3, 6):
        answer(k, *plan[k], keys=k % 2 == 1)
    expect(page.locator("#study-progress")).to_contain_text("all 6 questions answered", timeout=LONG)
    # the next person, one after another, on the participants' page: it shows nothing else (no entry, no method)
    page.goto(url + "study")
    _pick(page, "study-pick", "ballstudy")
    _fill(page, "study-participant", "bob")
    page.click("#study-start")
    expect(page.locator("#study-progress")).to_contain_text("question 1 of 6", timeout=LONG)
    _shot(page, "study-question")
    for k in range(6):
        answer(k, 1, None, keys=True)
        whole = page.content()
        assert "studyball" not in whole and str(lib) not in whole and "safetensors" not in whole
        assert page.locator("#tab-library").count() == 0
    expect(page.locator("#study-progress")).to_contain_text("all 6 questions answered", timeout=LONG)
    page.goto(url)
    page.wait_for_selector("#train-start", timeout=LONG)
    _tab(page, "Study")
    lines = (lib / "studies" / "ballstudy" / "answers.jsonl").read_text().splitlines()
    assert len(lines) == 12 and {json.loads(x)["participant"] for x in lines} == {"ann", "bob"}

    # -- results: the table from the answers given (a mean over prompts of each prompt's mean: one concept)
    page.get_by_role("tab", name="Results", exact=True).click()
    _pick(page, "study-results-pick", "ballstudy")
    page.click("#study-results-go")
    expect(page.locator("#study-results-status")).to_contain_text("12 answers from 2 participant(s)", timeout=LONG)
    expected = {}
    for what in ("text", "concept"):
        per_prompt = [sum(v) / len(v) for (w, _), v in sorted(given.items()) if w == what]
        expected[what] = 100 * sum(per_prompt) / len(per_prompt)
    row = page.locator("#study-table tr", has_text="infusion")
    cells = [c.strip() for c in row.inner_text().split("\t")]  # "42 [28, 50]": % preferred [95% interval]
    assert cells[:2] == ["infusion", "ti"] and cells[4:] == ["12", "2"], cells
    for cell, what in ((cells[2], "text"), (cells[3], "concept")):
        share, low, high = (float(x) for x in re.fullmatch(r"(\d+) \[(\d+), (\d+)\]", cell).groups())
        assert abs(share - expected[what]) <= 0.5 + 1e-9 and low <= share <= high, (cell, expected)
    _shot(page, "study-results")
    with page.expect_download() as dl:
        page.locator("#study-csv a").first.click()
    dl.value.save_as(tmp_path / "table2.csv")
    [got] = list(csv.DictReader((tmp_path / "table2.csv").open()))
    assert float(got["text_preferred"]) == pytest.approx(expected["text"] / 100, abs=1e-4)
    assert float(got["concept_preferred"]) == pytest.approx(expected["concept"] / 100, abs=1e-4)
    context.close()
