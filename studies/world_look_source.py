"""Where does the world model read an object's look from? The measurements behind docs/results.md's
section "Where the look lives in the world model".

1. ``prompted``: the base model told the concept's look in words ("a yellow and blue dipped ball"):
   look rate on the training caption and the validation prompts (a world model that cannot be told a
   look cannot be expected to let a value residual reach it).
2. ``source``: the text states of the described prompt mixed with those of the plain one ("a photo of a
   ball on the snow") per group of positions: the class word, the positions after it (the rest of the
   prompt, EOS and the padding, which a causal text encoder lets summarise the whole prompt). Which
   positions carry the look?
3. ``oracle``: Infusion's residual set by hand to what the words change at the class word's value,
   to_v(h_ball | described) - to_v(h_ball | plain) in every attn2 layer: is the class word's value enough?
3b. ``keys``: the plain prompt with the class word's attn2 key, or its value, from the described prompt (the
   world's recording processors take separate key states): do the maps or the values carry the look?
3c. ``maps``: the same hand-set Delta placed by F's maps (the paper's Infusion) or by C's own map of the class
   word (``--method-arg maps=own``), and, as experiments, by C's whole attention, by F's map inside C's own attention,
   or by C's own map only in the late or early half of sampling (16 seeds, "... on the snow"); then Infusion trained
   with ``maps=own`` (lr 1e-2, 1,000 steps) on the training caption and validation prompts. Which part of attn2
   lets the value draw the look's layout?
4. ``ti``: Textual Inversion at its defaults for 1,000 steps (does a text-side baseline gain from a world that
   can be told a look?).
5. ``summary`` (an experiment, not a shipped option): Infusion with a second Delta row added at the
   EOS/padding positions (with F's maps there), trained as the paper's Infusion (lr 1e-2, 1,000 steps);
   ``summary-gated`` scales those maps by the class word's map (normalised to its maximum per head).

    INFUSION_WORLD_MODEL=runs/world/model_new python studies/world_look_source.py --out runs/look_source \\
        --json docs/results/look_source.json --tag named
    python studies/world_look_source.py --only prompted,summary --tag step-13200 ...   # the world shipped until 2026-12-03

The candidate world whose captions name patterns (``named`` in the JSON, step 17,600) was trained from copies of
the shipped checkpoint and model folder (its EMA is read from the folder)::

    cp checkpoints/world_train.safetensors runs/world/train_new.safetensors
    cp -r src/infusion/world/model runs/world/model_new
    W="--checkpoint runs/world/train_new.safetensors --export-dir runs/world/model_new --threads 2 --name-patterns 0.5"
    infusion world train model $W --steps 15100
    infusion world train model $W --steps 17600 --patterned-images 20000 --patterned-share 0.25
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import torch


def _reader_and_concept(name):
    from infusion.evaluation.world_results import WorldReader
    from infusion.world.concepts import get_concept

    return WorldReader(), get_concept(name)


def _score(reader, concept, ims, texts) -> dict:
    rd = reader.read(ims, texts, concept)
    n = len(rd)
    return {"look_rate": sum(r["look"] for r in rd) / n, "text_fidelity": sum(r["text_fidelity"] for r in rd) / n,
            "concept_fidelity": sum(r["concept_fidelity"] for r in rd) / n, "n": n,
            "most_read": Counter(r["look_read"] for r in rd).most_common(3)}


def described(concept, words: str | None = None) -> str:
    """The concept's look in words before its class word ("yellow and blue dipped ball"), or ``words`` + class word."""
    from infusion.world import scenes

    if words:
        return f"{words} {concept.class_phrase}"
    o = concept.obj
    return f"{o.color} and {o.color2} {scenes.PATTERN_WORDS[o.pattern]} {o.cls}"


def _sets(concept):
    from infusion.world.concepts import validation_prompts

    tok = f"<{concept.name}>"
    return tok, {"training_caption": [f"a photo of a {tok}"] * 12, "validation": validation_prompts(concept.name) * 2}


def _generate(fn, prompts):
    ims = []
    for i, p in enumerate(prompts):
        ims += fn(p, generator=torch.Generator().manual_seed(i), num_inference_steps=25, guidance_scale=5.0).images
    return ims


def prompted(concept, reader) -> dict:
    from infusion.core.base_models import load_base_pipeline

    pipe = load_base_pipeline("world")
    pipe.set_progress_bar_config(disable=True)
    tok, sets = _sets(concept)
    out = {}
    for how, sub in (("class word", concept.class_phrase), ("look in words", described(concept))):
        out[how] = {k: _score(reader, concept, _generate(lambda p, _sub=sub, **kw: pipe([p.replace(tok, _sub)], **kw), ps),
                              [p.replace(tok, concept.class_phrase) for p in ps]) for k, ps in sets.items()}
    return out


def _snow_states(concept, words: str | None = None):
    """The world pipeline; the text states (1, 77, D) and token ids of the described "a photo of a <look in words>
    <class> on the snow" and of the plain "a photo of a <class> on the snow"; the empty caption's states; the class
    word's token id."""
    from infusion.core.base_models import load_base_pipeline

    pipe = load_base_pipeline("world")
    pipe.set_progress_bar_config(disable=True)
    tok, te = pipe.tokenizer, pipe.text_encoder

    def enc(t):
        ids = tok(t, padding="max_length", max_length=77, return_tensors="pt").input_ids
        with torch.no_grad():
            return te(ids)[0], ids[0].tolist()

    described_states = enc(f"a photo of a {described(concept, words)} on the snow")
    plain_states = enc(f"a photo of a {concept.class_phrase} on the snow")
    return pipe, described_states, plain_states, enc("")[0], tok.convert_tokens_to_ids(concept.class_phrase + "</w>")


def _render_states(pipe, states, neg, n: int) -> list:
    """``n`` images (seeds 0..n-1) from text states (1, 77, D) against the empty caption's ``neg``."""
    ims = []
    for s in range(n):
        ims += pipe(prompt_embeds=states, negative_prompt_embeds=neg, generator=torch.Generator().manual_seed(s),
                    num_inference_steps=25, guidance_scale=5.0).images
    return ims


def keys_values(concept, reader, n: int = 16) -> dict:
    """The plain prompt with the class word's attn2 *key* or *value* taken from the described prompt (the other from
    the plain one): does the world draw the look from what a token's maps are (keys), or from what it adds (values)?
    Infusion keeps F's maps and changes a value only, as Perfusion's key lock assumes.
    """
    from infusion.world.token_loss import install_recorders

    pipe, (sd, idd), (sp, idp), neg, cls_id = _snow_states(concept)
    with_cls = sp.clone()
    with_cls[0, idp.index(cls_id)] = sd[0, idd.index(cls_id)]
    recorders = install_recorders(pipe.unet)  # stock attention, keys from ``key_context`` when it is set
    cases = {"plain prompt": (sp, sp), "plain, class word's key and value from described": (with_cls, with_cls),
             "plain, class word's key from described (value plain)": (sp, with_cls),
             "plain, class word's value from described (key plain)": (with_cls, sp)}
    out = {}
    for name, (values, keys) in cases.items():
        for r in recorders.values():
            r.key_context = torch.cat([neg, keys])  # the pipeline's CFG batch: [unconditional, conditional]
        ims = _render_states(pipe, values, neg, n)
        out[name] = _score(reader, concept, ims, [f"a photo of a {concept.class_phrase} on the snow"] * n)
        print(name, out[name], flush=True)
    return out


def source(concept, reader, n: int = 16, words: str | None = None) -> dict:
    pipe, (sd, idd), (sp, idp), neg, cls_id = _snow_states(concept, words)
    cd, cp = idd.index(cls_id), idp.index(cls_id)
    m = 77 - cd - 1  # positions after the class word in the described prompt

    def mix(base, other, b_cls, o_cls, groups):
        s = base.clone()
        if "class" in groups:
            s[0, b_cls] = other[0, o_cls]
        if "after" in groups:
            s[0, b_cls + 1: b_cls + 1 + m] = other[0, o_cls + 1: o_cls + 1 + m]
        return s

    cases = {
        "described prompt": sd, "plain prompt": sp,
        "plain, class word from described": mix(sp, sd, cp, cd, {"class"}),
        "plain, positions after the class word from described": mix(sp, sd, cp, cd, {"after"}),
        "described, class word from plain": mix(sd, sp, cd, cp, {"class"}),
        "described, positions after the class word from plain": mix(sd, sp, cd, cp, {"after"}),
    }
    out = {}
    for name, states in cases.items():
        ims = _render_states(pipe, states, neg, n)
        out[name] = _score(reader, concept, ims, [f"a photo of a {concept.class_phrase} on the snow"] * n)
        print(name, out[name], flush=True)
    return out


def _train(concept, work: Path, tag: str, lr=1e-2, steps=1000, method="infusion", method_args=None) -> Path:
    from infusion.training import TrainConfig, train
    from infusion.world.concepts import write_concept_images

    dest = work / f"{tag}.safetensors"
    if not dest.is_file():
        images = work / "images"
        write_concept_images(concept.name, images)
        train(TrainConfig(model="world", images=str(images), name=concept.name, class_phrase=concept.class_phrase,
                          out=str(dest), method=method, lr=lr, steps=steps, method_args=method_args or {}),
              progress=False)
    return dest


def score_prompts(concept, reader, path: Path | None, prompts: list[str]) -> dict:
    """``_score`` of the images a concept file (``path``; None: the base model, told the class word) draws for
    ``prompts``, the i-th with seed i."""
    from infusion.customized import load_customized
    from infusion.core.base_models import load_base_pipeline

    tok = f"<{concept.name}>"
    texts = [p.replace(tok, concept.class_phrase) for p in prompts]
    if path is None:
        pipe = load_base_pipeline("world")
        pipe.set_progress_bar_config(disable=True)
        ims = _generate(lambda p, **kw: pipe([p.replace(tok, concept.class_phrase)], **kw), prompts)
    else:
        gen = load_customized("world", [path])
        ims = _generate(lambda p, **kw: gen([p], **kw), prompts)
    return _score(reader, concept, ims, texts)


def _score_concept(concept, reader, path: Path) -> dict:
    """``score_prompts`` on the training caption (12 seeds) and the validation prompts (2 seeds each)."""
    _, sets = _sets(concept)
    return {k: score_prompts(concept, reader, path, ps) for k, ps in sets.items()}


def oracle_concept(concept, maps: str = "base"):
    """An Infusion concept whose Delta in every attn2 layer is set by hand to what the words change at the class
    word's value: to_v(h_class | "a photo of a <look in words>") - to_v(h_class | "a photo of a <class>")."""
    from infusion.methods.infusion.concept import Concept
    from infusion.core.base_models import load_base_pipeline
    from infusion.methods.infusion.processor import cross_attention_layers

    pipe = load_base_pipeline("world")
    tok, te = pipe.tokenizer, pipe.text_encoder

    def state(text):
        ids = tok(text, padding="max_length", max_length=77, return_tensors="pt").input_ids
        pos = ids[0].tolist().index(tok.convert_tokens_to_ids(concept.class_phrase + "</w>"))
        with torch.no_grad():
            return te(ids)[0][0, pos]

    hd, hp = state(f"a photo of a {described(concept)}"), state(f"a photo of a {concept.class_phrase}")
    with torch.no_grad():
        deltas = {k: (a.to_v(hd) - a.to_v(hp))[None] for k, a in cross_attention_layers(pipe.unet).items()}
    return Concept(concept.name, concept.class_phrase, deltas, base_model="world", maps=maps)


def oracle(concept, reader, work: Path) -> dict:
    """The paper's Infusion (trained) and the same kind of file with its Deltas set to the class word's value change."""
    trained = _train(concept, work, "infusion")
    dest = oracle_concept(concept).save(work / "oracle.safetensors")
    return {"trained (paper's Infusion)": _score_concept(concept, reader, trained),
            "oracle (class word's value change)": _score_concept(concept, reader, dest)}


MAP_CASES = {  # name -> (placement, experiment patch): what places the hand-set Delta in C's attn2
    "F's maps (the paper's Infusion)": ("base", None),
    "C's own map of the class word (maps=own)": ("own", None),
    "C's whole attention: its own output and maps (experiment)": ("own", "whole"),
    "F's map, inside C's own attention output (experiment)": ("base", "own_output"),
    "C's own map at t < T/2 only, F's above (experiment)": ("own", "late"),
    "C's own map at t >= T/2 only, F's below (experiment)": ("own", "early"),
}


def _map_patch(kind: str | None, clock: dict):
    """Experiment only: ``whole`` replaces C's attn2 output (F's, in both kinds of Infusion) by C's own attention;
    ``own_output`` does so under F's maps; ``late``/``early`` keep C's own map on one half of sampling (``clock['t']``
    is the UNet call's timestep). Returns the processor's original ``__call__`` to restore."""
    import infusion.methods.infusion.processor as pr

    orig = pr.InfusionAttnProcessor.__call__

    def call(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, infusion=None):
        plan = infusion
        if kind is None or plan is None or plan.mode != "fused" or plan.n_c == 0:
            return orig(self, attn, hidden_states, encoder_hidden_states, attention_mask, temb, infusion)
        own_names = self.own_maps
        if kind in ("late", "early") and (clock["t"] < 500) != (kind == "late"):
            self.own_maps = set()  # F's maps on this half
        if kind in ("whole", "own_output"):
            n_f = plan.n_f
            hs, ehs = hidden_states, encoder_hidden_states
            core_f, maps_f = self._f_core(attn, hs[:n_f], ehs[:n_f], None, plan)
            own_rows = dataclasses.replace(plan, c_source=torch.arange(hs.shape[0] - n_f), map_sink=None)
            core_c, maps_c = self._f_core(attn, hs[n_f:], ehs[n_f:], None, own_rows)
            core = torch.cat([core_f, self._c_core(attn, core_c, maps_c if kind == "whole" else maps_f, None, plan)])
            out = attn.to_out[1](attn.to_out[0](core))
            out = out + hs if attn.residual_connection else out
            return out / attn.rescale_output_factor
        try:
            return orig(self, attn, hidden_states, encoder_hidden_states, attention_mask, temb, infusion)
        finally:
            self.own_maps = own_names

    pr.InfusionAttnProcessor.__call__ = call
    return orig


def maps_check(concept, reader, work: Path, n: int = 16) -> dict:
    """``MAP_CASES`` on "a photo of a <c> on the snow" (``n`` seeds), then Infusion trained with maps=own."""
    import infusion.methods.infusion.processor as pr
    from infusion.customized import load_customized

    tok = f"<{concept.name}>"
    prompt = f"a photo of a {tok} on the snow"
    out, clock = {}, {"t": 0.0}
    for name, (maps, kind) in MAP_CASES.items():
        gen = load_customized("world", [oracle_concept(concept, maps).save(work / f"oracle-{maps}.safetensors")])
        unet_forward = gen.pipe.unet.forward

        def forward(sample, timestep, *a, _forward=unet_forward, **kw):
            clock["t"] = float(timestep)
            return _forward(sample, timestep, *a, **kw)

        gen.pipe.unet.forward = forward
        orig = _map_patch(kind, clock)
        try:
            ims = _generate(lambda p, _gen=gen, **kw: _gen([p], **kw), [prompt] * n)
        finally:
            pr.InfusionAttnProcessor.__call__ = orig
        out[name] = _score(reader, concept, ims, [prompt.replace(tok, concept.class_phrase)] * n)
        print(name, out[name], flush=True)
    trained = _train(concept, work, "infusion-own", method_args={"maps": "own"})
    out["trained"] = _score_concept(concept, reader, trained)
    return out


_PATCHED: set = set()


GATE = {"threshold": 1.0}  # the gate: min(1, class map / (threshold x its maximum)) per head


def _summary_patch(gated: bool):
    """Experiment only: every concept gets a second Delta row, added at the EOS and padding positions."""
    if "summary" not in _PATCHED:
        _PATCHED.add("summary")
        _patch_summary_rows()
    if gated and "gated" not in _PATCHED:
        _PATCHED.add("gated")
        _patch_gate()


def _patch_summary_rows():
    import infusion.methods.infusion.pipeline as pl
    import infusion.methods.infusion.processor as pr
    import infusion.core.placeholders as pp
    import infusion.methods.infusion.training as mi

    class Positions(tuple):  # the class word's rows + one summary row: what the n_tokens checks count
        def __len__(self):
            return 2

    orig_parse = pp.parse_prompt

    def parse(prompt, class_phrases, tokenizer):
        p = orig_parse(prompt, class_phrases, tokenizer)
        if not p.spans:
            return p
        eos = len(tokenizer(p.text, truncation=True, max_length=77)["input_ids"]) - 1
        spans = [pp.ConceptSpan(s.name, Positions(tuple(s.positions) + tuple(range(eos, 77)))) for s in p.spans]
        return pp.ParsedPrompt(p.source, p.text, spans)

    mi.parse_prompt = pl.parse_prompt = parse
    mi.phrase_token_count = lambda phrase, tokenizer: 2
    build = pr.InfusionPlan.build.__func__

    def build_summary(cls, mode, n_f, c_source, spans):
        plan = build(cls, mode, n_f, c_source, spans)
        plan.slots = [[None if s is None else (s[0], min(s[1], 1)) for s in row] for row in plan.slots]
        return plan

    pr.InfusionPlan.build = classmethod(build_summary)


def _patch_gate():
    import infusion.methods.infusion.processor as pr

    c_core = pr.InfusionAttnProcessor._c_core

    def gated_core(self, attn, core_src, maps, queries, plan):  # column 0: the (one-token) class word
        if maps.shape[-1] > 1:
            cls_map = maps[..., :1]
            peak = (GATE["threshold"] * cls_map.amax(dim=2, keepdim=True)).clamp_min(1e-8)
            maps = torch.cat([cls_map, maps[..., 1:] * (cls_map / peak).clamp(max=1.0)], -1)
        return c_core(self, attn, core_src, maps, queries, plan)

    pr.InfusionAttnProcessor._c_core = gated_core


def summary(concept, reader, work: Path, gated: bool, lr: float = 1e-2, tag: str | None = None) -> dict:
    _summary_patch(gated)
    path = _train(concept, work, tag or ("summary-gated" if gated else "summary"), lr=lr)
    return _score_concept(concept, reader, path)


def figure(concept, work: Path, png: Path, n: int = 8) -> None:
    """One row per setting (base with the look in words; the paper's Infusion; the summary row, ungated and
    gated), the first ``n`` validation prompts, seed 0; the training images in the top row."""
    from PIL import Image, ImageDraw

    from infusion.customized import load_customized
    from infusion.core.base_models import load_base_pipeline
    from infusion.world.concepts import concept_images, validation_prompts

    tok = f"<{concept.name}>"
    prompts = validation_prompts(concept.name)[:n]
    pipe = load_base_pipeline("world")
    pipe.set_progress_bar_config(disable=True)
    rows = [("training images", list(concept_images(concept.name))),
            ("base, look in words", _generate(lambda p, **kw: pipe([p.replace(tok, described(concept))], **kw), prompts))]
    for label, tag, gated in (("Infusion (paper)", "infusion", None), ("+ summary row", "summary", False),
                              ("+ summary row, gated", "summary-gated", True)):
        path = work / f"{tag}.safetensors"
        if not path.is_file():
            continue
        if gated is not None:
            _summary_patch(gated)
        gen = load_customized("world", [path])
        rows.append((label, _generate(lambda p, _gen=gen, **kw: _gen([p], **kw), prompts)))
    cell, left = 96, 150
    grid = Image.new("RGB", (left + cell * n, cell * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    for r, (label, ims) in enumerate(rows):
        draw.text((4, r * cell + cell // 2 - 6), label, fill="black")
        for c, im in enumerate(ims[:n]):
            grid.paste(im.resize((cell, cell), Image.NEAREST), (left + c * cell, r * cell))
    png.parent.mkdir(parents=True, exist_ok=True)
    grid.save(png)


def write_doc(data: dict, doc: Path) -> None:
    """The JSON as tables: one per world model (tag)."""
    def f(r):
        return f"{r['look_rate']:.2f} | {r['text_fidelity']:.3f} | {r['concept_fidelity']:.3f}"

    lines = ["Where the world model reads an object's look from (`<sunball>`; `python studies/world_look_source.py`;",
             "DDIM 25, guidance 5; training caption x 12 seeds, the 12 validation prompts x 2 seeds; the doc section:",
             "docs/results.md, \"Where the look lives in the world model\").", ""]
    for tag, e in data.items():
        lines += [f"## World model `{tag}` ({e.get('model')}, fingerprint {e.get('model_fingerprint')})", "",
                  "| setting | look, training caption | text fid. | concept fid. | look, validation | text fid. | concept fid. |",
                  "|---|---|---|---|---|---|---|"]
        keys = [("prompted", "base model, prompt: {}"), ("oracle", "{}"), ("ti", "Textual Inversion (defaults, 1,000 steps)")] + [
            (k, "Infusion + summary row" + (" gated by the class map" if k.startswith("summary-gated") else "")
             + k.partition(" ")[2].join([" (", ")"] if " " in k else ["", ""]) + " (experiment)")
            for k in sorted(e) if k.startswith("summary") and not k.endswith("_seconds")]
        for key, label in keys:
            if key not in e:
                continue
            items = e[key].items() if key in ("prompted", "oracle") else [(None, e[key])]
            for name, r in items:
                lines.append(f"| {label.format(name)} | {f(r['training_caption'])} | {f(r['validation'])} |")
        if "keys" in e:
            lines += ["", ("The plain prompt (\"a photo of a <class> on the snow\") with the class word's attn2 key or value "
                           "from the described one, 16 seeds:"), "", "| states | look | text fid. | concept fid. | most read |", "|---|---|---|---|---|"]
            for name, r in e["keys"].items():
                lines.append(f"| {name} | {f(r)} | {', '.join(f'{a} ({b})' for a, b in r['most_read'][:2])} |")
        if "maps" in e:
            lines += ["", ("The hand-set Delta (the class word's value change) placed by F's maps or by C's own, \"a photo of a "
                           "<concept> on the snow\", 16 seeds; then Infusion trained with `maps=own` (lr 1e-2, 1,000 steps):"), "",
                      "| the Delta placed by | look | text fid. | concept fid. | most read |", "|---|---|---|---|---|"]
            for name in [k for k in MAP_CASES if k in e["maps"]]:  # the JSON's keys are sorted
                r = e["maps"][name]
                if name != "trained":
                    lines.append(f"| {name} | {f(r)} | {', '.join(f'{a} ({b})' for a, b in r['most_read'][:2])} |")
            t = e["maps"]["trained"]
            lines += ["", ("| trained, `maps=own` | look, training caption | text fid. | concept fid. | look, validation | text fid. "
                           "| concept fid. |"), "|---|---|---|---|---|---|---|",
                      f"| Infusion, `maps=own` | {f(t['training_caption'])} | {f(t['validation'])} |"]
        for key in sorted(k for k in e if k.startswith("source") and not k.endswith("_seconds")):
            words = key.partition("(")[2].rstrip(")") or "the look in words"
            lines += ["", f"Text states mixed per position group (\"a photo of a <class> on the snow\" vs {words}, 16 seeds):", "",
                      "| states | look | text fid. | concept fid. | most read |", "|---|---|---|---|---|"]
            for name, r in e[key].items():
                lines.append(f"| {name} | {f(r)} | {', '.join(f'{a} ({b})' for a, b in r['most_read'][:2])} |")
        lines.append("")
    doc.write_text("\n".join(lines))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concept", default="sunball")
    ap.add_argument("--only", default="prompted,source,oracle,summary,summary-gated")
    ap.add_argument("--out", default="runs/look_source")
    ap.add_argument("--json", default="docs/results/look_source.json")
    ap.add_argument("--doc", default="docs/results/look_source.md", help="the JSON as tables")
    ap.add_argument("--doc-only", action="store_true", help="only rewrite --doc from --json")
    ap.add_argument("--figure", default=None, help="only draw this PNG from the trained files of --out/--tag")
    ap.add_argument("--tag", default="shipped", help="the key of this world model in the JSON (e.g. shipped, named)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--gate-threshold", type=float, default=1.0, help="summary-gated: gate = min(1, map / (this x max))")
    ap.add_argument("--words", default=None, help="source: describe the object with these words before the class word "
                                                   "(default: the look's colour, second colour and pattern word)")
    ap.add_argument("--lr", type=float, default=1e-2, help="summary, summary-gated: learning rate")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    js = Path(args.json)
    if args.doc_only:
        write_doc(json.loads(js.read_text()), Path(args.doc))
        return 0
    reader, concept = _reader_and_concept(args.concept)
    work = Path(args.out) / args.tag
    work.mkdir(parents=True, exist_ok=True)
    if args.figure:
        figure(concept, work, Path(args.figure))
        return 0
    data = json.loads(js.read_text()) if js.is_file() else {}
    entry = data.setdefault(args.tag, {})
    entry["model"] = os.environ.get("INFUSION_WORLD_MODEL", "shipped world")
    from infusion.evaluation.world_results import model_fingerprint

    entry["model_fingerprint"] = model_fingerprint("world")
    for what in args.only.split(","):  # the summary patch stays for the rest of the process: keep it last
        t0 = time.time()
        if what == "prompted":
            entry[what] = prompted(concept, reader)
        elif what == "source":
            if args.words:
                what = f"source ({args.words})"
            entry[what] = source(concept, reader, words=args.words)
        elif what == "keys":
            entry[what] = keys_values(concept, reader)
        elif what == "oracle":
            entry[what] = oracle(concept, reader, work)
        elif what == "maps":
            entry[what] = maps_check(concept, reader, work)
        elif what == "ti":  # Textual Inversion at its defaults, 1,000 steps: does a text-side baseline gain too?
            entry[what] = _score_concept(concept, reader, _train(concept, work, "ti", lr=None, method="ti"))
        elif what in ("summary", "summary-gated"):
            GATE["threshold"] = args.gate_threshold
            if (args.lr, args.gate_threshold) != (1e-2, 1.0):  # a variant: its own key and file
                what = f"{what} lr={args.lr:g}" + (f" threshold={args.gate_threshold:g}" if what == "summary-gated" else "")
            entry[what] = summary(concept, reader, work, gated=what.startswith("summary-gated"), lr=args.lr,
                                  tag=what.replace(" ", "_").replace("=", "-"))
        else:
            raise SystemExit(f"unknown check {what!r}")
        entry[what + "_seconds"] = round(time.time() - t0)
        print(what, json.dumps(entry[what]), flush=True)
        js.parent.mkdir(parents=True, exist_ok=True)
        data = json.loads(js.read_text()) if js.is_file() else {}  # another process may have written meanwhile
        data.setdefault(args.tag, {}).update({k: entry[k] for k in ("model", "model_fingerprint", what, what + "_seconds")})
        js.write_text(json.dumps(data, indent=1, sort_keys=True))
    write_doc(data, Path(args.doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
