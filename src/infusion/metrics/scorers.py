"""Fidelity scorers: CLIP-T, CLIP-I, DINO-I (DreamBooth protocol) and a plug for other probes.

A ``Scorer`` turns generated images into per-image scores. Each declares which of its scores plays
the *text fidelity* and the *image (concept) fidelity* role, so the evaluation table can show
CLIP-T / CLIP-I on photos and the built-in world's probes on the world with the same columns.

- CLIP-T: cosine of the image embedding and the prompt embedding, the prompt with each
  placeholder replaced by its class phrase ("a <mycat> in the snow" -> "a cat in the snow").
- CLIP-I / DINO-I: mean cosine between a generated image and every reference (training) image;
  averaged over images this is the mean pairwise cosine of the protocol. DINO uses the CLS token.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import numpy as np
import torch

from infusion.core.placeholders import substitute


class Scorer(Protocol):
    """Per-image scores for a batch of generated images.

    ``score(images, texts, references, class_phrase)``: images (N PIL), texts (N prompts with
    class phrases in place of placeholders), references (reference PIL images of the concept, may
    be empty), the concept's class phrase (for scorers that look for the object) ->
    ``{score name: array [N]}``. ``roles`` maps "text" / "image" / "dino" to score names.
    """

    name: str
    roles: dict[str, str]

    def score(self, images: Sequence, texts: Sequence[str], references: Sequence = (),
              class_phrase: str | None = None) -> dict[str, np.ndarray]: ...


def scoring_texts(prompts: Sequence[str], class_phrases: dict[str, str]) -> list[str]:
    """CLIP-T's texts: each ``<name>`` replaced by its class phrase (DreamBooth protocol)."""

    return [substitute(p, class_phrases)[0] for p in prompts]


def _features(out) -> torch.Tensor:
    """transformers 5 returns a model output from ``get_*_features``; older versions a tensor."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.double(), dim=-1)


def mean_cosine_to_references(emb: torch.Tensor, ref: torch.Tensor) -> np.ndarray:
    """emb [N, D], ref [R, D] (unit norm) -> mean over references of the cosine, [N]."""
    if ref.shape[0] == 0:
        return np.full(emb.shape[0], np.nan)
    return (emb @ ref.T).mean(dim=1).numpy()


def _batched(fn, items, batch_size):
    return torch.cat([fn(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]) if items else None


class CLIPScorer:
    """CLIP-T and CLIP-I with a ``CLIPModel`` + ``CLIPProcessor`` from a local path or hub id."""

    name = "clip"
    roles = {"text": "clip_t", "image": "clip_i"}

    def __init__(self, model: str, device: str | torch.device = "cpu", batch_size: int = 16):
        from transformers import CLIPModel, CLIPProcessor

        self.model = CLIPModel.from_pretrained(model).to(device).eval()
        self.processor = CLIPProcessor.from_pretrained(model)
        self.device, self.batch_size = torch.device(device), batch_size

    @torch.no_grad()
    def embed_images(self, images: Sequence) -> torch.Tensor:
        """N PIL images -> unit CLIP image embeddings [N, D] (float64, cpu)."""

        def run(chunk):
            pix = self.processor(images=list(chunk), return_tensors="pt")["pixel_values"].to(self.device)
            return _normalize(_features(self.model.get_image_features(pixel_values=pix)).cpu())

        return _batched(run, list(images), self.batch_size)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """N texts -> unit CLIP text embeddings [N, D] (float64, cpu)."""

        def run(chunk):
            enc = self.processor(text=list(chunk), padding=True, truncation=True, return_tensors="pt").to(self.device)
            feats = self.model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
            return _normalize(_features(feats).cpu())

        return _batched(run, list(texts), self.batch_size)

    def score(self, images, texts, references=(), class_phrase=None):
        if len(images) != len(texts):
            raise ValueError(f"need one text per image: {len(images)} images, {len(texts)} texts")
        img = self.embed_images(images)
        out = {"clip_t": (img * self.embed_texts(texts)).sum(-1).numpy()}
        ref = self.embed_images(references) if len(references) else torch.zeros(0, img.shape[1], dtype=img.dtype)
        out["clip_i"] = mean_cosine_to_references(img, ref)
        return out


class DINOScorer:
    """DINO-I with any ``AutoModel`` vision transformer (DINO ViT-S/16, DINOv2, ViT): CLS token."""

    name = "dino"
    roles = {"dino": "dino_i"}

    def __init__(self, model: str, device: str | torch.device = "cpu", batch_size: int = 16):
        from transformers import AutoImageProcessor, AutoModel

        self.model = AutoModel.from_pretrained(model).to(device).eval()
        self.processor = AutoImageProcessor.from_pretrained(model)
        self.device, self.batch_size = torch.device(device), batch_size

    @torch.no_grad()
    def embed_images(self, images: Sequence) -> torch.Tensor:
        """N PIL images -> unit CLS embeddings [N, D] (float64, cpu)."""

        def run(chunk):
            pix = self.processor(images=list(chunk), return_tensors="pt")["pixel_values"].to(self.device)
            return _normalize(self.model(pixel_values=pix).last_hidden_state[:, 0].cpu())  # CLS token

        return _batched(run, list(images), self.batch_size)

    def score(self, images, texts, references=(), class_phrase=None):
        img = self.embed_images(images)
        ref = self.embed_images(references) if len(references) else torch.zeros(0, img.shape[1], dtype=img.dtype)
        return {"dino_i": mean_cosine_to_references(img, ref)}


class FunctionScorer:
    """Wrap plain functions as a Scorer, e.g. the built-in world's probes.

    text_fn(images, texts) -> [N] and image_fn(images, references) -> [N]; either may be None.
    """

    def __init__(
        self,
        name: str,
        text_fn: Callable | None = None,
        image_fn: Callable | None = None,
        text_key: str = "text_fidelity",
        image_key: str = "concept_fidelity",
    ):
        if text_fn is None and image_fn is None:
            raise ValueError("FunctionScorer needs at least one of text_fn, image_fn")
        self.name, self.text_fn, self.image_fn = name, text_fn, image_fn
        self.text_key, self.image_key = text_key, image_key
        self.roles = {}
        if text_fn is not None:
            self.roles["text"] = text_key
        if image_fn is not None:
            self.roles["image"] = image_key

    def score(self, images, texts, references=(), class_phrase=None):
        out = {}
        if self.text_fn is not None:
            out[self.text_key] = np.asarray(self.text_fn(list(images), list(texts)), dtype=np.float64)
        if self.image_fn is not None:
            out[self.image_key] = np.asarray(self.image_fn(list(images), list(references)), dtype=np.float64)
        for k, v in out.items():
            if v.shape != (len(images),):
                raise ValueError(f"scorer {self.name!r}: {k} has shape {v.shape}, expected ({len(images)},)")
        return out
