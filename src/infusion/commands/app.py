"""``infusion app``: serve the web page (Gradio) to customise, generate and compare."""

from __future__ import annotations


def register(sub) -> None:
    import argparse

    p = sub.add_parser("app", help="a web page to train, generate, compare and browse concepts",
                       description="Serve the infusion web page. Binds to 127.0.0.1 unless --host says otherwise; "
                                   "never opens a public share link.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="world", help="base model (diffusers folder, .safetensors, hub id, world, tiny)")
    p.add_argument("--library", default="library", help="folder of trained concepts (created if missing)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes it to your network)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--model-config", default=None, help="configs for a single-file checkpoint")
    p.set_defaults(func=run)


def run(args) -> int:
    try:
        from infusion.app.ui import serve
    except ImportError as e:  # gradio is an optional dependency
        raise ValueError(f"the web page needs gradio: pip install 'infusion[app]' ({e})") from e
    print(f"infusion app: http://{args.host}:{args.port}  (library: {args.library}, model: {args.model})")
    serve(args.model, args.library, args.host, args.port, args.model_config)
    return 0
