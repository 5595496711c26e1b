"""FID feature extractors: NVlabs' Inception called with return_features, Inception sizes enforced,
non-finite features stopped with the file named; and the post-processing shared by every method."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from smartbrush.eval.benchmark import BenchmarkSample
from smartbrush.eval.extractors import FeatureError, load_fid_extractor, load_torchscript_extractor
from smartbrush.eval.frechet import FeatureStats, fid_from_stats
from smartbrush.eval.harness import postprocess
from tests.tiny_extractors import (TinyNvlabsInception, tiny_fid_torchscript, tiny_log_features,
                                   tiny_nvlabs_inception)


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 3, 40, 40), dtype=np.uint8))


def test_nvlabs_inception_is_called_for_its_2048_features(tmp_path):
    path = tiny_nvlabs_inception(str(tmp_path / "inception-2015-12-05.pt"))
    fid = load_fid_extractor(fid_torchscript=path)
    assert fid.call_kwargs == {"return_features": True} and fid.feature_size == 2048
    images = _images(3, 0)
    reference = TinyNvlabsInception().eval()
    with torch.no_grad():
        expected = reference(images, return_features=True)
        probabilities = reference(images)
    got = fid.features(images)
    assert got.shape == (3, 2048) and torch.allclose(got, expected, atol=1e-6)
    assert probabilities.shape == (3, 1008)  # what a call without the argument returns
    prov = fid.provenance()
    assert prov["feature_size"] == 2048 and prov["call"] == {"return_features": True} and prov["antialias"] is None


def test_an_inception_that_returns_class_scores_is_refused_with_its_file_named(tmp_path):
    class ClassScores(torch.nn.Module):
        def forward(self, x):
            return torch.softmax(x.float().mean(dim=(2, 3)).repeat(1, 336), dim=1)  # 1008 values

    path = str(tmp_path / "pt_inception-2015-12-05.pt")
    torch.jit.trace(ClassScores(), torch.zeros(1, 3, 8, 8, dtype=torch.uint8)).save(path)
    with pytest.raises(FeatureError, match=r"pt_inception-2015-12-05\.pt.*1008-d"):
        load_torchscript_extractor(path)
    # Any other extractor keeps the size it gives (6 here), checked on every batch.
    tiny = load_fid_extractor(fid_torchscript=tiny_fid_torchscript(str(tmp_path / "tiny.pt")))
    assert tiny.call_kwargs == {} and tiny.feature_size == 6 and tiny.features(_images(2, 1)).shape == (2, 6)


def test_non_finite_features_stop_with_the_extractor_named(tmp_path):
    path = tiny_log_features(str(tmp_path / "logfeat.pt"))
    fid = load_torchscript_extractor(path)
    images = _images(3, 2)
    assert torch.isfinite(fid.features(images)).all()
    images[1] = 0  # a black image: log(0) = -inf
    with pytest.raises(FeatureError, match=r"logfeat\.pt: non-finite features \(NaN or inf\) for images \[1\]"):
        fid.features(images)


def _sample(key: str, image: np.ndarray, mask: np.ndarray) -> BenchmarkSample:
    return BenchmarkSample(key, image, [mask, mask], {"label": "x", "box_crop_xyxy": [0, 0, 8, 8]})


def test_post_processing_is_one_rule_for_every_method(tmp_path):
    rng = np.random.default_rng(3)
    inputs = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(4)]
    outs = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(4)]
    fid = load_fid_extractor(fid_torchscript=tiny_fid_torchscript(str(tmp_path / "tiny.pt")))

    def fid_of(images, reference):
        real, gen = FeatureStats(), FeatureStats()
        real.update(fid.features(torch.from_numpy(np.stack(reference)).permute(0, 3, 1, 2)))
        gen.update(fid.features(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)))
        return fid_from_stats(real, gen)

    full = [_sample(f"k{i}", im, np.ones((8, 8), bool)) for i, im in enumerate(inputs)]
    given, none = postprocess(outs, full, 0, "given"), postprocess(outs, full, 0, "none")
    # A mask over the whole image leaves nothing to paste: the same outputs give the same FID either way.
    assert fid_of(given, inputs) == fid_of(none, inputs) > 0
    half = np.zeros((8, 8), bool)
    half[:, :4] = True
    part = [_sample(f"k{i}", im, half) for i, im in enumerate(inputs)]
    pasted = postprocess(outs, part, 0, "given")
    for p, o, im in zip(pasted, outs, inputs):
        assert (p[:, :4] == o[:, :4]).all() and (p[:, 4:] == im[:, 4:]).all()
    assert postprocess(outs, part, 0, "native") is outs
    # The inputs scored against themselves (an output that is its input, pasted or not): FID 0.
    assert fid_of(postprocess(inputs, part, 0, "given"), inputs) == pytest.approx(0.0, abs=1e-9)
