"""``--method-arg preset=recommended``: the Infusion form to use on the built-in world, reachable without knowing its
option names; ``--method infusion`` alone stays the paper's form and names the recommended one in one line."""

import logging

import pytest

from infusion.cli import main
from infusion.customized import load_customized
from infusion.methods import get_method
from infusion.methods.infusion.concept import Concept
from infusion.methods.infusion.training import PRESETS, RECOMMENDED_HINT, expand_preset
from infusion.training import TrainConfig


def test_a_preset_fills_in_settings_and_explicit_keys_win():
    assert expand_preset({}) == {} == PRESETS["paper"]
    assert expand_preset({"preset": "recommended"}) == {"maps": "own", "train_t_max": 0.5}
    assert expand_preset({"preset": "recommended", "train_t_max": 0.7}) == {"maps": "own", "train_t_max": 0.7}
    with pytest.raises(ValueError, match="preset='best'.*paper, recommended"):
        expand_preset({"preset": "best"})


def test_the_recommended_preset_trains_and_loads_as_its_settings(concept_images, tmp_path, caplog):
    out = tmp_path / "sq.safetensors"
    with caplog.at_level(logging.INFO):
        rc = main(["train", "--model", "tiny", "--images", str(concept_images), "--name", "sq", "--class-phrase",
                   "square", "--out", str(out), "--steps", "2", "--batch-size", "2", "--resolution", "32",
                   "--method-arg", "preset=recommended"])
    assert rc == 0
    assert RECOMMENDED_HINT not in caplog.text  # the user asked for a form: no hint
    c = Concept.load(out)
    assert c.maps == "own" and c.t_max == 1.0  # own maps, added at every step when generating
    cfg = TrainConfig(model="tiny", images=str(concept_images), name="sq", class_phrase="square",
                      out=str(tmp_path / "x.safetensors"), method_args={"preset": "recommended"})
    from infusion.core.model_configs import tiny_sd_pipeline

    m = get_method("infusion")(tiny_sd_pipeline(), cfg)
    assert m.max_train_timestep(1000) == 500 and m.maps == "own"  # trained at t < T/2 only
    gen = load_customized("tiny", [out])
    images = gen(["a photo of <sq>"], num_inference_steps=1, output_type="np", height=32, width=32).images
    assert images.shape == (1, 32, 32, 3)


def test_the_paper_form_names_the_recommended_one(concept_images, tmp_path, caplog):
    from infusion.core.model_configs import tiny_sd_pipeline

    cfg = TrainConfig(model="tiny", images=str(concept_images), name="sq", class_phrase="square",
                      out=str(tmp_path / "x.safetensors"))
    with caplog.at_level(logging.INFO):
        m = get_method("infusion")(tiny_sd_pipeline(), cfg)
    assert RECOMMENDED_HINT in caplog.text and "preset=recommended" in RECOMMENDED_HINT
    assert m.maps == "base" and m.max_train_timestep(1000) == 1000  # the paper's form
