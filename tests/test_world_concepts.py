"""Built-in concepts: narrow training context, held-out prompts that move the concept elsewhere."""

import numpy as np
import pytest

from infusion.core.placeholders import parse_prompt
from infusion.core.model_configs import load_tokenizer
from infusion.world import scenes
from infusion.world.concepts import CONCEPTS, concept_images, concept_scene, eval_prompts, write_concept_images
from infusion.world.fidelity import parse_caption


def test_at_least_four_concepts_with_unnameable_patterns():
    assert len(CONCEPTS) >= 4
    assert all(c.obj.pattern != "plain" and c.obj.cls in scenes.CLASSES for c in CONCEPTS.values())


@pytest.mark.parametrize("name", list(CONCEPTS))
def test_training_images_share_one_context_and_are_deterministic(name, tmp_path):
    shots = [concept_scene(name, i) for i in range(5)]
    assert len({(s.background, s.objects[0].position, s.objects[0].size) for s in shots}) == 1
    paths = write_concept_images(name, tmp_path)
    assert len(paths) == 5 and all(p.exists() for p in paths)
    a, b = concept_images(name), concept_images(name)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    assert not np.array_equal(np.asarray(a[0]), np.asarray(a[1]))  # jitter differs between shots


@pytest.mark.parametrize("name", list(CONCEPTS))
def test_eval_prompts_leave_the_training_context(name):
    c = CONCEPTS[name]
    prompts = eval_prompts(name)
    assert len(prompts) >= 20 and len(set(prompts)) == len(prompts)
    tok = load_tokenizer()
    moved = {"background": 0, "position": 0, "size": 0, "other": 0}
    for p in prompts:
        parsed = parse_prompt(p, {name: c.class_phrase}, tok)
        assert parsed.concept_names == [name]
        named = parse_caption(parsed.text)
        concept_obj = named.objects[0]
        assert concept_obj["cls"] == c.class_phrase and "color" not in concept_obj
        moved["background"] += named.background not in (None, c.background)
        moved["position"] += concept_obj.get("position", c.obj.position) != c.obj.position
        moved["size"] += concept_obj.get("size", c.obj.size) != c.obj.size
        moved["other"] += len(named.objects) > 1
    assert all(v >= 3 for v in moved.values()), moved


def test_unknown_concept_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown world concept 'nope'"):
        eval_prompts("nope")
