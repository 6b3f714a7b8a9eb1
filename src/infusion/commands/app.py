"""``infusion app``: serve the web page (Gradio) to customise, generate and compare."""

from __future__ import annotations

import argparse

from infusion.commands import HelpFormatter


def _auth(text: str) -> tuple[str, str]:
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise argparse.ArgumentTypeError("expected USER:PASSWORD (both non-empty)")
    return user, password


HELP = "a web page to train, generate, compare and browse concepts"  # the line in `infusion --help` (read without running register)


def register(sub) -> None:
    p = sub.add_parser("app", help=HELP,
                       description="Serve the infusion web page. Binds to 127.0.0.1 unless --host says otherwise; "
                                   "never opens a public share link. Any other --host needs --auth USER:PASSWORD "
                                   "(or --no-auth, which serves the page to the network without a login).",
                       formatter_class=HelpFormatter)
    p.add_argument("--model", default="world",
                   help="base model (diffusers folder, .safetensors, hub id, world, tiny, tiny-sd2, tiny-sdxl)")
    p.add_argument("--library", default="library", help="folder of trained concepts (created if missing)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (0.0.0.0 exposes it to your network: then --auth or --no-auth is required)")
    p.add_argument("--port", type=int, default=7860, help="port to serve on")
    p.add_argument("--model-config", default=None, help="configs for a single-file checkpoint")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--auth", type=_auth, default=None, metavar="USER:PASSWORD",
                     help="require this login (other local users can read a command line: prefer a host you trust)")
    who.add_argument("--no-auth", action="store_true",
                     help="serve a non-localhost --host without a login (anyone who reaches it can use and change "
                          "the library)")
    p.set_defaults(func=run)


def run(args) -> int:
    try:
        import gradio  # noqa: F401  (deferred on purpose: gradio is an optional dependency, infusion[app])

        from infusion.app.ui import check_serving, serve
    except ImportError as e:
        raise ValueError(f"the web page needs gradio: pip install 'infusion[app]' ({e})") from e
    check_serving(args.host, args.auth, args.no_auth)  # refused before anything loads; serve logs the warning
    print(f"infusion app: http://{args.host}:{args.port}  (library: {args.library}, model: {args.model})")
    serve(args.model, args.library, args.host, args.port, args.model_config, auth=args.auth, no_auth=args.no_auth)
    return 0
