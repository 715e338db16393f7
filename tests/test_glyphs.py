"""`latentdiff glyphs`: the default glyph set, captions from Unicode names, a deterministic imagefolder that training
reads, where the images came from, and one-line errors."""

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from latentdiff.cli import main
from latentdiff.data.glyphs import DEFAULT_CHARACTERS, cap_height, default_fonts, glyph_set, render_glyph, write_glyphs


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_default_set_captions_every_distinct_glyph_once():
    glyphs = glyph_set(size=16)
    captions = [g.caption for g in glyphs]
    assert 600 < len(glyphs) < 4 * len(DEFAULT_CHARACTERS)
    assert len(set(captions)) == len(captions)
    assert len({g.image.tobytes() for g in glyphs}) == len(glyphs)  # no two images alike
    assert {"latin capital letter a, bold serif", "greek small letter alpha, sans", "digit seven, serif",
            "rightwards arrow, bold sans", "cyrillic capital letter zhe, sans"} <= set(captions)
    # Greek capital alpha is drawn as Latin A in DejaVu: kept once, under the earlier name
    assert "greek capital letter alpha, sans" not in captions
    assert {g.font.name for g in glyphs} == {"DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf",
                                             "DejaVuSerif-Bold.ttf"}
    image = glyphs[0].image
    assert image.mode == "RGB" and image.size == (16, 16)
    assert set(np.unique(np.asarray(image))) >= {0, 255}  # black ink on white


def test_glyphs_are_centred_in_a_margin_and_keep_their_relative_size():
    from PIL import ImageFont

    font = ImageFont.truetype(str(default_fonts()[0]), 256)
    reference = cap_height(font)
    big, small = (np.asarray(render_glyph(font, c, 64, reference)) > 0 for c in "Cc")
    for mask in (big, small):
        rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
        assert rows.min() >= 8 and rows.max() < 56 and cols.min() >= 8 and cols.max() < 56  # margin: 64 // 8
        assert abs((rows.min() + rows.max()) / 2 - 31.5) <= 1 and abs((cols.min() + cols.max()) / 2 - 31.5) <= 1
    assert big.any(1).sum() == 48 and small.any(1).sum() < 40  # "C" fills the height, "c" stays smaller
    assert render_glyph(font, " ", 64, reference) is None  # a blank glyph is skipped


def test_write_is_deterministic_and_records_the_source(tmp_path):
    a = write_glyphs(tmp_path / "a", size=16, max_images=8, seed=3)
    b = write_glyphs(tmp_path / "b", size=16, max_images=8, seed=3)
    assert files(a) == files(b)  # byte-identical
    rows = [json.loads(line) for line in (a / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 8
    for row in rows:
        assert {"file_name", "text", "char", "codepoint", "font", "style"} <= set(row)
        assert row["text"].startswith(row["name"] + ", ")
        with Image.open(a / row["file_name"]) as image:
            assert image.mode == "RGB" and image.size == (16, 16)
    readme = (a / "README.txt").read_text()
    assert "DejaVuSans.ttf" in readme and "Bitstream Vera" in readme and "LICENSE_DEJAVU" in readme
    assert "latentdiff glyphs --out DIR --size 16 --seed 3 --max-images 8" in readme
    assert (a / "LICENSE_DEJAVU").read_bytes().startswith(b"Fonts are (c) Bitstream")
    other = write_glyphs(tmp_path / "c", size=16, max_images=8, seed=4)
    assert (other / "metadata.jsonl").read_bytes() != (a / "metadata.jsonl").read_bytes()  # the seed picks


def test_train_text_to_image_reads_the_folder(tmp_path):
    from latentdiff.data.dataset import build_dataloader
    from latentdiff.training.config import parse_config
    from latentdiff.training.train_text_to_image import TextToImageConfig, data_config

    out = write_glyphs(tmp_path / "glyphs", size=16, max_images=8)
    captions = {json.loads(line)["text"] for line in (out / "metadata.jsonl").read_text().splitlines()}
    base = Path(__file__).resolve().parents[1] / "assets" / "shapes-tiny"
    cfg = parse_config(TextToImageConfig, ["--train-data", str(out), "--resolution", "16", "--pretrained", str(base),
                                           "--output-dir", str(tmp_path / "run")])
    batch = next(iter(build_dataloader(data_config(cfg), batch_size=4)))
    assert tuple(batch["pixel_values"].shape) == (4, 3, 16, 16) and set(batch["captions"]) <= captions
    assert batch["pixel_values"].min() == -1 and batch["pixel_values"].max() == 1  # white paper, black ink
    # and the `datasets` imagefolder builder reads it too (README.txt and the licence are not images)
    import datasets

    loaded = datasets.load_dataset("imagefolder", data_dir=str(out), split="train", cache_dir=str(tmp_path / "hf"))
    assert len(loaded) == 8 and set(loaded["text"]) == captions


def test_font_flag_and_styles(tmp_path, capsys):
    mono = default_fonts()[0].with_name("DejaVuSansMono-Bold.ttf")
    assert main(["glyphs", "--out", str(tmp_path / "m"), "--font", str(mono), "--size", "16", "--max-images",
                 "5"]) == 0
    assert "wrote 5 glyph images" in capsys.readouterr().out
    rows = [json.loads(line) for line in (tmp_path / "m" / "metadata.jsonl").read_text().splitlines()]
    assert all(row["text"].endswith(", bold sans mono") for row in rows)
    assert "--font" in (tmp_path / "m" / "README.txt").read_text()


def _one_line_error(argv, capsys, message):
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err, err


def test_bad_input_is_one_line_naming_what_to_change(tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "out")
    _one_line_error(["glyphs", "--out", out, "--font", str(tmp_path / "nope.ttf")], capsys, "--font")
    (tmp_path / "not-a-font.ttf").write_text("hello")
    _one_line_error(["glyphs", "--out", out, "--font", str(tmp_path / "not-a-font.ttf")], capsys,
                    "FreeType cannot read it")
    _one_line_error(["glyphs", "--out", out, "--size", "4"], capsys, "--size must be")
    _one_line_error(["glyphs", "--out", out, "--max-images", "0"], capsys, "--max-images must be >= 1")
    sans = default_fonts()[0]
    shutil.copy(sans, tmp_path / "copy.ttf")
    _one_line_error(["glyphs", "--out", out, "--font", str(sans), str(tmp_path / "copy.ttf")], capsys,
                    "both caption as 'sans'")
    _one_line_error(["glyphs", "--out", out, "--font", str(sans), "--font", str(sans)], capsys, "given twice")
    assert not Path(out).exists()  # nothing written on a refusal
    Path(out).mkdir()
    (Path(out) / "x").write_text("x")
    _one_line_error(["glyphs", "--out", out, "--size", "16"], capsys, "is not empty; choose a new or empty folder")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else
                        find_spec(name, *a))
    _one_line_error(["glyphs", "--out", str(tmp_path / "new")], capsys, "needs matplotlib")


@pytest.mark.parametrize("argv", [["glyphs", "--help"], ["bench", "fine-tune", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0 and "--out" in capsys.readouterr().out


def test_the_command_imports_no_torch(tmp_path):
    code = ("import sys; from latentdiff.cli import main; main(sys.argv[1:]); "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code, "glyphs", "--out", str(tmp_path / "g"), "--size", "16",
                             "--max-images", "2"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
