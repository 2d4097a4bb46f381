#!/usr/bin/env python3
"""Checks that a screenshot of amphi bench's HTML report shows charts.

A headless browser writes a PNG whether or not the page rendered, so the
screenshot check needs to look at the pixels: a blank or text-only page
must fail. Python's standard library has zlib but no image decoder, and
the test hosts have no PIL, so this holds a minimal PNG decoder for what
chromium writes (8-bit RGB or RGBA, not interlaced).

The checks, each against a threshold that can be changed by option:
  content   fraction of pixels that differ from the background (the most
            common color): a blank page has none.
  colors    distinct colors in the image: text alone gives a few shades of
            gray, charts add their fills and anti-aliased edges.
  chart     distinct chromatic colors (channel spread >= 64, binned to 3
            bits per channel) each covering a minimum area: the charts'
            series colors; gray text and rules do not count.
  blocks    separate vertical runs of content rows (split by background
            gaps of at least GAP rows): headings, charts and tables.

Usage: png-check.py [options] IMAGE.png
       png-check.py --self-test
Exit status: 0 all checks passed, 1 a check failed, 2 bad usage or an
unreadable or unsupported PNG.
"""

import argparse
import struct
import sys
import zlib
from collections import Counter

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {2: 3, 6: 4}  # PNG color type -> bytes per pixel at depth 8


class PngError(Exception):
    pass


def paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def add_bytes(x, y):
    """Bytewise (x + y) mod 256 on whole rows at once (the Up filter).

    Adds the low 7 bits of every byte as one big integer, which cannot
    carry into the next byte, then sets each top bit by xor: per-byte
    Python loops would make a 1280x4000 screenshot take seconds.
    """
    n = len(x)
    low, top = int.from_bytes(b"\x7f" * n, "big"), int.from_bytes(b"\x80" * n, "big")
    a, b = int.from_bytes(x, "big"), int.from_bytes(y, "big")
    return (((a & low) + (b & low)) ^ ((a ^ b) & top)).to_bytes(n, "big")


def unfilter(ftype, line, prior, bpp):
    """Undoes one row's filter (PNG spec, section 9)."""
    if ftype == 0:
        return bytes(line)
    if ftype == 2:
        return add_bytes(line, prior)
    out = bytearray(line)
    n = len(out)
    if ftype == 1:
        for i in range(bpp, n):
            out[i] = (out[i] + out[i - bpp]) & 0xFF
    elif ftype == 3:
        for i in range(n):
            left = out[i - bpp] if i >= bpp else 0
            out[i] = (out[i] + ((left + prior[i]) >> 1)) & 0xFF
    elif ftype == 4:
        for i in range(n):
            if i >= bpp:
                out[i] = (out[i] + paeth(out[i - bpp], prior[i], prior[i - bpp])) & 0xFF
            else:
                out[i] = (out[i] + prior[i]) & 0xFF
    else:
        raise PngError(f"unknown filter type {ftype}")
    return bytes(out)


def decode(data):
    """Returns (width, height, rows); each row is width*3 bytes of RGB."""
    if not data.startswith(SIGNATURE):
        raise PngError("not a PNG file (bad signature)")
    pos, header, idat = len(SIGNATURE), None, []
    while pos + 12 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        ctype = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length] or b"\0\0\0\0")
        if len(body) != length or zlib.crc32(ctype + body) != crc:
            raise PngError(f"chunk {ctype!r} at byte {pos} is truncated or corrupt")
        pos += 12 + length
        if ctype == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif ctype == b"IDAT":
            idat.append(body)
        elif ctype == b"IEND":
            break
    if header is None or not idat:
        raise PngError("no IHDR or no IDAT chunk")
    width, height, depth, ctype, _, _, interlace = header
    if depth != 8 or ctype not in CHANNELS or interlace != 0:
        raise PngError(
            f"unsupported PNG (bit depth {depth}, color type {ctype}, interlace {interlace}):"
            " only 8-bit RGB or RGBA, not interlaced"
        )
    bpp = CHANNELS[ctype]
    stride = width * bpp
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as e:
        raise PngError(f"image data does not inflate: {e}") from None
    if len(raw) != height * (stride + 1):
        raise PngError(f"image data holds {len(raw)} bytes, {width}x{height} needs {height * (stride + 1)}")
    rows, prior = [], bytes(stride)
    for y in range(height):
        start = y * (stride + 1)
        prior = unfilter(raw[start], raw[start + 1 : start + 1 + stride], prior, bpp)
        rows.append(prior)
    if bpp == 4:
        # Screenshots are opaque: drop alpha and compare colors as RGB.
        rows = [strip_alpha(r) for r in rows]
    return width, height, rows


def strip_alpha(row):
    rgb = bytearray(len(row) // 4 * 3)
    for c in range(3):
        rgb[c::3] = row[c::4]
    return bytes(rgb)


def measure(width, height, rows, gap):
    """The figures the checks compare, from decoded RGB rows."""
    # Identical rows (page background, long chart bars) are counted once.
    row_counts = Counter(rows)
    pixels = Counter()
    for row, times in row_counts.items():
        for color, n in Counter(row[i : i + 3] for i in range(0, len(row), 3)).items():
            pixels[color] += n * times
    total = width * height
    background, bg_count = pixels.most_common(1)[0]
    chart_bins = Counter()
    for (r, g, b), n in pixels.items():
        if max(r, g, b) - min(r, g, b) >= 64:
            chart_bins[(r >> 5, g >> 5, b >> 5)] += n
    blank_row = background * width
    blocks, run_gap = 0, gap  # a first content row starts a block
    for row in rows:
        if row == blank_row:
            run_gap += 1
        else:
            if run_gap >= gap:
                blocks += 1
            run_gap = 0
    return {
        "pixels": total,
        "background": "#%02x%02x%02x" % tuple(background),
        "content": (total - bg_count) / total,
        "colors": len(pixels),
        "chart_bins": chart_bins,
        "blocks": blocks,
    }


def check(figures, args):
    """Prints each check and its figure; returns the failures."""
    min_area = args.chart_area * figures["pixels"]
    chart = sum(1 for n in figures["chart_bins"].values() if n >= min_area)
    checks = [
        ("content", figures["content"], args.min_content,
         f"{figures['content']:.2%} of pixels differ from the background {figures['background']}"
         f" (need >= {args.min_content:.2%})"),
        ("colors", figures["colors"], args.min_colors,
         f"{figures['colors']} distinct colors (need >= {args.min_colors})"),
        ("chart", chart, args.min_chart_colors,
         f"{chart} chromatic colors covering >= {args.chart_area:.2%} each (need >= {args.min_chart_colors})"),
        ("blocks", figures["blocks"], args.min_blocks,
         f"{figures['blocks']} blocks of content separated by >= {args.gap} blank rows (need >= {args.min_blocks})"),
    ]
    failed = []
    for name, value, minimum, text in checks:
        ok = value >= minimum
        print(f"png-check: {'ok  ' if ok else 'FAIL'} {name}: {text}")
        if not ok:
            failed.append(name)
    return failed


def parser():
    p = argparse.ArgumentParser(description="Checks a report screenshot is not blank and shows charts.")
    p.add_argument("image", nargs="?")
    p.add_argument("--min-content", type=float, default=0.005, help="fraction of non-background pixels")
    p.add_argument("--min-colors", type=int, default=32, help="distinct colors")
    p.add_argument("--min-chart-colors", type=int, default=2, help="chromatic colors with --chart-area each")
    p.add_argument("--chart-area", type=float, default=0.0002, help="fraction of pixels a chart color covers")
    p.add_argument("--min-blocks", type=int, default=3, help="separate vertical blocks of content")
    p.add_argument("--gap", type=int, default=12, help="blank rows that separate two blocks")
    p.add_argument("--self-test", action="store_true", help="check the decoder and the checks, then exit")
    return p


# --- self-test: an encoder for synthetic images, every filter type -------


def encode(width, height, rows, bpp, filters):
    """A PNG of the given rows, row y filtered with filters[y % len]."""
    ctype = {3: 2, 4: 6}[bpp]
    out, prior = bytearray(), bytes(width * bpp)
    for y, row in enumerate(rows):
        f = filters[y % len(filters)]
        line = bytearray(row)
        for i in range(len(row)):
            left = row[i - bpp] if i >= bpp else 0
            up_left = prior[i - bpp] if i >= bpp else 0
            predictor = [0, left, prior[i], (left + prior[i]) >> 1, paeth(left, prior[i], up_left)][f]
            line[i] = (row[i] - predictor) & 0xFF
        out += bytes([f]) + line
        prior = row

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, ctype, 0, 0, 0)
    data = zlib.compress(bytes(out))
    # Two IDAT chunks: decoders must join them.
    return SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data[:7]) + chunk(b"IDAT", data[7:]) + chunk(b"IEND", b"")


def synthetic(width, height, charts):
    """White rows; with charts, a gray text-like line and colored bars."""
    rows = []
    for y in range(height):
        row = bytearray(b"\xff" * width * 3)
        if charts and y % 40 < 10:
            for x in range(width):
                if x % 7 < 3:
                    shade = (x * 37 + y * 11) % 200
                    row[3 * x : 3 * x + 3] = bytes([shade, shade, shade])
        if charts and y % 40 >= 20 and y % 40 < 34:
            for x in range(10, width // 2):
                row[3 * x : 3 * x + 3] = b"\x1f\x77\xb4" if (y // 40) % 2 else b"\xff\x7f\x0e"
        rows.append(bytes(row))
    return rows


def self_test():
    problems = []
    width, height = 64, 160
    for charts in (False, True):
        rows = synthetic(width, height, charts)
        for bpp in (3, 4):
            src = rows if bpp == 3 else [bytes(b for i in range(0, len(r), 3) for b in r[i : i + 3] + b"\xff") for r in rows]
            png = encode(width, height, src, bpp, [0, 1, 2, 3, 4])
            if decode(png) != (width, height, rows):
                problems.append(f"decode of a {bpp}-byte-pixel image with all five filters differs")
    for bad, want in [(b"GIF89a", "signature"), (encode(2, 2, [b"\0" * 6] * 2, 3, [0])[:-20], "truncated")]:
        try:
            decode(bad)
            problems.append(f"a bad PNG ({want}) was accepted")
        except PngError as e:
            if want not in str(e):
                problems.append(f"a bad PNG ({want}) gave: {e}")
    args = parser().parse_args(["--min-colors", "8", "--gap", "4"])
    print("png-check: self-test: a blank image must fail every check")
    if check(measure(width, height, synthetic(width, height, False), 4), args) != ["content", "colors", "chart", "blocks"]:
        problems.append("a blank image did not fail every check")
    print("png-check: self-test: an image with text and colored bars must pass")
    if check(measure(width, height, synthetic(width, height, True), 4), args):
        problems.append("an image with text and two bar colors failed")
    for p in problems:
        print(f"png-check: self-test: {p}", file=sys.stderr)
    print(f"png-check: self-test: {'FAILED' if problems else 'passed'}")
    return 1 if problems else 0


def main():
    args = parser().parse_args()
    if args.self_test:
        return self_test()
    if not args.image:
        parser().error("IMAGE.png is required")
    try:
        with open(args.image, "rb") as f:
            width, height, rows = decode(f.read())
    except (OSError, PngError) as e:
        print(f"png-check: {args.image}: {e}", file=sys.stderr)
        return 2
    print(f"png-check: {args.image}: {width}x{height}")
    failed = check(measure(width, height, rows, args.gap), args)
    if failed:
        print(f"png-check: {args.image} does not look like a rendered report: {', '.join(failed)} failed", file=sys.stderr)
        return 1
    print(f"png-check: {args.image}: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
