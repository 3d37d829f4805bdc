"""hybridmoe.degrade: the seeded blur / noise / JPEG degradations of x1 restoration, with the
tensor JPEG measured against Pillow's (libjpeg) round trip."""

from __future__ import annotations

import io
import itertools
import json
import math
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TEST_DATA, shared_data_dir
from PIL import Image

from hybridmoe import degrade as D
from hybridmoe import metrics

pytestmark = pytest.mark.usefixtures("one_thread")

OFF = D.Degradation(blur_prob=0.0, noise_prob=0.0, jpeg_prob=0.0)


def _batch(n: int = 3, size: int = 24, seed: int = 0) -> torch.Tensor:
    """Smooth-ish random images on 8-bit levels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size // 4, size // 4, generator=g)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear")
    return (x * 255).round() / 255


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------- blur


def test_blur_kernel_is_normalised_oriented_and_sized_from_sigma() -> None:
    assert D.kernel_size(0.2) == 3 and D.kernel_size(1.5) == 11 and D.kernel_size(9.0) == 21
    k = D.gaussian_kernels(
        torch.tensor([2.0, 2.0]), torch.tensor([0.5, 0.5]), torch.tensor([0.0, math.pi / 2]), 13
    )
    assert torch.allclose(k.sum(dim=(1, 2)), torch.ones(2, dtype=torch.float64))
    # theta = 0 spreads along x (columns), pi/2 along y: the second is the first transposed
    assert k[0, 6, 6 + 3] > 10 * k[0, 6 + 3, 6]
    assert torch.allclose(k[1], k[0].T, atol=1e-12)


def test_blur_per_image_and_shape_preserving() -> None:
    x = _batch(2, 32)
    y = D.gaussian_blur(x, [0.3, 1.5], [0.3, 1.0], [0.0, 1.0])
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.allclose(y.mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=0.01)  # blur keeps the mean
    # each image blurred with its own kernel: image 0 alone gives the same result
    assert torch.allclose(D.gaussian_blur(x[:1], 0.3, 0.3, 0.0), y[:1], atol=1e-6)
    flat = torch.full((1, 3, 16, 16), 0.4)
    assert torch.allclose(D.gaussian_blur(flat, 1.2, 0.7, 0.3), flat, atol=1e-6)
    # stronger blur removes more detail
    detail = [float((D.gaussian_blur(x, s, s) - x).abs().mean()) for s in (0.3, 0.8, 1.5)]
    assert detail == sorted(detail) and detail[0] > 0


# ------------------------------------------------------------------------------------ noise


def test_noise_level_and_gray_share() -> None:
    x = torch.full((4, 3, 64, 64), 0.5)
    y = D.add_noise(x, torch.tensor([0.0, 5.0, 20.0, 20.0]), gray=[False, False, False, True])
    std = (y - x).std(dim=(1, 2, 3)) * 255
    assert std[0] == 0 and abs(std[1] - 5) < 0.5 and abs(std[2] - 20) < 1.5
    assert torch.equal(y[3, 0], y[3, 1]) and torch.equal(y[3, 1], y[3, 2])  # grey noise
    assert not torch.equal(y[2, 0], y[2, 1])  # colour noise
    a = D.add_noise(x, 10.0, 1.0, _gen(1))
    b = D.add_noise(x, 10.0, 0.0, _gen(1))
    assert torch.equal(a[:, 0], a[:, 2]) and not torch.equal(b[:, 0], b[:, 2])


# ------------------------------------------------------------------------------------- JPEG


def _pillow_jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality, subsampling=2)
    return np.asarray(Image.open(buf).convert("RGB"))


def _ours(img: np.ndarray, quality: int) -> np.ndarray:
    x = torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float() / 255
    y = D.jpeg(x, quality)[0].permute(1, 2, 0).numpy() * 255
    assert np.array_equal(y, np.round(y))  # 8-bit levels
    return y.round().astype(np.uint8)


def _rgb_psnr(a: np.ndarray, b: np.ndarray) -> float:
    return metrics.calculate_psnr(a, b, 0, y_channel=False)


def _photos() -> list[tuple[Path, float]]:
    """(image, lower bound of the PSNR between our JPEG and Pillow's): measured 44.8-46.7 dB
    for butterfly, 43.7-44.3 dB for baboon at qualities 30/60/90."""
    cands = [(TEST_DATA / "Set5" / "HR" / "butterfly.png", 43.5)]
    shared = shared_data_dir()
    if shared is not None and (shared / "benchmark/Set14/HR/baboon.png").is_file():
        cands.append((shared / "benchmark/Set14/HR/baboon.png", 42.5))
    return cands


@pytest.mark.parametrize(("path", "bound"), _photos(), ids=lambda v: getattr(v, "stem", ""))
def test_jpeg_matches_pillow(path: Path, bound: float) -> None:
    img = np.asarray(Image.open(path).convert("RGB"))[:256, :256]
    ours_vs_orig = []
    for q in (30, 60, 90):
        ours, pil = _ours(img, q), _pillow_jpeg(img, q)
        assert _rgb_psnr(ours, pil) > bound, q
        # the same loss as libjpeg's: PSNR against the original within 0.25 dB of Pillow's
        assert abs(_rgb_psnr(ours, img) - _rgb_psnr(pil, img)) < 0.25, q
        ours_vs_orig.append(_rgb_psnr(ours, img))
    assert ours_vs_orig == sorted(ours_vs_orig)  # lower quality, lower PSNR
    assert ours_vs_orig[0] + 3 < ours_vs_orig[-1]
    # quality 100: only rounding and 4:2:0 chroma remain; the Y channel is near lossless
    assert metrics.calculate_psnr(_ours(img, 100), img, 0) > 50


def test_jpeg_per_image_quality_odd_sizes_and_tables() -> None:
    x = _batch(2, 24)[:, :, :21, :19]  # not a multiple of 16: padded and cropped back
    y = D.jpeg(x, torch.tensor([20, 95]))
    assert y.shape == x.shape
    assert torch.equal(y[1:], D.jpeg(x[1:], 95)) and torch.equal(y[:1], D.jpeg(x[:1], 20))
    assert (y[0] - x[0]).abs().mean() > (y[1] - x[1]).abs().mean()
    t = D.quant_tables([50, 10, 90, 1])
    assert t[0, 0, 0, 0] == 16 and t[0, 1, 0, 0] == 17  # quality 50: the standard tables
    assert t[1, 0, 0, 0] == (16 * 500 + 50) // 100 and t[2, 0, 0, 0] == (16 * 20 + 50) // 100
    assert t[3].max() == 255 and t[3].min() > 1  # clamped to the baseline range


# ------------------------------------------------------------------------------- the pipeline


def test_degrade_batch_is_seeded() -> None:
    x = _batch(4, 32)
    a = D.degrade_batch(x, D.RESTORE, _gen(7))
    assert torch.equal(a, D.degrade_batch(x, D.RESTORE, _gen(7)))
    assert not torch.equal(a, D.degrade_batch(x, D.RESTORE, _gen(8)))
    assert a.shape == x.shape and torch.equal(a, (a * 255).round() / 255)
    assert a.min() >= 0 and a.max() <= 1
    # degrade_batch = sample_params then apply_params, from the same generator
    g = _gen(7)
    p = D.sample_params(4, D.RESTORE, g)
    assert torch.equal(D.apply_params(x, p, g), a)


@pytest.mark.parametrize("stage", ["blur", "noise", "jpeg"])
def test_each_stage_switches_alone(stage: str) -> None:
    x = _batch(3, 32)
    assert torch.equal(D.degrade_batch(x, OFF, _gen(3)), x)  # everything off: unchanged
    on = replace(OFF, **{f"{stage}_prob": 1.0})
    y = D.degrade_batch(x, on, _gen(3))
    assert not torch.equal(y, x)
    # turning another stage off leaves this one's draws as they were
    both = replace(D.RESTORE, blur_prob=1.0, noise_prob=1.0, jpeg_prob=1.0)
    without = replace(both, **{f"{stage}_prob": 0.0})
    assert not torch.equal(D.degrade_batch(x, both, _gen(3)), D.degrade_batch(x, without, _gen(3)))
    params = D.sample_params(3, on, _gen(3))
    assert all((params.describe(i)[stage] is not None) for i in range(3))
    assert all(
        params.describe(i)[o] is None for i in range(3) for o in {"blur", "noise", "jpeg"} - {stage}
    )


def test_sampled_parameters_stay_in_their_ranges() -> None:
    p = D.sample_params(400, D.RESTORE, _gen(0))
    lo, hi = D.RESTORE.jpeg_quality
    assert int(p.quality.min()) == lo and int(p.quality.max()) == hi
    assert float(p.theta.min()) < 0.1 and 3.0 < float(p.theta.max()) < math.pi  # all angles
    assert D.RESTORE.blur_sigma[0] <= float(p.sigma_x.min()) <= float(p.sigma_x.max()) <= 1.5
    assert 0.35 < float(p.blur.double().mean()) < 0.65 and float(p.jpeg.double().mean()) > 0.6


# ----------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: D.jpeg(torch.rand(3, 8, 8), 50), r"shape \(N, 3, H, W\), got \(3, 8, 8\)"),
        (lambda: D.jpeg(torch.rand(1, 1, 8, 8), 50), "replicate grey images"),
        (lambda: D.jpeg(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), 50), "x.float\\(\\) / 255"),
        (lambda: D.jpeg(torch.full((1, 3, 8, 8), 2.0), 50), r"values in \[0, 1\], found"),
        (lambda: D.jpeg(torch.rand(1, 3, 8, 8), 0), "quality must be in 1..100"),
        (lambda: D.jpeg(torch.rand(1, 3, 8, 8), 50.5), "quality must be integers"),
        (lambda: D.jpeg(torch.rand(2, 3, 8, 8), [50, 60, 70]), "one per image"),
        (lambda: D.gaussian_blur(torch.rand(1, 3, 8, 8), 0.0, 1.0), "sigmas must be > 0"),
        (lambda: D.gaussian_blur(torch.rand(1, 3, 4, 4), 1.5, 1.5), "too small for a 11x11"),
        # a sigma past the largest kernel was cut to 21x21 silently (std about 6 for any sigma)
        (lambda: D.gaussian_blur(torch.rand(1, 3, 64, 64), 10.0, 1.0), "at most 3.33333 px"),
        # x1 parameters for another batch size: IndexError, or an error about "sigma"
        (
            lambda: D.apply_params(torch.rand(2, 3, 8, 8), D.sample_params(3, D.RESTORE)),
            "drawn for 3 images, hr has 2",
        ),
        (
            lambda: D.apply_params(torch.rand(3, 3, 8, 8), D.sample_params(2, D.RESTORE)),
            "drawn for 2 images, hr has 3",
        ),
        (lambda: D.add_noise(torch.rand(2, 3, 4, 4), [1.0]), r"one value per image \(2\)"),
        (lambda: D.add_noise(torch.rand(1, 3, 4, 4), -1.0), "sigma must be >= 0"),
        (lambda: D.Degradation(jpeg_prob=1.5), "jpeg_prob must be a probability"),
        (lambda: D.Degradation(noise_sigma=(20.0, 1.0)), "noise_sigma must be a range"),
        (lambda: D.Degradation(jpeg_quality=(40, 101)), "jpeg_quality must be a range"),
        (lambda: D.degrade_batch(torch.rand(2, 3, 8)), "hr must be an RGB batch"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(call: object, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        call()  # type: ignore[operator]


def test_the_largest_sigma_is_the_presets_bound_and_is_accepted() -> None:
    x = torch.rand(2, 3, 32, 32)
    limit = torch.tensor(D.MAX_SIGMA, dtype=torch.float32)  # float32 rounding of the bound
    y = D.gaussian_blur(x, limit, limit)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert D.kernel_size(D.MAX_SIGMA) == D.MAX_KERNEL
    with pytest.raises(ValueError, match="blur_sigma must be a range"):
        D.Degradation(blur_sigma=(0.5, D.MAX_SIGMA + 0.01))


# --------------------------------------------------------------------- the x4 real-world pipeline

ALL_ON4 = replace(
    D.REALWORLD4,
    blur_prob=1.0,
    noise_prob=1.0,
    jpeg_prob=1.0,
    second_prob=1.0,
    second_blur_prob=1.0,
    second_noise_prob=1.0,
    final_jpeg_prob=1.0,
)
"""The x4 preset with every stage on."""
SWITCHES = {
    "blur": {"blur_prob": 0.0, "second_blur_prob": 0.0},
    "second": {"second_prob": 0.0},
    "noise": {"noise_prob": 0.0, "second_noise_prob": 0.0},
    "jpeg": {"jpeg_prob": 0.0, "final_jpeg_prob": 0.0},
}
"""Each x4 stage switched off (the flag fields it sets to False)."""
FLAGS = {
    "blur": {"blur", "blur2"},
    "second": {"second"},
    "noise": {"noise", "noise2"},
    "jpeg": {"jpeg", "final_jpeg"},
}


def _gen_after_params(seed: int, n: int) -> torch.Generator:
    """A generator of ``seed`` past the parameter draws of ``n`` realworld4 images."""
    g = _gen(seed)
    D.sample_params(n, D.REALWORLD4, g)
    return g


def test_realworld4_shapes_levels_and_seeding() -> None:
    x = _batch(3, 32)[:, :, :, :24]
    y = D.degrade_batch(x, D.REALWORLD4, _gen(5))
    assert y.shape == (3, 3, 8, 6) and y.dtype == x.dtype
    assert torch.equal(y, (y * 255).round() / 255) and y.min() >= 0 and y.max() <= 1
    assert torch.equal(y, D.degrade_batch(x, D.REALWORLD4, _gen(5)))
    assert not torch.equal(y, D.degrade_batch(x, D.REALWORLD4, _gen(6)))
    g = _gen(5)  # degrade_batch = sample_params then apply_params, from the same generator
    p = D.sample_params(3, D.REALWORLD4, g)
    assert isinstance(p, D.SecondOrderParams) and torch.equal(D.apply_params(x, p, g), y)
    h = p.host()  # the per-image loop reads host copies: same values, same result
    assert type(h) is D.SecondOrderParams and h.scale == p.scale
    assert all(torch.equal(getattr(h, k), v) for k, v in vars(p).items() if k != "scale")
    assert torch.equal(D.apply_params(x, h, _gen_after_params(5, 3)), y)
    assert D.degrade_batch(x.double(), D.REALWORLD4, _gen(5)).dtype == torch.float64
    assert D.degrade_batch(x[:0], D.REALWORLD4, _gen(5)).shape == (0, 3, 8, 6)
    # JSON-ready parameters of every stage; to_dict holds the new fields
    d = json.loads(json.dumps(p.describe(0)))
    assert list(d) == ["blur", "resize", "noise", "jpeg", "second", "final"]
    assert d["resize"]["mode"] in D.RESIZE_MODES and d["final"]["resize"]["scale"] == 4
    cfg = D.REALWORLD4.to_dict()
    assert D.PRESETS["realworld4"] is D.REALWORLD4
    assert cfg["scale"] == 4 and cfg["resize_range"] == [0.3, 1.5]
    assert cfg["second_prob"] == 0.5 and cfg["final_jpeg_quality"] == [30, 95]


@pytest.mark.parametrize("stage", list(SWITCHES))
def test_realworld4_each_stage_switch(stage: str) -> None:
    x = _batch(2, 32)
    off = replace(ALL_ON4, **SWITCHES[stage])
    assert not torch.equal(D.degrade_batch(x, ALL_ON4, _gen(4)), D.degrade_batch(x, off, _gen(4)))
    # every value is drawn whatever the probabilities: only the switched flags differ
    p_on, p_off = D.sample_params(2, ALL_ON4, _gen(4)), D.sample_params(2, off, _gen(4))
    for f in fields(p_on):
        a, b = getattr(p_on, f.name), getattr(p_off, f.name)
        if f.name in FLAGS[stage]:
            assert bool(a.all()) and not bool(b.any()), f.name
        else:
            assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b, f.name


def test_realworld4_final_jpeg_is_the_last_step_and_draws_stay_aligned() -> None:
    """Switching the final JPEG off leaves every earlier draw (noise fields included) as it was:
    applying the drawn final JPEG to that output gives the full pipeline's output."""
    x = _batch(3, 32)
    full = D.degrade_batch(x, ALL_ON4, _gen(9))
    without = D.degrade_batch(x, replace(ALL_ON4, final_jpeg_prob=0.0), _gen(9))
    q = D.sample_params(3, ALL_ON4, _gen(9)).final_quality
    assert torch.equal(D.jpeg(without, q), full)
    # image 0's second stage off: its noise field is still drawn, so the later images start
    # from the same generator state and come out as they were
    g = _gen(9)
    p = D.sample_params(3, ALL_ON4, g)
    p.second[0] = False
    mixed = D.apply_params(x, p, g)
    assert not torch.equal(mixed[0], full[0]) and torch.equal(mixed[1:], full[1:])


def test_realworld4_leaves_scale_1_untouched() -> None:
    """The second-order fields do nothing at scale 1: RESTORE's output is that of the x1 path."""
    x = _batch(3, 32)
    busy = replace(
        D.RESTORE, resize_range=(0.5, 0.5), second_prob=1.0, final_jpeg_prob=1.0, scale=1
    )
    assert torch.equal(D.degrade_batch(x, busy, _gen(2)), D.degrade_batch(x, D.RESTORE, _gen(2)))
    assert type(D.sample_params(3, D.RESTORE, _gen(2))) is D.DegradeParams


def test_realworld4_is_finite_on_hard_textures_and_tiny_images() -> None:
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    checker = ((yy + xx) % 2).float().expand(1, 3, 32, 32)
    ramp = (xx.float() / 31).expand(1, 3, 32, 32)
    dither = (ramp > torch.rand(1, 3, 32, 32, generator=_gen(0))).float()
    tiny = _batch(2, 8)  # resized to a few pixels: the blur pads by edge replication
    for x in (torch.cat([checker, dither]), tiny):
        for seed in range(4):
            y = D.degrade_batch(x, ALL_ON4, _gen(seed))
            assert torch.isfinite(y).all() and y.min() >= 0 and y.max() <= 1
            assert y.shape == (x.shape[0], 3, x.shape[2] // 4, x.shape[3] // 4)


def test_restore_blurs_images_smaller_than_the_kernel() -> None:
    """The x1 pipeline refused images not larger than half the blur kernel, so a batch of
    small patches failed or passed depending on the drawn sigma; it pads them by edge
    replication, as the x4 pipeline does."""
    strong = replace(OFF, blur_prob=1.0, blur_sigma=(1.5, 1.5))  # 11x11 kernel
    for size in (1, 5):
        x = (torch.rand(2, 3, size, size, generator=_gen(1)) * 255).round() / 255
        y = D.degrade_batch(x, strong, _gen(0))
        assert y.shape == x.shape and torch.isfinite(y).all() and y.min() >= 0 and y.max() <= 1
    flat = torch.full((1, 3, 4, 4), 0.4)
    assert torch.allclose(D.degrade_batch(flat, strong, _gen(0)), (flat * 255).round() / 255)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: D.degrade_batch(torch.rand(1, 3, 10, 8), D.REALWORLD4),
            r"10x8 are not divisible by the scale 4; crop them .* hr\[\.\.\., :8, :8\]",
        ),
        (lambda: D.Degradation(scale=0), "scale must be an int >= 1"),
        (lambda: D.Degradation(scale=2.0), "scale must be an int >= 1"),  # type: ignore[arg-type]
        (lambda: D.Degradation(resize_range=(0.0, 1.0)), "resize_range .*must be a range"),
        (lambda: D.Degradation(second_resize_range=(1.2, 0.6)), "second_resize_range"),
        (lambda: D.Degradation(second_prob=1.5), "second_prob must be a probability"),
        (lambda: D.Degradation(second_blur_sigma=(0.2, 5.0)), "second_blur_sigma must be"),
        (lambda: D.Degradation(final_jpeg_quality=(30, 101)), "final_jpeg_quality must be"),
        (lambda: D.Degradation(final_jpeg_quality=(30.0, 90.0)), "two ints"),  # type: ignore[arg-type]
    ],
)
def test_bad_x4_settings_are_refused(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()  # type: ignore[operator]


def test_realworld4_grey_noise_keeps_a_grey_image_grey() -> None:
    """``noise_gray_prob`` reaches the noise of the x4 stages: with grey noise only and no JPEG
    (its chroma rounding could tint), blur and resizing act alike on three equal channels, so a
    grey image comes out grey; with colour noise it does not."""
    grey = _batch(2, 32)[:, :1].expand(-1, 3, -1, -1).contiguous()
    cfg = replace(ALL_ON4, jpeg_prob=0.0, final_jpeg_prob=0.0, noise_gray_prob=1.0)
    y = D.degrade_batch(grey, cfg, _gen(1))
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 1], y[:, 2])
    colour = D.degrade_batch(grey, replace(cfg, noise_gray_prob=0.0), _gen(1))
    assert not torch.equal(colour[:, 0], colour[:, 1])


X4_PROB_FLAGS = {
    "blur_prob": "blur",
    "noise_prob": "noise",
    "jpeg_prob": "jpeg",
    "second_prob": "second",
    "second_blur_prob": "blur2",
    "second_noise_prob": "noise2",
    "final_jpeg_prob": "final_jpeg",
}
"""Each probability of the x4 pipeline and the per-image flag it draws."""


def test_realworld4_stages_draw_their_flags_independently() -> None:
    """Every probability at 0.5: each flag is on for about half of the images, and any two
    flags agree for about half of them (two stages reading the same draw would always agree,
    or never)."""
    half = replace(ALL_ON4, **dict.fromkeys(X4_PROB_FLAGS, 0.5))
    p = D.sample_params(256, half, _gen(0))
    flags = {name: getattr(p, name) for name in X4_PROB_FLAGS.values()}
    for name, flag in flags.items():
        assert 0.35 < float(flag.double().mean()) < 0.65, name
    for a, b in itertools.combinations(flags, 2):
        assert 0.35 < float((flags[a] == flags[b]).double().mean()) < 0.65, (a, b)


def test_realworld4_downscaling_is_antialiased_in_every_mode() -> None:
    """The final x4 downscale of white noise (std 0.29) in each resize mode: antialiased
    filters average over the 4x4 footprint (std measured 0.048 bilinear, 0.058 bicubic, 0.071
    area); sampling without antialiasing keeps aliased noise (0.15 bilinear, 0.21 bicubic)."""
    x = (torch.rand(1, 3, 64, 64, generator=_gen(0)) * 255).round() / 255
    only_resize = replace(
        D.REALWORLD4,
        blur_prob=0.0,
        noise_prob=0.0,
        jpeg_prob=0.0,
        second_prob=0.0,
        final_jpeg_prob=0.0,
        resize_range=(1.0, 1.0),
    )
    for mode in range(len(D.RESIZE_MODES)):
        g = _gen(0)
        p = D.sample_params(1, only_resize, g)
        p.final_mode[:] = mode
        y = D.apply_params(x, p, g)
        assert y.shape == (1, 3, 16, 16)
        assert float(y.std()) < 0.1, D.RESIZE_MODES[mode]
        assert abs(float(y.mean() - x.mean())) < 0.01, D.RESIZE_MODES[mode]


def test_resize_factors_round_to_the_nearest_size() -> None:
    """A stage's resize gives the nearest whole size (not the size rounded down, which would
    shrink every image a little more than drawn), at least one pixel."""
    f = torch.tensor(0.55, dtype=torch.float64)
    assert D._resized((32, 9), f) == (18, 5)  # 17.6, 4.95
    assert D._resized((3, 40), torch.tensor(0.1, dtype=torch.float64)) == (1, 4)  # 0.3 -> 1
