"""A small Dassl-compatible engine: config defaults, registries, trainer life cycle, data,
optimisers and schedulers, evaluation and checkpoints."""
from taidpt.engine.registry import DATASET_REGISTRY, EVALUATOR_REGISTRY, TRAINER_REGISTRY, Registry

__all__ = ["DATASET_REGISTRY", "EVALUATOR_REGISTRY", "TRAINER_REGISTRY", "Registry", "build_trainer"]


def build_trainer(cfg):
    """Instantiate ``cfg.TRAINER.NAME`` (aliases accepted)."""
    return TRAINER_REGISTRY.get(cfg.TRAINER.NAME)(cfg)
