"""Benchmark: the reference compute pattern against our fast path, side by side (issue 13).

Both run on the same random CLIP of the real RN50 geometry (fp32) and the same inputs: a corpus
of caption-like sentences, VOC's 20 and COCO's 80 class names, 16 random images at 224 px.

* reference pattern (the authors' code, written with our functions): every training step
  re-encodes its caption batch through the frozen text encoder at all 77 tokens and the 2C prompts
  at 77 tokens; every evaluation batch re-encodes the 2C prompts at 77 tokens.
* our fast path: captions read from the caption feature cache (fp16, the default; the equality
  checks use an fp32 cache), prompts cut at their EOS, prompts encoded once per evaluation;
  re-evaluation reads the image feature cache (``TEST.FEATURE_CACHE``) instead of encoding.

Every timed pair is checked equal before its times count, <= 1e-5 in fp32: logits (|logit| <= 4)
absolutely; the loss (a sum over the positive-negative pairs of each caption, hundreds at C = 80)
and the context gradients relative to their norm (their largest entry alone cancels down to
~1e-5 of fp32 noise on the tiny CLIP). Prints a table (train step at batch 32
and 512 for C = 20 and 80; evaluation per image vs the image encoder alone; re-evaluation on
cached image features; peak memory; cache sizes) and, last, one summary line::

    bench: train512_c20 <ratio>x train512_c80 <ratio>x eval_c80 <ratio> reeval <ratio>x

``eval_c80`` is our evaluation time over the image encoder's alone (target <= 1.05); the others
are speed-ups (targets >= 20, >= 8 and >= 50).

    python scripts/bench.py           # ~8 min on 2 CPU cores
    python scripts/bench.py --tiny    # tiny CLIP, small batches: the equality checks only
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import tempfile
import time
from typing import Callable, Dict, List, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tabulate import tabulate  # noqa: E402

from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchvision import transforms as T  # noqa: E402

from taidpt.clip import dense_image_features, encode_image, random_clip, text_sequence_features, tokenize  # noqa: E402
from taidpt.clip.pretrain import CLIP_MEAN, CLIP_STD  # noqa: E402
from taidpt.datasets._common import load_label_set  # noqa: E402
from taidpt.datasets.base import ImageItem  # noqa: E402
from taidpt.engine.data import ImageDataset  # noqa: E402
from taidpt.losses import double_loss  # noqa: E402
from taidpt.models.feature_cache import CaptionFeatures, load_or_build_caption_features  # noqa: E402
from taidpt.models.image_feature_cache import cached_image_features, clip_weights_digest  # noqa: E402
from taidpt.models.spatial import spatial_pool  # noqa: E402
from taidpt.trainers.taidpt import TaIDPTModel, padding_mask  # noqa: E402

logger = logging.getLogger("bench")
TOLERANCE = 1e-5
FILLERS = ("a", "the", "two", "small", "red", "next", "to", "on", "in", "of", "with", "sitting",
           "standing", "near", "large", "white", "table", "street", "field", "while", "people")
Step = Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]


def caption_corpus(n: int, classnames: Sequence[str], context_length: int,
                   seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """``n`` caption-like sentences (6-16 words, 1-3 class names): tokens ``n x L``, labels ``n x C``."""
    rng = np.random.default_rng(seed)
    texts, labels = [], np.zeros((n, len(classnames)), dtype=np.float32)
    for i in range(n):
        classes = rng.choice(len(classnames), size=rng.integers(1, 4), replace=False)
        labels[i, classes] = 1
        words = list(rng.choice(FILLERS, size=rng.integers(5, 14)))
        for c in classes:
            words.insert(int(rng.integers(0, len(words) + 1)), classnames[c])
        texts.append(" ".join(words))
    return tokenize(texts, context_length), torch.from_numpy(labels)


def peak_rss_reset() -> int:
    """Reset the process' peak RSS to the current one (Linux); returns the current RSS in bytes."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status("VmRSS")
    except OSError:
        return -1


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return -1


def timed(fn: Callable[[], object], repeats: int, warmup: bool) -> Tuple[float, object, float]:
    """Best wall time of ``repeats`` calls (after one untimed call with ``warmup``), the last
    result and the peak RSS growth (MB) over the calls."""
    if warmup:
        fn()
    start_rss, best, result = peak_rss_reset(), float("inf"), None
    for _ in range(repeats):
        begin = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - begin)
    peak = (_status("VmHWM") - start_rss) / 2 ** 20 if start_rss >= 0 else float("nan")
    return best, result, peak


def timed_side_by_side(fns: Dict[str, Callable[[], object]],
                       repeats: int) -> Dict[str, Tuple[float, object, float]]:
    """:func:`timed` for several functions whose ratio counts, called in turn (after one warm-up
    call each) so that a machine whose speed drifts slows them alike."""
    for fn in fns.values():
        fn()
    out = {name: (float("inf"), None, 0.0) for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            best, _, peak = out[name]
            t, result, p = timed(fn, 1, warmup=False)
            out[name] = (min(best, t), result, max(peak, p))
    return out


def _grads(model: TaIDPTModel) -> Tuple[torch.Tensor, torch.Tensor]:
    learner = model.prompt_learner
    return learner.ctx.grad.clone(), learner.ctx_double.grad.clone()


def reference_prompts(model: TaIDPTModel) -> Tuple[torch.Tensor, torch.Tensor]:
    """The 2C prompts at all 77 tokens -> normalised (global, local) class embeddings ``C x D``."""
    learner = model.prompt_learner
    return tuple(F.normalize(learner.encode(model.clip, ctx, cut_at_eos=False), dim=-1)
                 for ctx in (learner.ctx, learner.ctx_double))


def reference_logits(model: TaIDPTModel, embeddings: Tuple[torch.Tensor, torch.Tensor],
                     global_feat: torch.Tensor, dense: torch.Tensor, mask, temperature: float):
    """SPEC 2 / 3 logits from features ``B x D`` and ``N x B x D`` (N tokens or positions)."""
    g, l = embeddings
    scale = model.logit_scale
    similarity = F.normalize(dense, dim=-1) @ l.t()
    if mask is not None:
        similarity = similarity + mask
    return (scale * F.normalize(global_feat, dim=-1) @ g.t(),
            spatial_pool(similarity, temperature, scale)[0])


def reference_train_step(model: TaIDPTModel, tokens: torch.Tensor, labels: torch.Tensor) -> Step:
    """The reference's step: captions ``B x 77`` through the text encoder, prompts at 77 tokens."""
    model.prompt_learner.zero_grad(set_to_none=True)
    embeddings = reference_prompts(model)
    with torch.no_grad():
        sequence = text_sequence_features(model.clip, tokens)  # B x 77 x D
    eos = sequence[torch.arange(len(tokens)), tokens.argmax(dim=-1)]
    logits = reference_logits(model, embeddings, eos, sequence.permute(1, 0, 2),
                              padding_mask(tokens, sequence.dtype), model.spatial_scale_text)
    loss = double_loss("double_ranking", *logits, labels)
    loss.backward()
    return loss.detach(), tuple(x.detach() for x in logits), _grads(model)


def fast_train_step(model: TaIDPTModel, cache: CaptionFeatures, tokens: torch.Tensor,
                    labels: torch.Tensor, index: torch.Tensor) -> Step:
    """Our step: the batch's cached features, prompts cut at their EOS."""
    model.prompt_learner.zero_grad(set_to_none=True)
    eos, sequence = cache.gather(index)
    batch_tokens = tokens[index, :sequence.shape[1]]
    global_logits, local_logits = model.forward_caption_features(batch_tokens, eos.float(), sequence.float())
    loss = double_loss("double_ranking", global_logits, local_logits, labels[index])
    loss.backward()
    return loss.detach(), (global_logits.detach(), local_logits.detach()), _grads(model)


def check_equal(what: str, reference: Sequence[torch.Tensor], ours: Sequence[torch.Tensor],
                relative: bool = False) -> float:
    """Largest absolute difference, or with ``relative`` the norm of the difference over the
    reference's norm; raises ``AssertionError`` above :data:`TOLERANCE`."""
    worst = 0.0
    for a, b in zip(reference, ours):
        a, b = a.double(), b.double()
        if relative:
            worst = max(worst, float((a - b).norm() / a.norm().clamp_min(1e-30)))
        else:
            worst = max(worst, float((a - b).abs().max()))
    if not worst <= TOLERANCE:
        raise AssertionError(f"{what}: reference and fast path differ by {worst:.3g} > {TOLERANCE}")
    return worst


def bench_train(model: TaIDPTModel, caches: Dict[str, CaptionFeatures], tokens: torch.Tensor,
                labels: torch.Tensor, batch: int, repeats: int) -> Dict[str, float]:
    index = torch.randperm(len(tokens), generator=torch.Generator().manual_seed(batch))[:batch]
    big = batch >= 256  # a reference step at 512 takes tens of seconds on a CPU: timed once
    ref_time, ref, ref_peak = timed(lambda: reference_train_step(model, tokens[index], labels[index]),
                                    1 if big else repeats, warmup=not big)
    exact = fast_train_step(model, caches["fp32"], tokens, labels, index)
    worst = max(check_equal("loss", [ref[0]], [exact[0]], relative=True),
                check_equal("logits", ref[1], exact[1]),
                check_equal("gradients", ref[2], exact[2], relative=True))
    fast_time, _, fast_peak = timed(lambda: fast_train_step(model, caches["fp16"], tokens, labels, index),
                                    repeats, warmup=True)
    return {"ref": ref_time, "fast": fast_time, "ref_peak": ref_peak, "fast_peak": fast_peak,
            "diff": worst}


def image_split(folder: str, n: int, size: int) -> DataLoader:
    """``n`` random RGB images (PNG files in ``folder``) as a test loader: CLIP mean / std."""
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        path = os.path.join(folder, f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        items.append(ImageItem(path, np.ones(1, dtype=np.float32)))
    transform = T.Compose([T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)])
    return DataLoader(ImageDataset(items, transform), batch_size=n)


def bench_eval(model: TaIDPTModel, loader: DataLoader, cache_root: str,
               repeats: int) -> Dict[str, float]:
    """Per-image times: the reference's batch (prompts at 77 re-encoded), ours (prompts cached),
    the image encoder alone (stock CLIP image feature), the image features our evaluation needs,
    and a re-evaluation from the image feature cache (``TEST.FEATURE_CACHE``: open and verify the
    split's cache, read the features, score them)."""
    images = next(iter(loader))["img"]
    clip = model.clip

    def extract(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return dense_image_features(clip, x)

    def reference() -> Tuple[torch.Tensor, torch.Tensor]:
        return reference_logits(model, reference_prompts(model), *extract(images), None,
                                model.spatial_scale_image)

    digest = clip_weights_digest(clip)  # once per run, as an evaluation does

    def reevaluate() -> Tuple[torch.Tensor, torch.Tensor]:
        features = cached_image_features(loader, extract, digest, "bench", torch.device("cpu"), cache_root)
        return model.image_logits(*features.batch(0, len(images), torch.device("cpu")))

    with torch.no_grad():
        ref_time, ref, ref_peak = timed(reference, repeats, warmup=True)
        with model.cached_prompts():
            side = timed_side_by_side({"alone": lambda: encode_image(clip, images),
                                       "encode": lambda: extract(images),
                                       "fast": lambda: model.forward_image(images)}, repeats)
            reeval_time, again, _ = timed(reevaluate, max(repeats, 10), warmup=True)  # warm-up builds it
    (alone_time, _, _), (encode_time, _, _), (fast_time, fast, fast_peak) = (
        side["alone"], side["encode"], side["fast"])
    worst = max(check_equal("eval logits", ref, fast), check_equal("re-eval logits", fast, again))
    n = len(images)
    return {"ref": ref_time / n, "fast": fast_time / n, "alone": alone_time / n,
            "encode": encode_time / n, "reeval": reeval_time / n, "ref_peak": ref_peak,
            "fast_peak": fast_peak, "diff": worst}


def machine() -> str:
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true",
                        help="tiny CLIP and small batches (checks the equalities, times mean nothing)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per case (best kept)")
    args = parser.parse_args(argv or None)
    logging.basicConfig(level=logging.INFO, format="[bench] %(message)s")
    torch.manual_seed(0)
    clip_model = random_clip("tiny" if args.tiny else "RN50", seed=0)
    batches = (4, 16) if args.tiny else (32, 512)
    n_images = 4 if args.tiny else 16
    size = clip_model.visual.input_resolution
    rows, summary, cache_rows = [], {}, []
    with tempfile.TemporaryDirectory(prefix="taidpt-bench-") as cache_dir:
        for label_set, c in (("voc2007", 20), ("coco2014", 80)):
            classnames = load_label_set(label_set).classnames
            model = TaIDPTModel(clip_model, classnames)
            tokens, labels = caption_corpus(2 * batches[-1], classnames, clip_model.context_length)
            caches = {}
            for dtype in ("fp32", "fp16"):
                begin = time.perf_counter()
                caches[dtype] = load_or_build_caption_features(clip_model, tokens, cache_dir, dtype,
                                                               progress=False)
                build = time.perf_counter() - begin
                header = caches[dtype].header
                bound = header["tokens"] * header["width"] * 2 + 8 * (len(tokens) + 1)
                cache_rows.append([f"C={c} {dtype}", len(tokens), f"{header['tokens'] / len(tokens):.1f}",
                                   f"{caches[dtype].nbytes / 2 ** 20:.2f}", f"{bound / 2 ** 20:.2f}",
                                   f"{1e3 * build / len(tokens):.2f}"])
            for batch in batches:
                logger.info("train step, C=%d, batch %d", c, batch)
                r = bench_train(model, caches, tokens, labels, batch, args.repeats)
                rows.append([f"train step, batch {batch}, C={c}", f"{r['ref']:.3f} s", f"{r['fast']:.3f} s",
                             f"{r['ref'] / r['fast']:.1f}x", f"{r['ref_peak']:.0f}", f"{r['fast_peak']:.0f}",
                             f"{r['diff']:.1e}"])
                summary[f"train{batch}_c{c}"] = r["ref"] / r["fast"]
                logger.info("%s", " | ".join(rows[-1]))
        logger.info("evaluation, C=80")
        os.makedirs(os.path.join(cache_dir, "images"))
        e = bench_eval(model, image_split(os.path.join(cache_dir, "images"), n_images, size),
                       cache_dir, args.repeats)
    rows += [
        ["eval per image, C=80 (vs image encoder alone)", f"{1e3 * e['ref']:.1f} ms ({e['ref'] / e['alone']:.2f})",
         f"{1e3 * e['fast']:.1f} ms ({e['fast'] / e['alone']:.2f})", f"{e['ref'] / e['fast']:.1f}x",
         f"{e['ref_peak']:.0f}", f"{e['fast_peak']:.0f}", f"{e['diff']:.1e}"],
        ["re-eval per image, C=80: encode vs image feature cache", f"{1e3 * e['encode']:.2f} ms",
         f"{1e3 * e['reeval']:.3f} ms", f"{e['encode'] / e['reeval']:.0f}x", "", "", ""],
    ]
    print(f"Machine: {machine()}; image encoder alone: {1e3 * e['alone']:.1f} ms per image at "
          f"{size} px ({'tiny CLIP' if args.tiny else 'RN50, random weights'}, fp32)")
    print(tabulate(rows, headers=["case", "reference pattern", "ours", "speed-up", "ref peak MB",
                                  "ours peak MB", "max diff"], tablefmt="github"))
    print(tabulate(cache_rows, headers=["caption cache", "captions", "real tokens / caption", "MB",
                                        "bound MB (tokens x D x 2 + offsets)", "build ms / caption"],
                   tablefmt="github"))
    big = batches[-1]
    print(f"bench: train{big}_c20 {summary[f'train{big}_c20']:.1f}x train{big}_c80 "
          f"{summary[f'train{big}_c80']:.1f}x eval_c80 {e['fast'] / e['alone']:.2f} "
          f"reeval {e['encode'] / e['reeval']:.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
