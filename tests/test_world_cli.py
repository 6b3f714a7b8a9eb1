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
    assert main(["world", "concept-images", "dotbox", "--out", str(tmp_path)]) == 0
    assert len(list(tmp_path.glob("dotbox_*.png"))) == 5
    assert main(["world", "concepts"]) == 0
    assert "<sunball>" in capsys.readouterr().out


def test_unknown_concept_is_one_clear_line(tmp_path, capsys):
    assert main(["world", "concept-images", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown world concept 'nope'" in capsys.readouterr().err


def test_missing_model_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["world", "sample", "a ball", "--out", str(tmp_path / "x.png"), "--model", str(tmp_path)]) == 2
    assert "model_index.json missing" in capsys.readouterr().err
