"""RandAugment on Pillow 13: posterize with 0 bits returns what Pillow <= 12 returned instead of raising."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image
from timm.data import auto_augment as timm_aa

from pe_probe.data import dataset_info
from pe_probe.data.transforms import allow_zero_bit_posterize, build_transform, posterize_any_bits
from pe_probe.training.recipes import DEIT_RANDAUGMENT


def old_pillow_posterize(arr: np.ndarray, bits: int) -> np.ndarray:
    """Pillow <= 12's posterize, written out: keep the ``bits`` most significant bits (mask 0 for bits <= 0)."""
    mask = ~(2 ** (8 - bits) - 1)
    return (arr.astype(np.int64) & mask).astype(np.uint8)


def _image(mode: str = "RGB", size: int = 8, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode)


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("bits", [-2, -1, 0, 1, 2, 3, 4, 7, 8, 9])
def test_posterize_matches_old_pillow_for_every_bit_count(mode, bits):
    img = _image(mode)
    got = np.asarray(posterize_any_bits(img, bits))
    expected = np.asarray(img) if bits >= 8 else old_pillow_posterize(np.asarray(img), bits)
    assert got.dtype == np.uint8 and np.array_equal(got, expected)
    if bits <= 0:
        assert not got.any()  # all black


def _randaugment(transform):
    ra = [t for t in transform.transforms if isinstance(t, timm_aa.RandAugment)]
    assert len(ra) == 1, transform
    return ra[0]


def test_deit_policy_never_raises_over_many_draws():
    """The recipes' RandAugment (``rand-m9-mstd0.5-inc1``) asks for 0 bits about once in 660 images; Pillow 13
    raises there. 10,000 seeded draws hit that case about 15 times, and none may raise."""
    transform = build_transform(dataset_info("imagefolder"), augment=True, img_size=32, mean=(0.5,) * 3,
                                std=(0.5,) * 3, auto_augment=DEIT_RANDAUGMENT)
    ra = _randaugment(transform)
    posterize_ops = [op for op in ra.ops if op.name == "PosterizeIncreasing"]
    assert len(posterize_ops) == 1 and posterize_ops[0].aug_fn is posterize_any_bits
    bits_seen = []
    fixed = posterize_ops[0].aug_fn

    def spy(img, bits, **kw):
        bits_seen.append(bits)
        return fixed(img, bits, **kw)

    posterize_ops[0].aug_fn = spy
    img = _image(size=32)
    random.seed(0)
    for _ in range(10_000):
        ra(img)
    assert bits_seen.count(0) >= 5, f"the test never reached 0 bits ({len(bits_seen)} posterize calls)"


def test_unpatched_policy_does_raise_on_this_pillow():
    """The failure the fix removes is real here: timm's own posterize op at magnitude 10 asks for 0 bits."""
    op = timm_aa.AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10)
    assert op.level_fn(10, op.hparams) == (0,)
    import PIL

    if int(PIL.__version__.split(".")[0]) < 13:  # pragma: no cover - older Pillow returned a black image
        pytest.skip(f"Pillow {PIL.__version__} does not raise on 0 bits")
    with pytest.raises(ValueError, match="bits"):
        op(_image())
    assert allow_zero_bit_posterize([op]) == 1
    assert not np.asarray(op(_image())).any()


def test_every_posterize_op_of_the_timm_policies_is_covered():
    """RandAugment, AutoAugment (v0, a list of sub-policies) and AugMix: each posterize op gets the fix."""
    hp = {"translate_const": 10, "img_mean": (124, 116, 104)}
    policies = {
        "rand": timm_aa.rand_augment_transform(DEIT_RANDAUGMENT, hp),
        "auto_v0": timm_aa.auto_augment_transform("v0", hp),
        "augmix": timm_aa.augment_and_mix_transform("augmix-m5-w4-d2", hp),
    }
    for name, policy in policies.items():
        ops = list(getattr(policy, "ops", [])) + [op for sub in getattr(policy, "policy", []) for op in sub]
        n = sum(op.aug_fn is timm_aa.posterize for op in ops)
        assert n >= 1, name
        assert allow_zero_bit_posterize(policy) == n, name
        assert not any(op.aug_fn is timm_aa.posterize for op in ops), name
