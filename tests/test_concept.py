
import pytest
import torch
from safetensors.torch import save_file

from conftest import random_concept
from infusion.methods.infusion.concept import Concept, base_fingerprint


def test_round_trip_and_metadata(tiny_pipe, tmp_path):
    c = random_concept(tiny_pipe, "mybear", "teddy bear")
    c.training = {"lr": 0.01, "steps": 3}
    path = c.save(tmp_path / "sub" / "mybear.safetensors")
    assert [p.name for p in path.parent.iterdir()] == ["mybear.safetensors"]  # no temp file left
    back = Concept.load(path)
    assert (back.name, back.class_phrase, back.method, back.training) == ("mybear", "teddy bear", "infusion", c.training)
    assert back.n_tokens == 2 and set(back.deltas) == set(c.deltas)
    for k in c.deltas:  # stored in fp16
        assert back.deltas[k].dtype == torch.float16
        assert torch.equal(back.deltas[k], c.deltas[k].half())
    # 2 bytes per value plus a small header
    assert path.stat().st_size < 2 * c.num_parameters() + 4096


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        Concept.load(tmp_path / "nope.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="not a safetensors file"):
        Concept.load(tmp_path / "junk.safetensors")
    save_file({"x": torch.zeros(2)}, str(tmp_path / "lora.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="not an Infusion concept file"):
        Concept.load(tmp_path / "lora.safetensors")


def test_validation(tiny_pipe, tmp_path):
    with pytest.raises(ValueError, match="not usable as <name>"):
        Concept("my cat", "cat", {"a": torch.zeros(1, 4)})
    with pytest.raises(ValueError, match="class phrase"):
        Concept("c", " ", {"a": torch.zeros(1, 4)})
    with pytest.raises(ValueError, match="one n_tokens"):
        Concept("c", "cat", {"a": torch.zeros(1, 4), "b": torch.zeros(2, 4)})
    c = random_concept(tiny_pipe)
    next(iter(c.deltas.values()))[0, 0] = float("nan")
    with pytest.raises(ValueError, match="not finite"):
        c.save(tmp_path / "nan.safetensors")
    assert not (tmp_path / "nan.safetensors").exists()


def test_fingerprint_sees_a_changed_weight(tiny_pipe):
    fp = base_fingerprint(tiny_pipe.unet, tiny_pipe.text_encoder)
    assert fp == base_fingerprint(tiny_pipe.unet, tiny_pipe.text_encoder)
    with torch.no_grad():
        next(tiny_pipe.unet.parameters()).view(-1)[0] += 1.0
    assert fp != base_fingerprint(tiny_pipe.unet, tiny_pipe.text_encoder)
