"""``infusion app``: a web page to customise, generate and compare (Gradio), on the CLI's own functions.

    library.py  the concept library folder (entries, names that cannot escape it, atomic add/rename/delete,
                working folders removed when done)
    jobs.py     one training job at a time, in a thread, through ``training.train`` (progress, samples, cancel)
    actions.py  generate (base | customised; GPU when there is one), compare, attention maps, library edits
    study.py    a blind A/B study of library entries: its images generated ahead on shared noise, questions as HTML
                that names no entry (plan, answers and Table 2: ``evaluation.study``)
    study_page.py  the Study tab (set up, answer, results) and the participants' page ``/study``
    ui.py       the Gradio layout wiring them; ``serve`` starts it on 127.0.0.1 (another address needs a login
                or ``no_auth``), serving files of the library folder only
"""
