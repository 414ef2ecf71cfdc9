"""scripts/bench.py in its tiny mode: the reference compute pattern and our fast path agree (the
benchmark's equality checks), and the last line is the summary scripts read. No timing is checked."""
import os
import re
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import bench  # noqa: E402


@pytest.mark.slow  # ~40 s of CPU (245 s wall on a loaded machine): tiny CLIP, C = 20 and 80, evaluation
def test_tiny_bench_checks_equality_and_prints_the_summary(capsys):
    assert bench.main(["--tiny", "--repeats", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"bench: train16_c20 [\d.]+x train16_c80 [\d.]+x eval_c80 [\d.]+ reeval \d+x",
                        lines[-1]), lines[-1]
    assert any(line.startswith("| train step, batch 16, C=80") for line in lines)


def test_a_fast_path_that_differs_fails_the_check():
    torch = pytest.importorskip("torch")
    reference = [torch.ones(3, dtype=torch.float64)]
    assert bench.check_equal("loss", reference, [reference[0] + 5e-6]) == pytest.approx(5e-6)
    with pytest.raises(AssertionError, match="loss: reference and fast path differ"):
        bench.check_equal("loss", reference, [reference[0] + 2e-5])
    big = torch.tensor([300.0, 400.0], dtype=torch.float64)  # norm 500
    assert bench.check_equal("gradients", [big], [big + torch.tensor([0.0, 2.5e-3])],
                             relative=True) == pytest.approx(5e-6)
    with pytest.raises(AssertionError, match="gradients"):
        bench.check_equal("gradients", [big], [big + torch.tensor([0.0, 1e-2])], relative=True)
