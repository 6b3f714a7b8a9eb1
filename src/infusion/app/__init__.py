"""``infusion app``: a web page to customise, generate and compare (Gradio), on the CLI's own functions.

    library.py  the concept library folder (entries, names that cannot escape it, atomic add/rename/delete,
                working folders removed when done)
    jobs.py     one training job at a time, in a thread, through ``training.train`` (progress, samples, cancel)
    actions.py  generate (base | customised; GPU when there is one), compare, attention maps, library edits
    ui.py       the Gradio layout wiring them; ``serve`` starts it on 127.0.0.1 (another address needs a login
                or ``no_auth``), serving files of the library folder only
"""
