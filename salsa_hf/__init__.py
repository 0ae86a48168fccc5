"""salsa-hf: SaLSa, the learning-rate-free line-search optimizer, for the Hugging Face Trainer."""

from .optimizer import PRESETS, LineSearchState, SaLSa

__all__ = ["PRESETS", "LineSearchState", "SaLSa"]
__version__ = "0.1.0"
