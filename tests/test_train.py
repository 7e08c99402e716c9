"""Training runs (inception_fast.train, inception_fast.data): a short run on a tiny image folder
written here lowers the loss; the loss's auxiliary weighting and label smoothing against hand-computed
values; the recipes' numbers; resume equivalence; a 2-process gloo run under torchrun against one
process on the same global batch; bad input (missing folder, empty class, corrupt image, another
model's checkpoint)."""
import argparse
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("torchvision", reason="training on an image folder needs torchvision (the [train] extra)")

from inception_fast import train  # noqa: E402
from inception_fast.data import ImageFolderData, SampleSet, collate, make_demo_data, train_transform  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny folder of real images (the demo generator's drawn shapes, 3 classes)."""
    return make_demo_data(tmp_path_factory.mktemp("data"), per_class=8, val_per_class=2, size=48)


def _args(tmp_path, data, **kw):
    base = dict(model="googlenet", data=str(data), val_split=0.0, img_size=32, batch_size=8, epochs=2, lr=None,
                recipe="finetune", pretrained=None, drop_rate=0.0, amp="off", channels_last=False, compile=False,
                workers=0, device="cpu", out=str(tmp_path / "run"), resume=None, seed=0, no_progress=True)
    base.update(kw)
    return train.finish_train_args(argparse.Namespace(**base))


# ---- recipes and loss ------------------------------------------------------------------------------
def test_paper_recipes_hold_the_papers_numbers():
    v3 = train.recipe_for("paper", "inception_v3")
    assert (v3.optimizer, v3.lr, v3.rmsprop_alpha, v3.rmsprop_eps) == ("rmsprop", 0.045, 0.9, 1.0)
    assert (v3.decay_every, v3.decay_rate, v3.label_smoothing, v3.clip_grad, v3.aux_weight) == (2.0, 0.94, 0.1, 2.0, 0.4)
    g = train.recipe_for("paper", "googlenet")
    assert (g.optimizer, g.momentum, g.decay_every, g.decay_rate, g.aux_weight, g.drop_rate) == \
        ("sgd", 0.9, 8.0, 0.96, 0.3, 0.4)
    bn = train.recipe_for("paper", "bn_inception")
    assert bn.lr == pytest.approx(5 * 0.0015) and bn.drop_rate == 0.0 and bn.weight_decay == pytest.approx(2e-4 / 5)
    assert bn.decay_every == pytest.approx(8.0 / 6)
    for name in ("inception_v4", "inception_resnet_v1", "inception_resnet_v2"):
        assert train.recipe_for("paper", name).optimizer == "rmsprop"
    with pytest.raises(ValueError, match="unknown recipe"):
        train.recipe_for("nope", "googlenet")


def test_lr_schedules():
    v3 = train.recipe_for("paper", "inception_v3")
    assert train.lr_factor(v3, 0.0, 100) == 1.0
    assert train.lr_factor(v3, 1.99, 100) == 1.0
    assert train.lr_factor(v3, 2.0, 100) == pytest.approx(0.94)
    assert train.lr_factor(v3, 7.5, 100) == pytest.approx(0.94 ** 3)
    ft = train.recipe_for("finetune", "inception_v3")
    assert train.lr_factor(ft, 0.5, 10) == pytest.approx(0.501)  # warm-up
    assert train.lr_factor(ft, 1.0, 10) == pytest.approx(1.0)
    assert train.lr_factor(ft, 10.0, 10) == pytest.approx(0.0, abs=1e-12)


def test_loss_weights_aux_heads_and_smooths_labels_as_computed_by_hand():
    torch.manual_seed(0)
    main, aux1, aux2 = torch.randn(4, 5), torch.randn(4, 5), torch.randn(4, 5)
    y = torch.tensor([0, 3, 1, 4])

    def smoothed_ce(logits, eps):  # (1 - eps) * CE + eps * mean over classes of -log p
        logp = logits.double().log_softmax(1)
        nll = -logp[torch.arange(4), y]
        return ((1 - eps) * nll + eps * (-logp.mean(1))).mean()

    got = train.loss_fn((main, aux2, aux1), y, label_smoothing=0.1, aux_weight=0.3)
    want = smoothed_ce(main, 0.1) + 0.3 * smoothed_ce(aux1, 0.1) + 0.3 * smoothed_ce(aux2, 0.1)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    # no aux heads (or None in their place): the main loss alone
    assert train.loss_fn(main, y).item() == pytest.approx(F.cross_entropy(main, y).item(), rel=1e-6)
    assert train.loss_fn((main, None), y, aux_weight=0.4).item() == pytest.approx(F.cross_entropy(main, y).item())


def test_models_in_training_mode_give_the_aux_outputs_the_loss_weighs(tiny, tmp_path):
    args = _args(tmp_path, tiny / "train", recipe="paper", img_size=64)
    model = train.build_model(args, 3, train.recipe_for("paper", "googlenet")).train()
    main, aux = train.split_outputs(model(torch.randn(2, 3, 64, 64)))
    assert main.shape == (2, 3) and len(aux) == 2
    # Inception-v3's head needs the 17x17 grid of a 299 input: off below, on at 299.
    small = train.build_model(_args(tmp_path, tiny, model="inception_v3", recipe="paper", img_size=75), 3,
                              train.recipe_for("paper", "inception_v3"))
    assert small.AuxLogits is None


# ---- runs ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    """24 noisy images whose class is their dominant colour: a task a network learns within a few
    steps whatever the rounding of the CPU's kernels (unlike the demo's shapes in random colours,
    whose loss stays near log 3 for 18 steps on some CPUs)."""
    from PIL import Image
    root = tmp_path_factory.mktemp("colours")
    gen = torch.Generator().manual_seed(0)
    for c, label in enumerate(("red", "green", "blue")):
        (root / label).mkdir()
        for i in range(8):
            img = torch.randint(0, 120, (48, 48, 3), generator=gen, dtype=torch.uint8)
            img[..., c] += 120
            Image.fromarray(img.numpy()).save(root / label / f"{i}.png")
    return root


def test_short_run_lowers_the_training_loss(colours, tmp_path):
    args = _args(tmp_path, colours, epochs=6)
    train.train(args)
    out = Path(args.out)
    history = __import__("json").loads((out / "history.json").read_text())
    assert len(history) == 6
    # Batch-8 BatchNorm and augmentation make each epoch's loss noisy (+-0.3): the last three
    # epochs together against the first (seen: 0.16-0.41 of it over ten seeds).
    first, last3 = history[0]["train_loss"], sum(h["train_loss"] for h in history[-3:]) / 3
    assert last3 < 0.6 * first, history
    for f in ("last.pt", "best.pt", "history.csv", "curves.png"):
        assert (out / f).is_file(), f
    assert "train_images_per_s" in (out / "history.csv").read_text().splitlines()[0]


def test_resume_gives_the_uninterrupted_result(tiny, tmp_path, monkeypatch):
    whole = _args(tmp_path / "a", tiny, epochs=2, val_split=0.25)
    train.train(whole)
    # The same run, stopped right after its first checkpoint (as by Ctrl-C or a lost machine).
    real_write = train.write_history

    def stop(out, history):
        real_write(out, history)
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "write_history", stop)
    with pytest.raises(KeyboardInterrupt):
        train.train(_args(tmp_path / "b", tiny, epochs=2, val_split=0.25))
    monkeypatch.setattr(train, "write_history", real_write)
    rest = _args(tmp_path / "b", tiny, epochs=2, val_split=0.25, resume="auto")
    train.train(rest)
    a = torch.load(Path(whole.out) / "last.pt", weights_only=False)
    b = torch.load(Path(rest.out) / "last.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 1
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert a["history"][-1]["train_loss"] == b["history"][-1]["train_loss"]


def test_eval_command_on_a_checkpoint(tiny, tmp_path, capsys):
    args = _args(tmp_path, tiny, epochs=1)
    train.train(args)
    res = train.main(["eval", "--checkpoint", str(Path(args.out) / "best.pt"), "--data", str(tiny / "val"),
                      "--workers", "0", "--json", str(tmp_path / "eval.json")])
    assert res == 0
    out = __import__("json").loads((tmp_path / "eval.json").read_text())
    assert out["images"] == 6 and 0.0 <= out["top1"] <= 1.0 and out["top5"] == 1.0  # 3 classes: top-5 is all
    assert "top-1" in capsys.readouterr().out


@pytest.mark.skipif(not hasattr(torch.distributed, "is_available") or not torch.distributed.is_available(),
                    reason="torch.distributed is not available")
def test_two_gloo_processes_match_one_process_on_the_same_global_batch(tiny, tmp_path):
    # BN-Inception, SGD, no dropout, one step on the whole tiny set: the loss, the BatchNorm running
    # statistics and the updated weights of 2 processes x 12 images equal those of 1 process x 24
    # (statistics over the global batch by the fused bn_relu's all-reduce; gradients averaged by
    # DDP; the same images and crops). One step: float32 training at 32x32, where the last maps are
    # 1x1 and BatchNorm normalises a handful of values, is chaotic (the order of a reduction moves
    # the first conv's gradient by ~1e-4 and a second step by percents), so longer runs agree only
    # in float64.
    common = ["--model", "bn_inception", "--data", str(tiny / "train"), "--val-split", "0", "--img-size", "32",
              "--batch-size", "24", "--epochs", "1", "--recipe", "paper", "--drop-rate", "0", "--workers", "0",
              "--device", "cpu", "--no-progress", "--amp", "off"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    one = tmp_path / "one"
    two = tmp_path / "two"
    subprocess.run([sys.executable, "-m", "inception_fast.train", *common, "--out", str(one)], check=True, env=env,
                   cwd=tmp_path, timeout=600)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    "-m", "inception_fast.train", *common, "--out", str(two)], check=True, env=env, cwd=tmp_path,
                   timeout=600)
    a = torch.load(one / "last.pt", weights_only=False)
    b = torch.load(two / "last.pt", weights_only=False)
    assert a["history"][-1]["train_loss"] == pytest.approx(b["history"][-1]["train_loss"], rel=1e-5)
    worst = {}
    for k, v in a["model"].items():
        w = b["model"][k]
        if v.is_floating_point():
            worst[k] = ((v.double() - w.double()).norm() / v.double().norm().clamp_min(1e-12)).item()
        else:
            assert torch.equal(v, w), k  # num_batches_tracked
    assert max(worst.values()) < 1e-4, sorted(worst.items(), key=lambda kv: -kv[1])[:3]
    # the running statistics moved (the update happened) and are the global batch's
    assert any("running_var" in k and worst[k] < 1e-5 for k in worst)


# ---- bad input -----------------------------------------------------------------------------------
def test_missing_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolderData(tmp_path / "nowhere")


def test_empty_class_is_named(tiny, tmp_path):
    import shutil

    root = tmp_path / "d"
    shutil.copytree(tiny / "train", root)
    (root / "empty").mkdir()
    with pytest.raises(ValueError, match="has no images"):
        ImageFolderData(root)


def test_corrupt_image_is_skipped_and_counted(tiny, tmp_path, capsys):
    import shutil

    root = tmp_path / "d"
    shutil.copytree(tiny / "train", root)
    (root / "circle" / "broken.png").write_bytes(b"not an image at all")
    data = ImageFolderData(root, val_split=0.0)
    ds = SampleSet(data.train, train_transform(32, {}), seed=0)
    bad = [i for i, (p, _) in enumerate(data.train) if p.endswith("broken.png")][0]
    assert ds[bad] is None
    good = [i for i in range(len(ds)) if i != bad][:2]
    x, y, skipped = collate([ds[bad], ds[good[0]], ds[good[1]]])
    assert skipped == 1 and x.shape[0] == 2
    train.train(_args(tmp_path, root, epochs=1, batch_size=len(data.train)))  # one batch: it holds the broken file
    assert "skipped 1 unreadable image" in capsys.readouterr().out


def test_checkpoint_of_another_model_is_refused(tiny, tmp_path):
    args = _args(tmp_path, tiny, epochs=1)
    train.train(args)
    with pytest.raises(ValueError, match="checkpoint of 'googlenet', not of 'bn_inception'"):
        train.train(_args(tmp_path, tiny, model="bn_inception", epochs=2, resume=str(Path(args.out) / "last.pt")))
    with pytest.raises(ValueError, match="not an inception-fast training checkpoint"):
        torch.save({"weights": 1}, tmp_path / "other.pt")
        train.load_checkpoint(tmp_path / "other.pt")


def test_augmentation_is_the_same_for_a_sample_whoever_loads_it(tiny):
    data = ImageFolderData(tiny / "train", val_split=0.0)
    a = SampleSet(data.train, train_transform(32, {}), seed=3)
    b = SampleSet(data.train, train_transform(32, {}), seed=3)
    a.set_epoch(2), b.set_epoch(2)
    torch.rand(5)  # a different global RNG state must not matter
    assert torch.equal(a[4][0], b[4][0])
    b.set_epoch(3)
    assert not torch.equal(a[4][0], b[4][0])


def test_pretrained_from_a_peer_or_our_checkpoint_resets_the_classifier(tiny, tmp_path):
    # A peer's state_dict (torchvision's GoogLeNet, 1000 classes) and one of our training checkpoints
    # (3 classes) both start a run on the 3-class folder: the features load, the classifier is the
    # data's size.
    import torchvision

    torch.manual_seed(0)
    peer = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True)
    torch.save(peer.state_dict(), tmp_path / "peer.pth")
    args = _args(tmp_path, tiny, epochs=1, pretrained=str(tmp_path / "peer.pth"), lr=1e-12)
    model = train.build_model(args, 3, train.recipe_for("finetune", "googlenet"))
    assert torch.equal(model.conv1.conv.weight, peer.conv1.conv.weight)
    assert model.fc.out_features == 3
    train.train(args)
    ours = Path(args.out) / "last.pt"
    again = train.build_model(_args(tmp_path / "b", tiny, pretrained=str(ours)), 3, train.recipe_for("finetune", "googlenet"))
    saved = torch.load(ours, weights_only=True)["model"]
    assert torch.equal(again.fc.weight, saved["fc.weight"])  # same classes: the classifier loads too
