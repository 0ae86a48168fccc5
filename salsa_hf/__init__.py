"""salsa-hf: SaLSa, the learning-rate-free line-search optimizer, for the Hugging Face Trainer."""

from .bookkeeping import reshard_fsdp
from .optimizer import PRESETS, LineSearchState, SaLSa
from .trainer import SaLSaMixin, SaLSaTrainer
from .training_args import SaLSaArguments, SaLSaTrainingArguments

__all__ = ["PRESETS", "LineSearchState", "SaLSa", "SaLSaArguments", "SaLSaMixin", "SaLSaTrainer",
           "SaLSaTrainingArguments", "reshard_fsdp"]
__version__ = "0.1.0"
