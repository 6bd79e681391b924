"""The front door (issue 35): the ``cbigan`` command and its packaging, the shipped sample and the
README's first command, a quiet terminal, and reports that show a tiles run's images as they are."""

import base64
import io
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbigan.cli import CHATTER, QUIET_MARK, quiet_tensorflow
from cbigan.cli.main import COMMANDS, main

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample"
#: What TensorFlow prints at start-up on a machine without a GPU, that the terminal must not show.
NOISE = re.compile(r"cuInit|oneDNN|cpu_feature_guard|cudart_stub|absl::InitializeLog")


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", QUIET_MARK)}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


# ---------------------------------------------------------------------------------- the command
def test_cbigan_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in ("train", "evaluate", "predict", "export", "plots", "bench", "reproduce"):
        assert re.search(rf"^\s+{name}\b", out, re.M), (name, out)
    assert set(COMMANDS) >= {"train", "evaluate", "predict", "export", "plots", "bench", "reproduce"}


def test_a_subcommand_hands_the_rest_to_its_module(capsys):
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: python evaluate.py" in out and "--report" in out and "--verbose" in out
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "--preset" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["nonsense"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_python_m_cbigan_is_the_same_command():
    out = subprocess.run([sys.executable, "-m", "cbigan", "--help"], capture_output=True, text=True,
                         cwd=REPO, env=_env(), timeout=120)
    assert out.returncode == 0 and "reproduce" in out.stdout, out.stderr


def test_the_wheel_has_the_cbigan_command_and_the_requirements(tmp_path):
    """``pip install .`` metadata, from a wheel built without network (setuptools of this environment)."""
    pytest.importorskip("setuptools")
    src = tmp_path / "src"  # a copy: the build leaves build/ and *.egg-info behind
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", "runs", "data", "results", "studies",
                                                             "tests", "sample", "__pycache__", "build",
                                                             "*.egg-info"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "--disable-pip-version-check", "-q", "-w", str(tmp_path / "dist"), str(src)],
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0 and "No module named" in done.stderr:
        pytest.skip(f"cannot build a wheel here: {done.stderr.strip()[-200:]}")
    assert done.returncode == 0, done.stderr
    wheel = zipfile.ZipFile(next((tmp_path / "dist").glob("cbigan-*.whl")))
    names = wheel.namelist()
    entry = wheel.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "cbigan = cbigan.cli.main:main" in entry
    meta = wheel.read(next(n for n in names if n.endswith("METADATA"))).decode()
    wanted = [line.split("#")[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    for req in filter(None, wanted):
        name = re.split(r"[=<>!~\[ ]", req)[0]
        assert re.search(rf"^Requires-Dist: {re.escape(name)}\b", meta, re.M | re.I), name
    assert "cbigan/cli/main.py" in names and "cbigan/bench/__init__.py" in names


def test_licence_and_citation():
    assert "Apache License" in (REPO / "LICENSE").read_text()
    cff = (REPO / "CITATION.cff").read_text()
    assert "Combining GANs and AutoEncoders for Efficient Anomaly Detection" in cff and "Carrara" in cff


# ---------------------------------------------------------------------------------- a quiet terminal
def test_quiet_tensorflow_leaves_the_users_setting_and_verbose_alone(monkeypatch):
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    monkeypatch.delenv(QUIET_MARK, raising=False)
    assert not quiet_tensorflow([]) and os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL")
    assert not quiet_tensorflow(["run", "--verbose"]) and "TF_CPP_MIN_LOG_LEVEL" not in os.environ
    assert quiet_tensorflow(["run"]) and os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"
    assert quiet_tensorflow(["run"])  # its own setting, inherited by a child process: still quiet


@pytest.mark.slow
def test_a_command_that_starts_tensorflow_prints_none_of_its_chatter(tmp_path):
    """``python -m cbigan.export`` imports TensorFlow before its command line runs; the error it then
    prints is ours, and nothing of TensorFlow's start-up (CUDA stub, cuInit, CPU instructions)."""
    missing = tmp_path / "no_such_run"
    out = subprocess.run([sys.executable, "-m", "cbigan.export", str(missing)], capture_output=True,
                         text=True, cwd=tmp_path, env=_env(), timeout=300)
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
    assert not NOISE.search(out.stderr), out.stderr
    assert str(missing) in out.stderr + out.stdout
    assert all(isinstance(c, str) and c for c in CHATTER)


# ---------------------------------------------------------------------------------- tiles in the report
def _jpeg_sizes(page: str) -> list:
    return [Image.open(io.BytesIO(base64.b64decode(b))).size
            for b in re.findall(r'src="data:image/jpeg;base64,([^"]+)"', page)]


@pytest.mark.slow
def test_the_report_of_a_non_square_tiles_run_shows_each_image_at_its_aspect_ratio(tmp_path, capsys):
    """200x520 strips on a 256 px tiles canvas (scaled to 98x256, the rest mirrored): every thumbnail and
    map overlay is 96x37, the strip's shape, not the square canvas."""
    from synthetic import make_untrained_run
    from test_tiles import make_strips

    from cbigan.cli import evaluate
    from cbigan.reporting.report import own_part, thumb_size

    make_strips(tmp_path / "data", n_train=4, n_good=2, n_defect=2)
    run = make_untrained_run(tmp_path / "data", tmp_path / "runs", "strips", kind="tiles", image_size=256,
                             patch_size=64, width=1, latent_dim=8, batch_size=4)["run"]
    assert evaluate.main([str(run), "--report", "--quiet"]) == 0
    page = (run / "report.html").read_text()
    sizes = _jpeg_sizes(page)
    assert len(sizes) == 2 * 4, sizes  # a thumbnail and an overlay per test image
    assert set(sizes) == {thumb_size(98, 256)} == {(96, 37)}, sizes
    assert "image score: map_max, the anomaly map&#x27;s maximum" in page  # which rule made the score
    # own_part: the canvas cut to the region, a map at another resolution cut alike
    canvas, amap = np.zeros((256, 256, 3), np.uint8), np.zeros((128, 128), np.float32)
    image, small = own_part(canvas, (98, 256), amap)
    assert image.shape == (98, 256, 3) and small.shape == (49, 128)
    assert own_part(canvas, (256, 256), amap)[1] is amap and own_part(canvas, None)[0] is canvas


# ---------------------------------------------------------------------------------- the sample and the first command
def test_the_sample_is_small_real_and_licensed():
    files = [p for p in SAMPLE.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 10 * 2**20
    bottle = SAMPLE / "bottle"
    assert len(list((bottle / "train/good").glob("*.png"))) >= 60
    types = sorted(p.name for p in (bottle / "test").iterdir())
    assert types == ["broken_large", "broken_small", "contamination", "good"]
    assert "Attribution-NonCommercial-ShareAlike 4.0" in (SAMPLE / "LICENSE.txt").read_text()
    readme = (SAMPLE / "README.md").read_text()
    assert "Bergmann" in readme and "CVPR 2019" in readme.replace("(CVPR), 2019", "CVPR 2019")


def first_command() -> list:
    """The README's first command, as it is written there (after its install step)."""
    text = (REPO / "README.md").read_text()
    line = next(ln for ln in text.splitlines() if "cbigan train" in ln and "--data-dir sample" in ln)
    command = line.split("&&")[-1].split("#")[0].split()
    assert command[:2] == ["cbigan", "train"], line
    return command


@pytest.mark.slow
def test_the_readmes_first_command_trains_evaluates_and_writes_the_report(tmp_path):
    """The README's first command on the shipped sample, with a tiny budget, from another folder: it
    trains, evaluates, writes report.html with every test image and says where it is, and the terminal
    shows none of TensorFlow's start-up chatter."""
    args = first_command()[2:]
    at = args.index("--minutes")
    args[at + 1] = "0.2"
    args[args.index("--data-dir") + 1] = str(SAMPLE)
    out = subprocess.run([sys.executable, "-m", "cbigan", "train", *args, "--output-dir", str(tmp_path / "runs"),
                          "--no-export", "--quiet"], capture_output=True, text=True, cwd=tmp_path, env=_env(),
                         timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "for 0.2 min (time budget)" in out.stdout and "would take about" not in out.stdout
    assert not NOISE.search(out.stderr + out.stdout), out.stderr
    wrote = re.search(r"^wrote (\S+report\.html)", out.stdout, re.M)
    assert wrote, out.stdout[-2000:]
    page = Path(wrote.group(1))
    assert page.is_file() and page.is_relative_to(tmp_path)
    n_test = sum(1 for _ in (SAMPLE / "bottle/test").glob("*/*.png"))
    text = page.read_text()
    assert text.count('<tr class="image-row') == n_test
    assert len(_jpeg_sizes(text)) == 2 * n_test
    from test_report import find_browser

    browser = find_browser()
    if browser is not None:  # .ci/run installs Chromium where it can
        dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                              f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.resolve().as_uri()],
                             check=True, capture_output=True, text=True, timeout=120).stdout
        assert dom.count('<tr class="image-row') == n_test
