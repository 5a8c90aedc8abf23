"""Loading across the supported transformers versions and tokenizer folders of either kind."""

from __future__ import annotations

import json
import os
import re
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from packaging.version import Version

from model.loading import DTYPE_KEYWORD_SINCE, dtype_keyword, load_components, load_tokenizer, transformers_version
from tests.paths import ROOT


def _floor(package: str) -> str:
    """The lowest version pyproject.toml allows (`"package>=X"` in the dependencies)."""
    (floor,) = re.findall(rf'^\s*"{package}>=([\d.]+)', (ROOT / "pyproject.toml").read_text(), flags=re.M)
    return floor


def test_dtype_keyword_follows_the_transformers_version():
    assert dtype_keyword((4, 46)) == "torch_dtype" and dtype_keyword((4, 55)) == "torch_dtype"
    assert dtype_keyword((4, 56)) == "dtype" and dtype_keyword((5, 0)) == "dtype"
    assert DTYPE_KEYWORD_SINCE == (4, 56)


def test_installed_transformers_meets_the_floor():
    floor = tuple(int(p) for p in _floor("transformers").split(".")[:2])
    assert transformers_version() >= floor


def test_components_load_in_the_requested_dtype(demo_checkpoint):
    components = load_components(demo_checkpoint, device="cpu", dtype=torch.bfloat16)
    assert next(components.text_encoder.parameters()).dtype == torch.bfloat16
    assert next(components.transformer.parameters()).dtype == torch.bfloat16


def test_tokenizer_folder_without_a_class_loads_as_t5(demo_checkpoint, tmp_path):
    """The released checkpoint's tokenizer_config.json may not name `tokenizer_class`."""
    folder = tmp_path / "tokenizer"
    shutil.copytree(demo_checkpoint / "tokenizer", folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    del config["tokenizer_class"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    named = load_tokenizer(demo_checkpoint / "tokenizer")
    unnamed = load_tokenizer(folder)
    assert type(unnamed).__name__.startswith("T5Tokenizer")
    text = "[[depth2image]] a red cat on a table"
    assert unnamed(text).input_ids == named(text).input_ids
    assert unnamed.pad_token_id == named.pad_token_id == 0 and unnamed.eos_token_id == named.eos_token_id


def test_tokenizer_folder_that_is_not_a_tokenizer_fails_clearly(tmp_path):
    from model.nextdit import CheckpointError

    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="cannot load the tokenizer"):
        load_tokenizer(tmp_path)


_FLOOR_SCRIPT = """
import json, sys, tempfile, torch
from pathlib import Path
import diffusers, transformers
from model.demo_checkpoint import make_demo_checkpoint
from model.loading import dtype_keyword, load_components
root = make_demo_checkpoint(Path(tempfile.mkdtemp()) / "ckpt")
config = root / "tokenizer" / "tokenizer_config.json"
data = json.loads(config.read_text()); del data["tokenizer_class"]; config.write_text(json.dumps(data))
c = load_components(root, device="cpu", dtype=torch.bfloat16)
ids = c.tokenizer("a red cat").input_ids
print(json.dumps({"transformers": transformers.__version__, "diffusers": diffusers.__version__,
                  "keyword": dtype_keyword(), "text_dtype": str(next(c.text_encoder.parameters()).dtype),
                  "tokenizer": type(c.tokenizer).__name__, "ids": ids}))
"""


@pytest.mark.slow
def test_components_load_at_the_dependency_floors(tmp_path):
    """A venv with pyproject's lowest transformers and diffusers (everything else from this environment)
    loads the demo checkpoint, in the requested dtype, with a class-less tokenizer folder."""
    venv = tmp_path / "floor"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    own = subprocess.run([str(py), "-c", "import site; print(site.getsitepackages()[0])"], capture_output=True, text=True, check=True)
    # this environment's packages come after the venv's own, so the pinned floors shadow them
    (Path(own.stdout.strip()) / "zz_parent.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    pins = [f"transformers=={_floor('transformers')}", f"diffusers=={_floor('diffusers')}"]
    # --no-compile: byte-compiling every installed file (transformers has thousands) took most of the install;
    # the run below compiles the few modules it imports
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-compile", "--target", own.stdout.strip(), *pins],
        capture_output=True, text=True, timeout=300,
    )
    if install.returncode != 0:
        pytest.skip(f"could not install {pins} (no package index?): {install.stderr[-500:]}")
    run = subprocess.run(
        [str(py), "-c", _FLOOR_SCRIPT], capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert Version(result["transformers"]) == Version(_floor("transformers"))
    assert Version(result["diffusers"]) == Version(_floor("diffusers"))
    assert result["keyword"] == "torch_dtype" and result["text_dtype"] == "torch.bfloat16"
    assert result["tokenizer"].startswith("T5Tokenizer") and result["ids"][-1] == 1
