"""The embedded synthetic multi-label world: seeded scenes, captions, splits and a tiny CLIP.

Importing this package registers the ``Synthetic`` dataset (alias ``synthetic``).
"""
from taidpt.datasets.synthetic.captions import write_caption
from taidpt.datasets.synthetic.dataset import Synthetic
from taidpt.datasets.synthetic.scenes import (Scene, SceneObject, Vocabulary, load_vocabulary, render_scene,
                                              sample_scene)
from taidpt.datasets.synthetic.world import (PRETRAIN_STEPS, WorldSpec, build_tiny_clip, build_world,
                                             cache_root, render_pairs, scene_at, tiny_clip_path, world_dir)

__all__ = [
    "PRETRAIN_STEPS", "Scene", "SceneObject", "Synthetic", "Vocabulary", "WorldSpec", "build_tiny_clip",
    "build_world", "cache_root", "load_vocabulary", "render_pairs", "render_scene", "sample_scene",
    "scene_at", "tiny_clip_path", "world_dir", "write_caption",
]
