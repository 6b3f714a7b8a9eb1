"""The web page's functions without a browser: library names and edits, uploads, one job at a time, cancel, and
a training started from the page giving the CLI's file bit for bit (issue 14)."""

import time
from pathlib import Path

import PIL.Image
import pytest

from infusion.app.jobs import Trainer, check_images
from infusion.app.library import Library, check_name


@pytest.fixture(scope="module")
def world_images(tmp_path_factory):
    from infusion.world.concepts import write_concept_images

    folder = tmp_path_factory.mktemp("sunball")
    return [Path(p) for p in write_concept_images("sunball", folder)]


@pytest.mark.parametrize("bad", ["../evil", "/etc/passwd", "a/b", "..", ".hidden", "x" * 65, "spa ce", "", "ü"])
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
    assert check_images(world_images) == world_images


def test_page_training_equals_cli_training_bit_for_bit(tmp_path, world_images):
    from infusion.cli import main

    lib = Library(tmp_path / "lib")
    trainer = Trainer(lib, "world")
    job = trainer.start(world_images, "sunball", "ball", "infusion", steps=3, lr=None, sample_every=2, blocking=True)
    assert job.status == "done", job.message
    assert job.step == 3 and len(job.losses) == 3 and [s for s, _ in job.samples] == [2]
    page_file = lib.folder / "sunball.safetensors"
    assert job.result == page_file and page_file.is_file()
    cli_file = tmp_path / "cli" / "sunball.safetensors"
    assert main(["train", "--model", "world", "--images", str(lib.images_dir("sunball")), "--name", "sunball",
                 "--class-phrase", "ball", "--out", str(cli_file), "--steps", "3"]) == 0
    assert page_file.read_bytes() == cli_file.read_bytes()
    assert [e.name for e in lib.entries()] == ["sunball"] and len(lib.entries()[0].images) == len(world_images)


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


def test_one_job_at_a_time_and_cancel_keeps_the_library_unchanged(tmp_path, world_images):
    lib = Library(tmp_path / "lib")
    trainer = Trainer(lib, "world")
    job = trainer.start(world_images, "slow", "ball", "infusion", steps=10_000, lr=None, sample_every=2)
    deadline = time.time() + 120
    while job.step < 3 and time.time() < deadline:
        time.sleep(0.1)
    with pytest.raises(ValueError, match="a training job is running"):
        trainer.start(world_images, "other", "ball", "infusion", steps=3, lr=None)
    assert "cancelling" in trainer.cancel()
    while not job.finished and time.time() < deadline:
        time.sleep(0.1)
    assert job.status == "cancelled" and "nothing was added" in job.message
    assert lib.entries() == [] and not (lib.folder / "slow.safetensors").exists()
    staged = list((lib.folder / ".staging" / job.id).glob("slow-step*.safetensors"))
    assert staged  # the last checkpoint is kept
    done = trainer.start(world_images, "other", "ball", "infusion", steps=2, lr=None, blocking=True)
    assert done.status == "done"


def test_failed_job_reports_and_leaves_the_library_alone(tmp_path, world_images, monkeypatch):
    import infusion.app.jobs as training  # the trainer as the job runner calls it

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(training, "train", boom)
    lib = Library(tmp_path / "lib")
    job = Trainer(lib, "world").start(world_images, "x", "ball", "infusion", steps=2, lr=None, blocking=True)
    assert job.status == "failed" and "disk on fire" in job.message and lib.entries() == []


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
    assert lib.entries() == [] and not lib.images_dir("myball").exists()


def test_actions_generate_pngs_with_parameters_and_attention(tmp_path, world_images):
    from infusion.app.actions import Actions
    from infusion.core.images import read_png_params

    lib = Library(tmp_path / "lib")
    Trainer(lib, "world").start(world_images, "sunball", "ball", "infusion", steps=2, lr=None, blocking=True)
    actions = Actions("world", lib)
    base, custom, files, _ = actions.generate("a photo of <sunball> on the beach", ["sunball"], seeds="0, 1", steps=3)
    assert len(base) == len(custom) == 2 and len(files) == 4
    params = read_png_params(files[1])
    assert params["prompt"] == "a photo of <sunball> on the beach" and params["seed"] == 0 and params["steps"] == 3
    assert params["concepts"] == ["sunball.safetensors"] and params["model"] == "world" and params["stream"] == "custom"
    cells = actions.attention("sunball", "a photo of <sunball>", steps=3)
    assert cells[0][1] == "customised" and all(c[1].startswith("attention ") for c in cells[1:]) and len(cells) >= 2
    with pytest.raises(ValueError, match="write a prompt"):
        actions.generate("", ["sunball"])
    with pytest.raises(ValueError, match="seeds"):
        actions.generate("a photo of <sunball>", ["sunball"], seeds="one")
    with pytest.raises(ValueError, match="unknown concept <nobody>"):
        actions.generate("a photo of <nobody>", ["sunball"], steps=2)
