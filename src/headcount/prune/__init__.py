"""Which heads matter and removing the rest: importance (Michel et al. 2019), learned L0 gates
(Voita et al. 2019), single-head ablation, GQA-aware masking and physical removal, pruning
schedules and distillation recovery.

Imports point downward: ``prune`` uses ``models`` and ``nn``; ``report`` and ``cli`` use it.
"""

from headcount.prune.gates import GateResult, train_gates
from headcount.prune.importance import Ablation, Importance, ablate, head_importance
from headcount.prune.masks import (
    KeepMask,
    apply_mask,
    check_fraction,
    full_mask,
    kept_groups,
    random_scores,
    remove_heads,
    select,
)
from headcount.prune.objectives import (
    Contrastive,
    EmbeddingDistillation,
    LanguageModeling,
    embedding_cosine,
    evaluate,
    sentence_pairs,
)
from headcount.prune.plan import METHODS, Schedule, schedule
from headcount.prune.recover import Recovery, recover

__all__ = [
    "METHODS",
    "Ablation",
    "Contrastive",
    "EmbeddingDistillation",
    "GateResult",
    "Importance",
    "KeepMask",
    "LanguageModeling",
    "Recovery",
    "Schedule",
    "ablate",
    "apply_mask",
    "check_fraction",
    "embedding_cosine",
    "evaluate",
    "full_mask",
    "head_importance",
    "kept_groups",
    "random_scores",
    "recover",
    "remove_heads",
    "schedule",
    "select",
    "sentence_pairs",
    "train_gates",
]
