"""TokenCompose's token loss (Wang et al., CVPR 2024) for training the world model.

Why: Infusion's residual rides on the base model's cross-attention map of the class word; a map
spread over the whole image makes the customised stream paint the background too. ``L_token``
asks every ``attn2`` layer to put the class word's attention mass inside its object's box:

    L_token = mean over (object, layer) of (1 - sum_u A[u] M[u] / sum_u A[u])^2

``A`` (HW,) is the class token's attention over image positions (mean over heads), ``M`` (HW,)
the object's box as the share of each latent cell it covers. Diffusers has no such loss, hence
this module: a recording ``attn2`` processor (output == stock attention) and the loss.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from infusion.world import scenes


class RecordingCrossAttnProcessor:
    """Stock attention that also keeps the full maps of ``attn2``: ``self.maps`` (B, heads, HW, L).

    ``key_context`` (B, L, C_text), when set, is what the keys are computed from instead of the text states
    (the world trainer's ``look_in_class_values``); the values always come from the text states.
    """

    def __init__(self):
        self.maps: torch.Tensor | None = None
        self.key_context: torch.Tensor | None = None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        b = hidden_states.shape[0]
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))  # (B*h, HW, d)
        keys_from = context if self.key_context is None or encoder_hidden_states is None else self.key_context
        k = attn.head_to_batch_dim(attn.to_k(keys_from))  # (B*h, L, d)
        v = attn.head_to_batch_dim(attn.to_v(context))
        if attention_mask is not None:  # (B, 1, L) additive bias from the UNet's encoder_attention_mask
            attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], b)  # (B*h, 1, L)
        probs = attn.get_attention_scores(q, k, attention_mask)  # (B*h, HW, L)
        self.maps = probs.view(b, attn.heads, *probs.shape[1:])
        out = attn.batch_to_head_dim(torch.bmm(probs, v))
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def install_recorders(unet) -> dict[str, RecordingCrossAttnProcessor]:
    """Give every ``attn2`` a recorder (``attn1`` keeps its processor); returns them by layer name."""
    procs, recorders = {}, {}
    for name, proc in unet.attn_processors.items():
        if name.endswith("attn2.processor"):
            recorders[name] = procs[name] = RecordingCrossAttnProcessor()
        else:
            procs[name] = proc
    unet.set_attn_processor(procs)
    return recorders


def box_mask(box: tuple[int, int, int, int], image_size: int, grid: int) -> torch.Tensor:
    """(grid*grid,) share of each latent cell that the pixel ``box`` (left, top, right, bottom) covers."""
    m = torch.zeros(1, 1, image_size, image_size)
    left, top, right, bottom = (min(max(v, 0), image_size) for v in box)
    m[..., top:bottom, left:right] = 1.0
    return F.adaptive_avg_pool2d(m, grid).flatten()


@functools.lru_cache(maxsize=4096)
def object_mask(obj: scenes.WorldObject, image_size: int, grid: int) -> torch.Tensor:
    """``box_mask`` of an object's nominal box, made once per (object, grid): objects recur across steps."""
    return box_mask(scenes.object_box(obj, image_size), image_size, grid)


def class_token_targets(input_ids, batch_scenes: list[scenes.Scene | None], tokenizer) -> list[tuple[int, int, scenes.WorldObject]]:
    """``(row, token index, object)`` for every object whose class word its caption names.

    ``input_ids``: the batch's token ids (B, L), as already tokenized for the text encoder. Objects
    are captioned in order, so the k-th object's class word is the first occurrence of its token
    after the previous object's. A dropped caption ("") names no class and gives no target.
    """
    out = []
    for row, (ids, scene) in enumerate(zip(input_ids, batch_scenes)):
        if scene is None:
            continue
        ids = ids.tolist() if torch.is_tensor(ids) else list(ids)
        at = 0
        for obj in scene.objects:
            try:
                at = ids.index(tokenizer.convert_tokens_to_ids(obj.cls + "</w>"), at)
            except ValueError:
                break
            out.append((row, at, obj))
            at += 1
    return out


def inside_share(maps: torch.Tensor, targets, image_size: int = scenes.IMAGE_SIZE) -> torch.Tensor:
    """(N,) share of each target's class-token attention (mean over heads) inside its object's box.

    maps (B, heads, HW, L) from one ``attn2`` layer; targets from ``class_token_targets``.
    """
    grid = int(round(maps.shape[2] ** 0.5))
    rows = torch.tensor([r for r, _, _ in targets])
    toks = torch.tensor([t for _, t, _ in targets])
    a = maps[rows, :, :, toks].mean(dim=1)  # (N, HW)
    m = torch.stack([object_mask(o, image_size, grid) for _, _, o in targets])  # (N, HW)
    return (a * m).sum(-1) / a.sum(-1).clamp_min(1e-8)


def token_loss(recorders: dict[str, RecordingCrossAttnProcessor], targets, image_size: int = scenes.IMAGE_SIZE) -> torch.Tensor:
    """TokenCompose's ``L_token`` over the maps recorded by the last UNet call; 0 when no target."""
    if not targets:
        return torch.zeros(())
    return torch.cat([(1 - inside_share(rec.maps, targets, image_size)).pow(2) for rec in recorders.values()]).mean()
