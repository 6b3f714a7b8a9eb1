"""``infusion merge``: Custom Diffusion's multi-concept composition, its authors' closed-form constrained merge of
separately trained folders (``infusion.methods.custom_diffusion.merge``) -> one folder with every concept."""

from __future__ import annotations

from pathlib import Path

from infusion.commands import HelpFormatter

HELP = "merge trained Custom Diffusion folders into one multi-concept folder"  # the line in `infusion --help` (read without running register)


def register(sub) -> None:
    p = sub.add_parser("merge", help=HELP,
                       description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("folders", nargs="+", help="Custom Diffusion folders (`infusion train --method custom-diffusion`), two or more")
    p.add_argument("--model", required=True, help="the base model they were trained on (world, tiny, a diffusers folder, ...)")
    p.add_argument("--out", required=True, help="the merged folder; generate with --concept OUT and a prompt naming each <name>")
    p.add_argument("--captions", default=None,
                   help="regularisation captions, one per line, all used (the authors use 200 real captions; default: "
                        "200 of the world's captions on the world, else 200 world-style scene captions: pass real "
                        "captions for a real model)")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from infusion.methods.custom_diffusion.merge import merge_folders

    captions = None
    if args.captions:
        captions = [c.strip() for c in Path(args.captions).read_text().splitlines() if c.strip()]
        if not captions:
            raise ValueError(f"{args.captions}: no captions in it")
    meta = merge_folders(args.model, args.folders, args.out, captions=captions)
    names = [f"<{c['name']}>" for c in json.loads(meta["concepts"])]
    print(f"wrote {args.out}: {' and '.join(names)} (prompt e.g. \"a photo of a {' and a '.join(names)}\")")
    return 0
