"""The world-probe scorer (untrained probes: the wiring, not the probes' accuracy)."""

import numpy as np
import pytest
import torch

from infusion.evaluation.prompts import prompts_for
from infusion.evaluation.world_scorer import WorldProbeScorer
from infusion.world.concepts import concept_images
from infusion.world.fidelity import parse_caption, read_scenes, text_fidelity
from infusion.world.probes import ObjectProbe, SceneProbe


@pytest.fixture(scope="module")
def scorer():
    torch.manual_seed(0)
    return WorldProbeScorer(SceneProbe(), ObjectProbe())


def test_world_scorer_matches_fidelity_functions(scorer):
    ims = concept_images("halfmug", 3)
    texts = ["a photo of a red mug on the snow", "a large green mug", "a photo of a"]
    got = scorer.score(ims, texts, ims[:1], class_phrase="mug")
    from infusion.evaluation.world_scorer import _to_tensor

    readings = read_scenes(scorer.scene_probe, _to_tensor(ims, 32))
    want = [text_fidelity(r, parse_caption(t)) for r, t in zip(readings, texts)]
    np.testing.assert_allclose(got["text_fidelity"], want)
    assert got["text_fidelity"][2] == 1.0  # a prompt that names nothing is fully followed
    # An image that is its own only reference: the same object crop, cosine 1.
    assert got["concept_fidelity"][0] == pytest.approx(1.0, abs=1e-6)
    assert np.all(got["concept_fidelity"] <= 1.0 + 1e-6)  # float32 cosines


def test_world_scorer_undefined_concept_fidelity(scorer):
    ims = concept_images("sunball", 2)
    out = scorer.score(ims, ["a ball", "a ball"], ims, class_phrase="teddy bear")
    assert np.isnan(out["concept_fidelity"]).all()
    with pytest.raises(ValueError, match="one text per image"):
        scorer.score(ims, ["a ball"], ims, class_phrase="ball")


def test_world_prompts():
    ps = prompts_for("halfmug", "mug", "world")
    assert len(ps) == 22 and all("<halfmug>" in p for p in ps)
    with pytest.raises(ValueError, match="built-in world concepts"):
        prompts_for("mycat", "cat", "world")
