"""Probes and the two world scores: judging logic on hand-made readings, trained probes on renders."""

import pytest
import torch

from infusion.world import scenes
from infusion.world.fidelity import NamedAttributes, SceneReading, judge, parse_caption, text_fidelity
from infusion.world.probes import CLASS_OR_NONE, SLOTS


def _reading(bg, objects):
    """A SceneReading with ``objects`` = {slot name: (cls, color, size)}."""
    cls, col, size = ["none"] * 5, ["red"] * 5, ["small"] * 5
    prob = torch.zeros(5, len(CLASS_OR_NONE))
    prob[:, CLASS_OR_NONE.index("none")] = 1
    for slot, (c, k, s) in objects.items():
        i = SLOTS.index(slot)
        cls[i], col[i], size[i] = c, k, s
        prob[i] = 0
        prob[i, CLASS_OR_NONE.index(c)] = 1
    return SceneReading(bg, cls, col, size, prob)


def test_judge_counts_exactly_the_named_attributes():
    r = _reading("snow", {"top left": ("ball", "red", "small")})
    named = parse_caption("a small red ball in the top left corner, on the snow")
    assert named.count() == 6  # background, class, colour, size, position, and how many balls
    assert text_fidelity(r, named) == 1.0
    # background and colour miss; class, size, position and count hold
    assert text_fidelity(r, parse_caption("a small blue ball in the top left corner, on the grass")) == pytest.approx(4 / 6)
    # wrong place: the class and its colour are shown (read where the ball is), the position is not
    res = judge(r, parse_caption("a red ball at the bottom right"))
    assert res["cls"] == [True] and res["position"] == [False] and res["color"] == [True]
    res = judge(r, parse_caption("a large blue ball at the bottom right"))
    assert res["color"] == [False] and res["size"] == [False]
    # no object of the class anywhere: neither the class nor its attributes show
    res = judge(r, parse_caption("a red box at the top left"))
    assert res["cls"] == [False] and res["position"] == [False] and res["color"] == [False]
    # no position named: the object is found where it is
    assert text_fidelity(r, parse_caption("a photo of a red ball")) == 1.0
    assert text_fidelity(r, NamedAttributes()) == 1.0


def test_one_object_asked_and_two_drawn_is_a_miss():
    two = _reading("sand", {"top left": ("ball", "red", "small"), "bottom right": ("ball", "red", "small")})
    res = judge(two, parse_caption("a photo of a red ball"))
    assert res["cls"] == [True] and res["color"] == [True] and res["count"] == [False]
    assert text_fidelity(two, parse_caption("a photo of a red ball")) == pytest.approx(2 / 3)
    # two asked, two drawn: the count holds; a second class is counted on its own
    assert judge(two, parse_caption("a red ball at the top left and a red ball at the bottom right"))["count"] == [True]
    assert judge(two, parse_caption("a red ball and a green tree"))["count"] == [False, False]  # 2 balls; no tree


def test_two_objects_are_judged_separately():
    r = _reading("road", {"top left": ("star", "yellow", "large"), "bottom right": ("mug", "blue", "small")})
    named = parse_caption("a yellow star at the top left and a green mug at the bottom right, on the road")
    res = judge(r, named)
    assert res["color"] == [True, False] and res["position"] == [True, True] and res["background"] == [True]


@pytest.fixture(scope="module")
def probes():
    from infusion.world.probes import load_probes

    return load_probes()


def test_probes_read_held_out_renders(probes):
    from infusion.world.quality import probe_accuracy

    acc = probe_accuracy(*probes, n=200)
    for k in ("background", "cls", "color", "size", "position"):
        assert acc[k] >= 0.9, (k, acc)


def test_concept_fidelity_prefers_the_concept_over_other_looks(probes):
    from infusion.world.scorer import WorldProbeScorer
    from infusion.world.concepts import concept_images, concept_scene

    scorer = WorldProbeScorer(*probes)
    name = "sunball"
    refs = concept_images(name)  # the concept in its narrow training context
    moved = [scenes.render(concept_scene(name, 10 + i, background="snow", position="top left")) for i in range(4)]
    plain = [scenes.render(scenes.Scene("snow", (scenes.WorldObject("ball", c, "large", "top left"),), i)) for i, c in enumerate(["red", "yellow", "blue", "white"])]
    prompts = ["a ball in the top left corner, on the snow"] * 4
    s_moved = scorer.score(moved, prompts, refs, class_phrase="ball")
    s_plain = scorer.score(plain, prompts, refs, class_phrase="ball")
    assert s_moved["concept_fidelity"].min() > s_plain["concept_fidelity"].max()
    assert (s_moved["text_fidelity"] == 1.0).all()
    with pytest.raises(ValueError, match="one text per image"):
        scorer.score(moved[:2], prompts, refs, class_phrase="ball")


def test_missing_probe_file_is_a_clear_error(tmp_path):
    from infusion.world.probes import load_probes

    with pytest.raises(FileNotFoundError, match="infusion world train probes"):
        load_probes(tmp_path / "none.safetensors")
