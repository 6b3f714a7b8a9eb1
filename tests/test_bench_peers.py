"""benchmarks/bench_peers.py's reproduction of diffusers' training scripts, on the tiny model: each side steps,
the reference keeps its scripts' invariants, the benchmark writes its JSON (a smoke test; the figures are the
benchmark's, never a test's)."""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from bench_peers import make_images

    return make_images(tmp_path_factory.mktemp("peers") / "images", 64, n=2)


def test_reference_textual_inversion_trains_only_its_token(images):
    from diffusers_reference import Reference

    from infusion.core.model_configs import tiny_sd_pipeline

    ref = Reference("ti", tiny_sd_pipeline(), images, batch=1, resolution=64)
    emb = ref.accelerator.unwrap_model(ref.text_encoder).get_input_embeddings().weight
    before = emb.detach().clone()
    for _ in range(2):
        loss = ref.core(ref.prepare(ref.next_batch()))
        assert torch.isfinite(loss)
    changed = (emb.detach() != before).any(dim=1).nonzero().flatten().tolist()
    assert changed == ref.placeholder_ids  # textual_inversion.py:911-918 restores every other row


def test_bench_peers_quick_writes_ratios(images, tmp_path):
    from bench_peers import main

    out = tmp_path / "peers.json"
    assert main(["--quick", "--methods", "lora,custom-diffusion", "--parts", "training", "--repeats", "1",
                 "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res["training"]) == {"lora", "custom-diffusion"}
    for r in res["training"].values():
        assert r["iter_ratio"] > 0 and r["core_ratio"] > 0
    assert res["versions"]["diffusers"] and res["deviations"]
