"""How good a contextualizer is: masked-token accuracy and cross-entropy on held-out captions (issue 16).

The MLM regulariser only helps as far as its contextualizer predicts masked words from context. This compares
contextualizer files on the same held-out world captions (scenes the pretraining corpus never drew), with the
mask the regulariser uses (15% of the words), seeded: top-1 accuracy, top-5 accuracy and CE at the masked tokens.

    python studies/mlm_contextualizer_accuracy.py src/infusion/world/contextualizer.safetensors runs/ctx/np.safetensors \
        [--model world] [--n 2000] [--out docs/results/contextualizer_accuracy.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


@torch.no_grad()
def evaluate(path: str, text_encoder, tokenizer, captions: list[str], batch: int = 64, rate: float = 0.15,
             seed: int = 0) -> dict:
    from infusion.mlm.contextualizer import load_contextualizer
    from infusion.mlm.masking import encode_masked, make_batch, sample_mask, tokenize_captions

    model, mask_embedding, meta = load_contextualizer(path, text_encoder)
    ids = tokenize_captions(captions, tokenizer)
    g = torch.Generator().manual_seed(seed)
    top1 = top5 = n = 0
    ce = 0.0
    for i in range(0, len(ids), batch):
        b = make_batch(ids[i:i + batch], tokenizer)
        mask = sample_mask(b.maskable, rate, g)  # (B, L)
        states = encode_masked(text_encoder, b.input_ids, mask, mask_embedding)
        logits = model(states, b.attention_mask, select=mask).float()  # (M, V)
        target = b.input_ids[mask]
        ce += torch.nn.functional.cross_entropy(logits, target, reduction="sum").item()
        best = logits.topk(5, dim=-1).indices
        top1 += (best[:, 0] == target).sum().item()
        top5 += (best == target[:, None]).any(-1).sum().item()
        n += target.numel()
    settings = json.loads(meta.get("pretrain", "{}"))
    return {"file": str(path), "masked_tokens": n, "top1": top1 / n, "top5": top5 / n, "ce": ce / n,
            "objective": settings.get("objective", "masked"), "mask_rate": settings.get("mask_rate"),
            "steps": settings.get("steps"), "batch_size": settings.get("batch_size")}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+")
    ap.add_argument("--model", default="world")
    ap.add_argument("--n", type=int, default=2000, help="held-out captions")
    ap.add_argument("--out", default=None, help="JSON of the figures (rows of other files or models already there are kept)")
    args = ap.parse_args()
    from infusion.mlm.pretrain import load_text_side, world_captions

    text_encoder, tokenizer = load_text_side(args.model)
    text_encoder.eval()
    captions = world_captions(args.n, seed=50_000_000)  # pretraining draws scenes 0..19,999
    from infusion.evaluation.world_results import model_fingerprint

    fingerprint = model_fingerprint(args.model)  # the text encoder the figures are of
    rows = [{**evaluate(f, text_encoder, tokenizer, captions), "model": args.model, "model_fingerprint": fingerprint}
            for f in args.files]
    for r in rows:
        print(f"{r['file']}: objective {r['objective']}, mask {r['mask_rate']}: top-1 {r['top1']:.3f}, top-5 "
              f"{r['top5']:.3f}, CE {r['ce']:.3f} on {r['masked_tokens']} masked tokens")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        new = {(r["file"], r["model_fingerprint"]) for r in rows}
        kept = [r for r in (json.loads(out.read_text()) if out.is_file() else [])
                if (r["file"], r.get("model_fingerprint")) not in new]
        out.write_text(json.dumps(kept + rows, indent=1))


if __name__ == "__main__":
    main()
