"""The repository stays small: `.ci/check_sizes.py` (run by `.ci/run` before the tests) fails on a tracked file over
1 MB outside the allow-list or a PNG over 300 KB."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECK = ROOT / ".ci" / "check_sizes.py"

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def run_check(repo: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECK), str(repo)], capture_output=True, text=True, timeout=60)


def git_repo(tmp_path: Path, files: dict[str, int]) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    for name, size in files.items():
        path = repo / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\0" * size)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    return repo


def test_a_2_mb_file_fails_the_check_and_names_itself(tmp_path):
    repo = git_repo(tmp_path, {"small.txt": 10, "runs/state.safetensors": 2 * 2**20})
    r = run_check(repo)
    assert r.returncode == 1
    assert "runs/state.safetensors: 2.0 MB" in r.stderr and "small.txt" not in r.stderr


def test_a_big_png_fails_and_the_allow_list_passes(tmp_path):
    big_png = {"docs/grid.png": 400 * 1024}
    assert run_check(git_repo(tmp_path / "a", big_png)).returncode == 1
    allowed = {"src/infusion/world/model/unet/diffusion_pytorch_model.safetensors": 2 * 2**20,
               "src/infusion/world/probes.safetensors": 2 * 2**20, "docs/small.png": 100 * 1024}
    r = run_check(git_repo(tmp_path / "b", allowed))
    assert r.returncode == 0, r.stderr


def test_an_untracked_file_does_not_count(tmp_path):
    repo = git_repo(tmp_path, {"a.txt": 1})
    (repo / "checkpoints").mkdir()
    (repo / "checkpoints" / "resume.safetensors").write_bytes(b"\0" * (2 * 2**20))
    assert run_check(repo).returncode == 0


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="not a git checkout")
def test_this_repository_passes():
    r = run_check(ROOT)
    assert r.returncode == 0, r.stderr
