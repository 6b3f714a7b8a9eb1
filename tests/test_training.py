"""Training: only the Deltas change, resume is exact, bad input gives clear errors."""

import logging

import numpy as np
import PIL.Image
import pytest
import torch

from infusion.methods.infusion.concept import Concept
from infusion.training import TrainConfig, state_path, step_path, train


def _cfg(images, out, **kw):
    base = dict(model="tiny", images=str(images), name="mycat", class_phrase="cat", out=str(out), steps=6, batch_size=2)
    base.update(kw)
    return TrainConfig(**base)


def _snapshot(pipe):
    return {f"{m}.{k}": v.clone() for m in ("unet", "vae", "text_encoder") for k, v in getattr(pipe, m).state_dict().items()}


def test_training_changes_only_the_deltas(tiny_pipe, concept_images, tmp_path):
    before = _snapshot(tiny_pipe)
    concept = train(_cfg(concept_images, tmp_path / "c.safetensors"), pipe=tiny_pipe, progress=False)
    after = _snapshot(tiny_pipe)
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == []
    assert all(d.abs().sum() > 0 for d in concept.deltas.values())  # every layer learned something
    loaded = Concept.load(tmp_path / "c.safetensors")
    assert loaded.training["steps"] == 6 and loaded.base_fingerprint


def test_resume_reproduces_an_uninterrupted_run(concept_images, tmp_path, optimizer_steps):
    import shutil

    from safetensors.torch import save_file

    from infusion.core.model_configs import tiny_sd_pipeline

    full = train(_cfg(concept_images, tmp_path / "full.safetensors"), pipe=tiny_sd_pipeline(), progress=False)
    part = tmp_path / "part.safetensors"
    train(_cfg(concept_images, part, steps=3), pipe=tiny_sd_pipeline(), progress=False)
    assert state_path(part).is_file()
    shutil.copy(state_path(part), tmp_path / "saved.state")
    del optimizer_steps[:]
    resumed = train(_cfg(concept_images, part, steps=6, resume="auto"), pipe=tiny_sd_pipeline(), progress=False)
    assert len(optimizer_steps) == 3  # only the remaining steps: a run that started over would take 6
    for k in full.deltas:
        assert torch.equal(full.deltas[k], resumed.deltas[k]), k
    # the saved Deltas are what the run continues from: alter them and the result moves
    from infusion.core.safetensors_io import read_safetensors

    tensors, meta = read_safetensors(tmp_path / "saved.state", "training state")
    save_file({k: v + 0.5 if k.startswith("param/") else v for k, v in tensors.items()}, str(state_path(part)), meta)
    altered = train(_cfg(concept_images, part, steps=6, resume="auto"), pipe=tiny_sd_pipeline(), progress=False)
    assert all(not torch.equal(full.deltas[k], altered.deltas[k]) for k in full.deltas)


def test_checkpoints_every_n_steps(tiny_pipe, concept_images, tmp_path):
    out = tmp_path / "c.safetensors"
    train(_cfg(concept_images, out, checkpoint_every=2), pipe=tiny_pipe, progress=False)
    assert step_path(out, 2).is_file() and step_path(out, 4).is_file() and not step_path(out, 6).exists()
    assert Concept.load(step_path(out, 2)).name == "mycat"


def test_keep_checkpoints_keeps_only_the_last_ones_files_and_folders(concept_images, tmp_path):
    """``keep_checkpoints=1`` (the web page's setting): after every new ``-stepN`` output only the newest is left,
    for a file method and a folder one (DreamBooth's whole pipeline); the final output is what a run without it
    writes, bit for bit; 0 (the CLI's default) keeps every one."""
    from infusion.core.model_configs import tiny_sd_pipeline

    seen = []
    for method, name, args in (("infusion", "c.safetensors", {}), ("dreambooth", "db", {"prior_loss_weight": 0})):
        out = tmp_path / method / name

        def report(r, out=out, method=method):  # after each step: which checkpoints are on disk now
            seen.append((method, r.step, sorted(p.name for p in out.parent.glob(f"{out.name.split('.')[0]}-step*"))))

        train(_cfg(concept_images, out, method=method, method_args=args, steps=7, checkpoint_every=2, keep_checkpoints=1),
              pipe=tiny_sd_pipeline(), progress=False, callback=report)
        ext = ".safetensors" if method == "infusion" else ""
        assert [p.name for p in out.parent.glob("*-step*")] == [f"{out.name.split('.')[0]}-step6{ext}"]
        every = tmp_path / method / "all" / name
        train(_cfg(concept_images, every, method=method, method_args=args, steps=7, checkpoint_every=2),
              pipe=tiny_sd_pipeline(), progress=False)
        assert sorted(p.name for p in every.parent.glob("*-step*")) == [f"{every.name.split('.')[0]}-step{s}{ext}"
                                                                       for s in (2, 4, 6)]
        assert _tensors(out).keys() == _tensors(every).keys()
        assert all(torch.equal(v, _tensors(every)[k]) for k, v in _tensors(out).items())
    # the step callback runs before that step's checkpoint is written: at step 5 only step 4's is on disk
    assert ("infusion", 5, ["c-step4.safetensors"]) in seen and ("dreambooth", 5, ["db-step4"]) in seen
    with pytest.raises(ValueError, match="keep_checkpoints"):
        _cfg(concept_images, tmp_path / "x.safetensors", keep_checkpoints=-1)


def test_save_state_false_writes_no_resume_state_and_the_same_output(concept_images, tmp_path):
    """``save_state=False`` (the web page's setting): no ``.state`` file at a checkpoint, on Cancel or at the end; the
    output is the one a run with the state writes, bit for bit."""
    from infusion.core.model_configs import tiny_sd_pipeline
    from infusion.training.trainer import Cancelled

    seen = []
    kw = dict(steps=4, checkpoint_every=2, save_state=False)
    train(_cfg(concept_images, tmp_path / "a.safetensors", **kw), pipe=tiny_sd_pipeline(), progress=False,
          callback=lambda r: seen.append(sorted(p.name for p in tmp_path.iterdir())))
    with pytest.raises(Cancelled) as stopped:
        train(_cfg(concept_images, tmp_path / "c.safetensors", **kw), pipe=tiny_sd_pipeline(), progress=False,
              callback=lambda r: r.step == 3)
    assert stopped.value.state is None and "resume state" not in str(stopped.value)
    assert not list(tmp_path.glob("*.state.*")) and "a-step2.safetensors" in seen[-1]
    train(_cfg(concept_images, tmp_path / "b.safetensors", steps=4), pipe=tiny_sd_pipeline(), progress=False)
    assert state_path(tmp_path / "b.safetensors").is_file()
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


def _tensors(path) -> dict:
    """Every tensor of an output: a file's, or each safetensors file's of a folder (keys prefixed by the file)."""
    from pathlib import Path

    from safetensors.torch import load_file

    path = Path(path)
    if path.is_file():
        return load_file(str(path))
    return {f"{f.relative_to(path)}:{k}": v for f in sorted(path.rglob("*.safetensors")) for k, v in load_file(str(f)).items()}


class _Crash(Exception):
    pass


RESUMED = [("infusion", {}), ("lora", {}), ("pplus", {}), ("dreambooth", {"num_class_images": 2, "prior_steps": 2})]


@pytest.mark.parametrize("method,args", RESUMED, ids=[m for m, _ in RESUMED])
def test_resume_from_the_middle_of_a_run_and_after_cancel_equals_an_uninterrupted_run(method, args, concept_images,
                                                                                    tmp_path, optimizer_steps):
    """A 6-step run, checkpointed every 2 steps, stopped in the middle two ways and resumed with ``resume="auto"``:
    a crash at step 5 (the state of step 4 on disk) and Cancel at step 3 (the trainer saves the state of step 3).
    Each resumed run takes only its remaining optimizer steps (one that started over would take 6) and writes
    exactly the uninterrupted run's output."""
    from infusion.core.model_configs import tiny_sd_pipeline
    from infusion.training.trainer import Cancelled

    ext = "" if method == "dreambooth" else ".safetensors"
    kw = dict(method=method, method_args=args, steps=6, checkpoint_every=2)
    full = tmp_path / f"full{ext}"
    train(_cfg(concept_images, full, **kw), pipe=tiny_sd_pipeline(), progress=False)
    reference = _tensors(full)

    def crash_at_5(r):
        if r.step == 5:
            raise _Crash

    for how, stop, left in (("crash", crash_at_5, 2), ("cancel", lambda r: r.step == 3, 3)):
        out = tmp_path / how / f"part{ext}"
        with pytest.raises(Cancelled if how == "cancel" else _Crash):
            train(_cfg(concept_images, out, **kw), pipe=tiny_sd_pipeline(), progress=False, callback=stop)
        assert not out.exists()  # no final output from an interrupted run
        del optimizer_steps[:]
        train(_cfg(concept_images, out, resume="auto", **kw), pipe=tiny_sd_pipeline(), progress=False)
        assert len(optimizer_steps) == left, how  # the remaining steps only
        resumed = _tensors(out)
        assert resumed.keys() == reference.keys() and reference
        different = [k for k in reference if not torch.equal(reference[k], resumed[k])]
        assert different == [], f"{method} resumed after {how}: {different[:3]}"


def test_resume_refuses_another_run(tiny_pipe, concept_images, tmp_path):
    out = tmp_path / "c.safetensors"
    train(_cfg(concept_images, out, steps=2), pipe=tiny_pipe, progress=False)
    with pytest.raises(ValueError, match="class_phrase='cat'"):
        train(_cfg(concept_images, out, steps=4, class_phrase="dog", resume="auto"), pipe=tiny_pipe, progress=False)
    with pytest.raises(FileNotFoundError):
        train(_cfg(concept_images, out, resume=str(tmp_path / "missing.safetensors")), pipe=tiny_pipe, progress=False)


def test_odd_images_are_handled(tiny_pipe, tmp_path):
    from infusion.training.data import load_concept_images

    d = tmp_path / "odd"
    d.mkdir()
    rgb = (np.random.default_rng(0).random((40, 60, 3)) * 255).astype(np.uint8)
    PIL.Image.fromarray(rgb).convert("L").save(d / "gray.png")
    PIL.Image.fromarray(rgb).convert("RGBA").save(d / "rgba.png")
    PIL.Image.fromarray(rgb).convert("CMYK").save(d / "cmyk.jpg")
    PIL.Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(d / "sixteen.png")
    PIL.Image.fromarray(rgb).convert("P").save(d / "palette.gif")
    exif = PIL.Image.fromarray(rgb)
    ex = exif.getexif()
    ex[0x0112] = 6  # rotated 90 degrees
    exif.save(d / "exif.jpg", exif=ex)
    PIL.Image.fromarray(rgb[:8, :8]).save(d / "tiny.png")
    (d / "broken.png").write_bytes(b"\x89PNG broken")
    PIL.Image.fromarray(np.zeros((3000, 2000, 3), np.uint8)).save(d / "huge.png")
    PIL.Image.fromarray(rgb[..., 1].astype(np.float32) / 255.0).save(d / "float.tif")  # mode "F": [0, 1] floats
    with pytest.warns(UserWarning) as rec:
        x = load_concept_images(d, 16)
    assert x.shape == (8, 3, 16, 16) and x.min() >= -1 and x.max() <= 1
    from infusion.training.data import load_rgb

    assert np.array_equal(np.asarray(load_rgb(d / "float.tif"))[..., 0], rgb[..., 1])  # not black: the same grey
    msgs = " ".join(str(r.message) for r in rec)
    assert "tiny.png" in msgs and "broken.png" in msgs


def test_bad_inputs(tiny_pipe, tmp_path, concept_images):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no images in"):
        train(_cfg(empty, tmp_path / "c.safetensors"), pipe=tiny_pipe, progress=False)
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        train(_cfg(tmp_path / "nope", tmp_path / "c.safetensors"), pipe=tiny_pipe, progress=False)
    with pytest.raises(ValueError, match="--name"):
        _cfg(concept_images, "x", name="my cat")
    with pytest.raises(ValueError, match=r"leave out the angle brackets \(--name sks\); prompts write it as <sks>"):
        _cfg(concept_images, "x", name="<sks>")
    (empty / "cat").mkdir()  # diffusers' scripts' layout: the images one level down
    PIL.Image.new("RGB", (64, 64)).save(empty / "cat" / "0.png")
    with pytest.raises(ValueError, match=f"its subfolder cat has some: --images {empty / 'cat'}"):
        train(_cfg(empty, tmp_path / "c.safetensors"), pipe=tiny_pipe, progress=False)
    # said before a model loads: a model that cannot load is not reached
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        train(_cfg(tmp_path / "nope", tmp_path / "c.safetensors", model="./no-model"), progress=False)
    with pytest.raises(ValueError, match=r"--out .* is a folder; infusion writes one file: e.g. --out .*mycat.safetensors"):
        train(_cfg(concept_images, tmp_path, model="./no-model"), progress=False)
    (tmp_path / "db.safetensors").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"is a file; dreambooth writes a folder"):
        train(_cfg(concept_images, tmp_path / "db.safetensors", method="dreambooth", model="./no-model"), progress=False)
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU; on a CPU use no"):
        train(_cfg(concept_images, tmp_path / "c.safetensors", mixed_precision="fp16", model="./no-model"),
              progress=False)
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        train(_cfg(concept_images, tmp_path / "c.safetensors", method="nope"), pipe=tiny_pipe, progress=False)
    with pytest.raises(FloatingPointError, match="lower --lr"):
        train(_cfg(concept_images, tmp_path / "c.safetensors", lr=1e25, steps=20), pipe=tiny_pipe, progress=False)


def test_cli_train_then_generate(tmp_path, concept_images, capsys):
    from infusion.cli import main
    from infusion.core.images import read_png_params

    out = tmp_path / "c.safetensors"
    assert main(["train", "--model", "tiny", "--images", str(concept_images), "--name", "mybox",
                 "--class-phrase", "box", "--out", str(out), "--steps", "3", "--batch-size", "2"]) == 0
    assert out.is_file()
    gen = tmp_path / "gen"
    assert main(["generate", "--model", "tiny", "--concept", str(out), "--prompt", "a <mybox> on the snow",
                 "--num-images", "2", "--steps", "2", "--seed", "7", "--out", str(gen), "--show-base"]) == 0
    assert sorted(p.name for p in gen.iterdir()) == ["000-base.png", "000.png", "001-base.png", "001.png", "grid.png"]
    params = read_png_params(gen / "001.png")
    assert params["seed"] == 8 and params["prompt"] == "a <mybox> on the snow" and params["steps"] == 2
    assert main(["generate", "--model", "tiny", "--concept", str(out), "--prompt", "a <nope>", "--out", str(gen)]) == 2
    assert "unknown concept <nope>" in capsys.readouterr().err
    # DreamBooth's habit, the name without brackets: it runs (the base model's images) and says why
    assert main(["generate", "--model", "tiny", "--concept", str(out), "--prompt", "a mybox on the snow", "--steps", "1",
                 "--out", str(tmp_path / "plain")]) == 0
    assert "the prompt names no loaded concept, so the images are the base model's: write <mybox>" in capsys.readouterr().err
    for extra, said in ((["--steps", "0"], "--steps must be >= 1"), (["--out", str(out)], "is a file: give a folder")):
        argv = ["generate", "--model", "tiny", "--concept", str(out), "--prompt", "a <mybox>", "--out", str(gen)]
        assert main(argv + extra) == 2
        assert said in capsys.readouterr().err


def test_gradient_checkpointing_gives_the_same_result(concept_images, tmp_path, checkpoint_calls):
    from infusion.core.model_configs import tiny_sd_pipeline

    plain = train(_cfg(concept_images, tmp_path / "a.safetensors", steps=3), pipe=tiny_sd_pipeline(), progress=False)
    assert not checkpoint_calls
    ckpt = train(_cfg(concept_images, tmp_path / "b.safetensors", steps=3, gradient_checkpointing=True),
                 pipe=tiny_sd_pipeline(), progress=False)
    assert len(checkpoint_calls) >= 3  # the UNet's blocks really ran checkpointed, every step
    for k in plain.deltas:
        torch.testing.assert_close(plain.deltas[k], ckpt.deltas[k], rtol=1e-4, atol=1e-6)


def test_diffusers_folder_round_trip(tiny_pipe, concept_images, tmp_path):
    """A model saved with save_pretrained trains and generates by path (CLI) and loads as InfusionPipeline."""
    from infusion.cli import main
    from infusion.methods.infusion.pipeline import InfusionPipeline

    folder = tmp_path / "sd"
    tiny_pipe.save_pretrained(folder)
    out = tmp_path / "c.safetensors"
    assert main(["train", "--model", str(folder), "--images", str(concept_images), "--name", "mycat",
                 "--class-phrase", "cat", "--out", str(out), "--steps", "2", "--batch-size", "1"]) == 0
    pipe = InfusionPipeline.from_pretrained(folder)
    c = pipe.load_concept(out)
    assert c.base_model == str(folder)
    # the folder is the same model: the same run on the in-memory pipeline gives the same Deltas and images
    same = train(_cfg(concept_images, tmp_path / "mem.safetensors", steps=2, batch_size=1, model=str(folder)),
                 pipe=tiny_pipe, progress=False)
    for k in c.deltas:  # equal up to fp16 rounding of CPU kernels' order (a loaded folder is another allocation)
        torch.testing.assert_close(same.deltas[k].half().float(), c.deltas[k].float(), rtol=0, atol=1e-5)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    res = pipe("<mycat> on the moon", num_inference_steps=2, generator=g(), output_type="np")
    mem = InfusionPipeline.from_pipe(tiny_pipe)("<mycat> on the moon", concepts=[c], num_inference_steps=2, generator=g(),
                                                 output_type="np")
    assert res.images.shape == (1, 16, 16, 3)
    np.testing.assert_allclose(res.images, mem.images, rtol=0, atol=1e-5)
    assert not np.array_equal(res.images, res.base_images)
    with pytest.raises(ValueError, match="not a diffusers pipeline folder"):
        train(_cfg(concept_images, tmp_path / "x.safetensors", model=str(tmp_path)), progress=False)


def test_single_file_checkpoint(tiny_pipe, concept_images, tmp_path):
    """An original-layout single-file .safetensors (diffusers' from_single_file) trains and generates
    exactly like the diffusers folder it was made from."""
    from ldm_format import pipeline_to_ldm
    from safetensors.torch import save_file

    from infusion.cli import main
    from infusion.core.base_models import load_base_pipeline
    from infusion.methods.infusion.pipeline import InfusionPipeline

    folder, single = tmp_path / "sd", tmp_path / "sd.safetensors"
    tiny_pipe.save_pretrained(folder)
    save_file(pipeline_to_ldm(tiny_pipe), str(single))
    loaded = load_base_pipeline(str(single), pipeline_cls=InfusionPipeline, config=str(folder))
    for name in ("unet", "vae", "text_encoder"):
        ref, got = getattr(tiny_pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k].reshape(ref[k].shape)) for k in ref)
    out = tmp_path / "c.safetensors"
    assert main(["train", "--model", str(single), "--model-config", str(folder), "--images", str(concept_images),
                 "--name", "mycat", "--class-phrase", "cat", "--out", str(out), "--steps", "2", "--batch-size", "1"]) == 0
    a = loaded("<mycat> on the moon", concepts=[out], num_inference_steps=2, generator=torch.Generator().manual_seed(0),
               output_type="np")
    b = InfusionPipeline.from_pretrained(folder)("<mycat> on the moon", concepts=[out], num_inference_steps=2,
                                                 generator=torch.Generator().manual_seed(0), output_type="np")
    assert np.array_equal(a.images, b.images)
    (tmp_path / "model.ckpt").write_bytes(b"pickle")
    with pytest.raises(ValueError, match="only .safetensors single-file"):
        load_base_pipeline(str(tmp_path / "model.ckpt"))


def test_dots_in_output_names_are_not_extensions(tmp_path):
    """Runs named by a float (``cd-lambda0.001``, ``cd-lambda0.0001``) keep distinct state, step and prior paths."""
    from infusion.core.customization_files import output_parts
    from infusion.training.prior import prior_folder

    assert output_parts(tmp_path / "mycat.safetensors") == ("mycat", ".safetensors")
    assert output_parts(tmp_path / "v1.5.safetensors") == ("v1.5", ".safetensors")
    assert output_parts(tmp_path / "cd-lambda0.001") == ("cd-lambda0.001", "")
    a, b = tmp_path / "cd-lambda0.001", tmp_path / "cd-lambda0.0001"
    for f in (state_path, prior_folder, lambda p: step_path(p, 100)):
        assert f(a) != f(b)
    assert state_path(a).name == "cd-lambda0.001.state.safetensors"
    assert step_path(a, 100).name == "cd-lambda0.001-step100"
    assert step_path(tmp_path / "v1.5.safetensors", 100).name == "v1.5-step100.safetensors"
    assert prior_folder(a).name == "cd-lambda0.001.prior"


def test_bf16_mixed_precision_trains_under_autocast_and_saves_fp16(concept_images, tmp_path, caplog):
    """``--mixed-precision bf16`` on CPU: the UNet's matmuls run in bfloat16 (accelerate's autocast, frozen weights cast
    to it), the Deltas stay float32 master weights, and the concept file holds float16 (the format's dtype). On a CPU
    without bf16 instructions the run warns that fp32 is faster."""
    import logging

    from safetensors import safe_open

    from infusion.core.model_configs import tiny_sd_pipeline
    from infusion.training.trainer import _cpu_has_bf16

    pipe = tiny_sd_pipeline()
    seen = set()
    hook = pipe.unet.conv_in.register_forward_hook(lambda m, i, o: seen.add(o.dtype))
    out = tmp_path / "bf.safetensors"
    with caplog.at_level(logging.WARNING, logger="infusion.training.trainer"):
        c = train(_cfg(concept_images, out, steps=2, mixed_precision="bf16"), pipe=pipe, progress=False)
    hook.remove()
    assert ("--mixed-precision no is faster here" in caplog.text) == (not _cpu_has_bf16())
    assert torch.bfloat16 in seen
    assert all(torch.isfinite(d).all() and d.abs().sum() > 0 for d in c.deltas.values())
    with safe_open(str(out), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    plain_seen = set()
    pipe2 = tiny_sd_pipeline()
    hook = pipe2.unet.conv_in.register_forward_hook(lambda m, i, o: plain_seen.add(o.dtype))
    train(_cfg(concept_images, tmp_path / "fp.safetensors", steps=1), pipe=pipe2, progress=False)
    hook.remove()
    assert plain_seen == {torch.float32}


def test_bf16_gives_the_callers_pipe_back_however_the_run_ends(concept_images, tmp_path):
    """The frozen weights held in bfloat16 during a bf16 run get their float32 originals back, bit for bit, when the
    run is cancelled, and when a trainer stepped by hand calls ``restore_weights``."""
    from infusion.core.model_configs import tiny_sd_pipeline
    from infusion.training import Trainer
    from infusion.training.trainer import Cancelled

    pipe = tiny_sd_pipeline()
    before = _snapshot(pipe)
    with pytest.raises(Cancelled):
        train(_cfg(concept_images, tmp_path / "c.safetensors", steps=3, mixed_precision="bf16"), pipe=pipe,
              progress=False, callback=lambda r: True)
    after = _snapshot(pipe)
    assert all(after[k].dtype == torch.float32 and torch.equal(after[k], v) for k, v in before.items())
    trainer = Trainer(_cfg(concept_images, tmp_path / "d.safetensors", steps=1, mixed_precision="bf16"), pipe=pipe,
                      progress=False)
    trainer.step(0)
    assert pipe.unet.conv_in.weight.dtype == torch.bfloat16 and pipe.vae.encoder.conv_in.weight.dtype == torch.bfloat16
    trainer.restore_weights()
    after = _snapshot(pipe)
    assert all(after[k].dtype == torch.float32 and torch.equal(after[k], v) for k, v in before.items())


def test_trainer_steps_are_the_train_loop(concept_images, tmp_path):
    """``Trainer.step`` (what benchmarks/bench_peers.py times) is the loop's iteration: stepping it by hand gives the
    run ``train`` gives, bit for bit."""
    from infusion.core.model_configs import tiny_sd_pipeline
    from infusion.training import Trainer

    ran = train(_cfg(concept_images, tmp_path / "a.safetensors", steps=3), pipe=tiny_sd_pipeline(), progress=False)
    trainer = Trainer(_cfg(concept_images, tmp_path / "b.safetensors", steps=3), pipe=tiny_sd_pipeline(), progress=False)
    losses = [trainer.step(i) for i in range(3)]
    assert all(loss.ndim == 0 and torch.isfinite(loss) for loss in losses)
    stepped = trainer.method.export(tmp_path / "b.safetensors", "x")
    for k in ran.deltas:
        assert torch.equal(ran.deltas[k], stepped.deltas[k]), k


def test_optimizer_option(concept_images, tmp_path, monkeypatch):
    """--optimizer adamw8bit: bitsandbytes' AdamW8bit over the trainable tensors only; a clear error without it."""
    import sys
    import types

    from infusion.core.model_configs import tiny_sd_pipeline
    from infusion.training import Trainer

    with pytest.raises(ValueError, match="--optimizer"):
        _cfg(concept_images, "x", optimizer="sgd")
    cfg = _cfg(concept_images, tmp_path / "c.safetensors", steps=1, optimizer="adamw8bit")
    pipe = tiny_sd_pipeline()  # diffusers imports bitsandbytes itself where installed: build before hiding it
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if not installed
    with pytest.raises(ImportError, match="pip install bitsandbytes"):
        Trainer(cfg, pipe=pipe, progress=False)

    class FakeAdamW8bit(torch.optim.AdamW):  # stands in for bitsandbytes (not installable beside our CPU torch)
        pass

    monkeypatch.setitem(sys.modules, "bitsandbytes", types.SimpleNamespace(optim=types.SimpleNamespace(
        AdamW8bit=FakeAdamW8bit)))
    trainer = Trainer(cfg, pipe=pipe, progress=False)
    opt = trainer.optimizer.optimizer  # accelerate's wrapper around ours
    assert isinstance(opt, FakeAdamW8bit)
    params = [p for group in opt.param_groups for p in group["params"]]
    assert {id(p) for p in params} == {id(p) for p in trainer.method.trainable_parameters()}  # no frozen weight
    trainer.step(0)


def test_adamw8bit_trains_and_resumes_exactly(concept_images, tmp_path):
    """With bitsandbytes installed (optional): its 8-bit AdamW trains, and the resume state keeps its state, plain
    numbers included (its step count), so a resumed run equals an uninterrupted one."""
    pytest.importorskip("bitsandbytes")
    from safetensors.torch import load_file

    from infusion.core.model_configs import tiny_sd_pipeline

    cfg = lambda out, steps, **kw: _cfg(concept_images, out, steps=steps, method="lora",  # noqa: E731
                                        optimizer="adamw8bit", **kw)
    train(cfg(tmp_path / "a.safetensors", 4), pipe=tiny_sd_pipeline(), progress=False)
    train(cfg(tmp_path / "b.safetensors", 2), pipe=tiny_sd_pipeline(), progress=False)
    train(cfg(tmp_path / "b.safetensors", 4, resume="auto"), pipe=tiny_sd_pipeline(), progress=False)
    a, b = load_file(str(tmp_path / "a.safetensors")), load_file(str(tmp_path / "b.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_model_loading_mistakes_are_one_clear_line(tiny_pipe, tmp_path):
    """What a user meets offline with a real checkpoint, each said in their terms (never a traceback, never a
    diffusers option they cannot pass): a path that is not there, a broken .safetensors, a partial download, an
    uncached hub id, a single file without --model-config, a --model-config folder that is not one."""
    import shutil

    from ldm_format import pipeline_to_ldm
    from safetensors.torch import save_file

    from infusion.core.base_models import load_base_pipeline

    with pytest.raises(ValueError, match=r"^--model ./nope: no such file or folder$"):
        load_base_pipeline("./nope")
    (tmp_path / "page.safetensors").write_text("<html>404</html>")
    with pytest.raises(ValueError, match="is not a readable .safetensors file .an interrupted download, or an HTML"):
        load_base_pipeline(str(tmp_path / "page.safetensors"))
    folder = tmp_path / "sd"
    tiny_pipe.save_pretrained(folder)
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(folder / "model_index.json", partial)
    with pytest.raises(ValueError, match=r"model folder .*partial is incomplete or unreadable .*download it again"):
        load_base_pipeline(str(partial))
    with pytest.raises(ValueError, match=r"'nobody/no-such-model': no local file or folder of that name, not in the "
                                         r"local Hugging Face cache, and the Hub cannot be reached: download it once"):
        load_base_pipeline("nobody/no-such-model")  # the tests run with HF_HUB_OFFLINE=1
    single = tmp_path / "sd.safetensors"
    save_file(pipeline_to_ldm(tiny_pipe), str(single))
    with pytest.raises(ValueError, match="is a single-file checkpoint: .* pass --model-config with a local diffusers"):
        load_base_pipeline(str(single))
    with pytest.raises(ValueError, match=r"--model-config .*partial-x: not a diffusers folder \(no model_index.json\)"):
        (tmp_path / "partial-x").mkdir()
        load_base_pipeline(str(single), config=str(tmp_path / "partial-x"))


def test_a_run_says_what_it_trains_on_and_warns_on_too_few_images(tiny_pipe, tmp_path, caplog):
    from conftest import write_square_images

    two = write_square_images(tmp_path / "two", n=2)
    with caplog.at_level(logging.INFO, logger="infusion.training.trainer"):
        train(_cfg(two, tmp_path / "c.safetensors", steps=1, batch_size=1), pipe=tiny_pipe, progress=False)
    assert "infusion <mycat>: 2 image(s) at 16 px, 1 steps, batch 1, on cpu" in caplog.text
    assert "only 2 image(s) of <mycat>: 3-6 photos" in caplog.text


def test_an_offline_failure_is_told_from_another_by_type_and_through_the_chain(monkeypatch):
    import httpx
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    from infusion.core.base_models import _is_offline_error

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert _is_offline_error(LocalEntryNotFoundError("not in the cache"))
    assert _is_offline_error(httpx.ConnectError("[Errno -3] Temporary failure in name resolution"))
    try:  # wrapped, as diffusers re-raises it
        try:
            raise ConnectionRefusedError("refused")
        except ConnectionRefusedError as inner:
            raise OSError("Cannot load model x") from inner
    except OSError as wrapped:
        assert _is_offline_error(wrapped)
    assert not _is_offline_error(OSError("x/y does not appear to have a file named model_index.json"))
    assert not _is_offline_error(ValueError("a connector of the wrong shape"))  # a word alone is not enough
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert _is_offline_error(ValueError("anything"))
