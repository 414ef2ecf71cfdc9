"""Learnable class prompts shared by the prompt-tuning trainers (CoOp semantics).

The text of class ``i`` is ``"X X ... X {classname}."`` (``M`` placeholders, or the ``CTX_INIT``
words). After CLIP's BPE it reads ``[SOS] ctx_1..ctx_M name_1..name_n . [EOS] pad...``; the
context positions' token embeddings are replaced by learnable vectors, generic (``M x W``, shared
by all classes) or class-specific (``C x M x W``). The class name sits at the end (default), in
the middle of the context or in front of it.

Shapes: C classes, M context vectors, L tokens (the CLIP context length), W token width, D joint
embedding width.
"""
from __future__ import annotations

import logging
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from taidpt.clip import encode_image, encode_prompt_embeddings, tokenize
from taidpt.models.frozen import FrozenCLIPModel

logger = logging.getLogger(__name__)

PLACEHOLDER = "X"
CLASS_TOKEN_POSITIONS = ("end", "middle", "front")
CONTEXT_INIT_STD = 0.02


def prompt_texts(classnames: Sequence[str], prefix: str) -> List[str]:
    """``"{prefix} {name}."`` per class (underscores in class names become spaces)."""
    return [f"{prefix} {name.replace('_', ' ')}." for name in classnames]


def bpe_lengths(texts: Sequence[str], context_length: int = 77) -> torch.Tensor:
    """Number of BPE tokens of each text between SOS and EOS: ``N`` long."""
    return tokenize(list(texts), context_length).argmax(dim=-1) - 1


def class_token_layout(name_lengths: Sequence[int], n_ctx: int, length: int,
                       position: str = "end") -> torch.Tensor:
    """Where each prompt position comes from, ``C x L`` long indices into the "end" layout
    ``[SOS, ctx_1..ctx_M, name_1..name_n, '.', EOS, pad...]``.

    ``middle`` puts the name between the first ``M // 2`` context vectors and the rest;
    ``front`` puts it right after SOS. EOS keeps its index in every layout.
    """
    if position not in CLASS_TOKEN_POSITIONS:
        raise ValueError(f"Unknown class token position {position!r}; choose one of "
                         f"{', '.join(CLASS_TOKEN_POSITIONS)} (CLASS_TOKEN_POSITION).")
    rows = []
    for n in name_lengths:
        ctx = list(range(1, 1 + n_ctx))
        name = list(range(1 + n_ctx, 1 + n_ctx + n))
        rest = list(range(1 + n_ctx + n, length))
        if position == "end":
            order = ctx + name
        elif position == "middle":
            order = ctx[:n_ctx // 2] + name + ctx[n_ctx // 2:]
        else:
            order = name + ctx
        rows.append([0] + order + rest)
    return torch.tensor(rows, dtype=torch.long)


class PromptContext(nn.Module):
    """Class prompts with learnable context vectors; subclasses own the context parameters.

    Buffers (saved with the state dict, to be ignored when loading since they depend on the class
    names): ``token_prefix`` ``C x 1 x W`` (SOS) and ``token_suffix`` ``C x (L - 1 - M) x W``
    (name, '.', EOS, padding). Not saved: ``tokenized_prompts`` ``C x L`` (the "end" layout) and
    ``layout`` ``C x L`` (see :func:`class_token_layout`).

    ``ctx_init`` words (underscores read as spaces) replace the placeholders and give both the
    number of context vectors (their BPE token count; ``n_ctx`` is then ignored) and the initial
    values (their token embeddings); otherwise contexts start from N(0, 0.02^2).
    """

    def __init__(self, clip_model: nn.Module, classnames: Sequence[str], n_ctx: int = 16,
                 ctx_init: str = "", class_token_position: str = "end") -> None:
        super().__init__()
        self.dtype = clip_model.dtype
        self.width = clip_model.ln_final.weight.shape[0]
        self.context_length = clip_model.context_length
        self.n_cls = len(classnames)
        self.class_token_position = class_token_position
        self.init_embedding = None
        ctx_init = ctx_init.replace("_", " ").strip()
        if ctx_init:
            words = tokenize(ctx_init, self.context_length)
            n_ctx = int(words.argmax(dim=-1)[0]) - 1
            self.init_embedding = self.embed(clip_model, words)[0, 1:1 + n_ctx]
            self.prompt_prefix = ctx_init
        else:
            if n_ctx < 1:
                raise ValueError(f"N_CTX must be >= 1 without CTX_INIT, got {n_ctx}.")
            self.prompt_prefix = " ".join([PLACEHOLDER] * n_ctx)
        self.n_ctx = n_ctx
        logger.info('Initial context: "%s" (%d context vectors, class token %s)',
                    self.prompt_prefix, n_ctx, class_token_position)

        names = [name.replace("_", " ") for name in classnames]
        self.name_lengths = bpe_lengths(names, self.context_length).tolist()
        texts = prompt_texts(classnames, self.prompt_prefix)
        tokens = tokenize(texts, self.context_length)
        for name, n, row in zip(names, self.name_lengths, tokens):
            if int(row.argmax()) != n_ctx + n + 2:
                raise ValueError(
                    f"The prompt of class {name!r} is not [SOS] + {n_ctx} context tokens + {n} name "
                    f"tokens + '.' + [EOS] within CLIP's {self.context_length} tokens: it is too "
                    "long (lower N_CTX or shorten the class name) or the class name ends with "
                    "punctuation (remove it).")
        embedding = self.embed(clip_model, tokens)
        self.register_buffer("token_prefix", embedding[:, :1])
        self.register_buffer("token_suffix", embedding[:, 1 + n_ctx:])
        self.register_buffer("tokenized_prompts", tokens, persistent=False)
        self.register_buffer("layout", class_token_layout(self.name_lengths, n_ctx, tokens.shape[1],
                                                          class_token_position), persistent=False)

    def embed(self, clip_model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        """Frozen token embeddings ``N x L x W`` in the CLIP dtype."""
        with torch.no_grad():
            return clip_model.token_embedding(tokens).type(self.dtype)

    def initial_context(self, class_specific: bool = False) -> torch.Tensor:
        """A fresh initial context: ``M x W``, or ``C x M x W`` when ``class_specific`` (with
        ``ctx_init`` every class starts from the words; CoOp would ignore CSC there)."""
        shape = (self.n_cls, self.n_ctx, self.width) if class_specific else (self.n_ctx, self.width)
        if self.init_embedding is not None:
            return self.init_embedding.expand(shape).clone()
        return nn.init.normal_(torch.empty(shape, dtype=self.dtype), std=CONTEXT_INIT_STD)

    @property
    def layout_tokens(self) -> torch.Tensor:
        """Token ids in prompt order, ``C x L`` (context positions hold the placeholder ids)."""
        return self.tokenized_prompts.gather(1, self.layout)

    @property
    def eos_length(self) -> int:
        """``L'``: one past the longest prompt's EOS; the positions after it are padding."""
        return int(self.tokenized_prompts.argmax(dim=-1).max()) + 1

    def assemble(self, ctx: torch.Tensor, length: Optional[int] = None) -> torch.Tensor:
        """Context -> prompt embeddings: ``M x W`` (generic) or ``C x M x W`` (class-specific) ->
        ``C x L x W``; per-image contexts ``B x C x M x W`` (or ``B x 1 x M x W``, shared by the
        classes) -> ``B x C x L x W``. ``length`` (>= :attr:`eos_length`) keeps only the first
        positions (``L`` -> ``length``) without building the rest."""
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0)
        ctx = ctx.expand(*ctx.shape[:-3], self.n_cls, -1, -1)
        lead = ctx.shape[:-3]
        suffix, layout = self.token_suffix, self.layout
        if length is not None:
            suffix, layout = suffix[:, :length - 1 - self.n_ctx], layout[:, :length]
        prompts = torch.cat([self.token_prefix.expand(*lead, -1, -1, -1), ctx,
                             suffix.expand(*lead, -1, -1, -1)], dim=-2)
        if self.class_token_position == "end":
            return prompts
        return prompts.gather(-2, layout.unsqueeze(-1).expand(prompts.shape))

    def encode(self, clip_model: nn.Module, ctx: torch.Tensor,
               cut_at_eos: bool = True) -> torch.Tensor:
        """Class text features (EOS position, not normalised) for the context ``ctx``: ``C x D``,
        or ``B x C x D`` for per-image contexts (see :meth:`assemble`).

        ``cut_at_eos`` (default) runs the text transformer on the first :attr:`eos_length`
        positions only (``L'`` instead of ``L`` tokens per prompt, ~21 of 77 for 16 context
        vectors). Exact: the transformer is causal and every dropped position comes after every
        prompt's EOS; only the summation order of fp kernels can change (differences ~1e-7 in
        fp32). ``False`` runs all ``L`` positions, as the reference does.
        """
        length = self.eos_length if cut_at_eos else None
        prompts, tokens = self.assemble(ctx, length), self.tokenized_prompts[:, :length]
        if prompts.dim() == 3:
            return encode_prompt_embeddings(clip_model, prompts, tokens)
        batch = prompts.shape[0]
        features = encode_prompt_embeddings(clip_model, prompts.flatten(0, 1),
                                            tokens.repeat(batch, 1))
        return features.view(batch, self.n_cls, -1)


class ContextPrompts(PromptContext):
    """CoOp's prompt learner: one learnable context ``ctx``, ``M x W`` (generic) or ``C x M x W``
    (``csc``, class-specific). State dict: ``ctx``, ``token_prefix``, ``token_suffix``."""

    def __init__(self, clip_model: nn.Module, classnames: Sequence[str], n_ctx: int = 16,
                 csc: bool = False, ctx_init: str = "", class_token_position: str = "end") -> None:
        super().__init__(clip_model, classnames, n_ctx, ctx_init, class_token_position)
        self.ctx = nn.Parameter(self.initial_context(csc))


class PromptedCLIP(FrozenCLIPModel):
    """Frozen CLIP + a prompt learner, for methods scored on CLIP's own image feature with CLIP's
    own logit scale."""

    @property
    def logit_scale(self) -> torch.Tensor:
        """CLIP's own logit scale ``exp(logit_scale)`` (frozen; 100 for OpenAI's CLIPs)."""
        return self.clip.logit_scale.exp()

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``B x 3 x H x W`` -> normalised stock CLIP image features ``B x D``."""
        return F.normalize(encode_image(self.clip, images), dim=-1)
