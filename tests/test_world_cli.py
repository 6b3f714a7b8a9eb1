"""`infusion world ...` commands: render, concepts, concept-images, and clear errors."""

import json

from infusion.cli import main


def test_render_writes_images_and_ground_truth(tmp_path, capsys):
    assert main(["world", "render", "--out", str(tmp_path), "--n", "3", "--seed", "5"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "captions.jsonl").read_text().splitlines()]
    assert [r["file"] for r in rows] == ["00000005.png", "00000006.png", "00000007.png"]
    assert all((tmp_path / r["file"]).exists() for r in rows)
    assert rows[0]["attributes"]["objects"][0]["cls"] in rows[0]["caption"]


def test_concept_images_and_listing(tmp_path, capsys):
    assert main(["world", "concept-images", "slashbox", "--out", str(tmp_path)]) == 0
    assert len(list(tmp_path.glob("slashbox_*.png"))) == 5
    assert main(["world", "concepts"]) == 0
    assert "<sunball>" in capsys.readouterr().out


def test_unknown_concept_is_one_clear_line(tmp_path, capsys):
    assert main(["world", "concept-images", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown world concept 'nope'" in capsys.readouterr().err


def test_missing_model_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["world", "sample", "a ball", "--out", str(tmp_path / "x.png"), "--model", str(tmp_path)]) == 2
    assert "model_index.json missing" in capsys.readouterr().err


def test_demo_writes_grid_and_report_and_says_where(tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "2", "--prompts", "2", "--lr", "0.05"]) == 0
    said = capsys.readouterr().out
    assert str(out / "grid.png") in said and str(out / "report.md") in said
    grid = Image.open(out / "grid.png")
    assert grid.height >= 2 * 96 and grid.width >= 3 * 96  # two prompt rows; base, Infusion (paper), recommended
    report = (out / "report.md").read_text()
    assert "2 steps at lr 0.05" in report and report.count("| a ") + report.count("| a photo") >= 2
    assert "text fid. Infusion, recommended" in report and "Infusion, recommended " in report.split("**Look rate**")[1]
    assert "**Infusion (paper)**" in report and "maps=own** (`--variants own`)" not in report  # not trained here
    from infusion.methods.infusion.concept import Concept

    assert Concept.load(out / "sunball.safetensors").maps == "base"
    assert Concept.load(out / "sunball-preset-recommended.safetensors").maps == "own"  # the recommended form
    assert main(["demo", "--out", str(out), "--prompts", "0"]) == 2
    assert "--prompts must be >= 1" in capsys.readouterr().err
    assert main(["demo", "--out", str(out), "--variants", "paper,mine"]) == 2
    assert "--variants: unknown ['mine']" in capsys.readouterr().err


def test_bad_thread_counts_are_clear_errors(capsys):
    for argv in (["world", "train", "decoder", "--threads", "0"], ["world", "train", "model", "--threads", "0"],
                 ["world", "evaluate", "--threads", "-1"]):
        assert main(argv) == 2, argv
        assert "--threads must be >= 1" in capsys.readouterr().err


def test_world_train_model_defaults_are_the_shipped_recipe(monkeypatch):
    """Every SHIPPED_RECIPE entry reaches ModelConfig from a plain `infusion world train model`; a changed option
    does reach it."""
    import infusion.world.train_model as tm
    from infusion.world.recipe import SHIPPED_RECIPE

    seen = []
    monkeypatch.setattr(tm, "train_model", seen.append)
    for argv in ([], ["--no-look-only-in-class-words", "--hide-look-words", "0"]):
        assert main(["world", "train", "model", *argv]) == 0
    plain, changed = seen
    for k, v in SHIPPED_RECIPE.items():
        assert getattr(plain, k) == v, k
    assert (changed.look_only_in_class_words, changed.hide_look_words) == (False, 0.0)


def test_help_and_a_light_command_start_without_torch():
    """`infusion --help` lists every command from its HELP line, and a command builds only its own options: neither
    imports torch (train's options read every method's plugin); `infusion train --help` still lists the methods."""
    import subprocess
    import sys

    probe = ("import sys\nfrom infusion.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
             "print('TORCH' if 'torch' in sys.modules else 'LIGHT')")
    for argv in (["--help"], ["generate", "--help"], ["world", "concepts", "--help"], ["toy", "--help"]):
        out = subprocess.run([sys.executable, "-c", probe.format(argv=argv)], capture_output=True, text=True, check=True)
        assert out.stdout.strip().endswith("LIGHT"), (argv, out.stdout[-300:], out.stderr[-300:])
        if argv == ["--help"]:
            for name in ("train", "generate", "evaluate", "results", "app", "study", "world", "mlm", "merge", "demo"):
                assert f"    {name} " in out.stdout, name
    out = subprocess.run([sys.executable, "-c", probe.format(argv=["train", "--help"])], capture_output=True, text=True,
                         check=True)
    assert "--method {" in out.stdout and "custom-diffusion" in out.stdout and out.stdout.strip().endswith("TORCH")


def test_train_refuses_a_method_arg_the_method_does_not_read_before_loading(tmp_path, capsys):
    argv = ["train", "--model", "./no-model", "--images", str(tmp_path), "--name", "a", "--class-phrase", "cat",
            "--out", str(tmp_path / "a.safetensors"), "--method", "lora", "--method-arg", "rnak=8"]
    assert main(argv) == 2  # a typo would train at the default rank; the model (which does not exist) is not reached
    assert "--method-arg rnak: lora has no such setting; it reads: " in capsys.readouterr().err


def test_help_shows_real_defaults_and_an_example_with_options_unbroken(capsys):
    import pytest

    for command in ("generate", "train"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert "(default: None)" not in text and "example: infusion " + command in text
        assert "--num-\n" not in text and "stable-\n" not in text  # never broken at a hyphen
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    flip = capsys.readouterr().out.split("--no-flip", 1)[1].split("--", 1)[0]
    assert "default: True" not in flip  # the real default comes from the model's profile, as --flip's help says


def _parsers(parser, path=()):
    """(command path, parser) for ``parser`` and every sub-command under it."""
    import argparse

    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, path + (name,))


def test_every_help_page_states_each_real_default_and_no_empty_one():
    """`infusion COMMAND --help lists them with their defaults` (docs/usage.md): every option of every (sub-)command
    with a real default shows it; none shows "default: []" (a repeatable option) or "default: False" (a switch)."""
    from infusion.cli import COMMAND_MODULES, build_parser

    seen = 0
    for command in (m.rsplit(".", 1)[-1] for m in COMMAND_MODULES):
        for path, parser in _parsers(build_parser([command])):
            if not path or path[0] != command:
                continue  # the other commands are only named in this parser
            text = parser.format_help()
            assert "(default: [])" not in text and "(default: False)" not in text, path
            for action in parser._actions:
                real = (action.default is not None and action.default is not False and action.default != []
                        and action.option_strings and action.dest != "help")  # 0 is a real default (0 == False)
                if real:
                    seen += 1
                    assert action.help and "%(default)" in parser._get_formatter()._get_help_string(action), (
                        path, action.option_strings)
    assert seen > 50


def test_progress_bars_in_a_log_file_update_a_few_times_not_every_step(tmp_path):
    """Output that is not a terminal (CI logs, nohup files): diffusers' sampling bar redraws at most every 30 s, so
    30 denoising steps leave a few carriage returns in the log, not one per step (24 with tqdm's default)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("TQDM_")}
    cmd = [sys.executable, "-m", "infusion.cli", "generate", "--model", "world", "--prompt", "a photo of a ball",
           "--steps", "30", "--out", str(tmp_path / "g")]
    err = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300).stderr
    assert "30/30" in err and err.count("\r") <= 8, err[-2000:]
