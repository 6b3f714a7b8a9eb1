"""TokenCompose's L_token for the world model: the recording processor is stock attention, the
targets point at the class words, the loss has the values its formula gives; text-encoder ranges."""

import pytest
import torch

from infusion.world import scenes
from infusion.world.token_loss import RecordingCrossAttnProcessor, box_mask, class_token_targets, install_recorders, token_loss


def test_recording_processor_output_equals_stock_attention(tiny_pipe):
    from diffusers.models.attention_processor import AttnProcessor

    unet = tiny_pipe.unet
    torch.manual_seed(0)
    z, cond = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 32)
    unet.set_attn_processor(AttnProcessor())
    with torch.no_grad():
        stock = unet(z, 10, cond).sample
    recorders = install_recorders(unet)
    with torch.no_grad():
        recorded = unet(z, 10, cond).sample
    assert torch.equal(stock, recorded)
    assert recorders and all(name.endswith("attn2.processor") for name in recorders)
    assert not any(isinstance(p, RecordingCrossAttnProcessor) for n, p in unet.attn_processors.items() if "attn1" in n)
    for rec in recorders.values():
        b, heads, hw, length = rec.maps.shape
        assert (b, length) == (2, 77) and heads >= 1
        assert torch.allclose(rec.maps.sum(-1), torch.ones(b, heads, hw), atol=1e-5)


def test_box_mask_is_the_covered_share_of_each_cell():
    assert box_mask((0, 0, 16, 16), 32, 2).tolist() == [1.0, 0.0, 0.0, 0.0]
    assert box_mask((8, 0, 24, 32), 32, 2).tolist() == [0.5, 0.5, 0.5, 0.5]
    assert box_mask((-5, -5, 40, 40), 32, 4).tolist() == [1.0] * 16  # clipped to the image


def test_class_token_targets_follow_the_objects_in_caption_order(tokenizer):
    red = scenes.WorldObject("ball", "red", "small", "top left")
    blue = scenes.WorldObject("ball", "blue", "large", "bottom right")
    two = scenes.Scene("snow", (red, blue))
    one = scenes.Scene("grass", (scenes.WorldObject("house", "white", "small", "center"),))
    captions = ["a red ball and a blue ball on the snow", "", "a photo of a white house on the grass"]
    ids = tokenizer(captions, padding="max_length", max_length=77, return_tensors="pt").input_ids
    targets = class_token_targets(ids, [two, two, one], tokenizer)
    ids0 = tokenizer(captions[0]).input_ids
    ball = tokenizer.convert_tokens_to_ids("ball</w>")
    first, second = [i for i, t in enumerate(ids0) if t == ball]
    assert [(r, t, o) for r, t, o in targets[:2]] == [(0, first, red), (0, second, blue)]
    row, tok, obj = targets[2]
    assert (row, obj) == (2, one.objects[0])
    assert tokenizer(captions[2]).input_ids[tok] == tokenizer.convert_tokens_to_ids("house</w>")
    assert len(targets) == 3  # the dropped caption has no target


def _recorder(maps):
    rec = RecordingCrossAttnProcessor()
    rec.maps = maps
    return rec


@pytest.mark.parametrize("inside_share,expected", [(1.0, 0.0), (0.0, 1.0), (0.25, 0.5625)])
def test_token_loss_values(inside_share, expected):
    obj = scenes.WorldObject("ball", "red", "small", "top left")
    mask = box_mask(scenes.object_box(obj), 32, 8)
    inside, outside = (mask == 1).float(), (mask == 0).float()
    a = inside_share * inside / inside.sum() + (1 - inside_share) * outside / outside.sum()  # (64,)
    maps = torch.zeros(1, 2, 64, 77)
    maps[0, :, :, 5] = a
    loss = token_loss({"l": _recorder(maps)}, [(0, 5, obj)])
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert token_loss({"l": _recorder(maps)}, []).item() == 0.0


def test_text_encoder_ranges_and_restart_from_ema_with_fresh_moments():
    from infusion.world.train_model import _unfreeze_text_encoder, text_encoder_trains_at

    ranges = ((0, 1300), (8101, None))
    assert [text_encoder_trains_at(s, ranges) for s in (0, 1299, 1300, 8100, 8101, 10**6)] == [True, True, False, False, True, True]
    torch.manual_seed(0)
    text, ema, other = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3), torch.nn.Linear(3, 1)
    opt = torch.optim.AdamW(list(text.parameters()) + list(other.parameters()), lr=1e-2)
    (text(torch.randn(2, 3)).sum() + other(torch.randn(2, 3)).sum()).backward()
    opt.step()
    text.requires_grad_(False)
    _unfreeze_text_encoder(text, ema, opt)
    assert torch.equal(text.weight, ema.weight) and text.weight.requires_grad
    assert all(p not in opt.state for p in text.parameters())
    assert all(p in opt.state for p in other.parameters())  # the UNet's moments stay
