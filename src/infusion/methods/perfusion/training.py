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
from torch import nn

from infusion.core.customization_files import customization_metadata
from infusion.core.model_profiles import CAPTION_TEMPLATES, model_profile
from infusion.core.placeholders import parse_prompt
from infusion.core.safetensors_io import save_safetensors_atomic
from infusion.core.tokens import encode_with_token, phrase_embedding
from infusion.methods.base import Method, TextBatch, param_key
from infusion.methods.infusion.processor import cross_attention_layers
from infusion.methods.perfusion.loader import PerfusionCustomization, RankOneEdit, install_perfusion  # noqa: F401
from infusion.training.data import caption_templates

FORMAT = "infusion-perfusion"
NOUNS = ("dog", "cat", "car", "house", "tree", "person", "woman", "man", "child", "bird", "flower", "chair", "table",
         "cup", "bottle", "book", "bag", "shoe", "hat", "toy", "bear", "ball", "bike", "boat", "clock", "lamp",
         "phone", "robot", "vase", "teapot", "backpack", "sunglasses", "horse", "fish", "apple", "cake", "guitar",
         "mountain", "beach", "city", "river", "forest", "road", "window", "door", "painting", "sculpture", "box")


def covariance_prompts(class_phrase: str, model="") -> list[str]:
    """The caption corpus C is estimated on: the model's own captions where its profile knows them (the world's),
    else templates x nouns."""
    corpus = model_profile(model).caption_corpus(2000)
    if corpus is not None:
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


class Perfusion(Method):
    name = "perfusion"
    default_lr = 5e-3  # our choice, see the module docstring
    cache_text = False  # the concept token changes every step
    out_help = "a .safetensors file (format infusion-perfusion): token, i*, i_class, C^-1 i*, per-layer value targets"
    method_args_help = {"beta": "gate threshold in training (default 0.75)", "temperature": "gate temperature in training (default 0.1)",
                        "inference_beta": "gate threshold at generation (default 0.70)",
                        "concept_rows_only": "at generation, prompts without the concept keep the stock K/V (exactly the "
                                             "base model; a departure from the paper, default false)",
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
