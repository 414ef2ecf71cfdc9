"""Feature extractors on a CLIP model: dense image features and per-token text features.

Shapes: B batch, D joint width, W token width, L tokens, HW spatial positions.

The functions read CLIP's modules by the names every CLIP copy shares, so they work on models
built by the ``openai-clip`` wheel, by CoOp's bundled ``clip/`` (which shadows the wheel inside a
CoOp checkout) and by the TaI-DPT reference's bundled copy: a ResNet is recognised by its
``attnpool`` (not by the class of whichever ``clip`` was imported), and its stem activations are
``relu1``..``relu3`` (the wheel) or one shared ``relu`` (the older copies). Inputs are cast to
the weights' dtype (fp16 copies).
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from taidpt.clip._openai import CLIP


def is_resnet(model: CLIP) -> bool:
    """True for CLIP's ModifiedResNet image tower (any copy), False for its VisionTransformer."""
    return hasattr(model.visual, "attnpool")


def _stem_activations(visual: torch.nn.Module) -> Tuple[torch.nn.Module, ...]:
    """The three stem ReLUs: ``relu1..relu3`` (openai-clip wheel) or one ``relu`` (older copies)."""
    if hasattr(visual, "relu1"):
        return visual.relu1, visual.relu2, visual.relu3
    return (visual.relu,) * 3


def _resize_grid(pos: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``(1 + S*S) x C`` positional embedding -> ``(1 + h*w) x C`` (bicubic on the grid part)."""
    side = round((pos.shape[0] - 1) ** 0.5)
    if (h, w) == (side, side):
        return pos
    grid = pos[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=(h, w), mode="bicubic", align_corners=False).to(pos.dtype)
    return torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(h * w, -1)])


def image_feature_map(model: CLIP, images: torch.Tensor) -> torch.Tensor:
    """ResNet stem + layer1..4: ``B x 3 x H x W`` -> ``B x C_v x H/32 x W/32``."""
    v = model.visual
    x = images.type(v.conv1.weight.dtype)
    if v.conv1.weight.is_contiguous(memory_format=torch.channels_last) and not v.conv1.weight.is_contiguous():
        x = x.contiguous(memory_format=torch.channels_last)  # MODEL.CHANNELS_LAST weights
    for conv, bn, relu in zip((v.conv1, v.conv2, v.conv3), (v.bn1, v.bn2, v.bn3), _stem_activations(v)):
        x = relu(bn(conv(x)))
    x = v.avgpool(x)
    return v.layer4(v.layer3(v.layer2(v.layer1(x))))


def attnpool_global(model: CLIP, feature_map: torch.Tensor, use_positional: bool) -> torch.Tensor:
    """CLIP's attention pool on ``B x C_v x h x w`` -> ``B x D``; the positional embedding is
    interpolated to ``h x w`` when added (stock CLIP), or left out (TaI-DPT's image side)."""
    return _attention_pool(model, feature_map, use_positional)[0]


def _attention_pool(model: CLIP, feature_map: torch.Tensor,
                    use_positional: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """The attention pool on ``B x C_v x h x w``: (pooled ``B x D``, the values ``(1 + hw) x B x
    C_v``, mean token first). Without the positional embedding the values of the ``hw`` positions
    are exactly the dense path's ``v_proj(F_hw)``."""
    pool = model.visual.attnpool
    b, c, h, w = feature_map.shape
    x = feature_map.reshape(b, c, h * w).permute(2, 0, 1)
    x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
    if use_positional:
        x = x + _resize_grid(pool.positional_embedding, h, w)[:, None, :].to(x.dtype)
    value = pool.v_proj(x)

    def heads(t: torch.Tensor) -> torch.Tensor:  # L x B x C_v -> (B * heads) x L x C_v / heads
        return t.reshape(t.shape[0], b * pool.num_heads, c // pool.num_heads).transpose(0, 1)

    pooled = F.scaled_dot_product_attention(heads(pool.q_proj(x[:1])), heads(pool.k_proj(x)), heads(value))
    return pool.c_proj(pooled.transpose(0, 1).reshape(b, c)), value


def _vit_tokens_before_last_block(model: CLIP, images: torch.Tensor) -> torch.Tensor:
    """ViT patch embedding + (interpolated) positions + all blocks but the last: ``(1+HW) x B x W``."""
    v = model.visual
    x = v.conv1(images.type(v.conv1.weight.dtype))
    h, w = x.shape[-2:]
    x = x.flatten(2).permute(0, 2, 1)
    cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + _resize_grid(v.positional_embedding, h, w).to(x.dtype)
    x = v.ln_pre(x).permute(1, 0, 2)
    for block in v.transformer.resblocks[:-1]:
        x = block(x)
    return x


def _vit_features(model: CLIP, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    v = model.visual
    x = _vit_tokens_before_last_block(model, images)
    last = v.transformer.resblocks[-1]
    width = x.shape[-1]
    y = last.ln_1(x[1:])
    value = F.linear(y, last.attn.in_proj_weight[2 * width:], last.attn.in_proj_bias[2 * width:])
    dense = v.ln_post(last.attn.out_proj(value)) @ v.proj
    cls = v.ln_post(last(x)[0]) @ v.proj
    return cls, dense


def dense_image_features(model: CLIP, images: torch.Tensor,
                         global_positional: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Images ``B x 3 x H x W`` -> (global ``B x D``, dense ``HW x B x D``), not normalised.

    ResNet (SPEC 3): dense = ``c_proj(v_proj(F_hw))`` at every position; global = attention pool
    without positional embedding (TaI-DPT), or with it (``global_positional``: stock CLIP, as the
    zero-shot baseline uses). ViT: global = CLS token; dense = the last block's value path of the
    patch tokens through ``ln_post`` and ``proj``. Any input size works.
    """
    if not is_resnet(model):
        return _vit_features(model, images)
    fmap = image_feature_map(model, images)
    pool = model.visual.attnpool
    pooled, value = _attention_pool(model, fmap, global_positional)
    if global_positional:  # the pool's values carry the positional embedding: not the dense path's
        return pooled, pool.c_proj(pool.v_proj(fmap.flatten(2).permute(2, 0, 1)))
    return pooled, pool.c_proj(value[1:])


def encode_image(model: CLIP, images: torch.Tensor) -> torch.Tensor:
    """Stock CLIP image feature ``B x D``, positional embedding interpolated for other sizes."""
    if is_resnet(model):
        return attnpool_global(model, image_feature_map(model, images), use_positional=True)
    v = model.visual
    x = v.transformer.resblocks[-1](_vit_tokens_before_last_block(model, images))
    return v.ln_post(x[0]) @ v.proj


def _text_transformer(model: CLIP, x: torch.Tensor) -> torch.Tensor:
    """``B x L x W`` embeddings (+ positions added here) -> ``B x L x W`` after ``ln_final``.

    Works for any ``L <= context_length`` (the causal mask is cut to ``L x L``), so sequences may
    be shortened after their last EOS without changing any kept output.
    """
    length = x.shape[1]
    x = (x + model.positional_embedding[:length].type(x.dtype)).permute(1, 0, 2)
    for block in model.transformer.resblocks:
        mask = block.attn_mask
        if mask is not None:
            mask = mask[:length, :length].to(dtype=x.dtype, device=x.device)
        y = block.ln_1(x)
        x = x + block.attn(y, y, y, need_weights=False, attn_mask=mask)[0]
        x = x + block.mlp(block.ln_2(x))
    return model.ln_final(x.permute(1, 0, 2)).type(x.dtype)


def text_sequence_features(model: CLIP, tokens: torch.Tensor) -> torch.Tensor:
    """Tokens ``B x L`` -> projected features at every position ``B x L x D`` (SPEC 2)."""
    x = model.token_embedding(tokens).type(model.dtype)
    return _text_transformer(model, x) @ model.text_projection


def encode_prompt_embeddings(model: CLIP, embeddings: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Prompt token embeddings ``C x L x W`` (+ their token ids ``C x L``) -> EOS features ``C x D``."""
    x = _text_transformer(model, embeddings.type(model.dtype))
    return x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)] @ model.text_projection


def encode_text(model: CLIP, tokens: torch.Tensor) -> torch.Tensor:
    """Stock CLIP text feature ``B x D`` (EOS position)."""
    return encode_prompt_embeddings(model, model.token_embedding(tokens), tokens)
