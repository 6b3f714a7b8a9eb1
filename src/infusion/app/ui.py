"""The page (Gradio Blocks): tabs Train, Generate, Compare, Attention, Library, Study, wired to ``actions``, ``jobs``
and ``study_page``.

Every handler shows a person-readable message in its tab's status line (``⚠ ...``) instead of a stack trace, with
paths relative to the library. Element ids (``elem_id``) are what the browser tests address.

Serving: 127.0.0.1 by default; another address needs ``auth`` (or ``no_auth=True``, said out loud). Gradio may serve
files from the library folder only (``allowed_paths``: generated PNGs are written there; a folder entry's zip is
written inside Gradio's cache, which serves it without a copy), uploads
are refused by the server above ``jobs.MAX_BYTES``, and what a page session leaves (its uploads and outputs in
Gradio's cache, its folder of generated files in the library) is removed when the session ends (``SessionFiles``).
"""

import functools
import logging
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np
import PIL.Image

from infusion.app import study_page
from infusion.app.actions import Actions, shown_model
from infusion.app.jobs import MAX_BYTES, Trainer
from infusion.app.library import Library, _folder_name
from infusion.app.study import Studies
from infusion.core.model_profiles import model_profile
from infusion.methods import available_methods, get_method
from infusion.training.data import IMAGE_SUFFIXES

logger = logging.getLogger(__name__)

SAMPLE_EVERY = 50
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
CACHE_SWEEP = (3600, 24 * 3600)  # s: Gradio's own sweep of its cache (every hour, files older than a day)


def _md(text: str) -> str:
    """Plain text for a Markdown status line: ``<name>`` would be taken for an HTML tag and vanish."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _safe(status_index: int | None = None, n_outputs: int = 1, scrub=str):
    """Decorator: a ``ValueError`` (or any error) becomes ``⚠ message`` in the status output (``scrub``: the
    library's path replaced), others unchanged; an unexpected error is logged with its trace."""

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            import gradio as gr  # deferred on purpose: gradio is an optional dependency (infusion[app])

            try:
                return fn(*args, **kwargs)
            except Exception as e:  # shown to the person, never a trace
                if isinstance(e, ValueError):
                    msg = str(e)
                else:
                    logger.exception("page handler %s failed", fn.__name__)
                    msg = f"something went wrong: {type(e).__name__}: {e}"
                outs = [gr.update() for _ in range(n_outputs)]
                outs[status_index if status_index is not None else n_outputs - 1] = f"⚠ {_md(scrub(msg))}"
                return tuple(outs) if n_outputs > 1 else outs[0]

        return inner

    return wrap


def _file_paths(value) -> list[str]:
    """Every file path in a component's value: a path, a Gradio ``FileData`` dict, or lists/tuples/dicts of them."""
    if isinstance(value, (str, Path)):
        return [str(value)]
    if isinstance(value, dict):
        return ([value["path"]] if isinstance(value.get("path"), str) else []) + [
            p for k, v in value.items() if k != "path" for p in _file_paths(v)]
    if isinstance(value, (list, tuple)):
        return [p for v in value for p in _file_paths(v)]
    return []


class SessionFiles:
    """The files each page session put in Gradio's cache (uploads, images and files it was shown), removed when the
    session ends, with its folder of generated files in the library. Only files inside the cache folder are taken
    (values come from the browser); a file two sessions share (same bytes: the cache is content-addressed) goes
    when the last of them ends."""

    def __init__(self, library: Library, cache: str | Path):
        self.library, self.cache = library, Path(cache).resolve()
        self._owners: dict[Path, set[str]] = {}
        self._lock = threading.Lock()

    def remember(self, session: str, value) -> None:
        with self._lock:
            for raw in _file_paths(value):
                path = Path(raw).resolve()
                if path.is_file() and path.is_relative_to(self.cache):
                    self._owners.setdefault(path, set()).add(session)

    def downloads(self, session: str) -> Path:
        """Where a session's zips of folder entries go: inside the cache, so Gradio serves them without a copy
        (remembered when shown, like every file the session is shown, and removed with them)."""
        return self.cache / "infusion-downloads" / _folder_name(session or "local")

    def held(self, session: str, alone: bool = False) -> list[Path]:
        """The cache files ``session`` holds (``alone``: those no other session holds too)."""
        return sorted(p for p, owners in self._owners.items() if session in owners and (not alone or len(owners) == 1))

    def end(self, session: str) -> list[Path]:
        """Remove what only ``session`` held; -> the cache files removed."""
        removed = []
        with self._lock:
            for path in self.held(session):
                owners = self._owners[path]
                owners.discard(session)
                if owners:
                    continue
                del self._owners[path]
                path.unlink(missing_ok=True)
                removed.append(path)
                if path.parent != self.cache:
                    try:
                        path.parent.rmdir()  # the file's content-hash folder, when nothing else is in it
                    except OSError:
                        pass
            shutil.rmtree(self.downloads(session), ignore_errors=True)  # a zip made but never shown, too
        self.library.end_outputs(session)
        return removed


def build(model: str = "world", library: str = "library", model_config: str | None = None):
    """The app's ``gr.Blocks`` for base ``model`` and the library folder ``library``; ``page.library``,
    ``page.trainer`` and ``page.session_files`` are its parts (tests, ``serve``)."""
    import gradio as gr  # deferred on purpose: gradio is an optional dependency (infusion[app])
    from gradio.utils import get_upload_folder

    lib = Library(library)
    actions = Actions(model, lib, model_config)
    trainer = Trainer(lib, model, model_config, actions.device, actions.dtype)
    studies = Studies(actions)
    files = SessionFiles(lib, get_upload_folder())
    _safe_here = functools.partial(_safe, scrub=lib.scrub)
    profile = model_profile(model)
    builtin_concepts = profile.concepts()  # name -> class phrase: the world's, none on a checkpoint
    has_probes = profile.is_builtin_world  # the world's probes score text and concept fidelity
    methods = available_methods()

    def default_lr(method: str, batch: int = 4) -> float:
        return get_method(method).default_learning_rate(model, batch)

    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["monospace"])  # no web fonts: works offline
    with gr.Blocks(title="infusion", analytics_enabled=False, theme=theme, delete_cache=CACHE_SWEEP,
                   css=study_page.CSS, head=study_page.KEYS) as page:
        gr.Markdown(f"# infusion\nCustomise **{_md(shown_model(model))}** with a few photos, generate, compare. "
                    f"Library: `{lib.folder.name}`")

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

            def shown(uploads):  # the preview shows the images among the uploads (the check at start names the rest)
                return [f for f in uploads or [] if Path(f).suffix.lower() in IMAGE_SUFFIXES]

            images.upload(shown, images, preview)
            method.change(lambda m: (default_lr(m), gr.update(placeholder=_options_hint(m))), method, [lr, options])

            @_safe_here(0)
            def on_start(files, nm, ph, m, n_steps, rate, n_every, opts):
                rate = None if rate is None or abs(float(rate) - default_lr(m)) <= 1e-12 * default_lr(m) else float(rate)
                job = trainer.start(files or [], nm, ph, m, int(n_steps or 0), rate, int(n_every or 0), options=opts or "")
                return _md(f"training <{job.name}> with {job.method}: starting...")

            start.click(on_start, [images, name, phrase, method, steps, lr, every, options], status)
            cancel.click(lambda: _md(trainer.cancel()), None, status)

            def tick(last):
                job = trainer.job
                sig = None if job is None else (job.id, job.step, job.status, job.message, len(job.sample_steps))
                if sig == last:
                    return gr.update(), gr.update(), gr.update(), last
                eta = "" if job.eta is None or job.finished else f", about {job.eta:.0f} s left"
                loss = f", loss {job.losses[-1]:.4f}" if job.losses else ""
                text = f"**{job.status}**: " + _md(f"<{job.name}> ({job.method}) step {job.step}/{job.steps}{loss}{eta}")
                if job.status == "cancelling":
                    text += "\n\n" + _md(f"cancelling <{job.name}>: training stops when step {job.step + 1} ends; "
                                           "nothing will be added to the library")
                if job.message:
                    text += f"\n\n{_md(job.message)}"
                img = _enlarged(job.sample) if job.sample is not None else gr.update()
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

            @_safe_here(3, 4)
            def on_generate(p, concepts, neg, s, n, g, request: gr.Request):
                base, custom, paths, notes = actions.generate(p, concepts, neg, s, n, g, session=request.session_hash)
                return base, custom, [str(f) for f in paths], _md(notes or f"{len(custom)} image(s): base | customised")

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

            @_safe_here(1, 2)
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

            @_safe_here(1, 2)
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

            lib_tab.select(_safe_here(2, 3)(lambda: refresh()), None, [table, lib_entry, lib_status])

            @_safe_here(1, 2)
            def on_entry(nm):
                if not nm:
                    return [], ""
                text, thumbnails = actions.entry_details(nm)
                return thumbnails, text

            lib_entry.change(on_entry, lib_entry, [thumbs, details])

            @_safe_here(2, 3)
            def on_rename(nm, new):
                if not nm:
                    raise ValueError("pick an entry first")
                return refresh(_md(actions.rename(nm, new)))

            @_safe_here(2, 3)
            def on_delete(nm, ok):
                if not nm:
                    raise ValueError("pick an entry first")
                return refresh(_md(actions.delete(nm, ok)))

            @_safe_here(1, 2)
            def on_download(nm, request: gr.Request):
                if not nm:
                    raise ValueError("pick an entry first")
                return str(actions.download(nm, folder=files.downloads(request.session_hash))), ""

            rename_btn.click(on_rename, [lib_entry, new_name], [table, lib_entry, lib_status])
            delete_btn.click(on_delete, [lib_entry, sure], [table, lib_entry, lib_status])
            download_btn.click(on_download, lib_entry, [lib_file, lib_status])

        # -- Study: a blind A/B preference study of library entries, and its Table 2 (study_page.py) ----
        with gr.Tab("Study", elem_id="tab-study") as study_tab:
            study_entries, study_csv, (study_choices, study_lists) = study_page.build(
                gr, studies, _safe_here, _md, actions.names)
        study_tab.select(study_choices, None, study_lists)

        # every list of library entries follows the folder (a CLI run, another tab): polled, updated on change
        seen = gr.State(None)
        poll = gr.Timer(2.0)

        def follow(last):
            sig = tuple((e.name, e.modified) for e in lib.entries())
            if sig == last:
                return (gr.update(),) * 7 + (last,)
            try:
                names, inf, rows = actions.names(), actions.names("infusion"), actions.table()
            except Exception as e:  # e.g. the base model cannot load: said once, until the library changes again
                logger.exception("the library lists could not be updated")
                msg = f"⚠ {_md(lib.scrub(f'the library lists could not be updated: {type(e).__name__}: {e}'))}"
                return (gr.update(),) * 5 + (msg, gr.update(), sig)
            return (gr.update(choices=names), gr.update(choices=names), gr.update(choices=inf), rows,
                    gr.update(choices=names), gr.update(), gr.update(choices=names), sig)

        poll.tick(follow, seen, [gen_concepts, cmp_entries, att_entry, table, lib_entry, lib_status, study_entries,
                                 seen], show_progress="hidden")

        # what a session puts in Gradio's cache, noted as it appears (raw values: the paths as served), removed with
        # the session's folder of generated files when the session ends (its tab closed or reloaded)
        def note(value, request: gr.Request):
            files.remember(request.session_hash, value)

        for shown_files in (images, preview, sample, base_out, custom_out, files_out, cmp_out, att_out, thumbs,
                            lib_file, study_csv):
            shown_files.change(note, shown_files, None, preprocess=False, show_progress="hidden", queue=False)

        def session_ended(request: gr.Request):
            removed = files.end(request.session_hash)
            logger.info("page session ended: %d cached files removed", len(removed))

        page.unload(session_ended)
    # participants answer a study on a page of its own, with nothing else on it (no library, no entry names)
    with page.route("Study", "/study", show_in_navbar=False):
        gr.Markdown("# Study\nWhich image is better? Pick the study, write your name or code, press Start.")
        study_page.answer_view(gr, studies, _safe_here, _md)
    page.library, page.trainer, page.session_files, page.studies = lib, trainer, files, studies
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
    folder = Path(tempfile.gettempdir()) / "infusion-app-world" / name
    if not folder.is_dir() or not any(folder.iterdir()):
        profile.concept_images(name, folder)
    return [str(p) for p in sorted(folder.glob("*.png"))]


def _enlarged(image: PIL.Image.Image, size: int = 256) -> PIL.Image.Image:
    """A sample image at a size a person can see (the world's images are 32 px): nearest-neighbour upscaling."""
    scale = max(1, size // max(image.size))
    return image.convert("RGB").resize((image.width * scale, image.height * scale), PIL.Image.Resampling.NEAREST)


MAX_PLOTTED = 2000  # points per line in the loss plot (redrawn every second per open page)


def _loss_figure(losses: list[float]):
    import matplotlib  # deferred on purpose: the Agg backend is chosen before pyplot loads

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = list(losses)  # a snapshot: the training thread appends while the page draws
    fig, ax = plt.subplots(figsize=(4, 2.4))
    if losses:
        every = max(1, len(losses) // MAX_PLOTTED)  # a long run: every n-th point (the mean line uses them all)
        steps = np.arange(1, len(losses) + 1)
        ax.plot(steps[::every], losses[::every], lw=0.8, alpha=0.5, label="loss")
        k = max(1, len(losses) // 20)
        if len(losses) >= k:
            smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
            ax.plot(steps[k - 1:][::every], smooth[::every], lw=1.5, label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    fig.tight_layout()
    plt.close(fig)
    return fig


def check_serving(host: str, auth: tuple[str, str] | None, no_auth: bool) -> str | None:
    """The serving rule: on 127.0.0.1 / localhost the page needs nothing; on any other address it needs ``auth``
    (user, password) or an explicit ``no_auth``. -> a warning to print (None on localhost); ``ValueError`` when
    neither is given."""
    if host in LOCAL_HOSTS:
        return None
    exposed = (f"--host {host} serves the page to every machine that can reach this one: it trains, generates, and "
               "reads, renames, deletes and downloads the library's concepts")
    if auth is None and not no_auth:
        raise ValueError(f"{exposed}; add --auth USER:PASSWORD (or --no-auth to serve it to them without a login)")
    if auth is None:
        return f"WARNING: {exposed}, to anyone, without a login (--no-auth)"
    return f"WARNING: {exposed}, to whoever logs in as {auth[0]!r} (over plain HTTP: use it on a network you trust)"


def serve(model: str = "world", library: str = "library", host: str = "127.0.0.1", port: int = 7860,
          model_config: str | None = None, block: bool = True, auth: tuple[str, str] | None = None,
          no_auth: bool = False):
    """Start the page (never a public share link); returns the Blocks when ``block`` is False. A host other than
    localhost needs ``auth`` or ``no_auth`` (``check_serving``). Gradio serves files of the library folder only
    (beside its own cache), and refuses uploads over ``jobs.MAX_BYTES``."""
    warning = check_serving(host, auth, no_auth)
    if warning:
        logger.warning(warning)
    page = build(model, library, model_config)
    removed = page.library.clean_leftovers()
    if removed:
        logger.info("removed working folders a previous server left: %s", ", ".join(removed))
    page.queue(default_concurrency_limit=1)
    page.launch(server_name=host, server_port=port, share=False, inbrowser=False, prevent_thread_lock=not block,
                show_error=False, quiet=not block, auth=auth, allowed_paths=[str(page.library.folder)],
                max_file_size=MAX_BYTES)
    return page
