"""Perfusion (Tewel et al. 2023): key-locked, gated rank-one edits of every ``attn2``'s key and
value projections, as a diffusers attention processor.

For a text-state row x (C_text wide) and a projection W (K or V), paper Eq. 3 with its gate:

    W' x = W x - s(x) W i*  +  sigmoid((s(x) - beta) / tau) o*,     s(x) = i*^T C^-1 x / i*^T C^-1 i*

i*: the concept token's encoding (EMA over training prompts, decay 0.99); C: the uncentered
covariance of text states over a caption corpus, BOS..EOS rows only as the reference does (padding rows
are not text), ridge 1e-3 * mean eigenvalue; the corpus: on the built-in world 2,000 world captions (the
prompts it is used with), elsewhere the training templates x 48 everyday nouns; keys: o*_K = W_K i_class,
locked to the class phrase's encoding (the "where" stays the class's); values: o*_V learned, initialised
to W_V i_class. The concept's input word embedding is learned too (it moves i*, with a
straight-through gradient through the EMA). Gate: beta 0.75, tau 0.1 in training, 0.70 / 0.15 at
generation, as lucidrains' ``perfusion-pytorch`` (``--method-arg beta, temperature, inference_beta,
inference_temperature``; all stored in the file). Not reproduced: the paper's masked loss and its
LAION-estimated C.

lr: 5e-3 without batch scaling is our choice (tune with ``--lr``).

File (``--out x.safetensors``, format ``infusion-perfusion``): ``token`` [1, H], ``concept_input``,
``superclass_input``, ``cov_inv_concept`` (C^-1 i*) [C_text] each, and ``<layer>.value_target`` [D]
per ``attn2`` (fp32). Letters: B batch, N image tokens, L text tokens, D inner width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0
from torch import nn

from ...customized import Customization, stock_attention
from ...io import read_safetensors, save_safetensors_atomic
from ...processor import cross_attention_layers
from ..data import CAPTION_TEMPLATES, caption_templates
from .base import Method, TextBatch, register_method, param_key
from .files import customization_metadata
from .kv_attention import KeyValueProcessor
from .tokens import encode_with_token, phrase_embedding

FORMAT = "infusion-perfusion"
NOUNS = ("dog", "cat", "car", "house", "tree", "person", "woman", "man", "child", "bird", "flower", "chair", "table",
         "cup", "bottle", "book", "bag", "shoe", "hat", "toy", "bear", "ball", "bike", "boat", "clock", "lamp",
         "phone", "robot", "vase", "teapot", "backpack", "sunglasses", "horse", "fish", "apple", "cake", "guitar",
         "mountain", "beach", "city", "river", "forest", "road", "window", "door", "painting", "sculpture", "box")


class RankOneEdit:
    """The concept's edit, shared by every layer's processor.

    concept_input i* (C_t,), superclass_input i_class (C_t,), cov_inv_concept C^-1 i* (C_t,),
    value_targets: layer -> o*_V (D,); beta, tau: the gate.
    """

    def __init__(self, concept_input, superclass_input, cov_inv_concept, value_targets, beta=0.75, tau=0.1):
        self.concept_input, self.superclass_input = concept_input, superclass_input
        self.cov_inv_concept, self.value_targets = cov_inv_concept, value_targets
        self.beta, self.tau = float(beta), float(tau)

    def project(self, x, weight, out, target):
        """Edited projection: x (B, L, C_t), weight [D, C_t], out = W x (+ b) (B, L, D), target (D,) -> (B, L, D)."""
        i, u = self.concept_input.to(x.dtype), self.cov_inv_concept.to(x.dtype)
        s = (x @ u) / (i @ u)  # (B, L): energy along the concept direction, 1 at x = i*
        gate = torch.sigmoid((s - self.beta) / self.tau)[..., None]  # (B, L, 1)
        return out - s[..., None] * F.linear(i, weight) + gate * target.to(x.dtype)


class PerfusionProcessor(KeyValueProcessor):
    """``attn2``: K and V through the gated rank-one edit, then SDPA attention (as ``AttnProcessor2_0``)."""

    def __init__(self, layer: str, edit: RankOneEdit | None = None):
        self.layer, self.edit = layer, edit

    def keys_values(self, attn, text):
        e = self.edit
        if e is None:
            return None
        key_target = F.linear(e.superclass_input.to(text.dtype), attn.to_k.weight)  # (D,): locked to the class
        k = e.project(text, attn.to_k.weight, attn.to_k(text), key_target)  # (B, L, D)
        v = e.project(text, attn.to_v.weight, attn.to_v(text), e.value_targets[self.layer])  # (B, L, D)
        return k, v


def install_perfusion(unet, edit: RankOneEdit) -> list[str]:
    """Perfusion processors on every attn2 (SDPA elsewhere); returns the attn2 names."""
    layers = list(cross_attention_layers(unet))
    unet.set_attn_processor({
        k: PerfusionProcessor(k[: -len(".processor")], edit) if k[: -len(".processor")] in layers else AttnProcessor2_0()
        for k in unet.attn_processors
    })
    return layers


def covariance_prompts(class_phrase: str, model="") -> list[str]:
    """The caption corpus C is estimated on: the world's own captions on the world, else templates x nouns."""
    from ...world import is_world_model

    if is_world_model(model):
        from ...world import scenes

        corpus = [scenes.caption_scene(scenes.sample_scene(s), s).text for s in range(20_000_000, 20_002_000)]
        return corpus + [t.format(class_phrase) for t in caption_templates(model)]
    return [t.format(n) for t in CAPTION_TEMPLATES for n in (*NOUNS, class_phrase)]


@torch.no_grad()
def input_covariance(text_encoder, tokenizer, class_phrase: str, ridge: float = 1e-3, batch: int = 32,
                     model="") -> torch.Tensor:
    """Uncentered covariance of text states over ``covariance_prompts``, BOS..EOS rows only -> [C_t, C_t] (float32)."""
    prompts = covariance_prompts(class_phrase, model)
    acc, count = None, 0
    for i in range(0, len(prompts), batch):
        tok = tokenizer(prompts[i:i + batch], padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt")
        ids = tok.input_ids.to(text_encoder.device)
        real = tok.attention_mask.bool().reshape(-1).to(text_encoder.device)  # BOS..EOS (padding excluded)
        x = text_encoder(ids)[0].float().reshape(-1, text_encoder.config.hidden_size)[real]  # (rows, C_t)
        acc = x.T @ x if acc is None else acc + x.T @ x
        count += x.shape[0]
    cov = acc / count
    return cov + ridge * cov.diagonal().mean() * torch.eye(cov.shape[0], device=cov.device)


class PerfusionCustomization(Customization):
    """Loads the edit into ``PerfusionProcessor``s; ``<name>`` -> the learned token."""

    method = "perfusion"

    def attach(self, pipe):
        t, _ = read_safetensors(self.path, "Perfusion file")
        layers = list(cross_attention_layers(pipe.unet))
        targets = {k[: -len(".value_target")]: v for k, v in t.items() if k.endswith(".value_target")}
        if set(targets) != set(layers):
            raise ValueError(f"Perfusion file {self.path} does not fit this UNet: layers missing "
                             f"{sorted(set(layers) - set(targets))[:3]}, unknown {sorted(set(targets) - set(layers))[:3]}")
        width = pipe.text_encoder.config.hidden_size
        if t["concept_input"].shape[-1] != width:
            raise ValueError(f"Perfusion file {self.path} was trained with text states {t['concept_input'].shape[-1]} "
                             f"wide; this text encoder's are {width} (trained on {self.meta.get('base_model')})")
        attns = cross_attention_layers(pipe.unet)
        for k, v in targets.items():
            if v.shape[-1] != attns[k].to_v.out_features:
                raise ValueError(f"Perfusion file {self.path}: layer {k} has width {v.shape[-1]} in the file, "
                                 f"{attns[k].to_v.out_features} in the model")
        device = pipe.unet.device
        self.edit = RankOneEdit(t["concept_input"].to(device), t["superclass_input"].to(device),
                                t["cov_inv_concept"].to(device), {k: v.to(device) for k, v in targets.items()},
                                float(self.meta.get("inference_beta", self.meta.get("beta", 0.75))),
                                float(self.meta.get("inference_temperature", self.meta.get("temperature", 0.1))))
        self.token = t["token"][0]  # (H,)
        install_perfusion(pipe.unet, self.edit)
        return pipe

    def encode(self, pipe, prompts):
        token = self.token.to(pipe.text_encoder.device, pipe.text_encoder.dtype)
        return encode_with_token(pipe.text_encoder, pipe.tokenizer, prompts, self.name, token)[0], None

    def disabled(self, pipe):
        return stock_attention(pipe)



@register_method
class Perfusion(Method):
    name = "perfusion"
    default_lr = 5e-3  # our choice, see the module docstring
    cache_text = False  # the concept token changes every step
    out_help = "a .safetensors file (format infusion-perfusion): token, i*, i_class, C^-1 i*, per-layer value targets"
    customization_cls = PerfusionCustomization
    method_args_help = {"beta": "gate threshold in training (default 0.75)", "temperature": "gate temperature in training (default 0.1)",
                        "inference_beta": "gate threshold at generation (default 0.70)",
                        "inference_temperature": "gate temperature at generation (default 0.15)"}
    ema_decay = 0.99  # paper / perfusion-pytorch input_decay

    def __init__(self, pipe, cfg):
        super().__init__(pipe, cfg)
        self.unet, self.text_encoder = pipe.unet, pipe.text_encoder
        self.beta = float(cfg.method_args.get("beta", 0.75))
        self.tau = float(cfg.method_args.get("temperature", 0.1))
        self.inference_beta = float(cfg.method_args.get("inference_beta", 0.70))  # perfusion-pytorch's inference gate
        self.inference_tau = float(cfg.method_args.get("inference_temperature", 0.15))
        tok, te = pipe.tokenizer, pipe.text_encoder
        cov = input_covariance(te, tok, cfg.class_phrase, model=cfg.model)
        self.register_buffer("cov_inv", torch.linalg.inv(cov))  # (C_t, C_t)
        superclass = self._superclass_input(te, tok)  # (C_t,)
        self.register_buffer("superclass_input", superclass)
        self.register_buffer("concept_input", torch.zeros_like(superclass))  # EMA of i*, set at the first step
        self.register_buffer("initted", torch.zeros((), dtype=torch.bool))
        self.token = nn.Parameter(phrase_embedding(te, tok, cfg.class_phrase).clone())  # (H,)
        self.layers = cross_attention_layers(self.unet)
        with torch.no_grad():
            self.value_targets = nn.ParameterDict({
                param_key(n): nn.Parameter(F.linear(superclass, a.to_v.weight).clone()) for n, a in self.layers.items()
            })  # o*_V = W_V i_class: at init the concept's value is the class's
        self.edit = RankOneEdit(self.concept_input, superclass, None, {}, self.beta, self.tau)
        install_perfusion(self.unet, self.edit)

    @torch.no_grad()
    def _superclass_input(self, te, tok) -> torch.Tensor:
        """Mean encoding of the class phrase's last token over the caption templates -> (C_t,)."""
        from ...prompts import parse_prompt

        prompts = [t.format("<c>") for t in caption_templates(self.cfg.model)]
        parsed = [parse_prompt(p, {"c": self.cfg.class_phrase}, tok) for p in prompts]
        ids = tok([p.text for p in parsed], padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(te.device)
        states = te(ids)[0].float()  # (T, L, C_t)
        return torch.stack([states[b, p.spans[0].positions[-1]] for b, p in enumerate(parsed)]).mean(0)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Parameters plus the EMA of i* (a buffer), so that resuming continues the same average."""
        return {**super().trainable_state(), "concept_input": self.concept_input, "initted": self.initted}

    def encode_captions(self, captions: list[str]) -> TextBatch:
        states, ids, spans = encode_with_token(self.text_encoder, self.tokenizer, captions, self.cfg.name, self.token)
        return TextBatch(states, spans, ids)

    def _concept_input(self, text: TextBatch) -> torch.Tensor:
        """i*: EMA of the concept token's encoding (updated in training), straight-through gradient -> (C_t,)."""
        rows = [text.states[b, list(s.positions)] for b, spans in enumerate(text.spans) for s in spans]
        if not (self.training and torch.is_grad_enabled() and rows):
            return self.concept_input
        enc = torch.cat(rows).float().mean(0)  # (C_t,)
        with torch.no_grad():
            prev = self.concept_input if bool(self.initted) else enc
            self.concept_input.copy_(prev * self.ema_decay + enc * (1 - self.ema_decay))
            self.initted.fill_(True)
        return self.concept_input + enc - enc.detach()

    def _set_edit(self, concept_input: torch.Tensor) -> None:
        self.edit.concept_input = concept_input
        self.edit.superclass_input = self.superclass_input
        self.edit.cov_inv_concept = self.cov_inv @ concept_input  # (C_t,)
        self.edit.value_targets = {n: self.value_targets[param_key(n)] for n in self.layers}

    def forward(self, noisy_latents, timesteps, text: TextBatch):
        """noisy_latents (B, 4, h, w), timesteps (B,) -> eps (B, 4, h, w)."""
        self._set_edit(self._concept_input(text))
        return self.unet(noisy_latents, timesteps, encoder_hidden_states=text.states).sample

    def export(self, path, fingerprint: str) -> dict[str, torch.Tensor]:
        if not bool(self.initted):
            raise ValueError("Perfusion has not seen a training step yet: nothing to export")
        with torch.no_grad():
            tensors = {
                "token": self.token.detach()[None],
                "concept_input": self.concept_input,
                "superclass_input": self.superclass_input,
                "cov_inv_concept": self.cov_inv @ self.concept_input,
                **{f"{n}.value_target": self.value_targets[param_key(n)].detach() for n in self.layers},
            }
            tensors = {k: v.float().cpu().contiguous() for k, v in tensors.items()}
        for k, v in tensors.items():
            if not torch.isfinite(v).all():
                raise ValueError(f"refusing to save: {k} is not finite (NaN/inf)")
        meta = customization_metadata(self.cfg, self.name, FORMAT, fingerprint, beta=self.beta, temperature=self.tau,
                                      inference_beta=self.inference_beta, inference_temperature=self.inference_tau)
        save_safetensors_atomic(tensors, path, meta)
        return tensors
