"""SaLSa in TRL's ``SFTTrainer`` (``pip install salsa-hf[trl]``): the mixins over TRL's classes.

``SaLSaSFTConfig(optim="salsa", ...)`` is an ``SFTConfig`` that also takes the SaLSa optimizers and
their ``salsa_*`` fields (so ``TrlParser((ScriptArguments, SaLSaSFTConfig, ModelConfig))`` reads
``--optim salsa``); ``SaLSaSFTTrainer`` is ``SFTTrainer`` with the line search. SFTTrainer's own loss
(completion-only masks, ``num_items_in_batch``) is what the line search tests, and its token counts
and token-accuracy metrics count the training forwards only.
"""

from __future__ import annotations

from dataclasses import dataclass

from trl import SFTConfig, SFTTrainer

from .trainer import SaLSaMixin
from .training_args import SaLSaArguments


@dataclass
class SaLSaSFTConfig(SaLSaArguments, SFTConfig):
    """``SFTConfig`` plus the SaLSa optimizers and their settings (``SaLSaArguments``)."""


class SaLSaSFTTrainer(SaLSaMixin, SFTTrainer):
    """TRL's ``SFTTrainer`` whose optimizer steps run SaLSa's line search (see ``SaLSaMixin``)."""
