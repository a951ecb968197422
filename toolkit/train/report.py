"""What ``edgesight train`` prints: the input size chosen and what it costs, and the gains per class on the user's
photos and on each bundled source, with a plain warning where the user's photos gained nothing."""

from __future__ import annotations


def summary_text(summary: dict) -> str:
    """The train summary (``summary.json`` of a run) as plain text."""
    size = summary["input_size"]
    chosen, native = f"{size['weights']}@{size['size']}", f"zero-shot@{size['native']}"
    table = size["candidates"]
    ms_native = table.get(native, {}).get("median_ms") or 0.0
    lines = [(f"input size {size['size']} ({size['weights']} weights), chosen on the validation photos; candidates "
             f"(mean AP over sources and classes, PyTorch ms per photo on this machine):")]
    for name, row in table.items():
        cost = f", {row['median_ms'] / ms_native:.2f}x the time of {native}" if ms_native else ""
        lost = "" if row.get("holds", True) else f", loses a class on some source against {native}"
        lines.append(f"  {'*' if name == chosen else ' '} {name}: mean AP {row['mean_ap']:.3f}, "
                     f"{row['median_ms']:.1f} ms{cost}{lost}")
    if size.get("note"):
        lines.append(f"  {size['note']}")
    if summary["your_photos"]:
        lines.append(f"your photos (their validation split), best.pt against the zero-shot model at {size['native']}:")
        lines += _rows(summary["your_photos"])
        lines += _warnings(summary["your_photos"])
    lines.append(f"bundled validation photos, by source, against the zero-shot model at {size['native']}:")
    lines += _rows(summary["bundled"])
    return "\n".join(lines)


def _rows(per_source: dict) -> list[str]:
    return [f"  {source} {cls}: {r['ap']:.3f} against {r['zero_shot']:.3f}, {r['gain']:+.3f} (noise ± "
            f"{r['noise']:.3f}, {r['boxes']} boxes in {r['photos']} photos)"
            for source, per in per_source.items() for cls, r in per.items()]


def _warnings(per_source: dict) -> list[str]:
    """A warning per class of the user's photos with no gain, a note where the gain is within the noise."""
    out = []
    for per in per_source.values():
        for cls, r in per.items():
            if r["gain"] <= 0:
                out.append(f"WARNING: no gain on your photos for {cls} ({r['gain']:+.3f} AP): best.pt is no better "
                           f"there than the zero-shot model. More labelled photos of {cls}, or a check of their boxes, "
                           "is what helps.")
            elif r["noise"] is not None and r["gain"] <= r["noise"]:
                out.append(f"note: the gain for {cls} on your photos ({r['gain']:+.3f}) is within the noise of "
                           f"{r['photos']} photos (± {r['noise']:.3f}).")
    return out
