"""CLIP for taidpt: loading (real or random weights) and dense image / per-token text features."""
from taidpt.clip.features import (attnpool_global, dense_image_features, encode_image,
                                  encode_prompt_embeddings, encode_text, image_feature_map,
                                  is_resnet, text_sequence_features)
from taidpt.clip.loading import (CLIP_MODEL_URLS, GEOMETRIES, CLIPGeometry, build_clip,
                                 clip_from_state_dict, context_length_of,
                                 geometry_from_state_dict, load_clip, random_clip,
                                 resolve_geometry, save_clip, to_fp16, tokenize)

__all__ = [
    "CLIP_MODEL_URLS", "GEOMETRIES", "CLIPGeometry", "attnpool_global", "build_clip",
    "clip_from_state_dict", "context_length_of", "dense_image_features", "encode_image",
    "encode_prompt_embeddings", "encode_text", "geometry_from_state_dict", "image_feature_map", "is_resnet", "load_clip",
    "random_clip", "resolve_geometry", "save_clip", "text_sequence_features", "to_fp16", "tokenize",
]
