"""Adding a method is adding one folder: a toy method written here, outside ``src/``, is found by the registry
(through the ``infusion.methods`` entry-point group, or as a folder of ``infusion.methods``), trains and loads
through the CLI, is offered by the web page and placed by the library, and is refused ``--mlm-lambda``."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_square_images
from infusion.methods import registry

TOY = "toy-offset"

INIT = '''
from infusion.methods.registry import MethodSpec, register

register(MethodSpec(name="toy-offset", trainer="{pkg}.training:ToyOffset", loader="{pkg}.loader:ToyOffsetCustomization",
                    output="file", mlm_weight=None))
'''

TRAINING = '''
import torch
from torch import nn

from infusion.core.customization_files import customization_metadata
from infusion.core.placeholders import substitute
from infusion.core.safetensors_io import save_safetensors_atomic
from infusion.methods.base import Method, TextBatch
from infusion.methods.customization import encode_texts


class ToyOffset(Method):
    """One learned vector added to the text states of captions that name the concept."""

    name = "toy-offset"
    default_lr = 1e-2
    out_help = "a .safetensors file with one text-state offset"
    method_args_help = {}

    def __init__(self, pipe, cfg):
        super().__init__(pipe, cfg)
        self.pipe, self.unet = pipe, pipe.unet
        self.offset = nn.Parameter(torch.zeros(pipe.text_encoder.config.hidden_size))

    def encode_captions(self, captions):
        texts = [substitute(c, {self.cfg.name: self.cfg.class_phrase})[0] for c in captions]
        return TextBatch(encode_texts(self.pipe, texts), [[] for _ in texts])

    def forward(self, noisy_latents, timesteps, text):
        return self.unet(noisy_latents, timesteps, encoder_hidden_states=text.states + self.offset).sample

    def export(self, path, fingerprint):
        meta = customization_metadata(self.cfg, self.name, "toy-offset", fingerprint)
        save_safetensors_atomic({"offset": self.offset.detach()}, path, meta)
        return path
'''

LOADER = '''
import torch
from safetensors.torch import load_file

from infusion.methods.customization import Customization


class ToyOffsetCustomization(Customization):
    def attach(self, pipe):
        self.offset = load_file(str(self.path))["offset"]
        return pipe

    def encode(self, pipe, prompts):
        states, _ = super().encode(pipe, prompts)
        named = torch.tensor([f"<{self.name}>" in p for p in prompts], dtype=states.dtype)
        return states + named[:, None, None] * self.offset, None
'''


def write_toy_method(root: Path, pkg: str) -> Path:
    """The toy method's package ``pkg`` under ``root`` (three files, nothing else)."""
    folder = root / pkg
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text(INIT.format(pkg=pkg))
    (folder / "training.py").write_text(TRAINING)
    (folder / "loader.py").write_text(LOADER)
    return folder


def write_entry_point(root: Path, module: str) -> None:
    """A minimal installed distribution whose ``infusion.methods`` entry point names ``module``."""
    info = root / "toy_offset_method-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-offset-method\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{registry.ENTRY_POINT_GROUP}]\ntoy-offset = {module}\n")


@pytest.fixture
def isolated_registry(monkeypatch):
    """The registry as it is, restored afterwards (the toy method must not leak into other tests)."""
    registry.discover()
    monkeypatch.setattr(registry, "_SPECS", dict(registry._SPECS))
    monkeypatch.setattr(registry, "_discovered", True)
    before = set(sys.modules)
    yield registry
    for name in set(sys.modules) - before:
        if "toy" in name:
            del sys.modules[name]


def test_a_method_folder_under_infusion_methods_is_found_by_scanning(tmp_path, monkeypatch, isolated_registry):
    import infusion.methods

    write_toy_method(tmp_path, "toyfolder")
    (tmp_path / "toyfolder" / "__init__.py").write_text(INIT.format(pkg="infusion.methods.toyfolder"))
    monkeypatch.setattr(infusion.methods, "__path__", [*infusion.methods.__path__, str(tmp_path)])
    assert TOY not in isolated_registry.available_methods()
    isolated_registry.rediscover()
    assert TOY in isolated_registry.available_methods()
    assert isolated_registry.get_method(TOY).__name__ == "ToyOffset"
    assert isolated_registry.customization_class(TOY).__name__ == "ToyOffsetCustomization"


def test_a_second_method_under_a_taken_name_is_refused(isolated_registry):
    spec = isolated_registry.get_spec("lora")
    with pytest.raises(ValueError, match="already registered"):
        isolated_registry.register(registry.MethodSpec("lora", "x:Y", "x:Z"))
    assert isolated_registry.get_spec("lora") is spec
    with pytest.raises(ValueError, match="output must be one of"):
        registry.MethodSpec("x", "a:B", "a:C", output="zip")


def test_an_entry_point_method_trains_loads_and_is_offered_everywhere(tmp_path, monkeypatch, isolated_registry):
    """Through the CLI (a fresh process that only has the entry point on its path), then the app's method list, the
    library's layout and the MLM check in this process."""
    plugins = tmp_path / "plugins"
    write_toy_method(plugins, "toy_offset_method")
    write_entry_point(plugins, "toy_offset_method")
    images = tmp_path / "images"
    write_square_images(images, n=3, size=32)
    out = tmp_path / "lib" / "mycat.safetensors"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugins), os.environ.get("PYTHONPATH", "")])}
    cli = [sys.executable, "-m", "infusion.cli"]

    def run(*argv):
        return subprocess.run([*cli, *argv], capture_output=True, text=True, env=env, timeout=600)

    r = run("train", "--model", "tiny", "--images", str(images), "--name", "mycat", "--class-phrase", "cat",
            "--out", str(out), "--method", TOY, "--steps", "2", "--batch-size", "2", "--resolution", "32")
    assert r.returncode == 0, r.stderr[-3000:]
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        assert f.metadata()["method"] == TOY and f.get_tensor("offset").abs().sum() > 0  # it trained
    r = run("generate", "--model", "tiny", "--concept", str(out), "--prompt", "a photo of <mycat>", "--steps", "1",
            "--height", "32", "--width", "32", "--out", str(tmp_path / "gen"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert list((tmp_path / "gen").glob("*.png"))
    r = run("train", "--model", "tiny", "--images", str(images), "--name", "mycat", "--class-phrase", "cat",
            "--out", str(tmp_path / "x.safetensors"), "--method", TOY, "--steps", "1", "--mlm-lambda", "1e-4",
            "--contextualizer", "world")
    assert r.returncode == 2 and "'toy-offset' has none" in r.stderr, r.stderr[-2000:]

    # this process: the entry point on sys.path, then the page's list, the library and the MLM check
    monkeypatch.syspath_prepend(str(plugins))
    isolated_registry.rediscover()
    assert TOY in isolated_registry.available_methods() and TOY not in isolated_registry.mlm_methods()
    from infusion.app.library import Library

    lib = Library(out.parent)
    assert [(e.name, e.method) for e in lib.entries()] == [("mycat", TOY)]
    assert lib.output_path("other", TOY) == out.parent / "other.safetensors"
    from infusion.training.config import TrainConfig

    with pytest.raises(ValueError, match="'toy-offset' has none"):
        TrainConfig(model="tiny", images=str(images), name="c", class_phrase="cat", out=str(tmp_path / "y"),
                    method=TOY, mlm_lambda=1e-4, contextualizer="world")


def test_every_builtin_method_declares_its_mlm_side_once():
    """A spec's ``mlm_weight`` (the MLM check and the paper's lambda) agrees with the trainer's ``mlm_text_side``."""
    from infusion.methods.base import supports_mlm

    for name in registry.available_methods():
        spec = registry.get_spec(name)
        assert supports_mlm(spec.trainer_class()) == (spec.mlm_weight is not None), name
    assert registry.reference_mlm_weight("ti") == 1e-5
    with pytest.raises(ValueError, match="no text side"):
        registry.reference_mlm_weight("infusion")
