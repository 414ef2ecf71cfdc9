"""Building, saving and loading CLIP models (openai-clip architecture, fp32).

``load_clip`` looks for weights in this order: an existing file path, the openai-clip cache dir,
a download (skipped when ``TAIDPT_OFFLINE=1``); when all fail it raises one paragraph naming the
expected file, the URL and the SHA256. ``random_clip`` builds the real architecture with random
weights for tests and the synthetic world.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import urllib.error
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Union

import warnings

import torch

from taidpt.clip._openai import CLIP, convert_weights
from taidpt.clip._openai import openai_clip as _openai_clip
from taidpt.io import atomic_write

logger = logging.getLogger(__name__)

_URL = "https://openaipublic.azureedge.net/clip/models"
# openai-clip 1.0's table (CoOp's older copy lacks the last three models); the SHA256 is the
# second-to-last path part.
CLIP_MODEL_URLS: Dict[str, str] = {
    "RN50": f"{_URL}/afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt",
    "RN101": f"{_URL}/8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599/RN101.pt",
    "RN50x4": f"{_URL}/7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd/RN50x4.pt",
    "RN50x16": f"{_URL}/52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa/RN50x16.pt",
    "RN50x64": f"{_URL}/be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c/RN50x64.pt",
    "ViT-B/32": f"{_URL}/40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
    "ViT-B/16": f"{_URL}/5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
    "ViT-L/14": f"{_URL}/b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
    "ViT-L/14@336px": f"{_URL}/3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt",
}


@dataclass(frozen=True)
class CLIPGeometry:
    """Constructor arguments of ``clip.model.CLIP``; heads follow openai-clip's inference rule
    (text heads = width // 64, ResNet attention-pool heads = width * 32 // 64)."""

    embed_dim: int
    image_resolution: int
    vision_layers: Union[int, Sequence[int]]
    vision_width: int
    vision_patch_size: Optional[int]
    context_length: int = 77
    vocab_size: int = 49408
    transformer_width: int = 512
    transformer_layers: int = 12

    @property
    def transformer_heads(self) -> int:
        return self.transformer_width // 64


GEOMETRIES: Dict[str, CLIPGeometry] = {
    "RN50": CLIPGeometry(1024, 224, (3, 4, 6, 3), 64, None),
    "RN101": CLIPGeometry(512, 224, (3, 4, 23, 3), 64, None),
    "RN50x4": CLIPGeometry(640, 288, (4, 6, 10, 6), 80, None, transformer_width=640),
    "RN50x16": CLIPGeometry(768, 384, (6, 8, 18, 8), 96, None, transformer_width=768),
    "RN50x64": CLIPGeometry(1024, 448, (3, 15, 36, 10), 128, None, transformer_width=1024),
    "ViT-B/32": CLIPGeometry(512, 224, 12, 768, 32),
    "ViT-B/16": CLIPGeometry(512, 224, 12, 768, 16),
    "ViT-L/14": CLIPGeometry(768, 224, 24, 1024, 14, transformer_width=768),
    "ViT-L/14@336px": CLIPGeometry(768, 336, 24, 1024, 14, transformer_width=768),
    # Small geometries of the real architecture: the synthetic world and the tests.
    "tiny": CLIPGeometry(128, 64, (1, 1, 1, 1), 32, None, context_length=32,
                         transformer_width=64, transformer_layers=2),
    "tiny-vit": CLIPGeometry(64, 32, 2, 64, 8, context_length=32,
                             transformer_width=64, transformer_layers=1),
}


def build_clip(geometry: CLIPGeometry) -> CLIP:
    """An fp32 CLIP with openai-clip's random initialisation."""
    g = geometry
    layers = tuple(g.vision_layers) if isinstance(g.vision_layers, (list, tuple)) else g.vision_layers
    return CLIP(g.embed_dim, g.image_resolution, layers, g.vision_width, g.vision_patch_size,
                g.context_length, g.vocab_size, g.transformer_width, g.transformer_heads,
                g.transformer_layers)


def resolve_geometry(geometry: Union[str, dict, CLIPGeometry]) -> CLIPGeometry:
    if isinstance(geometry, CLIPGeometry):
        return geometry
    if isinstance(geometry, dict):
        return CLIPGeometry(**geometry)
    if geometry not in GEOMETRIES:
        raise KeyError(f"Unknown CLIP geometry {geometry!r}; named geometries: {', '.join(GEOMETRIES)}")
    return GEOMETRIES[geometry]


def random_clip(geometry: Union[str, dict, CLIPGeometry] = "tiny", seed: int = 0) -> CLIP:
    """A CLIP of the real architecture with seeded random fp32 weights, in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_clip(resolve_geometry(geometry))
    return model.eval()


def geometry_from_state_dict(state_dict: Dict[str, torch.Tensor]) -> CLIPGeometry:
    """Infer the geometry from weights, following openai-clip's ``build_model`` rules."""
    sd = state_dict
    if "visual.proj" in sd:
        vision_width = sd["visual.conv1.weight"].shape[0]
        vision_layers = len([k for k in sd if k.startswith("visual.") and k.endswith(".attn.in_proj_weight")])
        patch = sd["visual.conv1.weight"].shape[-1]
        grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        resolution = patch * grid
    else:
        vision_layers = tuple(len({k.split(".")[2] for k in sd if k.startswith(f"visual.layer{b}.")})
                              for b in (1, 2, 3, 4))
        vision_width = sd["visual.layer1.0.conv1.weight"].shape[0]
        patch = None
        resolution = round((sd["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5) * 32
    return CLIPGeometry(
        embed_dim=sd["text_projection"].shape[1], image_resolution=resolution,
        vision_layers=vision_layers, vision_width=vision_width, vision_patch_size=patch,
        context_length=sd["positional_embedding"].shape[0],
        vocab_size=sd["token_embedding.weight"].shape[0],
        transformer_width=sd["ln_final.weight"].shape[0],
        transformer_layers=len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks")}))


def clip_from_state_dict(state_dict: Dict[str, torch.Tensor]) -> CLIP:
    """An fp32 CLIP holding exactly the given weights (openai-clip's ``build_model`` would cast to
    fp16 first and lose fp32 values)."""
    sd = {k: v for k, v in state_dict.items() if k not in ("input_resolution", "context_length", "vocab_size")}
    model = build_clip(geometry_from_state_dict(sd))
    model.load_state_dict({k: v.float() for k, v in sd.items()})
    return model.eval()


def save_clip(model: CLIP, path: str) -> str:
    """Write ``model``'s fp32 state dict to ``path`` atomically; returns the path."""
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    atomic_write(path, lambda f: torch.save(state, f))
    return path


def _read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    try:
        with warnings.catch_warnings():  # torch.jit.load is deprecated, openai-clip archives need it
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(path, map_location="cpu").state_dict()
    except RuntimeError:
        pass
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same explanation
        raise RuntimeError(
            f"Could not read CLIP weights from {path}: it is neither an openai-clip JIT archive nor a "
            f"torch state-dict file ({err}). Delete the file and download it again, or point "
            f"MODEL.BACKBONE.PATH at a valid file.") from err
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or "token_embedding.weight" not in obj:
        raise RuntimeError(f"{path} does not hold a CLIP state dict (no 'token_embedding.weight' key). "
                           "Point MODEL.BACKBONE.PATH at a CLIP model file.")
    return obj


def default_download_root() -> str:
    return os.path.expanduser("~/.cache/clip")


def _missing_weights_error(name: str, target: str, reason: str) -> FileNotFoundError:
    url = CLIP_MODEL_URLS[name]
    return FileNotFoundError(
        f"CLIP weights for {name!r} are not available ({reason}). Expected the file {target} "
        f"(download it from {url}; SHA256 {url.split('/')[-2]}), or set MODEL.BACKBONE.PATH to a "
        f"local copy of the weights (an openai-clip .pt archive or a state-dict file).")


def load_clip(name_or_path: str, device: Union[str, torch.device] = "cpu",
              download_root: Optional[str] = None) -> CLIP:
    """Load a CLIP model (fp32, eval) from a file path or an openai-clip model name."""
    if os.path.isfile(name_or_path):
        path = name_or_path
    elif name_or_path in CLIP_MODEL_URLS:
        root = download_root or default_download_root()
        target = os.path.join(root, os.path.basename(CLIP_MODEL_URLS[name_or_path]))
        if os.path.isfile(target):
            path = target
        elif os.environ.get("TAIDPT_OFFLINE", "") not in ("", "0"):
            raise _missing_weights_error(name_or_path, target, "TAIDPT_OFFLINE is set and the file is missing")
        else:
            logger.info("Downloading CLIP %s to %s", name_or_path, root)
            try:
                path = _openai_clip._download(CLIP_MODEL_URLS[name_or_path], root)
            except (urllib.error.URLError, OSError) as err:
                raise _missing_weights_error(name_or_path, target, f"download failed: {err}") from err
    else:
        raise FileNotFoundError(
            f"No CLIP weights at {name_or_path!r}: it is neither an existing file nor a model name "
            f"openai-clip knows ({', '.join(CLIP_MODEL_URLS)}). Check MODEL.BACKBONE.PATH / "
            f"MODEL.BACKBONE.NAME.")
    model = clip_from_state_dict(_read_state_dict(path))
    logger.info("Loaded CLIP from %s (%s)", path, dataclasses.asdict(geometry_from_state_dict(model.state_dict())))
    return model.to(device)


def context_length_of(name_or_path: str) -> int:
    """The text context length of a CLIP file or model name without building the model (77 for
    every openai-clip model; the file's positional embedding tells for others)."""
    if os.path.isfile(name_or_path):
        return _read_state_dict(name_or_path)["positional_embedding"].shape[0]
    if name_or_path in GEOMETRIES:
        return GEOMETRIES[name_or_path].context_length
    return 77


def to_fp16(model: CLIP) -> CLIP:
    """Cast CLIP's matmul / conv weights to fp16 in place, as openai-clip ships them (GPU use)."""
    convert_weights(model)
    return model


def tokenize(texts: Union[str, Sequence[str]], context_length: int = 77) -> torch.Tensor:
    """CLIP BPE tokens ``N x context_length`` (int32, zero-padded), as openai-clip's
    ``tokenize(..., truncate=True)`` on current torch, whichever CLIP copy is imported (CoOp's
    returns int64): long texts are cut, keeping the EOS token."""
    bpe = _openai_clip._tokenizer
    sot, eot = bpe.encoder["<|startoftext|>"], bpe.encoder["<|endoftext|>"]
    texts = [texts] if isinstance(texts, str) else texts
    result = torch.zeros(len(texts), context_length, dtype=torch.int)
    for i, text in enumerate(texts):
        tokens = [sot] + bpe.encode(text)[:context_length - 2] + [eot]
        result[i, :len(tokens)] = torch.tensor(tokens)
    return result
