"""OpenAI's CLIP code, imported once without its pkg_resources deprecation warning.

``clip`` is whichever copy Python finds first: the ``openai-clip`` wheel, or inside a CoOp
checkout CoOp's bundled ``clip/`` (the script's folder comes first on ``sys.path``). taidpt uses
only what every copy has (``CLIP``, ``convert_weights``, ``_tokenizer``, ``_download``) and keeps
its own model-URL table (older copies lack some models).
"""
import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    from clip import clip as openai_clip
    from clip.model import CLIP, convert_weights

__all__ = ["CLIP", "convert_weights", "openai_clip"]
