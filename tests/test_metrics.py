"""FID, KID and the Inception Score (inception_fast.metrics, `inception-fast fid`) against the peers:
the same random weights, in pytorch-fid's format, handed to pytorch-fid / torch-fidelity and to
ours, on images the tests write; the float64 statistics and distances against theirs; batch-size
invariance; bad input."""
import os
import warnings

import numpy as np
import pytest
import torch

from _helpers import rel_err
from inception_fast import metrics
from inception_fast.cli import main as cli_main
from inception_fast.models import inception_v3_fid

pytorch_fid = pytest.importorskip("pytorch_fid", reason="pytorch-fid is a test dependency (pip install -e .[test])")
torch_fidelity = pytest.importorskip("torch_fidelity", reason="torch-fidelity is a test dependency")
from pytorch_fid import fid_score  # noqa: E402
from pytorch_fid import inception as pfid_inception  # noqa: E402

TAPS = (64, 192, 768, 2048)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Random FID-Inception weights (BatchNorm statistics and affine parameters drawn too) saved as
    pytorch-fid's file; pytorch-fid reads them through its URL, pointed at the file."""
    torch.manual_seed(0)
    model = inception_v3_fid(None)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    d = tmp_path_factory.mktemp("fid_weights")
    path = d / "pt_inception-random.pth"
    torch.save(model.state_dict(), path)
    return str(path)


@pytest.fixture
def peer_url(weights, tmp_path, monkeypatch):
    monkeypatch.setattr(pfid_inception, "FID_WEIGHTS_URL", "file://" + weights)
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield
    torch.hub.set_dir(old)


def _write_images(folder, n, seed, sizes=((64, 64),), fmt="png"):
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        # smooth colour fields plus noise: images with structure, not one value
        base = rng.uniform(0, 255, size=(1, 1, 3)) + 60 * np.sin(np.arange(w)[None, :, None] / rng.uniform(3, 12))
        img = np.clip(base + rng.normal(0, 25, size=(h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(os.path.join(folder, f"{i:04d}.{fmt}"))
    return str(folder)


def test_state_dict_is_pytorch_fids_and_torch_fidelitys(weights, peer_url):
    peer = pfid_inception.fid_inception_v3()  # loads the file strictly
    ours = inception_v3_fid(weights)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [(k, v.shape) for k, v in peer.state_dict().items()]
    fidelity = torch_fidelity.feature_extractor_inceptionv3.FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=weights)
    assert set(fidelity.state_dict()) == set(ours.state_dict())
    assert ours.pool_branches["Mixed_7c"] == "max" and ours.Mixed_5b.pool_branch == "avg_exclude_pad"


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
def test_features_at_every_tap_match_pytorch_fid(weights, peer_url, fused):
    peer = pfid_inception.InceptionV3([0, 1, 2, 3]).eval()
    ext = metrics.FeatureExtractor(weights, taps=TAPS)
    ext.model.set_fused(fused)
    x = torch.rand(3, 3, 181, 240)  # [0, 1], resized to 299 by both
    with torch.no_grad():
        want = [f.mean((2, 3)) for f in peer(x)]
    got = ext(x)
    for tap, w in zip(TAPS, want):
        assert rel_err(got[tap], w) < 1e-5, tap


def test_features_match_torch_fidelity(weights):
    fidelity = torch_fidelity.feature_extractor_inceptionv3.FeatureExtractorInceptionV3(
        "inception-v3-compat", ["64", "192", "768", "2048", "logits_unbiased", "logits"],
        feature_extractor_weights_path=weights)
    taps = TAPS + ("logits_unbiased", "logits")
    ext = metrics.FeatureExtractor(weights, taps=taps, mode="torch-fidelity")
    x = torch.randint(0, 256, (2, 3, 97, 130), dtype=torch.uint8)
    with torch.no_grad():
        want = fidelity(x)
    got = ext(x)
    for tap, w in zip(taps, want):
        assert rel_err(got[tap], w) < 1e-5, tap


def test_preprocessing_is_each_packages():
    from cleanfid.resize import make_resizer
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    x = torch.randint(0, 256, (2, 3, 67, 130), dtype=torch.uint8)
    # torch-fidelity: TensorFlow 1's bilinear resize, bit for bit
    want = interpolate_bilinear_2d_like_tensorflow1x(x.float(), size=(299, 299), align_corners=False)
    assert torch.equal(metrics.preprocess(x, "torch-fidelity"), (want - 128) / 128)
    # clean-fid: PIL's bicubic per channel in float32
    resize = make_resizer("PIL", False, "bicubic", (299, 299))
    want = torch.stack([torch.from_numpy(resize(im.permute(1, 2, 0).numpy())).permute(2, 0, 1) for im in x])
    assert torch.equal(metrics.preprocess(x, "clean-fid"), (want - 128) / 128)
    # pytorch-fid: [0, 1], bilinear, 2x - 1
    want = torch.nn.functional.interpolate(x.float() / 255, size=(299, 299), mode="bilinear", align_corners=False)
    assert torch.equal(metrics.preprocess(x, "pytorch-fid"), 2 * want - 1)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        metrics.preprocess(x[:, :2])


@pytest.mark.parametrize("optimized", [False, True], ids=["fused", "optimize"])
def test_features_do_not_depend_on_the_batch_size(weights, optimized):
    # the fused path at every tap; optimize() for the pool3 features and the logits from them
    taps = (2048, "logits", "logits_unbiased") if optimized else TAPS + ("logits",)
    ext = metrics.FeatureExtractor(weights, taps=taps, optimized=optimized)
    x = torch.randint(0, 256, (2, 3, 120, 90), dtype=torch.uint8)
    whole = ext(x)
    single = [ext(x[i:i + 1]) for i in range(2)]
    for tap in whole:
        assert torch.equal(torch.cat([s[tap] for s in single]), whole[tap]), tap
    if optimized:
        eager = metrics.FeatureExtractor(weights, taps=taps, optimized=False)(x)
        for tap in taps:
            assert rel_err(whole[tap], eager[tap]) < 1e-5, tap


@pytest.mark.parametrize("tap", [64, 192, 768])
def test_each_tap_through_optimize(weights, tap):
    # one tap asked for: optimize() of the network cut after its layer, batch-size invariant, the
    # fused path's numbers
    ext = metrics.FeatureExtractor(weights, taps=(tap,))
    assert ext._optimized is not None
    x = torch.randint(0, 256, (3, 3, 101, 87), dtype=torch.uint8)
    whole = ext(x)[tap]
    assert whole.shape == (3, tap)
    assert torch.equal(torch.cat([ext(x[i:i + 1])[tap] for i in range(3)]), whole)
    fused = metrics.FeatureExtractor(weights, taps=(tap,), optimized=False)
    assert fused._optimized is None
    assert rel_err(whole, fused(x)[tap]) < 1e-5
    with pytest.raises(ValueError, match="one tap"):
        metrics.FeatureExtractor(weights, taps=(tap, 2048), optimized=True)


def test_fid_of_two_folders_matches_pytorch_fid(weights, peer_url, tmp_path, capsys):
    # 64 features from 70 images a side: a well-conditioned covariance; mixed sizes and formats
    a = _write_images(tmp_path / "a", 70, 1, sizes=((64, 64), (48, 80)))
    b = _write_images(tmp_path / "b", 70, 2, sizes=((70, 50),), fmt="jpg")
    # pytorch-fid (it stacks a batch's images as they are: mixed sizes only at batch size 1)
    mu_a, sigma_a = fid_score.compute_statistics_of_path(a, pfid_inception.InceptionV3([0]).eval(), 1, 64, "cpu")
    theirs = tmp_path / "b_pytorch_fid.npz"
    fid_score.save_fid_stats([b, str(theirs)], batch_size=35, device="cpu", dims=64, num_workers=0)
    with np.load(theirs) as f:
        want = fid_score.calculate_frechet_distance(mu_a, sigma_a, f["mu"], f["sigma"])
    # ours, from the command line (its last line is pytorch-fid's), saving a's statistics
    ours = tmp_path / "a.npz"
    assert cli_main(["fid", a, b, "--dims", "64", "--weights", weights, "--workers", "1", "--batch-size", "16",
                     "--save-stats", str(ours)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("FID: ") and abs(float(last[5:]) - want) <= 1e-4 * abs(want)
    # our statistics file read by pytorch-fid, and pytorch-fid's by us
    mu, sigma = fid_score.compute_statistics_of_path(str(ours), None, 1, 64, "cpu")
    assert np.allclose(mu, mu_a, rtol=1e-5, atol=1e-6) and np.allclose(sigma, sigma_a, rtol=1e-4, atol=1e-6)
    r = metrics.compute_metrics(str(ours), str(theirs), dims=64, progress=False)
    assert abs(r["fid"] - want) <= 1e-4 * abs(want)


def test_fid_command_prints_pytorch_fids_last_line(weights, tmp_path, capsys):
    a = _write_images(tmp_path / "a", 6, 3)
    b = _write_images(tmp_path / "b", 6, 4)
    assert cli_main(["fid", a, b, "--dims", "192", "--weights", weights, "--workers", "0", "--batch-size", "4",
                     "--kid", "--kid-subset-size", "4", "--kid-subsets", "3", "--isc", "--isc-splits", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("FID: ") and float(lines[-1][5:]) > 0
    assert any(line.startswith("KID: ") for line in lines) and any(line.startswith("IS: ") for line in lines)


def test_frechet_distance_matches_scipys_sqrtm():
    rng = np.random.default_rng(0)
    d = 64
    feats = [rng.normal(size=(400, d)) @ rng.normal(size=(d, d)) * 0.3 + rng.normal(size=d) for _ in range(2)]
    (mu1, s1), (mu2, s2) = [(f.mean(0), np.cov(f, rowvar=False)) for f in feats]
    want = fid_score.calculate_frechet_distance(mu1, s1, mu2, s2)
    assert abs(metrics.frechet_distance(mu1, s1, mu2, s2) - want) <= 1e-9 * abs(want)
    assert metrics.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0, abs=1e-8)
    # a singular covariance (fewer samples than dimensions): both stay close, differently regularised
    few = [f[:20] for f in feats]
    (m1, c1), (m2, c2) = [(f.mean(0), np.cov(f, rowvar=False)) for f in few]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = fid_score.calculate_frechet_distance(m1, c1, m2, c2)
    assert abs(metrics.frechet_distance(m1, c1, m2, c2) - want) <= 1e-3 * abs(want)
    assert abs(metrics.frechet_distance(m1, c1 * 1e12, m1, c1 * 1e12)) <= 1e-12 * np.trace(c1 * 1e12)
    nan = s1.copy()
    nan[0, 0] = np.nan
    assert np.isnan(metrics.frechet_distance(mu1, nan, mu2, s2))
    with pytest.raises(ValueError, match="dimensions differ"):
        metrics.frechet_distance(mu1[:10], s1[:10, :10], mu2, s2)


def test_streaming_statistics_equal_numpys():
    rng = np.random.default_rng(1)
    f = rng.normal(loc=1e3, size=(257, 16))  # a large mean: the shifted sums keep the digits
    stats = metrics.FeatureStats(16)
    for chunk in np.array_split(f, 7):
        stats.update(torch.from_numpy(chunk))
    assert np.allclose(stats.mean(), f.mean(0), rtol=0, atol=1e-9)
    assert np.allclose(stats.covariance(), np.cov(f, rowvar=False), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match=r"\(N, 16\)"):
        stats.update(torch.zeros(3, 8))


def test_kid_and_inception_score_match_torch_fidelity():
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric

    rng = np.random.default_rng(2)
    f1 = torch.from_numpy(rng.normal(size=(120, 32)).astype(np.float32))
    f2 = torch.from_numpy((rng.normal(size=(150, 32)) + 0.3).astype(np.float32))
    want = kid_features_to_metric(f1, f2, kid_subsets=20, kid_subset_size=50, verbose=False)
    got = metrics.kernel_inception_distance(f1, f2, subsets=20, subset_size=50)
    # (torch-fidelity computes its kernels in the features' float32; ours in float64)
    assert got["kid_mean"] == pytest.approx(want["kernel_inception_distance_mean"], rel=1e-5)
    assert got["kid_std"] == pytest.approx(want["kernel_inception_distance_std"], rel=1e-4)
    logits = torch.from_numpy(rng.normal(scale=3, size=(200, 1008)).astype(np.float32))
    want = isc_features_to_metric(logits, splits=10, shuffle=True, rng_seed=2020)
    got = metrics.inception_score(logits, splits=10)
    assert got["is_mean"] == pytest.approx(want["inception_score_mean"], rel=1e-12)
    assert got["is_std"] == pytest.approx(want["inception_score_std"], rel=1e-9)
    with pytest.raises(ValueError, match="subset size 500"):
        metrics.kernel_inception_distance(f1, f2, subset_size=500)


def test_bad_input_says_what_is_wrong(weights, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    kw = dict(dims=64, weights=weights, workers=0, progress=False)
    with pytest.raises(ValueError, match="no images in"):
        metrics.compute_metrics(str(empty), str(empty), **kw)
    with pytest.raises(FileNotFoundError, match="no folder"):
        metrics.compute_metrics(str(tmp_path / "nope"), str(empty), **kw)
    good = _write_images(tmp_path / "good", 6, 5)
    with open(os.path.join(good, "broken.png"), "wb") as f:
        f.write(b"not a png")
    with pytest.warns(UserWarning, match="1 of 7 files could not be read"):
        r = metrics.compute_metrics(good, good, **kw)
    assert r["fid"] == pytest.approx(0, abs=1e-6)
    np.savez(tmp_path / "bad.npz", mean=np.zeros(64))
    with pytest.raises(ValueError, match="has no mu or sigma"):
        metrics.compute_metrics(str(tmp_path / "bad.npz"), good, **kw)
    metrics.save_stats(tmp_path / "s192.npz", np.zeros(192), np.eye(192))
    with pytest.raises(ValueError, match="statistics of 192 features"):
        metrics.compute_metrics(str(tmp_path / "s192.npz"), good, **kw)
    with pytest.raises(ValueError, match="mode must be one of"):
        metrics.FeatureExtractor(weights, mode="clean")
    with pytest.raises(ValueError, match="taps must be among"):
        inception_v3_fid(None).fid_features(torch.zeros(1, 3, 299, 299), (100,))
    assert cli_main(["fid", good]) == 2
    assert cli_main(["fid", str(tmp_path / "s192.npz"), "--isc", "--weights", weights]) == 2


def test_tensors_and_generators_as_the_folder(weights, tmp_path):
    # the same images as a folder (PNG, lossless), one uint8 tensor, a generator of (images, labels)
    # batches of uneven sizes, and floats in the mode's range: the same statistics
    from PIL import Image

    folder = _write_images(tmp_path / "a", 9, 6, sizes=((57, 70),))
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(f).convert("RGB")).copy()).permute(2, 0, 1)
                     for f in metrics.list_images(folder)])
    ext = metrics.FeatureExtractor(weights, taps=(2048,))
    kw = dict(extractor=ext, batch_size=4, progress=False)
    want_mu, want_sigma = metrics.compute_statistics(folder, workers=0, **kw)
    labelled = ((x[i:j], torch.zeros(j - i)) for i, j in ((0, 2), (2, 7), (7, 9)))
    for source in (x, labelled, [x.float() / 255]):
        mu, sigma = metrics.compute_statistics(source, **kw)
        assert rel_err(torch.from_numpy(mu), torch.from_numpy(want_mu)) < 1e-6
        assert rel_err(torch.from_numpy(sigma), torch.from_numpy(want_sigma)) < 1e-6
    # a float in 0..255 in the 0..255 modes: the uint8 numbers
    ext_tf = metrics.FeatureExtractor(weights, taps=(2048,), mode="torch-fidelity")
    assert torch.equal(ext_tf(x)[2048], ext_tf(x.float())[2048])
    # a set against itself with fewer images than dimensions (singular covariances): 0 at rounding
    # level of the covariances' scale (the random weights' features are ~1e11)
    r = metrics.compute_metrics(x, iter([x[:5], x[5:]]), dims=2048, extractor=ext, progress=False)
    assert abs(r["fid"]) <= 1e-12 * np.trace(r["sigma1"])


def test_bad_tensor_input_says_what_is_wrong(weights, monkeypatch):
    from inception_fast.metrics import _preprocess

    ext = metrics.FeatureExtractor(weights, taps=(2048,))
    x = torch.rand(2, 3, 40, 40)
    with pytest.raises(ValueError, match=r"floats in \[0, 1\].*\(x \+ 1\) / 2"):
        ext(x * 2 - 1)  # a generator's [-1, 1] output
    with pytest.raises(ValueError, match=r"floats in \[0, 255\]"):
        metrics.preprocess(x * 300, "clean-fid")
    with pytest.raises(TypeError, match="uint8 .* or floating point, got torch.int64"):
        ext((x * 255).long())
    monkeypatch.setattr(_preprocess, "_warned_unit_range", set())
    with pytest.warns(UserWarning, match=r"within \[0, 1\] in mode 'torch-fidelity'"):
        metrics.preprocess(x, "torch-fidelity")
    kw = dict(extractor=ext, progress=False)
    with pytest.raises(ValueError, match="the images are empty"):
        metrics.compute_statistics(iter([]), **kw)
    with pytest.raises(TypeError, match="item 1 of the images is a ndarray"):
        metrics.compute_statistics([x, x.numpy()], **kw)
    with pytest.raises(TypeError, match="an image folder, an .npz"):
        metrics.compute_statistics(3, **kw)
    with pytest.raises(ValueError, match=r"non-empty \(N, 3, H, W\)"):
        metrics.compute_statistics(x[0], **kw)
    nan = x.clone()
    nan[1, 0, 3, 3] = float("nan")
    out = ext(nan)[2048]
    assert out[1].isnan().any() and out[0].isfinite().all()  # NaN in, NaN out (that image's only)


def test_progress_goes_to_logs_in_tenths(capsys):
    from inception_fast.metrics import _compute

    report = _compute._progress("real")
    for done in range(0, 101, 5):
        report(done, 100)
    report(100, 100, final=True)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 10 and lines[-1].startswith("real: 100/100 images")
