"""Parts shared by the prompt-tuning methods: the frozen-CLIP model base, prompt contexts, spatial
pooling, the CLIP backbone from the config, and the precision / AMP update step."""
from taidpt.models.backbone import (backbone_context_length, backbone_resolution, backbone_source,
                                    check_input_size, load_backbone)
from taidpt.models.frozen import FrozenCLIPModel, TwoContextModel
from taidpt.models.precision import PRECISIONS, PrecisionStep, check_precision
from taidpt.models.prompts import (ContextPrompts, PromptContext, PromptedCLIP, class_token_layout,
                                   prompt_texts)
from taidpt.models.spatial import Scale, spatial_pool

__all__ = ["ContextPrompts", "FrozenCLIPModel", "PRECISIONS", "PrecisionStep", "PromptContext", "PromptedCLIP",
           "Scale", "backbone_context_length", "backbone_resolution", "backbone_source",
           "check_input_size", "check_precision",
           "class_token_layout", "load_backbone", "prompt_texts", "spatial_pool",
           "TwoContextModel"]
