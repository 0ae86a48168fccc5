"""salsa-hf: SaLSa, the learning-rate-free line-search optimizer, for the Hugging Face Trainer."""

from .bookkeeping import reshard_fsdp
from .optimizer import LineSearchState, SaLSa
from .presets import PRESETS
from .reference import SaLSaPaper
from .trainer import SaLSaMixin, SaLSaTrainer
from .training_args import SaLSaArguments, SaLSaTrainingArguments

__all__ = ["PRESETS", "LineSearchState", "SaLSa", "SaLSaArguments", "SaLSaMixin", "SaLSaPaper", "SaLSaTrainer",
           "SaLSaTrainingArguments", "reshard_fsdp"]
__version__ = "0.1.0"
