"""Small line-chart and scatter-plot renderers on PIL (no plotting library needed)."""
from PIL import Image, ImageDraw

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def line_chart(series, title, size=(520, 300), ylabel=""):
    """``series``: {name: [(x, y), ...]} -> PIL image with axes, ticks and a legend."""
    w, h = size
    left, right, top, bottom = 52, 130, 24, 30
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    pts = [p for s in series.values() for p in s]
    if not pts:
        d.text((10, 10), f"{title}: no data", fill="black")
        return img
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(0.0, min(ys)), max(ys) if max(ys) > min(0.0, min(ys)) else 1.0
    sx = lambda x: left + (x - x0) / (x1 - x0) * (w - left - right)
    sy = lambda y: h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom)
    d.rectangle((left, top, w - right, h - bottom), outline="black")
    for k in range(5):
        yv = y0 + (y1 - y0) * k / 4
        d.line((left - 3, sy(yv), left, sy(yv)), fill="black")
        d.text((4, sy(yv) - 6), f"{yv:.3g}", fill="black")
        xv = x0 + (x1 - x0) * k / 4
        d.line((sx(xv), h - bottom, sx(xv), h - bottom + 3), fill="black")
        d.text((sx(xv) - 8, h - bottom + 5), f"{xv:.0f}", fill="black")
    d.text((left, 5), title + (f" ({ylabel})" if ylabel else ""), fill="black")
    for i, (name, s) in enumerate(series.items()):
        c = PALETTE[i % len(PALETTE)]
        s = sorted(s)
        if len(s) > 1:
            d.line([(sx(x), sy(y)) for x, y in s], fill=c, width=2)
        for x, y in s:
            d.ellipse((sx(x) - 2, sy(y) - 2, sx(x) + 2, sy(y) + 2), fill=c)
        d.line((w - right + 8, top + 8 + 14 * i, w - right + 24, top + 8 + 14 * i), fill=c, width=3)
        d.text((w - right + 28, top + 2 + 14 * i), name, fill="black")
    return img


def stack(images, gap=6):
    out = Image.new("RGB", (max(i.width for i in images), sum(i.height + gap for i in images)), "white")
    y = 0
    for i in images:
        out.paste(i, (0, y))
        y += i.height + gap
    return out


def distinct_colors(n):
    """``n`` well-separated RGB colours (hues around the circle, two brightness levels)."""
    import colorsys
    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / max(n, 1), 0.85, 0.95 if i % 2 else 0.7))
            for i in range(n)]


def _marker(d, x, y, kind, color, r=4):
    if kind == "s":
        d.rectangle((x - r, y - r, x + r, y + r), fill=color, outline="black")
    elif kind == "^":
        d.polygon([(x, y - r - 1), (x - r, y + r), (x + r, y + r)], fill=color, outline="black")
    else:
        d.ellipse((x - r, y - r, x + r, y + r), fill=color, outline="black")


def scatter(points, colors, title, markers=None, legend=None, size=(560, 480)):
    """``points`` [(x, y)], one RGB colour (and marker: 'o', 's' or '^') per point -> PIL image.
    ``legend``: [(text, color, marker)] drawn at the right."""
    w, h = size
    left, right, top, bottom = 12, 130 if legend else 12, 24, 12
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    d.text((left, 5), title, fill="black")
    d.rectangle((left, top, w - right, h - bottom), outline="black")
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    sx = lambda x: left + 8 + (x - x0) / ((x1 - x0) or 1) * (w - left - right - 16)  # noqa: E731
    sy = lambda y: h - bottom - 8 - (y - y0) / ((y1 - y0) or 1) * (h - top - bottom - 16)  # noqa: E731
    for i, (x, y) in enumerate(points):
        _marker(d, sx(x), sy(y), markers[i] if markers else "o", colors[i])
    for i, (text, color, kind) in enumerate(legend or []):
        _marker(d, w - right + 14, top + 10 + 16 * i, kind, color)
        d.text((w - right + 24, top + 4 + 16 * i), text, fill="black")
    return img
