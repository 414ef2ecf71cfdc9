"""Issue-13 item 4 on the CPU: the amp dtype choice (fake GPU capabilities), the GradScaler only
for float16, channels_last giving the same features, the image loaders' workers / prefetching,
and torch.compile behind MODEL.COMPILE."""
import pytest
import torch

from taidpt.clip import dense_image_features, random_clip
from taidpt.config import get_cfg_default
from taidpt.engine.data import build_loader
from taidpt.models.precision import PrecisionStep, amp_dtype, to_channels_last, use_channels_last

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


@pytest.mark.parametrize("device, bf16, dtype", [(CPU, None, torch.bfloat16),
                                                 (CUDA, True, torch.bfloat16),
                                                 (CUDA, False, torch.float16)])
def test_amp_dtype_and_scaler_follow_the_device(device, bf16, dtype):
    assert amp_dtype(device, bf16) == dtype
    with pytest.warns(UserWarning) if device.type == "cuda" and not torch.cuda.is_available() \
            and dtype == torch.float16 else _nothing():
        step = PrecisionStep("amp", device, bf16)
    assert step.dtype == dtype
    assert (step.scaler is not None) == (dtype == torch.float16)
    assert PrecisionStep("fp32", device, bf16).scaler is None


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_amp_autocasts_the_forward_pass_on_cpu():
    step = PrecisionStep("amp", CPU)
    a = torch.randn(4, 8)
    with step.autocast():
        assert (a @ a.t()).dtype == torch.bfloat16
    with PrecisionStep("fp32", CPU).autocast():
        assert (a @ a.t()).dtype == torch.float32


def test_channels_last_gives_the_same_features():
    model = random_clip("tiny", seed=0)
    images = torch.randn(2, 3, 64, 64)
    expected = dense_image_features(model, images)
    assert use_channels_last(model, CUDA, True) and not use_channels_last(model, CPU, True)
    assert not use_channels_last(model, CUDA, False)
    to_channels_last(model)
    weight = model.visual.conv1.weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    for want, got in zip(expected, dense_image_features(model, images)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_evaluation_loaders_prefetch_with_persistent_workers():
    cfg = get_cfg_default()
    cfg.DATALOADER.NUM_WORKERS, cfg.DATALOADER.PREFETCH_FACTOR = 2, 3
    data = list(range(8))
    test_loader = build_loader(cfg, data, 4, shuffle=False)
    assert test_loader.prefetch_factor == 3 and test_loader.persistent_workers
    assert not build_loader(cfg, data, 4, shuffle=True).persistent_workers
    cfg.DATALOADER.NUM_WORKERS = 0
    assert build_loader(cfg, data, 4, shuffle=False).prefetch_factor is None


def test_model_compile_wraps_the_feature_extractor(monkeypatch):
    from taidpt.models.image_feature_cache import FeatureCacheEvaluation

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn: compiled.append(fn) or fn)

    class Trainer(FeatureCacheEvaluation):
        def __init__(self, flag):
            self.cfg = get_cfg_default()
            self.cfg.MODEL.COMPILE = flag

        def image_features(self, images):
            return images.mean(dim=(2, 3)), images.flatten(2).permute(2, 0, 1)

        def features_inference(self, global_feat, dense):
            return global_feat + dense.mean(0)

    images = torch.randn(2, 3, 4, 4)
    plain, wrapped = Trainer(False), Trainer(True)
    torch.testing.assert_close(wrapped.model_inference(images), plain.model_inference(images))
    assert len(compiled) == 1 and compiled[0] == wrapped.image_features
