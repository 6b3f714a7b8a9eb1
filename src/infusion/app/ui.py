"""The page (Gradio Blocks): tabs Train, Generate, Compare, Attention, Library, wired to ``actions`` and ``jobs``.

Every handler shows a person-readable message in its tab's status line (``⚠ ...``) instead of a stack trace.
Element ids (``elem_id``) are what the browser tests address.
"""

from __future__ import annotations

import functools

from infusion.app.actions import Actions
from infusion.app.jobs import Trainer
from infusion.app.library import Library
from infusion.core.model_profiles import model_profile
from infusion.methods import available_methods, get_method
from infusion.training.data import IMAGE_SUFFIXES

SAMPLE_EVERY = 50


def _md(text: str) -> str:
    """Plain text for a Markdown status line: ``<name>`` would be taken for an HTML tag and vanish."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _safe(status_index: int | None = None, n_outputs: int = 1):
    """Decorator: a ``ValueError`` (or any error) becomes ``⚠ message`` in the status output, others unchanged."""

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            import gradio as gr

            try:
                return fn(*args, **kwargs)
            except Exception as e:  # shown to the person, never a trace
                msg = str(e) if isinstance(e, ValueError) else f"something went wrong: {type(e).__name__}: {e}"
                outs = [gr.update() for _ in range(n_outputs)]
                outs[status_index if status_index is not None else n_outputs - 1] = f"⚠ {_md(msg)}"
                return tuple(outs) if n_outputs > 1 else outs[0]

        return inner

    return wrap


def build(model: str = "world", library: str = "library", model_config: str | None = None):
    """The app's ``gr.Blocks`` for base ``model`` and the library folder ``library``."""
    import gradio as gr

    lib = Library(library)
    actions = Actions(model, lib, model_config)
    trainer = Trainer(lib, model, model_config)
    profile = model_profile(model)
    builtin_concepts = profile.concepts()  # name -> class phrase: the world's, none on a checkpoint
    has_probes = profile.is_builtin_world  # the world's probes score text and concept fidelity
    methods = available_methods()

    def default_lr(method: str, batch: int = 4) -> float:
        return get_method(method).default_learning_rate(model, batch)

    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["monospace"])  # no web fonts: works offline
    with gr.Blocks(title="infusion", analytics_enabled=False, theme=theme) as page:
        gr.Markdown(f"# infusion\nCustomise **{model}** with a few photos, generate, compare. Library: `{lib.folder}`")

        # -- Train --------------------------------------------------------------------------------
        with gr.Tab("Train", elem_id="tab-train"):
            with gr.Row():
                with gr.Column():
                    images = gr.File(label="Photos of the concept (3-10)", file_count="multiple", type="filepath",
                                     elem_id="train-images")
                    builtin = gr.Radio(["none", *builtin_concepts], value="none", label="or a built-in world concept",
                                       visible=bool(builtin_concepts), elem_id="train-builtin")
                    preview = gr.Gallery(label="training images", columns=5, height=140, elem_id="train-preview")
                with gr.Column():
                    name = gr.Textbox(label="Name (used as <name> in prompts)", placeholder="mycat", elem_id="train-name")
                    phrase = gr.Textbox(label="Class phrase", placeholder="cat", elem_id="train-class")
                    method = gr.Radio(methods, value="infusion", label="Method", elem_id="train-method")
                    with gr.Row():
                        steps = gr.Number(500, label="Steps", precision=0, elem_id="train-steps")
                        lr = gr.Number(default_lr("infusion"), label="Learning rate (the method's default)",
                                       elem_id="train-lr")
                        every = gr.Number(SAMPLE_EVERY, label="Sample every N steps (0: none)", precision=0,
                                          elem_id="train-every")
                    options = gr.Textbox(label="Method options (KEY=VALUE, space-separated, as `infusion train "
                                               "--method-arg`)", placeholder=_options_hint("infusion"),
                                         elem_id="train-options")
                    with gr.Row():
                        start = gr.Button("Start training", variant="primary", elem_id="train-start")
                        cancel = gr.Button("Cancel", elem_id="train-cancel")
            status = gr.Markdown(elem_id="train-status")
            with gr.Row():
                curve = gr.Plot(label="loss", elem_id="train-curve")
                sample = gr.Image(label="sample (a photo of <name>)", type="pil", elem_id="train-sample")
            # always ticking, like the library poll below: a timer switched on and off by the handlers could be
            # left off by a lost tick; a tick that finds nothing new sends nothing
            timer, shown_job = gr.Timer(1.0), gr.State(None)

            def pick_builtin(choice):
                if choice == "none":
                    return gr.update(), gr.update(), gr.update(), gr.update()
                paths = _builtin_concept_files(profile, choice)
                return paths, paths, choice, builtin_concepts[choice]

            builtin.change(pick_builtin, builtin, [images, preview, name, phrase])
            def shown(files):  # the preview shows the images among the uploads (the check at start names the rest)
                from pathlib import Path

                return [f for f in files or [] if Path(f).suffix.lower() in IMAGE_SUFFIXES]

            images.upload(shown, images, preview)
            method.change(lambda m: (default_lr(m), gr.update(placeholder=_options_hint(m))), method, [lr, options])

            @_safe(0)
            def on_start(files, nm, ph, m, n_steps, rate, n_every, opts):
                rate = None if rate is None or abs(float(rate) - default_lr(m)) <= 1e-12 * default_lr(m) else float(rate)
                job = trainer.start(files or [], nm, ph, m, int(n_steps or 0), rate, int(n_every or 0), options=opts or "")
                return _md(f"training <{job.name}> with {job.method}: starting...")

            start.click(on_start, [images, name, phrase, method, steps, lr, every, options], status)
            cancel.click(lambda: _md(trainer.cancel()), None, status)

            def tick(last):
                job = trainer.job
                sig = None if job is None else (job.id, job.step, job.status, job.message, len(job.samples))
                if sig == last:
                    return gr.update(), gr.update(), gr.update(), last
                eta = "" if job.eta is None else f", about {job.eta:.0f} s left"
                loss = f", loss {job.losses[-1]:.4f}" if job.losses else ""
                text = f"**{job.status}**: " + _md(f"<{job.name}> ({job.method}) step {job.step}/{job.steps}{loss}{eta}")
                if job.message:
                    text += f"\n\n{_md(job.message)}"
                img = _enlarged(job.samples[-1][1]) if job.samples else gr.update()
                return text, _loss_figure(job.losses), img, sig

            # a reloaded page starts with no state, so it shows the job that runs (or last ran) at its first tick
            timer.tick(tick, shown_job, [status, curve, sample, shown_job], show_progress="hidden")

        # -- Generate -----------------------------------------------------------------------------
        with gr.Tab("Generate", elem_id="tab-generate") as gen_tab:
            with gr.Row():
                prompt = gr.Textbox(label="Prompt", placeholder="a photo of <mycat> on the beach", elem_id="gen-prompt")
                negative = gr.Textbox(label="Negative prompt", elem_id="gen-negative")
            gen_concepts = gr.CheckboxGroup([], label="Concepts from the library (several Infusion concepts compose)",
                                            elem_id="gen-concepts")
            with gr.Row():
                seeds = gr.Textbox("0", label="Seeds (0, 1, 2)", elem_id="gen-seeds")
                gen_steps = gr.Number(25, label="Steps", precision=0, elem_id="gen-steps")
                guidance = gr.Number(8.0, label="Guidance", elem_id="gen-guidance")
            go = gr.Button("Generate", variant="primary", elem_id="gen-go")
            gen_status = gr.Markdown(elem_id="gen-status")
            with gr.Row():
                base_out = gr.Gallery(label="base model", columns=4, elem_id="gen-base")
                custom_out = gr.Gallery(label="customised", columns=4, elem_id="gen-custom")
            files_out = gr.File(label="PNG files (prompt, seed, steps, guidance, model and concepts inside)",
                                file_count="multiple", elem_id="gen-files")

            @_safe(3, 4)
            def on_generate(p, concepts, neg, s, n, g):
                base, custom, files, notes = actions.generate(p, concepts, neg, s, n, g)
                return base, custom, [str(f) for f in files], _md(notes or f"{len(custom)} image(s): base | customised")

            go.click(on_generate, [prompt, gen_concepts, negative, seeds, gen_steps, guidance],
                     [base_out, custom_out, files_out, gen_status])
            gen_tab.select(lambda: gr.update(choices=actions.names()), None, gen_concepts)

        # -- Compare ------------------------------------------------------------------------------
        with gr.Tab("Compare", elem_id="tab-compare") as cmp_tab:
            cmp_prompt = gr.Textbox("a photo of a <concept> on the beach", label="Prompt (<concept> = each entry)",
                                    elem_id="cmp-prompt")
            cmp_entries = gr.CheckboxGroup([], label="Library entries (any methods)", elem_id="cmp-entries")
            with gr.Row():
                cmp_seed = gr.Number(0, label="Seed", precision=0, elem_id="cmp-seed")
                cmp_steps = gr.Number(25, label="Steps", precision=0, elem_id="cmp-steps")
                cmp_scores = gr.Checkbox(has_probes, label="world probes' text and concept fidelity under each image",
                                         visible=has_probes, elem_id="cmp-scores")
            cmp_go = gr.Button("Compare", variant="primary", elem_id="cmp-go")
            cmp_status = gr.Markdown(elem_id="cmp-status")
            cmp_out = gr.Gallery(label="base first, then one column per entry", columns=6, elem_id="cmp-out")

            @_safe(1, 2)
            def on_compare(p, names, s, n, sc):
                cells = actions.compare(p, names, s, n, scores=bool(sc))
                return cells, f"{len(cells) - 1} entr{'y' if len(cells) == 2 else 'ies'} and the base model"

            cmp_go.click(on_compare, [cmp_prompt, cmp_entries, cmp_seed, cmp_steps, cmp_scores], [cmp_out, cmp_status])
            cmp_tab.select(lambda: gr.update(choices=actions.names()), None, cmp_entries)

        # -- Attention ----------------------------------------------------------------------------
        with gr.Tab("Attention", elem_id="tab-attention") as att_tab:
            att_entry = gr.Radio([], label="Infusion concept", elem_id="att-entry")
            att_prompt = gr.Textbox(label="Prompt naming it", placeholder="a photo of <mycat> on the beach",
                                    elem_id="att-prompt")
            att_seed = gr.Number(0, label="Seed", precision=0, elem_id="att-seed")
            att_go = gr.Button("Show where the residual lands", variant="primary", elem_id="att-go")
            att_status = gr.Markdown(elem_id="att-status")
            att_out = gr.Gallery(label="base model's cross-attention on the concept's tokens (heads, steps, layers "
                                       "averaged), per resolution", columns=4, elem_id="att-out")

            @_safe(1, 2)
            def on_attention(nm, p, s):
                if not nm:
                    raise ValueError("pick an Infusion concept")
                cells = actions.attention(nm, p, s)
                return cells, f"{len(cells) - 1} attention maps (brighter: more attention on the concept's tokens)"

            att_go.click(on_attention, [att_entry, att_prompt, att_seed], [att_out, att_status])

            def att_choices():
                names = actions.names("infusion")
                return gr.update(choices=names), gr.update(value=f"a photo of <{names[0]}>" if names else "")

            att_tab.select(att_choices, None, [att_entry, att_prompt])

        # -- Library ------------------------------------------------------------------------------
        with gr.Tab("Library", elem_id="tab-library") as lib_tab:
            table = gr.Dataframe(headers=["name", "method", "class", "base model", "fingerprint", "size", "date",
                                          "images"], interactive=False, elem_id="lib-table")
            lib_entry = gr.Radio([], label="Entry", elem_id="lib-entry")
            details = gr.Markdown(elem_id="lib-details")
            thumbs = gr.Gallery(label="training images", columns=8, height=120, elem_id="lib-thumbs")
            with gr.Row():
                new_name = gr.Textbox(label="New name", elem_id="lib-newname")
                rename_btn = gr.Button("Rename", elem_id="lib-rename")
            with gr.Row():
                sure = gr.Checkbox(False, label="yes, delete", elem_id="lib-sure")
                delete_btn = gr.Button("Delete", variant="stop", elem_id="lib-delete")
                download_btn = gr.Button("Download", elem_id="lib-download")
            lib_file = gr.File(label="download", elem_id="lib-file")
            lib_status = gr.Markdown(elem_id="lib-status")

            def refresh(msg=""):
                return actions.table(), gr.update(choices=actions.names(), value=None), msg

            lib_tab.select(lambda: refresh(), None, [table, lib_entry, lib_status])

            @_safe(1, 2)
            def on_entry(nm):
                if not nm:
                    return [], ""
                text, imgs = actions.entry_details(nm)
                return [str(p) for p in imgs], text

            lib_entry.change(on_entry, lib_entry, [thumbs, details])

            @_safe(2, 3)
            def on_rename(nm, new):
                if not nm:
                    raise ValueError("pick an entry first")
                return refresh(_md(actions.rename(nm, new)))

            @_safe(2, 3)
            def on_delete(nm, ok):
                if not nm:
                    raise ValueError("pick an entry first")
                return refresh(_md(actions.delete(nm, ok)))

            @_safe(1, 2)
            def on_download(nm):
                if not nm:
                    raise ValueError("pick an entry first")
                return str(actions.download(nm)), ""

            rename_btn.click(on_rename, [lib_entry, new_name], [table, lib_entry, lib_status])
            delete_btn.click(on_delete, [lib_entry, sure], [table, lib_entry, lib_status])
            download_btn.click(on_download, lib_entry, [lib_file, lib_status])

        # every list of library entries follows the folder (a CLI run, another tab): polled, updated on change
        seen = gr.State(None)
        poll = gr.Timer(2.0)

        def follow(last):
            sig = tuple((e.name, e.modified) for e in lib.entries())
            if sig == last:
                return (gr.update(),) * 6 + (last,)
            names, inf = actions.names(), actions.names("infusion")
            return (gr.update(choices=names), gr.update(choices=names), gr.update(choices=inf), actions.table(),
                    gr.update(choices=names), gr.update(), sig)

        poll.tick(follow, seen, [gen_concepts, cmp_entries, att_entry, table, lib_entry, lib_status, seen],
                  show_progress="hidden")
    return page


def _options_hint(method: str) -> str:
    """The page's hint for a method's options: the keys it reads (Infusion: e.g. maps=own)."""

    keys = sorted(get_method(method).method_args_help or {})
    if not keys:
        return f"{method} takes no options"
    example = get_method(method).method_args_example
    return (f"e.g. {example}; " if example else "") + "keys: " + ", ".join(keys)


def _builtin_concept_files(profile, name: str) -> list[str]:
    """The built-in concept's training images, written once into a temp folder (PNG paths)."""
    import tempfile
    from pathlib import Path

    folder = Path(tempfile.gettempdir()) / "infusion-app-world" / name
    if not folder.is_dir() or not any(folder.iterdir()):
        profile.concept_images(name, folder)
    return [str(p) for p in sorted(folder.glob("*.png"))]


def _enlarged(path, size: int = 256):
    """A sample image at a size a person can see (the world's images are 32 px): nearest-neighbour upscaling."""
    import PIL.Image

    with PIL.Image.open(path) as im:
        scale = max(1, size // max(im.size))
        return im.convert("RGB").resize((im.width * scale, im.height * scale), PIL.Image.Resampling.NEAREST)


def _loss_figure(losses: list[float]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 2.4))
    if losses:
        ax.plot(range(1, len(losses) + 1), losses, lw=0.8, alpha=0.5, label="loss")
        k = max(1, len(losses) // 20)
        if len(losses) >= k:
            import numpy as np

            smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
            ax.plot(range(k, len(losses) + 1), smooth, lw=1.5, label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    fig.tight_layout()
    plt.close(fig)
    return fig


def serve(model: str = "world", library: str = "library", host: str = "127.0.0.1", port: int = 7860,
          model_config: str | None = None, block: bool = True):
    """Start the page (never a public share link); returns the Blocks when ``block`` is False."""
    page = build(model, library, model_config)
    page.queue(default_concurrency_limit=1)
    page.launch(server_name=host, server_port=port, share=False, inbrowser=False, prevent_thread_lock=not block,
                show_error=False, quiet=not block)
    return page
