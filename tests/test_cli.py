import re
import subprocess
import sys

import pytest
from PIL import Image

from latentdiff import __version__
from latentdiff.cli import main
from latentdiff.images import read_parameters


def test_generate_one_image_with_parameters(tmp_path, capsys):
    out = tmp_path / "x.png"
    assert main(["generate", "a red circle", "--model", "preset:tiny", "--steps", "2", "--seed", "7", "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    with Image.open(out) as image:
        image.verify()
    with Image.open(out) as image:
        assert image.size == (16, 16) and image.mode == "RGB"
    params = read_parameters(out)
    assert params["prompt"] == "a red circle" and params["seed"] == 7 and params["steps"] == 2
    assert params["model"].startswith("preset:tiny")


def test_generate_several_images_and_a_grid(tmp_path, capsys):
    out = tmp_path / "shapes.png"
    code = main(["generate", "two blue squares", "--model", "preset:tiny", "--steps", "2", "-n", "3",
                 "--sampler", "euler", "--height", "32", "--width", "24", "-o", str(out)])
    assert code == 0
    printed = capsys.readouterr().out.split()
    expected = [str(tmp_path / f"shapes-{i}.png") for i in range(3)] + [str(tmp_path / "shapes-grid.png")]
    assert printed == expected
    for path in expected[:3]:
        assert Image.open(path).size == (24, 32)
    assert read_parameters(expected[1])["seed"] == 1
    # image i of a batch is image 0 of a single run with seed + i
    single = tmp_path / "single.png"
    main(["generate", "two blue squares", "--model", "preset:tiny", "--steps", "2", "--seed", "1",
          "--sampler", "euler", "--height", "32", "--width", "24", "-o", str(single)])
    a, b = Image.open(expected[1]), Image.open(single)
    assert max(abs(x - y) for x, y in zip(a.tobytes(), b.tobytes())) <= 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate", "x", "--sampler", "nope"], "invalid choice: 'nope'"),
        (["generate", "x", "--model", "/no/such/folder"], "not found"),
        (["generate", "x", "--model", "preset:tiny", "--height", "18"], "multiples of 4"),
        (["generate", "x", "--model", "preset:tiny", "--steps", "0"], "must be >= 1"),
        (["generate", "x", "--model", "preset:huge"], "Unknown preset"),
        (["generate", "x", "--model", "preset:tiny", "-o", "x.jpg"], ".png"),
    ],
)
def test_bad_use_prints_one_line_and_fails(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1, err
    assert message in err and "Traceback" not in err


def test_console_script_version_and_help():
    version = subprocess.run([sys.executable, "-m", "latentdiff.cli", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.strip() == f"latentdiff {__version__}"
    for argv in (["--help"], ["generate", "--help"], ["bench", "--help"], ["bench", "generate", "--help"],
                 ["shapes", "--help"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 0


# `main(argv)` in a fresh interpreter, then the heavy modules it imported (a subcommand is imported only when used)
_IMPORTS_AFTER_MAIN = """
import sys
from latentdiff.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("imported:", ",".join(m for m in ("torch", "diffusers", "transformers", "accelerate") if m in sys.modules))
"""


def _main_in_fresh_process(*argv: str) -> tuple[str, list[str]]:
    result = subprocess.run([sys.executable, "-c", _IMPORTS_AFTER_MAIN, *argv], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    text, _, imported = result.stdout.rpartition("imported:")
    return text, [m for m in imported.strip().split(",") if m]


def test_top_level_help_lists_every_command_without_importing_torch():
    """`latentdiff --help` and `latentdiff bench --help` build no subcommand's options, so they stay fast."""
    from latentdiff.bench import BENCHES

    def listed(text: str) -> set[str]:  # the names argparse lists under COMMAND / BENCH
        return set(re.findall(r"^    (\S+)", text, re.M))

    text, imported = _main_in_fresh_process("--help")
    assert listed(text) == {"generate", "eval", "bench", "shapes", "glyphs", "info", "serve", "push", "export"}, text
    assert imported == []
    text, imported = _main_in_fresh_process("bench", "--help")
    assert listed(text) == {bench.name for bench in BENCHES}, text
    assert imported == []


def test_subcommand_help_shows_its_full_options():
    text, _ = _main_in_fresh_process("generate", "--help")
    assert "--sampler NAME" in text and "dpm++2m" in text and "--overwrite" in text
    text, _ = _main_in_fresh_process("bench", "time-to-image", "--help")
    assert "--samplers" in text and "--prompts" in text
    text, imported = _main_in_fresh_process("shapes", "--help")
    assert "--out OUT" in text and "torch" not in imported  # one subcommand's options import only its module


def test_readme_command_writes_a_64x64_png(tmp_path):
    """`latentdiff generate "a red circle" --height 64 --width 64 -o x.png`, as a user types it."""
    result = subprocess.run(
        ["latentdiff", "generate", "a red circle", "--height", "64", "--width", "64", "-o", "x.png"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "x.png"
    with Image.open(tmp_path / "x.png") as image:
        assert image.format == "PNG" and image.size == (64, 64)


def test_shapes_command_writes_an_imagefolder(tmp_path, capsys):
    out = tmp_path / "shapes"
    assert main(["shapes", "--out", str(out), "--n", "6", "--size", "32", "--seed", "3", "--no-progress"]) == 0
    lines = (out / "metadata.jsonl").read_text().splitlines()
    assert len(lines) == 6 and (out / "README.md").is_file()
    assert main(["shapes", "--out", str(out), "--n", "6", "--no-progress"]) == 1  # refuses to overwrite
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "overwrite" in err
