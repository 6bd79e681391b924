"""Input kinds (cbigan/core/kinds.py): one table holds each kind's defaults, checks, patching and augmentation."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cbigan.core import kinds
from cbigan.core.config import CATEGORIES, OBJECTS, TEXTURES, Config, apply_preset
from cbigan.core.kinds import KINDS, InputKind, StrideError, default_kind, kind_of

ROOT = Path(__file__).resolve().parents[1]


def data_fields(cfg):
    return cfg.kind, cfg.image_size, cfg.patch_size, cfg.rotation


# ---------------------------------------------------------------------------------- the table
def test_the_table_and_the_category_lists():
    assert list(KINDS) == ["object", "texture", "tiles"]
    assert all(isinstance(k, InputKind) and KINDS[name] is k and k.name == name for name, k in KINDS.items())
    assert CATEGORIES == TEXTURES + OBJECTS and len(CATEGORIES) == 15
    assert [default_kind(c) for c in TEXTURES] == ["texture"] * 5
    assert {default_kind(c) for c in OBJECTS} == {"object"} and default_kind("my_widgets") == "object"
    assert kind_of("texture") is KINDS["texture"] and kind_of(KINDS["object"]) is KINDS["object"]
    assert kind_of(Config(category="grid")) is KINDS["texture"]            # kind None: from the category
    assert kind_of(Config(category="grid", kind="object")) is KINDS["object"]
    with pytest.raises(ValueError, match=r"^kind must be 'object' or 'texture' or 'tiles', got 'tile'$"):
        kind_of("tile")


@pytest.mark.parametrize("category,expected", [("grid", ("texture", 512, 64, 45.0)),
                                               ("bottle", ("object", 128, 128, 45.0)),
                                               ("cable", ("object", 128, 128, 0.0))])
def test_defaults_are_the_papers(category, expected):
    kind = KINDS[expected[0]]
    assert kind.defaults(category) == dict(zip(("image_size", "patch_size", "rotation"), expected[1:]))
    assert data_fields(Config(category=category).resolved()) == expected
    assert data_fields(apply_preset(Config(category=category), "paper").resolved()) == expected


def test_fast_preset_objects_are_64_px_and_textures_keep_theirs():
    assert data_fields(apply_preset(Config(category="bottle"), "fast").resolved()) == ("object", 64, 64, 0.0)
    assert data_fields(apply_preset(Config(category="grid"), "fast").resolved()) == ("texture", 512, 64, 45.0)
    # an explicit flag still wins; an object's patch follows its image size
    cfg = apply_preset(Config(category="bottle", image_size=96), "fast").resolved()
    assert data_fields(cfg) == ("object", 96, 96, 0.0)


def test_validation_messages():
    with pytest.raises(ValueError, match=r"^kind must be 'object' or 'texture' or 'tiles', got 'rug'$"):
        Config(kind="rug").resolved()
    with pytest.raises(ValueError, match=r"^objects are scored whole: patch_size must equal image_size$"):
        Config(category="bottle", patch_size=64).resolved()
    with pytest.raises(ValueError, match=r"^texture image_size 512 is not a multiple of patch_size 100$"):
        Config(category="grid", patch_size=100).resolved()
    assert data_fields(Config(category="bottle", kind="texture").resolved()) == ("texture", 512, 64, 45.0)


# ---------------------------------------------------------------------------------- geometry
def test_patches_per_image_and_map_stride():
    tex, obj = Config(category="grid").resolved(), Config(category="bottle").resolved()
    assert KINDS["texture"].patches_per_image(tex) == 64 and KINDS["object"].patches_per_image(obj) == 1
    assert KINDS["texture"].map_stride(tex, None) == 64 and KINDS["texture"].map_stride(tex, 32) == 32
    assert KINDS["object"].map_stride(obj, None) == 128 and KINDS["object"].map_stride(obj, 7) == 128
    with pytest.raises(StrideError, match=r"^--stride must be between 1 and the patch size 64, got 65$"):
        KINDS["texture"].map_stride(tex, 65)
    with pytest.raises(ValueError, match="got 0"):
        KINDS["texture"].map_stride(tex, 0)
    assert KINDS["texture"].best_patch_box(tex, 9) == (64, 64, 64)          # row 1, column 1 of the 8x8 grid
    assert KINDS["object"].best_patch_box(obj, 0) is None
    assert KINDS["texture"].describe_stride(32) == ", patch stride 32" and KINDS["object"].describe_stride(128) == ""


def test_evaluation_still_raises_its_own_error_for_a_bad_stride():
    from cbigan.core.errors import EvaluationError
    from cbigan.reporting.evaluation import resolve_stride

    tex, obj = Config(category="grid"), Config(category="bottle")
    assert resolve_stride(tex, None) == 64 and resolve_stride(tex, 16) == 16 and resolve_stride(obj, 3) == 128
    with pytest.raises(EvaluationError, match=r"^--stride must be between 1 and the patch size 64, got 65$"):
        resolve_stride(tex, 65)


# ---------------------------------------------------------------------------------- tensors
def test_texture_network_inputs_round_trip_and_objects_pass_through():
    import tensorflow as tf

    from cbigan.data.pipeline import to_patches

    cfg = Config(category="grid", image_size=128, patch_size=32).resolved()
    x = tf.constant(np.random.default_rng(0).uniform(-1, 1, (3, 128, 128, 3)).astype("float32"))
    tex = kind_of(cfg)
    patches = tex.to_network_inputs(x, cfg)
    assert tuple(patches.shape) == (3 * 16, 32, 32, 3)
    np.testing.assert_array_equal(patches.numpy(), to_patches(x, 32).numpy())
    np.testing.assert_array_equal(tex.from_network_outputs(patches, cfg).numpy(), x.numpy())
    maps = tf.reduce_mean(patches, axis=-1)                                  # per-patch maps [N*P, p, p]
    np.testing.assert_array_equal(tex.from_network_outputs(maps, cfg).numpy(), tf.reduce_mean(x, -1).numpy())
    obj_cfg = Config(category="bottle", image_size=128).resolved()
    obj = kind_of(obj_cfg)
    assert obj.to_network_inputs(x, obj_cfg) is x and obj.from_network_outputs(x, obj_cfg) is x


def test_object_augmentation_without_rotation_is_the_identity_in_model_range():
    import tensorflow as tf

    cfg = Config(category="cable", image_size=32).resolved()
    assert cfg.rotation == 0
    images = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    out = kind_of(cfg).augment(tf.constant(images), cfg, tf.constant([1, 2], tf.int64))
    assert out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy(), images / 127.5 - 1.0, atol=1e-6)
    assert out.numpy().min() >= -1 and out.numpy().max() <= 1


def test_rotating_augmentations_are_todays():
    import tensorflow as tf

    from cbigan.data.pipeline import rotate_objects, rotated_texture_crops

    images = tf.constant(np.random.default_rng(2).integers(0, 256, (4, 128, 128, 3), dtype=np.uint8))
    seed = tf.constant([5, 6], tf.int64)
    obj = Config(category="bottle", image_size=128).resolved()
    got = kind_of(obj).augment(images, obj, seed).numpy()
    np.testing.assert_allclose(got, rotate_objects(images, 45.0, seed).numpy() / 127.5 - 1.0, atol=1e-6)
    assert not np.allclose(got, images.numpy() / 127.5 - 1.0, atol=1e-3)  # it does rotate
    tex = Config(category="grid", image_size=128, patch_size=32).resolved()
    got = kind_of(tex).augment(images, tex, seed).numpy()
    assert got.shape == (4, 32, 32, 3) and got.min() >= -1 and got.max() <= 1
    np.testing.assert_allclose(got, rotated_texture_crops(images, 32, 45.0, seed).numpy() / 127.5 - 1.0,
                               atol=1e-6)


# ---------------------------------------------------------------------------------- adding a kind
class StripKind(InputKind):
    """A made-up kind: wide images cut into 4 x 4 patches, no rotation."""

    name = "strip"
    categories = ("zebra_crossing",)
    is_patched = True

    def defaults(self, category, image_size=None):
        return {"image_size": 256, "patch_size": 64, "rotation": 0.0}

    def validate(self, cfg):
        if cfg.patch_size * 4 != cfg.image_size:
            raise ValueError("strips are 4 patches wide")


def test_a_new_kind_is_one_class_in_the_table(monkeypatch):
    monkeypatch.setitem(KINDS, "strip", StripKind())
    assert default_kind("zebra_crossing") == "strip"
    assert data_fields(Config(category="zebra_crossing").resolved()) == ("strip", 256, 64, 0.0)
    cfg = Config(category="bottle", kind="strip").resolved()
    assert data_fields(cfg) == ("strip", 256, 64, 0.0) and kind_of(cfg).patches_per_image(cfg) == 16
    with pytest.raises(ValueError, match="strips are 4 patches wide"):
        Config(kind="strip", patch_size=32).resolved()
    with pytest.raises(ValueError, match=r"^kind must be 'object' or 'texture' or 'tiles' or 'strip', got 'x'$"):
        Config(kind="x").resolved()
    from cbigan.reporting.evaluation import resolve_stride

    assert resolve_stride(cfg, 16) == 16                                  # patched: it has a map stride


def test_the_fake_kind_is_gone_again():
    assert "strip" not in KINDS
    with pytest.raises(ValueError, match="kind must be"):
        Config(kind="strip").resolved()


# ---------------------------------------------------------------------------------- no branches elsewhere
KIND_BRANCH = re.compile(r"""cfg\.kind\s*[!=]=|get\("kind"\)\s*[!=]=|[!=]=\s*["'](?:texture|object)["']"""
                         r"""|["'](?:texture|object)["']\s*[!=]=|in\s*\(\s*["'](?:object|texture)["']""")


def test_no_kind_branch_outside_the_table():
    """Every module, benchmarks included, asks the table instead of comparing kind names."""
    offenders = []
    for path in sorted((ROOT / "cbigan").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel == "cbigan/core/kinds.py":
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if KIND_BRANCH.search(line):
                offenders.append(f"{rel}:{i}: {line.strip()}")
    for name in ("train.py", "evaluate.py"):
        for i, line in enumerate((ROOT / name).read_text().splitlines(), 1):
            if KIND_BRANCH.search(line):
                offenders.append(f"{name}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
    assert KIND_BRANCH.search('if cfg.kind == "texture":') and KIND_BRANCH.search('s.get("kind") == "texture"')


def test_kinds_and_config_import_without_tensorflow():
    code = ("import sys, cbigan.core.config, cbigan.core.kinds; "
            "bad = [m for m in ('tensorflow', 'keras', 'cbigan.data.pipeline', 'cbigan.core.imageops') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert kinds.TEXTURES is TEXTURES


def test_fit_is_identity_means_what_it_says():
    """Callers skip fit when a kind says it would change nothing (LiteRT at batch 1): check it does not."""
    import numpy as np

    from cbigan.core.config import Config
    from cbigan.core.kinds import KINDS

    rng = np.random.default_rng(0)
    for name in KINDS:
        cfg = Config(category="x", kind=name, image_size=64).resolved()
        kind = KINDS[name]
        img = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
        assert kind.fit_is_identity(64, 64, cfg)
        fitted, region = kind.fit(img, cfg)
        np.testing.assert_array_equal(np.asarray(fitted), img)
        assert (int(region[0]), int(region[1])) == (64, 64)
        assert not kind.fit_is_identity(64, 80, cfg) and not kind.fit_is_identity(32, 32, cfg)


def _write_train_images(root: Path, sizes) -> Path:
    from PIL import Image

    good = root / "parts" / "train" / "good"
    good.mkdir(parents=True)
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(np.full((h, w), 100 + i % 50, np.uint8)).save(good / f"{i:03d}.png")
    return root


@pytest.mark.parametrize("sizes, kind, canvas", [
    ([(200, 520)] * 4, "tiles", 576),                          # elongated strips: 2.6:1
    ([(500, 1250)] * 3, "tiles", 1024),                        # larger than the cap: scaled down to fit
    ([(109, 235), (617, 388), (300, 300)], "tiles", 640),       # sizes vary (magnetic tile's range)
    ([(256, 256)] * 5, "object", None),                        # one square size: the paper's resizing
    ([(768, 1024)] * 5, "object", None),                       # 4:3 camera frames of one size
    ([(250, 250), (256, 256)], "object", None),                # within 10%
    ([(256, 256)] * 30 + [(100, 400)], "object", None),        # one odd image among many
    ([], "object", None),
])
def test_an_unknown_categorys_kind_from_its_image_sizes(sizes, kind, canvas):
    name, size, why = kinds.kind_for_sizes(sizes, patch_size=64)
    assert (name, size) == (kind, canvas)
    assert bool(why) == (kind == "tiles")


def test_kind_for_sizes_scales_the_canvas_and_keeps_at_least_one_patch():
    assert kinds.kind_for_sizes([(200, 520)], 64, scale=0.5)[1] == 320
    assert kinds.kind_for_sizes([(20, 50)], 64)[1] == 64
    assert kinds.kind_for_sizes([(200, 520)], 128)[1] == 640


def test_infer_kind_chooses_tiles_for_non_square_images_and_respects_what_is_given(tmp_path):
    root = _write_train_images(tmp_path, [(200, 520)] * 3)
    cfg = Config(category="parts", data_dir=str(root))
    chosen, note = kinds.infer_kind(cfg)
    assert (chosen.kind, chosen.image_size) == ("tiles", 576)
    assert "--kind tiles" in note and "are elongated (e.g. 520x200 px, 2.6:1)" in note and "--kind object" in note
    resolved = chosen.resolved()
    assert resolved.image_score == "map_max" and resolved.patch_size == 64 and resolved.select == "final"
    # a kind or a canvas given wins; MVTec AD names and missing folders are left alone
    assert kinds.infer_kind(Config(category="parts", data_dir=str(root), kind="object")) == (
        Config(category="parts", data_dir=str(root), kind="object"), None)
    for geometry in ({"image_size": 1024}, {"patch_size": 128}):  # an explicit geometry: no guess
        assert kinds.infer_kind(Config(category="parts", data_dir=str(root), **geometry))[1] is None
    assert kinds.infer_kind(Config(category="bottle", data_dir=str(root)))[1] is None
    assert kinds.infer_kind(Config(category="nothing_here", data_dir=str(root)))[1] is None


def test_train_cli_chooses_tiles_for_an_unknown_folder_of_strips(tmp_path):
    from cbigan.cli.train import parse_args

    root = _write_train_images(tmp_path, [(100, 300)] * 2)
    cfg, args = parse_args(["--category", "parts", "--data-dir", str(root), "--preset", "fast"])
    assert (cfg.kind, cfg.image_size, cfg.image_score) == ("tiles", 320, "map_max") and "--kind tiles" in args.kind_note
    cfg, args = parse_args(["--category", "parts", "--data-dir", str(root), "--kind", "object"])
    assert (cfg.kind, cfg.image_size, args.kind_note) == ("object", 128, None)


def test_tiles_score_by_the_map_unless_told_otherwise():
    assert Config(kind="tiles").resolved().image_score == "map_max"
    assert Config(kind="tiles", image_score="paper").resolved().image_score == "paper"
    assert Config(category="bottle").resolved().image_score == "paper"
    assert apply_preset(Config(category="bottle"), "fast").resolved().image_score == "map_max"


def test_explicit_tiles_take_the_largest_images_side_as_canvas(tmp_path):
    root = _write_train_images(tmp_path, [(100, 300)] * 2)
    cfg, note = kinds.infer_kind(Config(category="parts", data_dir=str(root), kind="tiles"))
    assert cfg.image_size == 320 and "320 px canvas" in note and "--image-size" in note
    assert kinds.infer_kind(Config(category="parts", data_dir=str(root), kind="tiles", image_size=512)) == (
        Config(category="parts", data_dir=str(root), kind="tiles", image_size=512), None)
    # an MVTec AD name too: the canvas follows the images, not the kind's fixed 512
    bottle = _write_train_images(tmp_path / "b", [(256, 256)] * 2)
    (bottle / "parts").rename(bottle / "bottle")
    assert kinds.infer_kind(Config(category="bottle", data_dir=str(bottle), kind="tiles"))[0].image_size == 256


def test_the_note_says_when_the_largest_images_are_scaled_down_to_fit(tmp_path):
    root = _write_train_images(tmp_path, [(300, 1400)] * 2)
    cfg, note = kinds.infer_kind(Config(category="parts", data_dir=str(root)))
    assert cfg.image_size == 1024 and "the largest scaled down to 0.73x to fit" in note
    assert kinds.tiles_canvas([(300, 1400)], 64) == (1024, pytest.approx(1024 / 1400))
    assert kinds.tiles_canvas([], 64) == (None, 1.0)


def test_infer_kind_reads_the_sizes_of_an_even_sample_of_a_large_folder(tmp_path, monkeypatch):
    root = _write_train_images(tmp_path, [(100, 300), (100, 900)] * 2)
    monkeypatch.setattr(kinds, "SIZES_READ", 2)  # every second image: the 100x300 ones
    assert kinds.infer_kind(Config(category="parts", data_dir=str(root)))[0].image_size == 320
    monkeypatch.setattr(kinds, "SIZES_READ", 2000)
    assert kinds.infer_kind(Config(category="parts", data_dir=str(root)))[0].image_size == 960
