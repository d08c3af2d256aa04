"""Build a random-weight tiny model folder that transformers and vLLM both load.

Config = the transformers config class's defaults, then (optionally) the zoo's ArchSpec
defaults, then the caller's overrides. Weights: `torch.manual_seed(seed)`, the model class built
from that config in float32 (the class's own `_init_weights`), cast to the requested dtype and
saved by transformers (which also writes MoE experts back in the checkpoint layout vLLM reads);
with the zoo's defaults, config.json is then written as the family's released checkpoints have
it where transformers writes it otherwise (`ekka.zoo.derive.released_config`).
Every file is then rewritten in a canonical form, so the same arguments give byte-identical
folders. torch and transformers are imported lazily, inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import functools
import inspect
import json
import re
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ekka.errors import OutputFolderError, UsageError
from ekka.zoo.archs import get_arch
from ekka.zoo.derive import (
    checkpoint_tensors,
    is_derived,
    released_config,
    released_name,
    scale_config,
)
from ekka.zoo.spec import ArchSpec
from ekka.zoo.tokenizer import (
    DEFAULT_MODEL_MAX_LENGTH,
    DEFAULT_VOCAB_SIZE,
    TOKENIZER_FILES,
    build_tokenizer,
)

DTYPES = ("float32", "bfloat16")
MANIFEST = "ekka-zoo.json"
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors")
ZOO_FILES = (*MODEL_FILES, *TOKENIZER_FILES, MANIFEST)
SAFETENSORS_METADATA = {"format": "pt"}
# The zoo builds tiny models; a config that keeps a real model's sizes (e.g. zoo_defaults=False
# with only a few keys given) would allocate tens of GB. Refuse above this many parameters.
MAX_PARAMETERS = 500_000_000

# Legacy keys a config with `rope_parameters` still accepts (moved into rope_parameters).
_ROPE_LEGACY_KEYS = ("rope_theta", "rope_scaling", "partial_rotary_factor")
_GETATTR_CONFIG = re.compile(r"getattr\(\s*(?:self\.)?config\s*,\s*[\"'](\w+)[\"']")


# ---------------------------------------------------------------------------- --set parsing


def parse_set_values(items: list[str]) -> dict[str, Any]:
    """Parse CLI `--set key=value` items; values are JSON when they parse, else strings.

    `8` -> 8, `1e-5` -> 1e-05, `true` -> True, `null` -> None, `[1,2]` -> [1, 2], `silu` -> "silu".
    Raises UsageError for an item without `=` or with an empty key.
    """
    values: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(
                f"--set expects key=value (e.g. --set num_hidden_layers=3), got {item!r}"
            )
        values[key] = _parse_value(raw)
    return values


def _parse_value(raw: str) -> Any:
    """JSON value of `raw`, or `raw` itself when it is not JSON."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


# ---------------------------------------------------------------------------- config


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' warnings about class-default configs and its save progress bar."""
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    progress = logging.is_progress_bar_enabled()
    # transformers' logging functions carry no annotations: untyped calls
    logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if progress:
            logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def _config_errors() -> tuple[type[BaseException], ...]:
    """Exceptions by which transformers rejects a config (its strict-dataclass validation too)."""
    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:  # an older huggingface_hub: transformers raises plain ValueErrors there
        return (TypeError, ValueError, KeyError)
    return (TypeError, ValueError, KeyError, StrictDataclassError)


def _build_errors() -> tuple[type[BaseException], ...]:
    """Exceptions by which a model class rejects a config while it is built."""
    return (*_config_errors(), IndexError, AssertionError, RuntimeError)


def _transformers_classes(spec: ArchSpec) -> tuple[type, type]:
    """The (model class, config class) of an architecture, from transformers."""
    import transformers

    return getattr(transformers, spec.name), getattr(transformers, spec.config_class)


def _known_config_keys(config_class: type[Any], model_class: type[Any]) -> set[str]:
    """Keys a config accepts: default-instance attributes, constructor parameters, properties,
    legacy RoPE keys, and keys the modeling code reads with `getattr(config, "...")`."""
    default = config_class()
    known = {key for key in vars(default) if not key.startswith("_")}
    known |= set(inspect.signature(config_class.__init__).parameters) - {"self", "kwargs"}
    for klass in config_class.__mro__:
        known |= {k for k, v in vars(klass).items() if isinstance(v, property)}
    if hasattr(default, "rope_parameters"):
        known |= set(_ROPE_LEGACY_KEYS)
    module = sys.modules.get(model_class.__module__)
    if module is not None:
        known |= set(_GETATTR_CONFIG.findall(inspect.getsource(module)))
    return {key for key in known if not key.startswith("_")}


def _check_override_keys(spec: ArchSpec, overrides: Mapping[str, Any], known: set[str]) -> None:
    """Raise UsageError naming the first override key the config class does not know."""
    for key in overrides:
        if key in known:
            continue
        close = difflib.get_close_matches(key, sorted(known), n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UsageError(f"{spec.config_class} has no field {key!r} ({spec.name}).{hint}")


def _check_json_values(overrides: Mapping[str, Any]) -> None:
    """Overrides go into config.json and ekka-zoo.json: they must be JSON values."""
    try:
        json.dumps(dict(overrides), sort_keys=True, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise UsageError(
            f"config overrides must be JSON values (numbers, strings, lists): {exc}"
        ) from exc


def _make_config(spec: ArchSpec, overrides: Mapping[str, Any], zoo_defaults: bool) -> Any:
    """The transformers config: class defaults, then zoo defaults, then overrides."""
    model_class, config_class = _transformers_classes(spec)
    _check_override_keys(spec, overrides, _known_config_keys(config_class, model_class))
    kwargs: dict[str, Any] = {}
    if zoo_defaults and is_derived(spec):  # the class defaults scaled down, then its overrides
        with quiet_transformers():
            kwargs = scale_config(config_class().to_dict())
    if zoo_defaults:
        kwargs.update(copy.deepcopy(dict(spec.defaults)))
    kwargs.update(copy.deepcopy(dict(overrides)))
    try:
        return config_class(**kwargs)
    except _config_errors() as exc:
        raise UsageError(f"{spec.config_class} rejected the config: {exc}") from exc


def _check_vocab(config: Any, tokenizer_size: int) -> None:
    """The model's vocabulary must hold every tokenizer id (a composite multimodal config's:
    its text part's)."""
    vocab_size = getattr(config.get_text_config(), "vocab_size", None)
    if vocab_size is None or vocab_size < tokenizer_size:
        raise UsageError(
            f"vocab_size={vocab_size} is smaller than the zoo tokenizer ({tokenizer_size} entries); "
            f"use vocab_size >= {tokenizer_size}"
        )


# ---------------------------------------------------------------------------- weights


def _torch_dtype(dtype: str) -> Any:
    """torch dtype of a zoo dtype name; UsageError for anything else."""
    if dtype not in DTYPES:
        raise UsageError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    import torch

    return getattr(torch, dtype)


def _count_parameters(spec: ArchSpec, config: Any) -> int:
    """Parameter count of the model, from a weightless build on the meta device."""
    import torch

    model_class, _ = _transformers_classes(spec)
    with torch.device("meta"):
        model = model_class(copy.deepcopy(config))
    return sum(parameter.numel() for parameter in model.parameters())


def _check_size(spec: ArchSpec, config: Any) -> None:
    """Raise UsageError for a model too large for the zoo (before allocating it)."""
    try:
        count = _count_parameters(spec, config)
    except _build_errors() as exc:
        raise UsageError(f"{spec.name} cannot be built from this config: {exc}") from exc
    if count > MAX_PARAMETERS:
        raise UsageError(
            f"{spec.name} with this config has {count:,} parameters; the zoo builds tiny models "
            f"(at most {MAX_PARAMETERS:,}). Give the sizes (hidden_size, intermediate_size, "
            "num_hidden_layers, num_attention_heads, vocab_size, ...) explicitly."
        )


def _init_model(spec: ArchSpec, config: Any, seed: int) -> Any:
    """The model class built from `config` in float32 after `torch.manual_seed(seed)`."""
    import torch

    model_class, _ = _transformers_classes(spec)
    config.dtype = torch.float32
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        torch.manual_seed(seed)
        model = model_class(config)
    except _build_errors() as exc:
        raise UsageError(f"{spec.name} cannot be built from this config: {exc}") from exc
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def _save_model(model: Any, dtype: str, folder: Path) -> None:
    """Cast to `dtype` and let transformers write config, generation config and weights."""
    torch_dtype = _torch_dtype(dtype)
    model.to(torch_dtype)
    model.config.dtype = torch_dtype
    model.save_pretrained(folder, safe_serialization=True)


# ---------------------------------------------------------------------------- canonical files


def _dump_json(data: Any, path: Path) -> None:
    """Write `data` as sorted, indented JSON with a final newline."""
    path.write_text(json.dumps(data, sort_keys=True, indent=2) + "\n", encoding="utf-8")


def _canonical_json(source: Path, target: Path) -> None:
    """Copy a JSON file in canonical form."""
    _dump_json(json.loads(source.read_text(encoding="utf-8")), target)


def _canonical_safetensors(
    source: Path,
    target: Path,
    extra: Mapping[str, tuple[int, ...]] | None = None,
    rename: Callable[[str], str] = str,
) -> None:
    """Copy a safetensors file with contiguous tensors and fixed metadata, each tensor under
    `rename(its name)`, plus the `extra` tensors (ones of their shape, in the file's dtype) that
    transformers does not save."""
    import torch
    from safetensors.torch import load_file, save_file

    tensors = {rename(name): tensor.contiguous() for name, tensor in load_file(source).items()}
    dtype = next(iter(tensors.values())).dtype
    for name, shape in (extra or {}).items():
        tensors.setdefault(name, torch.ones(shape, dtype=dtype))
    save_file(tensors, target, metadata=dict(SAFETENSORS_METADATA))


def _copy_canonical(
    staging: Path,
    out: Path,
    extra: Mapping[str, tuple[int, ...]] | None = None,
    rename: Callable[[str], str] = str,
) -> None:
    """Move the files transformers wrote in `staging` into `out`, canonicalized."""
    written = {path.name for path in staging.iterdir()}
    unexpected = written - set(MODEL_FILES)
    if unexpected or "model.safetensors" not in written:
        raise RuntimeError(f"save_pretrained wrote unexpected files: {sorted(written)}")
    _canonical_safetensors(staging / "model.safetensors", out / "model.safetensors", extra, rename)
    for name in ("config.json", "generation_config.json"):
        if name in written:
            _canonical_json(staging / name, out / name)


def _write_released_config(name: str, path: Path) -> None:
    """Rewrite config.json as `name`'s released checkpoints have it (`released_config`)."""
    config = json.loads(path.read_text(encoding="utf-8"))
    released = released_config(name, config)
    if released != config:
        _dump_json(released, path)


# ---------------------------------------------------------------------------- output folder


def prepare_out(out: Path) -> None:
    """Create `out`, or clear a previous zoo build there; refuse any other non-empty folder."""
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MANIFEST).is_file():
            raise OutputFolderError(
                f"{out} is not empty and holds no {MANIFEST}: refusing to write a model there"
            )
        for name in ZOO_FILES:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def _manifest(
    spec: ArchSpec, seed: int, dtype: str, overrides: Mapping[str, Any], zoo_defaults: bool
) -> dict[str, Any]:
    """What `ekka-zoo.json` records: how the folder was built."""
    return {
        "architecture": spec.name,
        "seed": seed,
        "dtype": dtype,
        "overrides": dict(overrides),
        "zoo_defaults": zoo_defaults,
    }


# ---------------------------------------------------------------------------- entry point


def build_model(
    arch: str,
    out: str | Path,
    *,
    dtype: str = "float32",
    seed: int = 0,
    overrides: Mapping[str, Any] | None = None,
    zoo_defaults: bool = True,
) -> Path:
    """Write a random-weight `arch` model plus the zoo tokenizer into `out`; return `out`.

    Raises UnknownArchitectureError for an unknown `arch`, UsageError for a bad dtype, an
    unknown config key, a vocabulary smaller than the tokenizer or a config the class rejects,
    and OutputFolderError when `out` holds files of something else.
    """
    spec = get_arch(arch)
    _torch_dtype(dtype)
    overrides = dict(overrides or {})
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise UsageError(f"seed must be a non-negative integer, got {seed!r}")
    _check_json_values(overrides)
    with quiet_transformers():
        config = _make_config(spec, overrides, zoo_defaults)
        _check_vocab(config, DEFAULT_VOCAB_SIZE)
        _check_size(spec, config)
        model = _init_model(spec, config, seed)
        out = Path(out)
        prepare_out(out)
        with tempfile.TemporaryDirectory(prefix="ekka-zoo-") as tmp:
            staging = Path(tmp)
            _save_model(model, dtype, staging)
            if zoo_defaults:  # the tensors as the family's released checkpoints have them
                extra = checkpoint_tensors(spec.name, config)
                _copy_canonical(staging, out, extra, functools.partial(released_name, spec.name))
            else:
                _copy_canonical(staging, out)
    if zoo_defaults:
        _write_released_config(spec.name, out / "config.json")
    build_tokenizer(out, DEFAULT_VOCAB_SIZE, model_max_length=_max_length(config))
    _dump_json(_manifest(spec, seed, dtype, overrides, zoo_defaults), out / MANIFEST)
    return out


def _max_length(config: Any) -> int:
    """Tokenizer `model_max_length`: the model's context length."""
    value = getattr(config, "max_position_embeddings", None)
    return value if isinstance(value, int) and value > 0 else DEFAULT_MODEL_MAX_LENGTH
