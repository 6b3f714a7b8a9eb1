"""Custom Diffusion's multi-concept composition: the closed-form constrained merge of separately trained folders
(Kumari et al. 2023, Sec. 3.2, Eq. 5-6).

For each cross-attention projection (every ``attn2.to_k`` and ``attn2.to_v``) with base weight W0 (out x H):

    W = argmin_W || W C_reg^T - W0 C_reg^T ||_F    s.t.   W C_tgt^T = V_tgt                         (Eq. 5)
      = W0 + (V_tgt^T - W0 C_tgt^T) (D C_tgt^T)^-1 D,     D = C_tgt (C_reg^T C_reg)^-1             (Eq. 6)

C_reg (R x H): the text encoder's output states of every token (BOS left out, EOS kept) of a few hundred
regularisation captions; C_tgt (T x H): the states of each concept's target words, the modifier token, the class
phrase and the EOS after them, in two contexts (the bare phrase and "a photo of a <phrase>"); V_tgt: what each
concept's own fine-tuned W gives on its own rows. So the merged layer maps each concept's words exactly as that
concept's model does and stays as close to the base model as it can on everything else.

Why this form and not joint training (a list of concepts in one run): the merge composes two folders a user
already has, in seconds, without training again (the role Infusion's composition of two files plays), and it is
the form its authors present as Custom Diffusion's multi-concept "optimization-based" method; joint training
would need a second trainer mode in the one trainer for one baseline. The paper reports joint training a bit
ahead on image alignment for some pairs; the merge is the fairer mirror of Infusion's "two files composed".

Written after the authors' code, not copied: adobe-research/custom-diffusion, ``src/diffusers_composenW.py``
(commit 74d1fa9): ``gdupdateWexact`` (about lines 16-41: the closed form through an LU solve of C_reg^T C_reg),
the first 200 regularisation captions (about lines 101-103), the target prompts ``"<new1> cat"`` and
``"photo of a <new1> cat"`` with the prefix's states dropped (about lines 55-71 and 108-120), duplicate target
rows removed (about lines 124-133), one solve per to_k / to_v (about lines 136-150). Differences: float64 solves,
the world's captions as the regularisation set on the world (``ModelProfile.caption_corpus``), a check that the
constraints hold after the solve.

Output: a normal Custom Diffusion folder (``pytorch_custom_diffusion_weights.safetensors`` with the merged K/V,
``learned_embeds.safetensors`` with every modifier token, ``infusion.json`` with ``concepts``) that
``load_customized(model, [folder])`` loads as several concepts, prompt ``"<a> and <b> ..."``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from infusion import __version__
from infusion.core.customization_files import (
    base_fingerprint,
    read_metadata,
    write_folder_metadata,
)
from infusion.core.model_families import fingerprint_modules
from infusion.core.safetensors_io import read_safetensors, save_safetensors_atomic
from infusion.methods.custom_diffusion.loader import (
    CONCEPTS_KEY,
    EMBEDS,
    WEIGHTS,
    merged_concepts,
)

log = logging.getLogger(__name__)

METHOD = "custom-diffusion"
N_REG_CAPTIONS = 200  # the authors' script reads the first 200 regularisation captions
TARGET_PREFIX = "a photo of a"
# C_reg^T C_reg + RIDGE * mean eigenvalue * I: negligible where the captions span every direction (the authors'
# LU solve assumes they do); where one is missing (the tiny and world text encoders' final LayerNorm has no bias to
# speak of, so their states lie on a hyperplane) it picks the W that also changes least off the captions' span.
RIDGE = 1e-8  # the authors' second target context, "photo of a <new1> cat"


def constrained_merge(w0: torch.Tensor, c_reg: torch.Tensor, c_tgt: torch.Tensor, v_tgt: torch.Tensor) -> torch.Tensor:
    """Eq. 6: W0 (out, H), C_reg (R, H), C_tgt (T, H), V_tgt (T, out) -> W (out, H) with W C_tgt^T = V_tgt^T,
    closest to W0 on C_reg. Solved in float64; ``ValueError`` when C_reg^T C_reg or D C_tgt^T is singular."""
    w0_, reg, tgt, val = (x.detach().to(torch.float64) for x in (w0, c_reg, c_tgt, v_tgt))
    gram = reg.T @ reg  # (H, H)
    h = gram.shape[0]
    rank = int(torch.linalg.matrix_rank(gram))
    if rank < h - 1:  # one direction may be missing: a final LayerNorm without bias keeps states on a hyperplane
        raise ValueError(f"the regularisation captions' text states span {rank} of {h} dimensions: give more (or "
                         "more varied) captions")
    gram = gram + RIDGE * gram.trace() / h * torch.eye(h, dtype=gram.dtype)  # a unique W when a direction is missing
    d = torch.linalg.solve(gram, tgt.T).T  # (T, H) = C_tgt (C_reg^T C_reg)^-1
    e2 = d @ tgt.T  # (T, T)
    if torch.linalg.matrix_rank(e2) < e2.shape[0]:
        raise ValueError("the concepts' target words have linearly dependent text states: the constraints cannot all hold")
    e1 = val.T - w0_ @ tgt.T  # (out, T)
    w = w0_ + torch.linalg.solve(e2.T, e1.T).T @ d  # e1 e2^-1 d
    return w.to(w0.dtype)


@torch.no_grad()
def token_states(pipe, text: str, skip: int = 1) -> torch.Tensor:
    """The text encoder's output states of ``text`` (no padding: up to and with its EOS), rows from ``skip`` on
    (1: all but BOS) -> (n, H)."""
    ids = pipe.tokenizer(text, truncation=True, max_length=pipe.tokenizer.model_max_length).input_ids
    states = pipe.text_encoder(torch.tensor([ids], device=pipe.text_encoder.device))[0][0]
    return states[skip:].float().cpu()


def target_states(pipe, name: str, class_phrase: str) -> torch.Tensor:
    """C_tgt rows of one concept: its phrase ``<name> <class>`` and the EOS after it, bare and after "a photo of a"."""
    phrase = f"<{name}> {class_phrase}"
    skip = len(pipe.tokenizer(TARGET_PREFIX).input_ids) - 1  # BOS + the prefix's words (its EOS is not in the prompt)
    return torch.cat([token_states(pipe, phrase), token_states(pipe, f"{TARGET_PREFIX} {phrase}", skip)])


def regularisation_captions(model, n: int = N_REG_CAPTIONS) -> list[str]:
    """The model's own caption corpus (the world's captions), else captions of the world's grammar (generic English
    scene captions; pass ``captions`` to ``merge_folders`` for a better set on a real model, as the authors' 200)."""
    from infusion.core.model_profiles import model_profile

    corpus = model_profile(model).caption_corpus(n) if isinstance(model, (str, os.PathLike)) else None
    if corpus:
        return corpus
    from infusion.world import scenes

    log.info("merge: no caption corpus known for this model; regularising with %d world-style scene captions", n)
    return [scenes.caption_scene(scenes.sample_scene(s), s).text for s in range(20_000_000, 20_000_000 + n)]


def _inputs(folders: list[Path]) -> list[dict]:
    if len(folders) < 2:
        raise ValueError(f"a merge needs at least two Custom Diffusion folders, got {len(folders)}")
    metas = []
    for f in folders:
        if not Path(f).is_dir():
            raise ValueError(f"{f}: not a folder; Custom Diffusion's output is a folder (`infusion train --method {METHOD}`)")
        meta = read_metadata(f)
        if meta.get("method") != METHOD:
            raise ValueError(f"{f}: written by method {meta.get('method')!r}; only {METHOD} folders merge")
        if merged_concepts(meta):
            raise ValueError(f"{f}: already a merge of {', '.join('<' + n + '>' for n, _ in merged_concepts(meta))}; "
                             "merge the concepts' own folders instead")
        metas.append(meta)
    names = [m["name"] for m in metas]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"two folders use the same modifier token <{dup[0]}>: each concept needs its own name "
                         f"({', '.join(map(str, folders))})")
    prints = {m.get("base_fingerprint") for m in metas}
    if len(prints) > 1:
        raise ValueError("the folders were trained on different base models: "
                         + "; ".join(f"{f} on {m.get('base_model')} (fingerprint {m.get('base_fingerprint')})"
                                     for f, m in zip(folders, metas)))
    return metas


@torch.no_grad()
def merge_folders(model, folders: list[str | os.PathLike], out: str | os.PathLike, captions: list[str] | None = None,
                  pipe=None) -> dict:
    """Merge trained Custom Diffusion ``folders`` (all on base ``model``) into the folder ``out``; returns its
    metadata. ``captions``: the regularisation captions (default ``regularisation_captions(model)``); ``pipe``: the
    base pipeline already loaded (it is not changed)."""
    folders = [Path(f) for f in folders]
    metas = _inputs(folders)
    from infusion.core.base_models import load_base_pipeline

    base = pipe if pipe is not None else load_base_pipeline(model)
    here = base_fingerprint(*fingerprint_modules(base))
    if metas[0].get("base_fingerprint") not in (None, here):
        raise ValueError(f"the folders were trained on another base model ({metas[0].get('base_model')}, fingerprint "
                         f"{metas[0].get('base_fingerprint')}) than {model!r} (fingerprint {here})")
    weights = [read_safetensors(f / WEIGHTS, "Custom Diffusion weights")[0] for f in folders]
    keys = sorted(weights[0])
    for f, w in zip(folders[1:], weights[1:]):
        if sorted(w) != keys or any(w[k].shape != weights[0][k].shape for k in keys):
            raise ValueError(f"{f} has other layers than {folders[0]}: they were trained on different base models")
    embeds = {}
    for f, m in zip(folders, metas):
        tok = f"<{m['name']}>"
        emb = read_safetensors(f / EMBEDS, "Custom Diffusion token")[0]
        embeds[tok] = emb[tok] if tok in emb else next(iter(emb.values()))

    # the text side: the base text encoder with every modifier token (a copy: the caller's pipeline is left alone)
    import copy
    from types import SimpleNamespace

    text = SimpleNamespace(tokenizer=copy.deepcopy(base.tokenizer), text_encoder=copy.deepcopy(base.text_encoder))
    base.load_textual_inversion([e.reshape(1, -1) for e in embeds.values()], token=list(embeds),
                                tokenizer=text.tokenizer, text_encoder=text.text_encoder)
    captions = captions or regularisation_captions(model)
    c_reg = torch.cat([token_states(text, c) for c in captions])  # (R, H)
    tgt = [target_states(text, m["name"], m["class_phrase"]) for m in metas]
    owner = [i for i, t in enumerate(tgt) for _ in range(len(t))]
    c_tgt = torch.cat(tgt)
    keep = [i for i in range(len(c_tgt)) if not any(torch.equal(c_tgt[i], c_tgt[j]) for j in range(i))]  # as the authors
    c_tgt, owner = c_tgt[keep], [owner[i] for i in keep]

    merged, worst = {}, 0.0
    modules = dict(base.unet.named_modules())
    for key in keys:
        if weights[0][key].numel() == 0:  # diffusers' layout: an empty entry for every untouched processor
            merged[key] = weights[0][key]
            continue
        proc, _, proj = key.rpartition(".to_")  # "...attn2.processor", "k_custom_diffusion.weight"
        attn = modules[proc[: -len(".processor")]]
        w0 = getattr(attn, f"to_{proj[0]}").weight.detach().float().cpu()  # (out, H)
        v_tgt = torch.stack([weights[o][key].float() @ c_tgt[i] for i, o in enumerate(owner)])  # (T, out)
        w = constrained_merge(w0, c_reg, c_tgt, v_tgt)
        worst = max(worst, float((w.double() @ c_tgt.double().T - v_tgt.double().T).abs().max()))
        if not torch.isfinite(w).all():
            raise ValueError(f"refusing to save: the merged {key} is not finite")
        merged[key] = w
    meta = {
        "format": metas[0].get("format", "diffusers-custom-diffusion"),
        "format_version": "1",
        "method": METHOD,
        "name": "+".join(m["name"] for m in metas),
        "class_phrase": " and ".join(m["class_phrase"] for m in metas),
        CONCEPTS_KEY: json.dumps([{"name": m["name"], "class_phrase": m["class_phrase"]} for m in metas]),
        "base_model": metas[0].get("base_model", str(model)),
        "base_fingerprint": here,
        "training": json.dumps([json.loads(m.get("training", "{}")) for m in metas], sort_keys=True),
        "merge": json.dumps({"from": [str(f) for f in folders], "regularisation_captions": len(captions),
                             "regularisation_states": len(c_reg), "constraints": len(c_tgt),
                             "max_constraint_error": worst}, sort_keys=True),
        "library_version": __version__,
    }
    out = Path(out)
    save_safetensors_atomic(merged, out / WEIGHTS, {"format": "pt", "method": METHOD})
    save_safetensors_atomic({t: e.reshape(1, -1).float() for t, e in embeds.items()}, out / EMBEDS,
                            {"format": "pt", "method": METHOD})
    write_folder_metadata(out, meta)
    log.info("merged %s -> %s (%d constraints per layer, largest residual %.2e)", ", ".join(map(str, folders)), out,
             len(c_tgt), worst)
    return meta
