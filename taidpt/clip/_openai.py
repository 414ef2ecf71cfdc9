"""The openai-clip package, imported once without its pkg_resources deprecation warning."""
import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    from clip import clip as openai_clip
    from clip.model import CLIP, ModifiedResNet, VisionTransformer, convert_weights

__all__ = ["CLIP", "ModifiedResNet", "VisionTransformer", "convert_weights", "openai_clip"]
