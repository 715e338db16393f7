"""Glyphs: a real captioned image set that nobody on the project drew, from the fonts matplotlib ships.

Each image is one character of one font, rendered with FreeType (Pillow's `ImageFont`), and captioned with the
character's Unicode name, lower-cased, and the font's style:

    "latin capital letter a, bold serif"      "greek small letter alpha, sans"      "rightwards arrow, serif"

The default fonts are the DejaVu fonts in matplotlib's `mpl-data/fonts/ttf` (Sans, Sans Bold, Serif, Serif Bold;
licence: `LICENSE_DEJAVU` beside them, copied into the output), and the default characters `DEFAULT_CHARACTERS`:
Latin and Cyrillic letters, digits, Greek letters, arrows, maths and a few other symbols. A character is skipped
for a font whose character map (matplotlib's `FT2Font.get_charmap`) lacks it, whose glyph draws nothing, or whose
image is the very image of an earlier character (Greek capital alpha and Cyrillic capital a are drawn as Latin
"A" in DejaVu): every image is different, so "the training image of a caption" is one picture.

Images are RGB, black ink on white (one colour scheme, so that a pixel distance between images measures shapes
only). The glyph's inked box is centred in `size` less a margin of size // 8 on each side, and scaled so that a
capital H of its font would fill the box's height: the glyphs of a font keep their relative sizes ("c" is smaller
than "C", a minus sign stays thin), and one that would not fit (a "W", an integral sign) is scaled down until it
does. The glyph is drawn at 4 x size (at least 64 px) and reduced with LANCZOS. `--seed` chooses which images
`--max-images` keeps (a seeded subset, written in the order of the full set). The same arguments give
byte-identical files, for the same Pillow, FreeType and matplotlib.

    write_glyphs("data/glyphs", size=64)          # DIR/images/<font>/uXXXX.png, metadata.jsonl, README.txt

The output is a Hugging Face imagefolder (`metadata.jsonl` rows with `file_name` and `text`), which training's
`--train-data DIR` and `datasets.load_dataset("imagefolder", data_dir=DIR)` read.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["DEFAULT_CHARACTERS", "DEFAULT_FONTS", "Glyph", "add_arguments", "default_fonts", "glyph_set",
           "cap_height", "render_glyph", "run", "write_glyphs"]


def _span(first: int, last: int) -> str:
    return "".join(chr(c) for c in range(first, last + 1))


# The characters tried in every font, in this order (the order of metadata.jsonl).
DEFAULT_CHARACTERS: str = (
    _span(0x41, 0x5A) + _span(0x61, 0x7A)  # Latin A-Z, a-z
    + _span(0x30, 0x39)  # digits
    + _span(0x391, 0x3A1) + _span(0x3A3, 0x3A9) + _span(0x3B1, 0x3C9)  # Greek capitals (no U+03A2) and small
    + _span(0x410, 0x44F)  # Cyrillic capitals and small
    + _span(0x2190, 0x2199) + "\u21d0\u21d2\u21d4"  # arrows, double arrows
    + "+\u2212\u00d7\u00f7=\u2260<>\u2264\u2265\u00b1\u221e\u2211\u220f\u222b\u221a\u2202\u2207\u2208\u2209"
      "\u2200\u2203\u2205\u2229\u222a\u2282\u2283\u2248\u2261\u221d\u2227\u2228\u00ac"  # maths
    + "&@#%\u00a7\u00b6\u00a9\u00ae?!$\u20ac\u00a3\u00a5"  # other symbols
    + "\u2660\u2663\u2665\u2666\u2605\u2606\u266a\u2713"  # card suits, stars, a note, a check mark
)
DEFAULT_FONTS: tuple[str, ...] = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf")
# Licence files matplotlib ships beside its fonts: the name of the licence each holds.
LICENCE_NAMES = {"LICENSE_DEJAVU": "the DejaVu fonts licence (Bitstream Vera Fonts licence; DejaVu changes in the "
                                   "public domain; Arev glyphs (c) Tavmjong Bah)",
                 "LICENSE_STIX": "the STIX fonts licence (SIL Open Font License)"}
INK, PAPER = (0, 0, 0), (255, 255, 255)
_UPRIGHT = {"book", "regular", "roman", "normal", "medium"}  # style names that add nothing to a caption


@dataclass(frozen=True)
class Glyph:
    char: str  # the character
    font: Path  # the font file
    style: str  # the font as a caption says it: "bold serif"
    image: Image.Image  # RGB, size x size

    @property
    def name(self) -> str:
        """The Unicode name, lower-cased: "latin capital letter a"."""
        return unicodedata.name(self.char).lower()

    @property
    def caption(self) -> str:
        return f"{self.name}, {self.style}"

    @property
    def file_name(self) -> str:
        """Where the image goes, relative to the dataset folder."""
        return f"images/{self.font.stem}/u{ord(self.char):04x}.png"


def _need_matplotlib() -> Path:
    """matplotlib's font folder, or a ValueError of one line saying how to get matplotlib."""
    if importlib.util.find_spec("matplotlib") is None:
        raise ValueError('latentdiff glyphs needs matplotlib (its DejaVu fonts and FreeType character maps): '
                         'pip install matplotlib (or pip install -e ".[train]").')
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def default_fonts() -> list[Path]:
    """The DejaVu fonts of DEFAULT_FONTS in matplotlib's mpl-data/fonts/ttf."""
    folder = _need_matplotlib()
    return [folder / name for name in DEFAULT_FONTS]


def _charmap(path: Path) -> set[int]:
    from matplotlib.ft2font import FT2Font

    try:
        return set(FT2Font(str(path)).get_charmap())
    except (OSError, RuntimeError, ValueError) as err:
        raise ValueError(f"--font {path}: FreeType cannot read its character map ({err}); pass a .ttf or .otf "
                         "file.") from None


def _style(font: ImageFont.FreeTypeFont) -> str:
    """A font's family and style for a caption: ("DejaVu Serif", "Bold") -> "bold serif"."""
    family, style = (name or "" for name in font.getname())
    words = family.lower().split()
    if words[:1] == ["dejavu"]:  # every default font is DejaVu: the caption names what differs
        words = words[1:]
    styles = [w for w in style.lower().split() if w not in _UPRIGHT]
    return " ".join(styles + words) or family.lower() or "font"


def _ink(font: ImageFont.FreeTypeFont, char: str) -> Image.Image | None:
    """The inked box of `char` drawn in `font` (L mode, 255 = ink), or None when it draws nothing."""
    left, top, right, bottom = font.getbbox(char)
    canvas = Image.new("L", (right - left + 4, bottom - top + 4), 0)
    ImageDraw.Draw(canvas).text((2 - left, 2 - top), char, font=font, fill=255)
    box = canvas.getbbox()
    return None if box is None else canvas.crop(box)


def cap_height(font: ImageFont.FreeTypeFont) -> int | None:
    """The inked height of "H" in `font` (in the pixels it is opened at), the height glyphs are scaled to."""
    ink = _ink(font, "H")
    return None if ink is None else ink.height


def render_glyph(font: ImageFont.FreeTypeFont, char: str, size: int,
                 reference: int | None = None) -> Image.Image | None:
    """`char` in `font` as an L-mode coverage mask of size x size (255 = ink), its inked box centred in a margin of
    size // 8; None when the glyph draws nothing.

    Scale: a glyph `reference` pixels tall (at the size `font` is opened at) fills the box's height, so that all
    glyphs of a font keep their relative sizes ("c" stays smaller than "C"); a glyph that would not fit is scaled
    down until it does. Without `reference`, every glyph is scaled to fit."""
    ink = _ink(font, char)
    if ink is None:
        return None
    inner = size - 2 * max(1, size // 8)
    scale = min(inner / max(ink.size), inner / reference if reference else float("inf"))
    w, h = max(1, round(ink.width * scale)), max(1, round(ink.height * scale))
    ink = ink.resize((w, h), Image.Resampling.LANCZOS)
    if ink.getbbox() is None:
        return None
    mask = Image.new("L", (size, size), 0)
    mask.paste(ink, ((size - w) // 2, (size - h) // 2))
    return mask


def _open_font(path: Path, size: int) -> ImageFont.FreeTypeFont:
    if not path.is_file():
        raise ValueError(f"--font {path}: no such file; pass a TrueType/OpenType font file (the defaults are "
                         f"{', '.join(DEFAULT_FONTS)} in matplotlib's mpl-data/fonts/ttf).")
    try:
        return ImageFont.truetype(str(path), max(64, 4 * size))
    except OSError as err:
        raise ValueError(f"--font {path}: FreeType cannot read it as a font ({err}); pass a .ttf or .otf file.") \
            from None


def _check(fonts: list[Path], size: int, max_images: int | None, seed: int) -> None:
    if not isinstance(size, int) or not 8 <= size <= 1024:
        raise ValueError(f"--size must be an int from 8 to 1024 pixels, got {size!r}.")
    if max_images is not None and (not isinstance(max_images, int) or max_images < 1):
        raise ValueError(f"--max-images must be >= 1, got {max_images!r} (leave it out for every glyph).")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"--seed must be an int >= 0, got {seed!r}.")
    if not fonts:
        raise ValueError("Give at least one --font.")
    seen = set()
    for path in fonts:
        if path.resolve() in seen:
            raise ValueError(f"--font {path} is given twice; give each font once.")
        seen.add(path.resolve())


def glyph_set(fonts: list[Path] | None = None, size: int = 64, max_images: int | None = None, seed: int = 0,
              characters: str = DEFAULT_CHARACTERS) -> list[Glyph]:
    """The glyphs `write_glyphs` writes: every font x character that the font has, draws and draws unlike any
    earlier one (fonts in order, then characters in order); a seeded subset of `max_images` of them, in order."""
    # 1. Check inputs
    _need_matplotlib()
    fonts = default_fonts() if not fonts else [Path(f) for f in fonts]
    _check(fonts, size, max_images, seed)
    opened = [_open_font(path, size) for path in fonts]
    styles = [_style(font) for font in opened]
    for i, style in enumerate(styles):
        if style in styles[:i]:
            raise ValueError(f"--font {fonts[i]} and --font {fonts[styles.index(style)]} both caption as "
                             f"{style!r}; give fonts of different families or styles.")
    # 2. Render every candidate; keep the ones that draw something new
    glyphs, seen = [], set()
    for path, font, style in zip(fonts, opened, styles):
        has, reference = _charmap(path), cap_height(font)
        count = len(glyphs)
        for char in characters:
            if ord(char) not in has or unicodedata.name(char, None) is None:
                continue
            mask = render_glyph(font, char, size, reference)
            if mask is None or mask.tobytes() in seen:
                continue
            seen.add(mask.tobytes())
            image = Image.new("RGB", (size, size), PAPER)
            image.paste(INK, (0, 0, size, size), mask)
            glyphs.append(Glyph(char, path, style, image))
        if len(glyphs) == count:
            raise ValueError(f"--font {path} draws none of the {len(characters)} characters latentdiff glyphs "
                             "renders (Latin, Greek, Cyrillic, digits, arrows, maths); pass a text font.")
    # 3. The seeded subset
    if max_images is not None and max_images < len(glyphs):
        keep = np.random.default_rng([seed, len(glyphs)]).choice(len(glyphs), size=max_images, replace=False)
        glyphs = [glyphs[i] for i in sorted(keep)]
    return glyphs


def _licence(font: Path) -> tuple[Path | None, str]:
    """The licence file matplotlib (or a font folder) keeps beside `font`, and the licence's name."""
    for candidate in sorted(font.parent.glob("LICEN[CS]E*")):
        tag = candidate.name.split("_", 1)[-1].split("-", 1)[-1].lower()
        if candidate.is_file() and font.stem.lower().startswith(tag):
            return candidate, LICENCE_NAMES.get(candidate.name, f"see {candidate.name}")
    return None, "not found beside the font: check the font's own terms before you publish images of it"


def _where(font: Path) -> str:
    """A font's location without this machine's folders: inside matplotlib, or the path as given."""
    try:
        import matplotlib

        return f"matplotlib {matplotlib.__version__} mpl-data/fonts/ttf/{font.relative_to(_need_matplotlib())}"
    except ValueError:
        return str(font)


def _readme(glyphs: list[Glyph], fonts: list[Path], size: int, max_images: int | None, seed: int,
            licences: dict[Path, tuple[Path | None, str]], given_fonts: bool) -> str:
    import PIL

    from latentdiff.version import __version__

    flags = [f"--size {size}", f"--seed {seed}"] + ([f"--max-images {max_images}"] if max_images else [])
    flags += [f"--font {f}" for f in fonts] if given_fonts else []
    lines = [
        f"Glyph images written by latentdiff {__version__}:",
        f"    latentdiff glyphs --out DIR {' '.join(flags)}",
        "",
        f"{len(glyphs)} images, {size}x{size} RGB PNG, black ink on white: one character of one font each, centred "
        "and scaled to fit.",
        f"Captions (metadata.jsonl, column 'text'): the character's Unicode name (Unicode "
        f"{unicodedata.unidata_version}), lower-cased, and the font's style.",
        f"Rendered with FreeType (Pillow {PIL.__version__}).",
        "",
        "Fonts (not made by latentdiff):",
    ]
    for font in fonts:
        n = sum(g.font == font for g in glyphs)
        file, name = licences[font]
        lines.append(f"    {font.name}: {n} images; from {_where(font)}")
        lines.append(f"        licence: {name}" + (f"; its text is in {file.name} beside this file" if file else ""))
    return "\n".join(lines) + "\n"


def write_glyphs(out_dir: str | Path, fonts: list[str | Path] | None = None, size: int = 64,
                 max_images: int | None = None, seed: int = 0) -> Path:
    """Write the glyph set (see the module doc) as a Hugging Face imagefolder:

        out_dir/images/<font stem>/uXXXX.png   one image per (font, character)
        out_dir/metadata.jsonl                 {"file_name", "text": caption, "char", "codepoint", "name", "font",
                                               "style"}
        out_dir/README.txt                     fonts, where they came from, their licence, the command
        out_dir/LICENSE_DEJAVU ...             the fonts' licence texts, copied

    `out_dir` must be new or empty. Raises ValueError with what to change for bad input.
    """
    # 1. Check inputs (all before anything is written)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder; choose a new folder.")
    if out.is_dir() and any(out.iterdir()):
        raise ValueError(f"--out {out} is not empty; choose a new or empty folder.")
    given_fonts = bool(fonts)
    font_list = [Path(f) for f in fonts] if fonts else default_fonts()
    glyphs = glyph_set(font_list, size=size, max_images=max_images, seed=seed)
    licences = {font: _licence(font) for font in font_list}

    # 2. Images and metadata
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "metadata.jsonl", "w", encoding="utf-8", newline="\n") as meta:
        for g in glyphs:
            path = out / g.file_name
            path.parent.mkdir(parents=True, exist_ok=True)
            g.image.save(path, format="PNG")
            row = {"file_name": g.file_name, "text": g.caption, "char": g.char, "codepoint": f"U+{ord(g.char):04X}",
                   "name": g.name, "font": g.font.name, "style": g.style}
            meta.write(json.dumps(row, ensure_ascii=False) + "\n")

    # 3. Where the images came from
    (out / "README.txt").write_text(_readme(glyphs, font_list, size, max_images, seed, licences, given_fonts),
                                    encoding="utf-8", newline="\n")
    for file, _ in licences.values():
        if file is not None and not (out / file.name).exists():
            shutil.copyfile(file, out / file.name)
    return out


# ---------------------------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the `latentdiff glyphs` options to `parser`."""
    parser.add_argument("--out", required=True, help="output folder (a Hugging Face imagefolder); must be new or empty")
    parser.add_argument("--font", action="extend", nargs="+", metavar="PATH",
                        help=".ttf/.otf font files (default: matplotlib's " + ", ".join(DEFAULT_FONTS)
                             + ")")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels, 8..1024 (default 64)")
    parser.add_argument("--max-images", type=int,
                        help="keep a seeded subset of this many images (default: every glyph)")
    parser.add_argument("--seed", type=int, default=0, help="chooses the --max-images subset (default 0)")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run `latentdiff glyphs` with parsed arguments; returns the exit status."""
    out = write_glyphs(args.out, fonts=args.font, size=args.size, max_images=args.max_images, seed=args.seed)
    count = sum(1 for _ in open(out / "metadata.jsonl", encoding="utf-8"))
    print(f"wrote {count} glyph images to {out} (fonts and licence: {out / 'README.txt'})")
    return 0


if __name__ == "__main__":  # python -m latentdiff.data.glyphs --out DIR
    raise SystemExit(run(add_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0])).parse_args()))
