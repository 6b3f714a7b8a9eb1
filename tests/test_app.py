"""The web page's functions without a browser: library names and edits (atomic, or refused before they start),
uploads checked as the trainer reads images, bounded inputs, one job at a time, Cancel, a clean disk after every
job, a training started from the page giving the CLI's file bit for bit (issue 14), generation placement and the
models kept loaded, the serving rule, and a page session's files removed when it ends (issue 32)."""

import logging
import os
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from infusion.app import jobs
from infusion.app.actions import MAX_RESIDENT, Actions, parse_seeds, placement
from infusion.app.jobs import Trainer, check_images
from infusion.app.library import Library, check_name
from infusion.training.data import load_concept_images


@pytest.fixture(scope="module")
def world_images(tmp_path_factory):
    from infusion.world.concepts import write_concept_images

    folder = tmp_path_factory.mktemp("sunball")
    return [Path(p) for p in write_concept_images("sunball", folder)]


@pytest.fixture(scope="module")
def trained_library(tmp_path_factory, world_images):
    """A library with three 2-step Infusion concepts of the world (sunball, ball2, ball3)."""
    lib = Library(tmp_path_factory.mktemp("trained") / "lib")
    trainer = Trainer(lib, "world")
    for name in ("sunball", "ball2", "ball3"):
        job = trainer.start(world_images, name, "ball", "infusion", steps=2, lr=None, blocking=True)
        assert job.status == "done", job.message
    return lib


def _tree(folder: Path) -> list[str]:
    """Everything under ``folder`` (hidden working folders included), relative."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


@pytest.mark.parametrize("bad", ["../evil", "/etc/passwd", "a/b", "..", ".hidden", "x" * 65, "spa ce", "", "ü",
                                 "x.safetensors", "studies"])
def test_names_that_could_escape_or_break_prompts_are_refused(bad):
    with pytest.raises(ValueError, match="refused|give the concept a name"):
        check_name(bad)


def test_uploads_are_checked_with_messages(tmp_path, world_images):
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="notes.txt is not an image"):
        check_images(world_images[:3] + [tmp_path / "notes.txt"])
    with pytest.raises(ValueError, match="no images"):
        check_images([])
    with pytest.raises(ValueError, match="2 images: use 3 to 10"):
        check_images(world_images[:2])
    (tmp_path / "broken.png").write_bytes(world_images[0].read_bytes()[:100])
    with pytest.raises(ValueError, match="broken.png is not an image"):
        check_images(world_images[:3] + [tmp_path / "broken.png"])
    big = tmp_path / "big.png"
    PIL.Image.new("RGB", (8000, 6000)).save(big)
    with pytest.raises(ValueError, match="megapixels"):
        check_images(world_images[:3] + [big])
    with pytest.raises(ValueError, match="gone.png is no longer on the server: upload the photos again"):
        check_images(world_images[:3] + [tmp_path / "gone.png"])
    assert check_images(world_images) == world_images


def test_the_upload_check_and_the_trainer_agree_on_what_an_image_is(tmp_path, world_images):
    """Each candidate file is accepted by the page's check exactly when the trainer uses it from a folder: a JPEG
    named .jfif and an image under 32 px are refused by both (the trainer would skip them silently)."""
    good = world_images[0]
    candidates = {"good.png": good.read_bytes(), "photo.jfif": None, "small.png": None, "notes.txt": b"text",
                  "broken.png": good.read_bytes()[:100], "grey.jpg": None}
    PIL.Image.open(good).convert("RGB").save(tmp_path / "photo.jfif", format="JPEG")
    PIL.Image.open(good).resize((20, 20)).save(tmp_path / "small.png")
    PIL.Image.open(good).convert("L").save(tmp_path / "grey.jpg")
    for name, data in candidates.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
    accepted_by_page = set()
    for name in candidates:
        try:
            check_images([tmp_path / name, *world_images[:2]])
            accepted_by_page.add(name)
        except ValueError as e:
            assert name in str(e)
    used_by_trainer = set()
    for name in candidates:
        folder = tmp_path / f"only-{name}"
        folder.mkdir()
        shutil.copy(tmp_path / name, folder / name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the trainer skips a bad file with a warning
            try:
                load_concept_images(folder, 16)
                used_by_trainer.add(name)
            except ValueError:  # nothing usable in the folder
                pass
    assert accepted_by_page == used_by_trainer == {"good.png", "grey.jpg"}


def test_page_training_equals_cli_training_bit_for_bit_and_leaves_no_working_files(tmp_path, world_images):
    from infusion.cli import main

    lib = Library(tmp_path / "lib")
    trainer = Trainer(lib, "world")
    job = trainer.start(world_images, "sunball", "ball", "infusion", steps=3, lr=None, sample_every=2, blocking=True)
    assert job.status == "done", job.message
    assert job.step == 3 and len(job.losses) == 3 and job.sample_steps == [2] and job.sample is not None
    page_file = lib.folder / "sunball.safetensors"
    assert job.result == page_file and page_file.is_file()
    assert job.message == "<sunball> is in the library: sunball.safetensors"  # library-relative
    cli_file = tmp_path / "cli" / "sunball.safetensors"
    assert main(["train", "--model", "world", "--images", str(lib.images_dir("sunball")), "--name", "sunball",
                 "--class-phrase", "ball", "--out", str(cli_file), "--steps", "3"]) == 0
    assert page_file.read_bytes() == cli_file.read_bytes()
    assert [e.name for e in lib.entries()] == ["sunball"] and len(lib.entries()[0].images) == len(world_images)
    # the staging folder (checkpoint, resume state) is gone: the entry and its images are all that is left
    assert _tree(lib.folder) == [".images", ".images/sunball", *[f".images/sunball/{i:02d}.png" for i in range(5)],
                                 "sunball.safetensors"]


def test_page_training_takes_method_options_and_refuses_unknown_ones(tmp_path, world_images):
    """Method options as `--method-arg` takes them: maps=own reaches the concept file; a key the method does not read
    is refused before any work, naming the ones it does."""
    from infusion.methods.infusion.concept import Concept

    lib = Library(tmp_path / "lib")
    trainer = Trainer(lib, "world")
    with pytest.raises(ValueError, match="infusion has no option nope; it reads: .*maps"):
        trainer.start(world_images, "x", "ball", "infusion", steps=1, lr=None, options="maps=own nope=1")
    assert trainer.job is None and lib.entries() == []
    job = trainer.start(world_images, "own", "ball", "infusion", steps=1, lr=None, options="maps=own", blocking=True)
    assert job.status == "done", job.message
    assert Concept.load(job.result).maps == "own"


def test_one_job_at_a_time_cancel_within_a_step_and_at_most_one_checkpoint(tmp_path, world_images):
    """A long job with a checkpoint every 2 steps: never more than one checkpoint in staging; a second job is
    refused while it runs; Cancel stops it at the step that runs when it is asked (the page says so); afterwards
    the library holds nothing of it (no entry, no images, no staging) and another job runs."""
    lib = Library(tmp_path / "lib")
    trainer = Trainer(lib, "world")
    job = trainer.start(world_images, "slow", "ball", "infusion", steps=10_000, lr=None, sample_every=2)
    staging = lib.folder / ".staging" / job.id
    most = 0
    deadline = time.time() + 120
    while job.step < 9 and time.time() < deadline:
        most = max(most, len(list(staging.glob("slow-step*"))))
        time.sleep(0.02)
    assert job.step >= 9 and most == 1 and len(job.sample_steps) >= 3  # checkpoints 2, 4, 6, 8 came and went
    with pytest.raises(ValueError, match="a training job is running"):
        trainer.start(world_images, "other", "ball", "infusion", steps=3, lr=None)
    # the running job's name is held: renaming an entry to it would take (and, before, delete) the job's images
    _folder_entry(lib, "db")
    with pytest.raises(ValueError, match="a training job is making <slow>: pick another name"):
        lib.rename("db", "slow")
    assert sorted(p.name for p in lib.images_dir("slow").iterdir()) == [f"{i:02d}.png" for i in range(len(world_images))]
    lib.delete("db")
    asked_at = job.step
    said = trainer.cancel()
    assert f"stops when step {asked_at + 1} ends" in said or f"stops when step {asked_at + 2} ends" in said
    assert job.status in ("cancelling", "cancelled")
    trainer.wait(120)
    assert job.status == "cancelled" and job.step in (asked_at, asked_at + 1), (asked_at, job.step)
    assert job.message == f"cancelled after step {job.step} of 10000; nothing was added to the library"
    assert lib.entries() == [] and _tree(lib.folder) == []
    done = trainer.start(world_images, "other", "ball", "infusion", steps=2, lr=None, blocking=True)
    assert done.status == "done"
    _folder_entry(lib, "db")
    lib.rename("db", "slow")  # the job ended: its name is free again
    assert lib.get("slow").method == "dreambooth"


def test_bad_settings_are_refused_before_anything_is_copied(tmp_path, world_images):
    """A learning rate <= 0 or a negative sample interval is refused in the page's words, and the library is as it
    was (no copy of the images, no staging folder, the name not held); "studies" (the studies' folder) is no name."""
    lib = Library(tmp_path / "lib")
    trainer = Trainer(lib, "world")
    for lr, every in ((0.0, 0), (-1e-3, 0), (float("nan"), 0), (None, -1)):
        with pytest.raises(ValueError, match="the learning rate must be > 0 .* and 'sample every' >= 0"):
            trainer.start(world_images, "x", "ball", "infusion", steps=2, lr=lr, sample_every=every)
        assert _tree(lib.folder) == []
    with pytest.raises(ValueError, match="batch-size must be >= 1"):  # TrainConfig's own checks, also before copying
        trainer.start(world_images, "x", "ball", "infusion", steps=2, lr=None, batch_size=0)
    assert _tree(lib.folder) == []
    for options in ("num_class_images=5000", "prior_steps=0", "num_class_images=2.5"):  # setup Cancel cannot stop
        with pytest.raises(ValueError, match=r"must be a whole number from 1 to 200 here"):
            trainer.start(world_images, "x", "ball", "dreambooth", steps=2, lr=None, options=options)
    assert _tree(lib.folder) == []
    with pytest.raises(ValueError, match=r"paired_views must be a whole number from 1 to 16 here"):  # redraws too
        trainer.start(world_images, "x", "ball", "infusion", steps=2, lr=None, options="paired=true paired_views=100000")
    assert _tree(lib.folder) == []
    with pytest.raises(ValueError, match="keeps its studies in a folder of that name"):
        trainer.start(world_images, "studies", "ball", "infusion", steps=2, lr=None)
    _folder_entry(lib, "x")
    lib.rename("x", "y")  # "x" was never held
    with pytest.raises(ValueError, match="keeps its studies"):
        lib.rename("y", "studies")


def test_failed_job_reports_what_went_wrong_logs_the_trace_and_leaves_the_library_as_it_was(tmp_path, world_images,
                                                                                           monkeypatch, caplog):
    """The trainer fails at step 3 of a real run (a checkpoint and a resume state in staging by then): the message
    names the error without a path of the file system, the log holds the trace, and the library holds exactly what
    it held before (no entry, no copy of the images, no staging folder)."""
    real = jobs.train
    seen = {}

    def failing(cfg, progress=True, callback=None):
        def report(r):
            stop = callback(r)
            if r.step == 3:
                seen["staged"] = sorted(p.name for p in Path(cfg.out).parent.iterdir())
                raise OSError(f"disk on fire at {Path(cfg.out).parent}")
            return stop

        return real(cfg, progress=progress, callback=report)

    monkeypatch.setattr(jobs, "train", failing)
    lib = Library(tmp_path / "lib")
    (lib.folder / "notes.txt").write_text("the person's own file")
    before = _tree(lib.folder)
    with caplog.at_level(logging.ERROR, logger="infusion.app.jobs"):
        job = Trainer(lib, "world").start(world_images, "x", "ball", "infusion", steps=5, lr=None, sample_every=2,
                                          blocking=True)
    assert seen["staged"] == ["x-step2.safetensors"]  # a checkpoint to clean up (the page keeps no resume state)
    assert job.status == "failed"
    assert job.message.startswith("training failed at step 3 of 5: OSError: disk on fire at library/.staging/")
    assert str(lib.folder) not in job.message and job.message.endswith("the library is unchanged")
    traces = [r for r in caplog.records if r.exc_info and "disk on fire" in str(r.exc_info[1])]
    assert traces and "Traceback" in caplog.text
    assert _tree(lib.folder) == before


def test_library_rename_and_delete_are_atomic_and_update_the_concept(tmp_path, world_images):
    from infusion.methods.infusion.concept import Concept

    lib = Library(tmp_path / "lib")
    Trainer(lib, "world").start(world_images, "sunball", "ball", "infusion", steps=1, lr=None, blocking=True)
    with pytest.raises(ValueError, match="refused"):
        lib.rename("sunball", "../evil")
    lib.rename("sunball", "myball")
    assert [e.name for e in lib.entries()] == ["myball"]
    assert Concept.load(lib.folder / "myball.safetensors").name == "myball"
    assert lib.images_dir("myball").is_dir() and not lib.images_dir("sunball").exists()
    with pytest.raises(ValueError, match="no library entry"):
        lib.get("sunball")
    lib.delete("myball")
    assert lib.entries() == [] and _tree(lib.folder) == []


def _folder_entry(lib: Library, name: str) -> Path:
    """A folder entry as DreamBooth writes one (metadata file and a weights file), and its images."""
    import json

    path = lib.folder / name
    path.mkdir()
    (path / "infusion.json").write_text(json.dumps({"method": "dreambooth", "name": name, "class_phrase": "ball"}))
    (path / "weights.safetensors").write_bytes(b"0" * 100)
    lib.images_dir(name).mkdir(parents=True)
    (lib.images_dir(name) / "00.png").write_bytes(b"png")
    return path


def test_renames_are_refused_before_they_start_or_undone(tmp_path, monkeypatch):
    """A leftover folder in the way refuses the rename before anything moves; a failure half way (the images' move)
    puts the entry back; leftover images of no entry under the new name are replaced; a folder entry's metadata
    follows its new name."""
    import json

    from infusion.app import library

    lib = Library(tmp_path / "lib")
    _folder_entry(lib, "db")
    (lib.folder / "taken").mkdir()  # a half-done folder, no metadata: not an entry, but in the way
    before = _tree(lib.folder)
    with pytest.raises(ValueError, match="not an entry named 'taken'"):
        lib.rename("db", "taken")
    assert _tree(lib.folder) == before
    real = os.rename

    def fail_on_images(src, dst):
        if ".images" in str(src):
            raise OSError("no space left")
        return real(src, dst)

    monkeypatch.setattr(library.os, "rename", fail_on_images)
    with pytest.raises(OSError, match="no space left"):
        lib.rename("db", "db2")
    assert _tree(lib.folder) == before and lib.get("db").name == "db"
    monkeypatch.setattr(library.os, "rename", real)
    lib.images_dir("db3").mkdir()
    (lib.images_dir("db3") / "stale.png").write_bytes(b"old")
    lib.rename("db", "db3")
    assert json.loads((lib.folder / "db3" / "infusion.json").read_text())["name"] == "db3"
    assert [p.name for p in lib.images_dir("db3").iterdir()] == ["00.png"] and not (lib.folder / "db").exists()
    lib.delete("db3")
    assert _tree(lib.folder) == ["taken"]


def test_clean_leftovers_removes_old_working_folders_only(tmp_path):
    lib = Library(tmp_path / "lib")
    old, new = lib.staging("old"), lib.staging("new")
    out = lib.output_folder("gone")
    for p in (old, out.parent):
        os.utime(p, (time.time() - 2 * 86400,) * 2)
    _folder_entry(lib, "kept")  # an entry's images stay however old
    for name in ("kept", "killed", "running"):  # "killed": a job the server died in; "running": a job's, held
        lib.images_dir(name).mkdir(parents=True, exist_ok=True)
        os.utime(lib.images_dir(name), (time.time() - 2 * 86400,) * 2)
    lib.reserve("running")
    assert sorted(lib.clean_leftovers()) == [".images/killed", ".outputs/gone", ".staging/old"]
    assert new.is_dir() and not old.exists() and not (lib.folder / ".outputs").exists()
    assert lib.images_dir("kept").is_dir() and lib.images_dir("running").is_dir()


def test_seeds_are_bounded_before_any_list_is_built():
    assert parse_seeds("0, 1, 2") == [0, 1, 2] and parse_seeds("3-5") == [3, 4, 5] and parse_seeds("") == [0]
    assert parse_seeds("1, 1-2") == [1, 2]  # a seed given twice is generated once
    for text, match in (("0-999999999", "is 1,000,000,000 seeds; give 1 to 8"), ("0-8", "is 9 seeds"),
                        ("one", "not a list of whole numbers"), ("5-3", "runs backwards"),
                        ("0-" + "9" * 30, "not a list of whole numbers"), ("1," * 200, "give 1 to 8")):
        t0 = time.perf_counter()
        with pytest.raises(ValueError, match=match):
            parse_seeds(text)
        assert time.perf_counter() - t0 < 0.01, text


def test_actions_generate_pngs_with_parameters_in_unique_folders_and_attention(trained_library):
    from infusion.core.images import read_png_params

    lib = trained_library
    actions = Actions("world", lib)
    base, custom, files, _ = actions.generate("a photo of <sunball> on the beach", ["sunball"], seeds="0, 1", steps=3,
                                              session="s1")
    assert len(base) == len(custom) == 2 and len(files) == 4
    for b, c in zip(base, custom, strict=True):  # the customised images are not the base model's
        assert np.abs(np.asarray(b, np.int16) - np.asarray(c, np.int16)).max() > 0
    params = read_png_params(files[1])
    assert params["prompt"] == "a photo of <sunball> on the beach" and params["seed"] == 0 and params["steps"] == 3
    assert params["concepts"] == ["sunball.safetensors"] and params["model"] == "world" and params["stream"] == "custom"
    again = actions.generate("a photo of <sunball> on the beach", ["sunball"], seeds="0, 1", steps=3, session="s1")[2]
    assert files[0].parent != again[0].parent and all(f.is_file() for f in files + again)  # same second, no overwrite
    assert files[0].parent.parent == lib.folder / ".outputs" / "s1"
    lib.end_outputs("s1")
    assert not (lib.folder / ".outputs").exists()
    cells = actions.attention("sunball", "a photo of <sunball>", steps=3)
    assert cells[0][1] == "customised" and all(c[1].startswith("attention ") for c in cells[1:]) and len(cells) >= 2
    with pytest.raises(ValueError, match="write a prompt"):
        actions.generate("", ["sunball"])
    with pytest.raises(ValueError, match="seeds"):
        actions.generate("a photo of <sunball>", ["sunball"], seeds="one")
    with pytest.raises(ValueError, match="denoising steps must be a whole number"):
        actions.compare("a <concept>", ["sunball"], steps=None)


def test_a_huge_seed_request_is_answered_at_once_without_loading_a_model(trained_library):
    actions = Actions("world", trained_library)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="is 1,000,000,000 seeds; give 1 to 8"):
        actions.generate("a photo of <sunball>", ["sunball"], seeds="0-999999999")
    assert time.perf_counter() - t0 < 1.0 and actions.resident() == 0
    # a prompt that does not write the picked concept would give the base image twice: refused, as an unknown one
    with pytest.raises(ValueError, match=r"write the concept in the prompt as <sunball>"):
        actions.generate("a photo of sunball on the beach", ["sunball"])
    with pytest.raises(ValueError, match=r"names <nobody>, which is not picked; picked: <sunball>"):
        actions.generate("a photo of <nobody> and <sunball>", ["sunball"], steps=2)
    with pytest.raises(ValueError, match=r"names <nobody>"):
        actions.generate("a photo of <sunball>", ["sunball"], negative="<nobody>")
    with pytest.raises(ValueError, match="pick at least one concept"):
        actions.generate("a photo of <sunball>", [])
    assert actions.resident() == 0


def test_at_most_two_base_models_stay_loaded_least_recently_used_dropped(trained_library, monkeypatch):
    from infusion.app import actions as actions_mod

    lib = trained_library
    actions = Actions("world", lib)
    path = {n: lib.get(n).path for n in ("sunball", "ball2", "ball3")}
    loaded = []
    real = actions_mod.load_generator
    monkeypatch.setattr(actions_mod, "load_generator", lambda m, paths, *a: loaded.append(paths[0].name) or real(m, paths, *a))
    for name in ("sunball", "ball2", "sunball", "ball3", "sunball"):
        actions._load([path[name]])
        assert actions.resident() <= MAX_RESIDENT == 2
    assert [Path(k[0][0]).name for k in actions._cache] == ["ball3.safetensors", "sunball.safetensors"]
    assert loaded == ["sunball.safetensors", "ball2.safetensors", "ball3.safetensors"]  # sunball reused, ball2 dropped

    class Whole:  # an entry that is a whole model (DreamBooth): it and the base for its base images
        owns_pipeline = True

    monkeypatch.setattr(actions_mod, "customization_class", lambda *a: Whole)
    actions._load([path["ball2"]])
    assert actions.resident() == 2 and len(actions._cache) == 1


def test_generation_placement_gpu_in_float16_and_the_dtype_reaches_the_pipeline(trained_library, monkeypatch):
    """With a GPU the page generates there in float16 (checked by pretending one is there); the chosen dtype is what
    the loaded pipeline runs in (bfloat16 on the CPU here), and the concept still changes the image."""
    assert placement() == ("cpu", torch.float32)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert placement() == ("cuda", torch.float16) and Actions("world", trained_library).device == "cuda"
    monkeypatch.undo()
    actions = Actions("world", trained_library, device="cpu", dtype=torch.bfloat16)
    base, custom, _, _ = actions.generate("a photo of <sunball>", ["sunball"], steps=3)
    model = next(iter(actions._cache.values()))[0]
    assert model.pipe.unet.dtype == torch.bfloat16 and model.pipe.device.type == "cpu"
    assert np.abs(np.asarray(base[0], np.int16) - np.asarray(custom[0], np.int16)).max() > 0


def test_library_page_shows_no_file_system_paths(trained_library, tmp_path):
    lib = trained_library
    actions = Actions("world", lib)
    text, thumbnails = actions.entry_details("sunball")
    assert "**file**: sunball.safetensors" in text and str(lib.folder) not in text
    assert len(thumbnails) == 5 and all(isinstance(t, PIL.Image.Image) for t in thumbnails)
    from infusion.app.actions import shown_model

    assert shown_model("/home/me/models/sd15") == "sd15" and shown_model("world") == "world"
    assert shown_model("runwayml/stable-diffusion-v1-5") == "runwayml/stable-diffusion-v1-5"  # a hub id stays
    assert lib.scrub(f"cannot read {lib.folder}/.images/x/00.png") == "cannot read library/.images/x/00.png"


def test_serving_beyond_localhost_needs_a_login_or_says_it_has_none(monkeypatch, capsys, caplog):
    from infusion.app import ui
    from infusion.app.ui import check_serving
    from infusion.cli import main

    assert check_serving("127.0.0.1", None, False) is None and check_serving("localhost", None, False) is None
    with pytest.raises(ValueError, match="add --auth USER:PASSWORD"):
        check_serving("0.0.0.0", None, False)
    assert "without a login" in check_serving("0.0.0.0", None, True)
    assert "logs in as 'me'" in check_serving("192.168.1.5", ("me", "pw"), False)
    calls = []
    monkeypatch.setattr(ui, "serve", lambda *a, **k: calls.append((a, k)))
    assert main(["app", "--host", "0.0.0.0"]) == 2
    assert "--host 0.0.0.0 serves the page to every machine" in capsys.readouterr().err and calls == []
    assert main(["app", "--host", "0.0.0.0", "--auth", "me:secret"]) == 0
    assert calls[-1][1] == {"auth": ("me", "secret"), "no_auth": False}
    assert main(["app", "--host", "0.0.0.0", "--no-auth"]) == 0 and calls[-1][1]["no_auth"] is True
    capsys.readouterr()
    for argv, said in ((["app", "--auth", "nopassword"], "--auth: expected USER:PASSWORD (both non-empty)"),
                       (["app", "--auth", "a:b", "--no-auth"], "--no-auth: not allowed with argument --auth")):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2 and said in capsys.readouterr().err and len(calls) == 2


def test_session_files_are_removed_when_the_session_ends(tmp_path):
    """Only files inside Gradio's cache are taken (values come from the browser); a file two sessions hold goes with
    the last one; the session's folder of generated files in the library goes too."""
    from infusion.app.ui import SessionFiles

    lib, cache = Library(tmp_path / "lib"), tmp_path / "cache"
    mine, shared = cache / "h1" / "image.webp", cache / "h2" / "up.png"
    outside = tmp_path / "precious.png"
    for p in (mine, shared, outside):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    files = SessionFiles(lib, cache)
    files.remember("a", [{"image": {"path": str(mine), "url": "/x"}, "caption": None}, {"path": str(shared)}])
    files.remember("a", {"path": str(outside)})  # a browser may send any path: never deleted
    files.remember("b", [str(shared)])
    out = lib.output_folder("a")
    assert files.held("a") == [mine, shared] and files.held("a", alone=True) == [mine]
    assert files.end("a") == [mine] and not mine.parent.exists() and shared.is_file() and outside.is_file()
    assert not out.exists()
    assert files.end("b") == [shared] and not shared.exists() and outside.is_file()


def test_a_folder_entry_zip_is_made_inside_the_cache_so_gradio_serves_it_without_a_copy(tmp_path, monkeypatch):
    """A DreamBooth entry is 4 GB: Gradio copies any file from outside its cache into the cache before serving it,
    so the page writes the zip there; the session's end removes it, shown or not."""
    import gradio as gr  # a test dependency ([test] extra)

    from infusion.app.ui import SessionFiles

    cache = tmp_path / "cache"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(cache))
    lib = Library(tmp_path / "lib")
    _folder_entry(lib, "db")
    files = SessionFiles(lib, cache)
    zipped = Actions("world", lib).download("db", folder=files.downloads("s-1"))
    assert zipped.parent == cache.resolve() / "infusion-downloads" / "s-1"
    assert gr.File().move_resource_to_block_cache(str(zipped)) == str(zipped)  # served as it is: no second copy
    assert not (lib.folder / ".outputs").exists()
    files.end("s-1")  # never remembered (the tab closed before it was shown): removed all the same
    assert not zipped.parent.exists()


def test_a_study_generates_its_images_on_shared_noise_once_and_shows_them_blind(trained_library, tmp_path):
    """Issue 34: a study of two entries writes its plan, generates each (entry, prompt, seed) image once from the
    seed's noise (a missing image is regenerated alone, bit for bit), and a question's HTML holds data URIs without
    PNG text and no entry name, method, path or file name."""
    import base64
    import io
    import re

    from infusion.app.study import Studies, default_prompts, question_html, reference_html
    from infusion.evaluation.prompts import dreambench_prompts
    from infusion.world.concepts import validation_prompts

    lib = trained_library
    actions = Actions("world", lib)
    studies = Studies(actions)
    prompts = default_prompts("world", [lib.get("sunball")])
    assert prompts == [p.replace("<sunball>", "<concept>") for p in validation_prompts("sunball")]
    real = default_prompts("stable-diffusion-v1-5/stable-diffusion-v1-5", [lib.get("sunball")])  # no model loads
    assert real == dreambench_prompts("concept", "object") and len(real) == 25
    with pytest.raises(ValueError, match="at least two library entries"):
        studies.create("solo", ["sunball"], "\n".join(prompts))
    with pytest.raises(ValueError, match="needs <concept>"):
        studies.create("bad", ["sunball", "ball2"], "a photo of a ball")
    study = studies.create("ballstudy", ["sunball", "ball2"], "\n".join(prompts[:2]), seeds="0, 1", questions=4,
                           steps=2, blocking=True)
    assert studies.job.status == "ready" and studies.names() == ["ballstudy"]
    assert [a["label"] for a in study.arms] == ["infusion (sunball)", "infusion (ball2)"]  # one method: by name
    needed = study.needed_images()
    assert len(needed) == 8 and study.missing_images() == [] and "ready: 4 questions" in studies.progress("ballstudy")
    arm, k, seed = needed[5]
    entry = lib.get(study.arms[arm]["entry"])
    direct = actions._load([entry.path])([study.data["prompts"][k].replace("<concept>", f"<{entry.name}>")],
                                          generator=torch.Generator().manual_seed(seed), num_inference_steps=2,
                                          guidance_scale=8.0).images[0]
    assert np.array_equal(np.asarray(PIL.Image.open(study.image_path(arm, k, seed))), np.asarray(direct))
    before = {key: study.image_path(*key).read_bytes() for key in needed}
    study.image_path(arm, k, seed).unlink()
    job = studies.generate("ballstudy", blocking=True)
    assert (job.total, job.done, job.status) == (8, 8, "ready")
    assert {key: study.image_path(*key).read_bytes() for key in needed} == before
    with pytest.raises(ValueError, match="a study named 'ballstudy' exists"):
        studies.create("ballstudy", ["sunball", "ball2"], "\n".join(prompts[:2]), questions=2, steps=2)
    studies.job.status = "generating"  # as if ballstudy's images were still being made: another study waits
    with pytest.raises(ValueError, match="study 'ballstudy' is generating its images"):
        studies.create("other", ["sunball", "ball3"], "\n".join(prompts[:2]), questions=2, steps=2)
    assert studies.names() == ["ballstudy"]  # refused before its plan was written
    studies.job.status = "ready"

    shown = question_html(study, study.questions[0]) + reference_html(entry.images)
    for secret in ("sunball", "ball2", "infusion", str(lib.folder), ".png", "studies", "file="):
        assert secret not in shown, secret
    assert study.shown_prompt(study.questions[0]) in shown.replace("&#x27;", "'")
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', shown)
    assert len(uris) == 2 + len(entry.images)
    for uri in uris:
        im = PIL.Image.open(io.BytesIO(base64.b64decode(uri)))
        assert not im.info and min(im.size) >= 96  # no PNG text chunks; enlarged from 32 px
    # the concept's photos are copied with the study: renaming or deleting the entry later changes nothing shown
    refs = studies.reference_images(study)
    first = lib.get(study.arms[0]["entry"]).images
    assert refs and all(p.parent == study.folder / "references" for p in refs)
    assert [p.read_bytes() for p in refs] == [p.read_bytes() for p in first[:5]]
    import shutil

    from infusion.evaluation.study import Study

    old = Study(tmp_path / "old", {**study.data, "arms": [{**study.arms[0], "entry": "renamed-away"}, study.arms[1]]})
    (tmp_path / "old").mkdir()  # a study without a copy whose entry is gone: no photos, and no error naming it
    assert studies.reference_images(old) == []
    shutil.copytree(study.folder, tmp_path / "older", ignore=shutil.ignore_patterns("references"))
    assert studies.reference_images(Study.load(tmp_path / "older")) == first[:5]  # made before copies: the entry's


def test_the_loss_plot_of_a_long_run_is_thinned_and_its_mean_line_stays_aligned():
    """The page redraws the loss every second per open tab: 100,000 steps draw at most ``MAX_PLOTTED`` points a
    line; the running mean's first point sits at step k (the mean of steps 1..k)."""
    from infusion.app.ui import MAX_PLOTTED, _loss_figure

    losses = list(np.linspace(1.0, 0.0, 100_000))
    raw, mean = _loss_figure(losses).axes[0].lines
    assert len(raw.get_xdata()) <= MAX_PLOTTED + 1 and raw.get_xdata()[0] == 1 and raw.get_ydata()[0] == 1.0
    assert len(mean.get_xdata()) == len(mean.get_ydata()) <= MAX_PLOTTED + 1
    k = 100_000 // 20
    assert mean.get_xdata()[0] == k and np.isclose(mean.get_ydata()[0], np.mean(losses[:k]))
    short = _loss_figure([0.5, 0.4, 0.3]).axes[0].lines[0]
    assert list(short.get_xdata()) == [1, 2, 3]  # a short run: every step


def test_compare_with_scores_builds_the_probe_scorer_once_under_the_load_lock(trained_library, monkeypatch):
    """The world's probes are modules: built under ``LOAD_LOCK`` (a model loading in another thread meanwhile would
    give them meta weights), once per page, and each caption carries the scores."""
    from infusion.app import actions as actions_module

    held = []
    real = actions_module.model_profile

    def watching(model):
        profile = real(model)
        scorer = profile.scorer

        def built():
            held.append(actions_module.LOAD_LOCK._is_owned())
            return scorer()

        profile.scorer = built
        return profile

    monkeypatch.setattr(actions_module, "model_profile", watching)
    actions = Actions("world", trained_library)
    for _ in range(2):
        cells = actions.compare("a photo of a <concept>", ["sunball"], steps=2, scores=True)
        assert [c[1].split(" |")[0] for c in cells] == ["base", "sunball (infusion)"]
        assert all(" | text " in c[1] for c in cells)
    assert held == [True]


def test_the_library_poll_says_once_why_it_cannot_update_instead_of_failing_every_tick(tmp_path, monkeypatch, caplog):
    """The 2 s poll that keeps every list of entries current loads the base model (its fingerprint) for the table: when
    that fails, the Library status says why (library-relative), and the poll does not retry until the folder changes."""
    from infusion.app import ui

    calls = []

    def broken(self):
        calls.append(1)
        raise RuntimeError(f"cannot load {self.library.folder}/base")

    monkeypatch.setattr(Actions, "table", broken)
    demo = ui.build("world", str(tmp_path / "lib"))
    follow = [f.fn for f in demo.fns.values() if f.name == "follow" and len(f.outputs) == 8][0]
    with caplog.at_level(logging.ERROR, logger="infusion.app.ui"):
        out = follow(None)
    assert out[5] == "⚠ the library lists could not be updated: RuntimeError: cannot load library/base"
    assert "Traceback" in caplog.text and calls == [1]
    again = follow(out[7])  # the next tick, nothing changed: no second try, no second message
    assert calls == [1] and again[-1] == out[7]


def test_a_folder_entry_downloads_as_one_stored_zip_made_once_per_version(tmp_path):
    """A DreamBooth-style folder entry: the zip holds its files as they are (stored: weights do not compress), a
    second click gives the same zip without writing it again, a changed entry gets a new one (the old one goes),
    and the session's end removes them."""
    import zipfile

    lib = Library(tmp_path / "lib")
    path = _folder_entry(lib, "db")
    actions = Actions("world", lib)
    first = actions.download("db", session="s1")
    with zipfile.ZipFile(first) as z:
        assert sorted(z.namelist()) == ["infusion.json", "weights.safetensors"]
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_STORED}
        assert z.read("weights.safetensors") == (path / "weights.safetensors").read_bytes()
    written = first.stat().st_mtime_ns
    assert actions.download("db", session="s1") == first and first.stat().st_mtime_ns == written
    time.sleep(0.01)
    (path / "extra.txt").write_text("new")
    os.utime(path)  # the entry changed (a rename rewrites infusion.json, which touches the folder too)
    other = first.parent / "db-2-123.zip"  # entry db-2's zip: not an older version of db's
    other.write_bytes(b"zip")
    second = actions.download("db", session="s1")
    assert second != first and not first.exists() and "extra.txt" in zipfile.ZipFile(second).namelist()
    assert other.is_file()
    lib.end_outputs("s1")
    assert not (lib.folder / ".outputs").exists()


def test_a_study_stops_after_the_image_being_made_and_resumes_where_it_stopped(trained_library, monkeypatch):
    from infusion.app.study import Studies, default_prompts

    lib = trained_library
    studies = Studies(Actions("world", lib))
    assert studies.stop() == "no study is generating its images"
    real, loads = studies.actions._load, []

    def load(paths):  # the Stop button pressed while the second image is being made
        loads.append(1)
        if len(loads) == 2:
            assert studies.stop().startswith("stopping study stopstudy after the image being made (1/")
        return real(paths)

    monkeypatch.setattr(studies.actions, "_load", load)
    prompts = default_prompts("world", [lib.get("sunball")])[:2]
    study = studies.create("stopstudy", ["sunball", "ball3"], "\n".join(prompts), seeds="0, 1", questions=4, steps=2,
                           blocking=True)
    job = studies.job
    assert (job.status, job.done) == ("stopped", 2) and job.total == len(study.needed_images()) > 2
    assert job.message.startswith(f"stopped after 2/{job.total} images (kept)")
    assert len(study.missing_images()) == job.total - 2
    again = studies.generate("stopstudy", blocking=True)
    assert (again.status, again.done) == ("ready", again.total) and study.missing_images() == []


def test_an_entry_whose_file_names_its_concept_otherwise_answers_to_its_entry_name(trained_library, tmp_path):
    """``infusion train --name sunball --out lib/cat.safetensors``: the page lists <cat>, so <cat> in a prompt must
    reach the file's <sunball> (Generate, Compare, Attention), and the images are the original entry's."""
    import shutil

    lib = Library(tmp_path / "lib")
    shutil.copyfile(trained_library.get("sunball").path, lib.folder / "cat.safetensors")
    shutil.copyfile(trained_library.get("sunball").path, lib.folder / "sunball.safetensors")
    entry = lib.get("cat")
    assert (entry.name, entry.concept) == ("cat", "sunball")
    actions = Actions("world", lib)
    _, cat, _, _ = actions.generate("a photo of <cat> on the beach", ["cat"], seeds="0", steps=3)
    _, ball, _, _ = actions.generate("a photo of <sunball> on the beach", ["sunball"], seeds="0", steps=3)
    assert np.array_equal(np.asarray(cat[0]), np.asarray(ball[0]))
    cells = actions.compare("a photo of a <concept>", ["cat", "sunball"], steps=3)
    assert [c[1] for c in cells] == ["base", "cat (infusion)", "sunball (infusion)"]
    assert np.array_equal(np.asarray(cells[1][0]), np.asarray(cells[2][0]))
    assert len(actions.attention("cat", "a photo of <cat>", steps=3)) >= 2
    with pytest.raises(ValueError, match=r"<cat> and <sunball> are both the concept <sunball> in their files"):
        actions.generate("<cat> and <sunball>", ["cat", "sunball"], seeds="0", steps=3)


def test_a_stopped_study_refuses_an_entry_renamed_or_trained_again_and_tells_participants_nothing(
        trained_library, tmp_path, monkeypatch):
    """Images still to make must come from the model the others came from: after a rename, or a new entry under the
    old name, generating stops with a message for the owner; a participant is told only to ask the owner."""
    import shutil

    from infusion.app.study import Studies, default_prompts

    lib = Library(tmp_path / "lib")
    for name in ("sunball", "ball2"):
        shutil.copyfile(trained_library.get(name).path, lib.folder / f"{name}.safetensors")
    studies = Studies(Actions("world", lib))
    real, stop_next = studies.actions._load, [True]

    def load(paths):  # stop after the first image of a study
        if stop_next[0]:
            stop_next[0] = False
            studies.stop()
        return real(paths)

    monkeypatch.setattr(studies.actions, "_load", load)
    prompts = default_prompts("world", [lib.get("sunball")])[:1]
    kept = studies.create("kept", ["sunball", "ball2"], "\n".join(prompts), seeds="0", questions=1, steps=2,
                          blocking=True)
    assert studies.job.status == "stopped" and len(kept.missing_images()) == 1
    ball2 = lib.get("ball2").path  # copied without its times (as cp and plain rsync copy): the same version
    shutil.copyfile(ball2, tmp_path / "copy")
    os.replace(tmp_path / "copy", ball2)
    os.utime(ball2, (1e9, 1e9))
    assert studies.generate("kept", blocking=True).status == "ready" and kept.missing_images() == []
    stop_next[0] = True
    study = studies.create("s", ["sunball", "ball2"], "\n".join(prompts), seeds="0", questions=1, steps=2,
                           blocking=True)
    assert studies.job.status == "stopped" and len(study.missing_images()) == 1
    lib.rename("ball2", "other")
    shutil.copyfile(lib.get("other").path, lib.folder / "ball2.safetensors")  # another file under the old name
    job = studies.generate("s", blocking=True)
    assert job.status == "failed" and "<ball2> of " in job.message and "was renamed, deleted or trained again" in job.message
    assert len(study.missing_images()) == 1  # nothing made from the other model
    assert studies.progress("s", participant=True) == "its images cannot be made now: ask the study's owner"
    assert "ball2" in studies.progress("s")


def test_entry_names_map_to_their_files_concepts_in_one_pass():
    """<cat> -> the file's <dog>, <dog> -> the file's <bird>: each placeholder mapped once, whatever the order."""
    from infusion.app.library import Entry, in_prompt

    def entry(name, concept):
        return Entry(name, Path(name), "infusion", "pet", "", "", "", 0, 0.0, [], concept)

    cat, dog, plain = entry("cat", "dog"), entry("dog", "bird"), entry("cow", "cow")
    for order in ([cat, dog, plain], [dog, cat, plain]):
        assert in_prompt(order, "<cat> next to <dog> and <cow>, not <cats>") == "<dog> next to <bird> and <cow>, not <cats>"
    assert cat.in_prompt("a <cat>, a <dog>") == "a <dog>, a <dog>"
    assert in_prompt([plain], "<cow> <x>") == "<cow> <x>"
