"""The world-probe scorer (untrained probes: the wiring, not the probes' accuracy)."""

import numpy as np
import pytest
import torch

from infusion.evaluation.prompts import prompts_for
from infusion.world.scorer import WorldProbeScorer
from infusion.world.concepts import concept_images
from infusion.world.probes import ObjectProbe, SceneProbe


@pytest.fixture(scope="module")
def scorer():
    torch.manual_seed(0)
    return WorldProbeScorer(SceneProbe(), ObjectProbe())


def test_world_scorer_reads_known_scenes_as_derived_by_hand():
    """The shipped probes on a rendered <halfmug> image (a large green mug, bottom left, on snow): text
    fidelity is the share of named attributes that hold, counted by hand for each caption."""
    shipped = WorldProbeScorer()
    im = concept_images("halfmug", 1)[0]
    texts = ["a photo of a red mug on the snow",  # background yes, class yes, colour no, one mug yes: 3/4
             "a large green mug",  # size, colour, class, count: 4/4
             "a large green mug at the top right on the sand",  # background no, position no: 4/6
             "a photo of a"]  # names nothing: 1
    got = shipped.score([im] * 4, texts, [im], class_phrase="mug")
    np.testing.assert_allclose(got["text_fidelity"], [3 / 4, 1.0, 4 / 6, 1.0])
    # an image that is its own only reference: the same object crop, cosine 1; and its own look
    assert got["concept_fidelity"][0] == pytest.approx(1.0, abs=1e-6)
    assert got["look"].tolist() == [1.0] * 4


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
