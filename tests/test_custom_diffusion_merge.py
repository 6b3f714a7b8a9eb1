"""Custom Diffusion's constrained merge (its paper's Eq. 5-6): the closed form meets its constraints exactly and
keeps W0 when there is nothing to change; two tiny trained folders merge into one folder that ``load_customized``
loads with both modifier tokens; bad inputs are clear errors."""

import json

import pytest
import torch
from conftest import write_square_images

from infusion.customized import load_customized
from infusion.methods.custom_diffusion.loader import EMBEDS, WEIGHTS
from infusion.methods.custom_diffusion.merge import constrained_merge, merge_folders
from infusion.training import TrainConfig, train

SMALL_PRIOR = {"num_class_images": 2, "prior_steps": 2}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------- the closed form


def _problem(seed=0, out=24, h=16, r=200, t=6):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(out, h, generator=g), torch.randn(r, h, generator=g), torch.randn(t, h, generator=g),
            torch.randn(t, out, generator=g))


def test_merged_weight_meets_the_constraints_exactly():
    w0, c_reg, c_tgt, v_tgt = _problem()
    w = constrained_merge(w0, c_reg, c_tgt, v_tgt)
    assert w.shape == w0.shape and w.dtype == w0.dtype
    torch.testing.assert_close(w @ c_tgt.T, v_tgt.T, rtol=1e-4, atol=1e-4)


def test_targets_that_are_w0s_own_outputs_give_w0():
    w0, c_reg, c_tgt, _ = _problem(1)
    torch.testing.assert_close(constrained_merge(w0, c_reg, c_tgt, (w0 @ c_tgt.T).T), w0, rtol=1e-5, atol=1e-5)


def test_the_merge_is_the_least_change_on_the_regularisation_states():
    """Any other W meeting the constraints (W + N with N C_tgt^T = 0) moves the regularisation outputs more."""
    w0, c_reg, c_tgt, v_tgt = _problem(2)
    w = constrained_merge(w0, c_reg, c_tgt, v_tgt)
    cost = lambda m: float(((m - w0) @ c_reg.T).norm())
    proj = torch.eye(c_tgt.shape[1]) - c_tgt.T @ torch.linalg.pinv(c_tgt.T)  # onto the null space of C_tgt
    for k in range(5):
        n = torch.randn(w0.shape, generator=torch.Generator().manual_seed(k)) @ proj
        assert float((n @ c_tgt.T).abs().max()) < 1e-4
        assert cost(w + 0.1 * n) > cost(w)


def test_too_few_regularisation_states_is_a_clear_error():
    w0, _, c_tgt, v_tgt = _problem(3)
    with pytest.raises(ValueError, match="regularisation captions"):
        constrained_merge(w0, torch.randn(4, w0.shape[1]), c_tgt, v_tgt)


# ----------------------------------------------------------------------------- two trained folders


def _train(root, name, cls, seed=0, model="tiny"):
    images = write_square_images(root / f"images-{name}", n=2, size=32, stripes=seed % 2 == 0)
    out = root / name
    train(TrainConfig(model=model, images=str(images), name=name, class_phrase=cls, out=str(out), steps=2,
                      batch_size=1, seed=seed, lr=5e-2, method="custom-diffusion", method_args=dict(SMALL_PRIOR)),
          progress=False)
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("cdmerge")
    torch.set_num_threads(1)
    return root, _train(root, "cat", "cat", 0), _train(root, "mug", "mug", 1)


def test_two_folders_merge_and_generate_a_prompt_naming_both(folders):
    from safetensors.torch import load_file

    from infusion.methods.custom_diffusion.merge import target_states

    root, a, b = folders
    out = root / "merged"
    meta = merge_folders("tiny", [a, b], out)
    assert [c["name"] for c in json.loads(meta["concepts"])] == ["cat", "mug"]
    assert json.loads(meta["merge"])["max_constraint_error"] < 1e-3
    assert sorted(load_file(str(out / EMBEDS))) == ["<cat>", "<mug>"]

    # each concept's words go through the merged K/V as through its own folder's (the constraint, end to end)
    model = load_customized("tiny", [out])
    assert model.names == ["cat", "mug"] and model.method == "custom-diffusion"
    assert model.storage_bytes == sum(p.stat().st_size for p in out.iterdir())
    merged = load_file(str(out / WEIGHTS))
    for folder, name, cls in ((a, "cat", "cat"), (b, "mug", "mug")):
        own = load_file(str(folder / WEIGHTS))
        rows = target_states(model.pipe, name, cls)
        key = next(k for k in merged if k.endswith("to_v_custom_diffusion.weight"))
        torch.testing.assert_close(rows @ merged[key].T, rows @ own[key].T, rtol=1e-3, atol=1e-3)
        other = next(k for k in merged if merged[k].numel() == 0)  # untouched processors stay empty
        assert own[other].numel() == 0

    gen = lambda m, p: m([p], generator=torch.Generator().manual_seed(0), num_inference_steps=2,
                         output_type="np", return_base=True)
    res = gen(model, "a photo of <cat> and <mug> on the grass")
    assert res.images.shape == res.base_images.shape and torch.isfinite(torch.as_tensor(res.images)).all()
    assert abs(res.images - res.base_images).max() > 0  # the merged weights and tokens change the picture


def test_merge_command(folders, capsys):
    from infusion.cli import main

    root, a, b = folders
    caps = root / "captions.txt"
    caps.write_text("\n".join(f"a photo of a {w} on the {s}" for w in ("dog", "cup", "tree", "car", "ball")
                              for s in ("grass", "snow", "road", "table")) + "\n")
    assert main(["merge", str(a), str(b), "--model", "tiny", "--out", str(root / "cli"), "--captions", str(caps)]) == 0
    assert "<cat> and <mug>" in capsys.readouterr().out
    assert json.loads((root / "cli" / "infusion.json").read_text())["merge"].count('"regularisation_captions": 20')


def test_two_unmerged_folders_point_to_the_merge(folders):
    _, a, b = folders
    with pytest.raises(ValueError, match="infusion merge"):
        load_customized("tiny", [a, b])


def test_bad_inputs_are_clear_errors(folders, tmp_path):
    import shutil

    root, a, b = folders
    with pytest.raises(ValueError, match="same modifier token <cat>"):
        merge_folders("tiny", [a, a], tmp_path / "x")
    with pytest.raises(ValueError, match="at least two"):
        merge_folders("tiny", [a], tmp_path / "x")
    other = tmp_path / "other"  # a folder whose metadata says another base model
    shutil.copytree(b, other)
    meta = json.loads((other / "infusion.json").read_text())
    meta.update(base_fingerprint="0123456789abcdef", base_model="some/other-model")
    (other / "infusion.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="different base models"):
        merge_folders("tiny", [a, other], tmp_path / "x")
    with pytest.raises(ValueError, match="another base model"):  # both on another model than the one named
        merge_folders("tiny-sd2", [a, b], tmp_path / "x")
    merged = root / "merged-again"
    merge_folders("tiny", [a, b], merged)
    with pytest.raises(ValueError, match="already a merge"):
        merge_folders("tiny", [merged, a], tmp_path / "x")
    ti = tmp_path / "ti"
    ti.mkdir()
    (ti / "infusion.json").write_text(json.dumps({"method": "dreambooth", "name": "z", "class_phrase": "z"}))
    with pytest.raises(ValueError, match="only custom-diffusion folders merge"):
        merge_folders("tiny", [a, ti], tmp_path / "x")
    assert not (tmp_path / "x").exists()  # nothing half-written
