"""The page's Study tab (Gradio), wired to ``app.study.Studies``: Set up (entries, prompts, seeds, questions; the
images are generated in the background, progress shown), Answer (a participant's name or code, then one question
at a time: two images, sides drawn by the study's seed, keys Q W E / A S D and Enter) and Results (Table 2 and its
CSV). ``build`` is called inside the page's ``gr.Blocks``, ``answer_view`` also alone on the page ``/study`` (for
participants: no other tab); ``KEYS`` and ``CSS`` go to the Blocks themselves.

No ``from __future__ import annotations``: Gradio reads the handlers' ``gr.Request`` hints, and ``gr`` is an
argument here (gradio is an optional dependency).
"""

from infusion.app.study import Studies, default_prompts, question_html, reference_html
from infusion.evaluation.study import QUESTIONS, check_participant, table, table_markdown, write_csv

CHOICES = [("left", "left"), ("can't tell", "tie"), ("right", "right")]  # (shown, stored): keys Q W E / A S D

# keyboard shortcuts of the question view: Q W E answer the text question, A S D the concept one (left, can't
# tell, right), Enter goes on; ignored while a text field has the focus (a participant typing their name)
KEYS = """<script>
document.addEventListener("keydown", (e) => {
  const view = document.querySelector("#study-question");
  if (!view || view.offsetParent === null || e.ctrlKey || e.metaKey || e.altKey) return;
  const t = e.target;
  if (t && (t.tagName === "TEXTAREA" || (t.tagName === "INPUT" && t.type !== "radio"))) return;
  const keys = {q: ["study-text", 0], w: ["study-text", 1], e: ["study-text", 2],
                a: ["study-concept", 0], s: ["study-concept", 1], d: ["study-concept", 2]};
  const k = keys[e.key.toLowerCase()];
  if (k) {
    const inputs = document.querySelectorAll(`#${k[0]} input[type=radio]`);
    if (inputs[k[1]]) { inputs[k[1]].click(); e.preventDefault(); }
  } else if (e.key === "Enter") {
    const b = document.querySelector("#study-next");
    if (b) { b.click(); e.preventDefault(); }
  }
});
</script>"""

CSS = """
.nav-holder { display: none !important; }  /* Gradio's bar of pages: /study is reached by its address alone */
.study-prompt { font-size: 1.3em; text-align: center; margin: 0.5em 0; }
.study-pair { display: flex; justify-content: center; gap: 2em; }
.study-side { margin: 0; text-align: center; }
.study-side img { width: 256px; height: 256px; image-rendering: pixelated; object-fit: contain; }
.study-refs { display: flex; align-items: center; gap: 6px; }
.study-refs img { width: 64px; height: 64px; image-rendering: pixelated; display: inline-block; margin: 0; }
"""


def build(gr, studies: Studies, safe, md, names):
    """The Study tab's contents (inside ``gr.Tab``). ``safe``: the page's error wrapper; ``md``: its Markdown
    escape; ``names()``: the library's entry names. -> (the entries checkbox, the CSV file, (a refresh function,
    its outputs)): the page's library poll updates the first, its session-file sweep watches the second, the tab's
    select event runs the refresh."""
    model = studies.actions.model
    with gr.Tabs():
        with gr.Tab("Set up", elem_id="study-tab-setup"):
            name = gr.Textbox(label="Study name", placeholder="ballstudy", elem_id="study-name")
            entries = gr.CheckboxGroup([], label="Library entries of one concept (each pair of them is compared)",
                                       elem_id="study-entries")
            prompts = gr.Textbox(label="Prompts, one per line (<concept> = each entry's concept)", lines=6,
                                 elem_id="study-prompts")
            with gr.Row():
                seeds = gr.Textbox("0, 1", label="Seeds (the same noise for every entry)", elem_id="study-seeds")
                count = gr.Number(12, label="Questions", precision=0, elem_id="study-count")
                steps = gr.Number(25, label="Steps", precision=0, elem_id="study-steps")
            with gr.Row():
                create = gr.Button("Create and generate the images", variant="primary", elem_id="study-create")
                stop = gr.Button("Stop generating", elem_id="study-stop")
            status = gr.Markdown(elem_id="study-status")
            shown_default = gr.State("")
        with gr.Tab("Answer", elem_id="study-tab-answer"):
            answer_view(gr, studies, safe, md)
        with gr.Tab("Results", elem_id="study-tab-results"):
            with gr.Row():
                r_pick = gr.Dropdown([], label="Study", elem_id="study-results-pick")
                r_go = gr.Button("Show Table 2", elem_id="study-results-go")
            r_table = gr.Markdown(elem_id="study-table")
            r_csv = gr.File(label="Table 2 as CSV", elem_id="study-csv")
            r_status = gr.Markdown(elem_id="study-results-status")

    def fill_prompts(picked, current, last_default):
        if current.strip() and current != last_default:
            return gr.update(), last_default  # the person's own prompts stay
        picked = [n for n in picked or [] if studies.library.exists(n)]  # one deleted meanwhile: left out
        text = "\n".join(default_prompts(model, [studies.library.get(n) for n in picked]))
        return text, text

    entries.change(fill_prompts, [entries, prompts, shown_default], [prompts, shown_default])

    @safe(0, 2)
    def on_create(nm, picked, ps, sd, n, st):
        studies.create(nm, picked, ps, sd, int(n or 0), int(st or 0))
        return md(f"study {nm.strip()}: " + studies.progress(nm)), gr.update(choices=studies.names())

    create.click(on_create, [name, entries, prompts, seeds, count, steps], [status, r_pick])
    stop.click(lambda: md(studies.stop()), None, status)

    def tick(last):
        job = studies.job
        sig = None if job is None else (job.study, job.done, job.status)
        if sig == last:
            return gr.update(), last
        return md(f"study {job.study}: " + (job.message or studies.progress(job.study))), sig

    shown_job = gr.State(None)
    gr.Timer(1.0).tick(tick, shown_job, [status, shown_job], show_progress="hidden")

    @safe(2, 3)
    def on_results(study_name, request: gr.Request):
        if not study_name:
            raise ValueError("pick a study")
        study = studies.get(study_name)
        rows = table(study)
        path = write_csv(rows, studies.library.output_folder(request.session_hash) / f"{study_name}-table2.csv")
        people = len({r["participant"] for r in study.answers()})
        return table_markdown(rows), str(path), md(f"{len(study.answers())} answers from {people} participant(s)")

    r_go.click(on_results, r_pick, [r_table, r_csv, r_status])

    def choices():  # the tab's lists of entries and studies, when the tab is opened
        return gr.update(choices=names()), gr.update(choices=studies.names())

    return entries, r_csv, (choices, [entries, r_pick])


def answer_view(gr, studies: Studies, safe, md) -> None:
    """A participant's view (the Answer tab, and the page ``/study`` that shows nothing else): a study, a name or
    code, then one question at a time until every question is answered; their place is the answers file's, so a
    reload or another browser goes on where they stopped."""
    with gr.Row():
        pick = gr.Dropdown(studies.names(), label="Study", elem_id="study-pick")
        who = gr.Textbox(label="Your name or participant code", elem_id="study-participant")
        start = gr.Button("Start or continue", variant="primary", elem_id="study-start")
    a_status = gr.Markdown(elem_id="study-answer-status")
    with gr.Column(elem_id="study-question"):
        progress = gr.Markdown(elem_id="study-progress")
        refs = gr.HTML(elem_id="study-refs", padding=False)
        view = gr.HTML(elem_id="study-images", padding=False)
        text_q = gr.Radio(CHOICES, label=QUESTIONS["text"] + "  (keys Q · W · E)", elem_id="study-text")
        concept_q = gr.Radio(CHOICES, label=QUESTIONS["concept"] + "  (keys A · S · D)", elem_id="study-concept")
        nxt = gr.Button("Next (Enter)", elem_id="study-next")
    here = gr.State(None)  # {"study", "participant", "question"}: kept on the server, never in the page

    def follow(last):  # the list of studies follows the library (a study made in another tab)
        names = studies.names()
        return (gr.update(), last) if names == last else (gr.update(choices=names), names)

    known = gr.State(None)
    gr.Timer(2.0).tick(follow, known, [pick, known], show_progress="hidden")

    def show(study_name: str, participant: str):
        study = studies.get(study_name)
        q, done = study.next_question(participant)
        total = len(study.questions)
        if q is None:
            return (None, md(f"**all {total} questions answered**: thank you, {participant}"), "", "", None, None,
                    "")
        state = {"study": study_name, "participant": participant, "question": q["id"]}
        refs = studies.reference_images(study)  # every arm shows one concept: its photos
        return (state, f"**question {done + 1} of {total}**", reference_html(refs), question_html(study, q),
                None, None, "")

    outs = [here, progress, refs, view, text_q, concept_q, a_status]

    @safe(6, 7)
    def on_start(study_name, participant):
        if not study_name:
            raise ValueError("pick a study")
        participant = check_participant(participant)
        if studies.get(study_name).missing_images():
            studies.generate(study_name)
            raise ValueError(f"the study's images are not ready ({studies.progress(study_name, participant=True)}): "
                             "start again when they are")
        return show(study_name, participant)

    @safe(6, 7)
    def on_next(state, text, concept):
        if not state or not state.get("question"):
            raise ValueError("pick a study, write your name or code, and press Start")
        if text is None or concept is None:
            raise ValueError("answer both questions (or say you can't tell)")
        studies.get(state["study"]).answer(state["participant"], state["question"], text, concept)
        return show(state["study"], state["participant"])

    start.click(on_start, [pick, who], outs)
    nxt.click(on_next, [here, text_q, concept_q], outs)
