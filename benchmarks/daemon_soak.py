"""Long-run stability of ``edgesight run``: ``python benchmarks/daemon_soak.py [--frames 20000]``.

Runs the daemon as a user would (a subprocess of the device venv's ``edgesight``) on a looping video with the
motion gate off and every event stage on (tracker, best snapshots on their disk budget, the durable spool, a
rotating JSONL sink), and samples ``/api/status`` and ``/proc/PID/stat`` every second until ``--frames`` frames
went through the events stage. Reports resident memory after warm-up (the first ``--warmup`` frames) and at
the end (target: grows by at most 10 MB), and the first tenth of the frames after warm-up against the last
tenth: wall FPS (target: within 5 %) and CPU seconds per frame (the same figure without the neighbours' noise
on a shared machine). The two tenths are whole loops of the video that start at the same frame of it, so that
both see the same scenes (the tracker's and the snapshots' work follow the number of people), and the first
starts after warm-up (start-up, the first inference and the first snapshots are not in it).

Other settings (an MQTT sink, say) can be added with ``--config`` (YAML lines put before the benchmark's own).
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devices.host import machine

REPO = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process, all threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def at(samples: list[dict], frames: int, key: str) -> float:
    """``key`` linearly interpolated at the moment ``frames`` frames were processed."""
    counts = [s["frames"] for s in samples]
    i = min(max(bisect.bisect_left(counts, frames), 1), len(samples) - 1)
    a, b = samples[i - 1], samples[i]
    share = (frames - a["frames"]) / max(b["frames"] - a["frames"], 1)
    return a[key] + share * (b[key] - a[key])


def tenths(frames: int, warmup: int, loop: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The first and the last span of about a tenth of the frames after ``warmup``: whole loops of a video of
    ``loop`` frames, each starting at the video's first frame (frame counts as processed, no frame dropped)."""
    span = max(1, (frames - warmup) // 10 // loop) * loop
    first = -(-warmup // loop) * loop
    end = frames // loop * loop
    if end - span < first + span:
        raise SystemExit(f"--frames {frames} is too few for two spans of {span} frames after {warmup} of warm-up")
    return (first, first + span), (end - span, end)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "runs/test-bundles/yolox-nano-tflite-int8")
    parser.add_argument("--video", type=Path,
                        default=Path(os.environ.get("EDGESIGHT_MIRROR", REPO.parent / "shared")) / "videos/vtest.avi")
    parser.add_argument("--frames", type=int, default=20_000)
    parser.add_argument("--warmup", type=int, default=1_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--config", type=Path, help="More daemon settings (YAML), e.g. sinks.")
    parser.add_argument("--edgesight", type=Path, default=Path(sys.executable).with_name("edgesight"))
    args = parser.parse_args()
    # The daemon reads its config from a temporary folder, where a relative path would mean something else.
    args.bundle, args.video = args.bundle.resolve(), args.video.resolve()
    capture = cv2.VideoCapture(str(args.video))
    args.loop_frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    capture.release()
    if args.loop_frames <= 0:  # checked before the run: the tenths are whole loops of the video
        sys.exit(f"--video {args.video}: OpenCV reads no frame count from it; give a video file it can read "
                 "(the soak compares whole loops of it)")

    work = Path(tempfile.mkdtemp(prefix="soak-"))
    extra = args.config.read_text() if args.config else ""
    config = work / "soak.yaml"
    config.write_text(f"{extra}\nbundle: {args.bundle}\nthreads: {args.threads}\n"
                      f"source: {{uri: {args.video}, loop: true}}\nmotion: {{enabled: false}}\n"
                      "http: {host: 127.0.0.1, port: 0}\nwatch_bundle: false\n"
                      f"events: {{spool: {work}/spool.sqlite, snapshots: {work}/snapshots, snapshots_max_mb: 20}}\n"
                      f"sinks: {{jsonl: {{path: {work}/events.jsonl, max_mb: 5, backups: 2}}}}\n")
    log = (work / "daemon.log").open("wb")
    proc = subprocess.Popen([str(args.edgesight), "run", "--config", str(config)], cwd=work, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        url = wait_url(work / "daemon.log", proc)
        samples = sample(proc.pid, url, args.frames)
        final = json.loads(urllib.request.urlopen(url + "/api/status", timeout=5).read())
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        log.close()
    report(args, samples, final, code, work)


def wait_url(log: Path, proc: subprocess.Popen) -> str:
    for _ in range(600):
        match = re.search(r"http: serving on (http://\S+)", log.read_text(errors="replace"))
        if match:
            return match.group(1)
        if proc.poll() is not None:
            raise SystemExit(f"the daemon exited:\n{log.read_text()}")
        time.sleep(0.1)
    raise SystemExit("the daemon did not start")


def sample(pid: int, url: str, frames: int) -> list[dict]:
    samples: list[dict] = []
    while not samples or samples[-1]["frames"] < frames:
        status = json.loads(urllib.request.urlopen(url + "/api/status", timeout=5).read())
        samples.append({"t": time.monotonic(), "frames": status["loop"]["processed"], "cpu": cpu_seconds(pid),
                        "rss": rss_mb(pid)})
        time.sleep(1.0)
    return samples


def report(args: argparse.Namespace, samples: list[dict], final: dict, code: int, work: Path) -> None:
    loop = args.loop_frames
    first, last = tenths(args.frames, args.warmup, loop)
    spans = {f"first tenth (frames {first[0]}-{first[1]})": first, f"last tenth (frames {last[0]}-{last[1]})": last}
    rows = {}
    for name, (a, b) in spans.items():
        seconds = at(samples, b, "t") - at(samples, a, "t")
        cpu = at(samples, b, "cpu") - at(samples, a, "cpu")
        rows[name] = ((b - a) / seconds, cpu / (b - a) * 1000)
    warm = at(samples, args.warmup, "rss")
    end = samples[-1]["rss"]
    peak = max(s["rss"] for s in samples if s["frames"] >= args.warmup)
    print(f"# soak: {args.bundle.name}, {args.video.name} looped, {samples[-1]['frames']} frames, "
          f"threads {args.threads}, motion gate off; {machine()}")
    print(f"# daemon exit code after SIGTERM: {code}; log and config in {work}")
    print("\n| frames | wall FPS | CPU ms/frame |\n|---|---:|---:|")
    for name, (fps, cpu) in rows.items():
        print(f"| {name} | {fps:.1f} | {cpu:.2f} |")
    (f0, c0), (f1, c1) = rows.values()
    print(f"| last / first | **{f1 / f0:.3f}** | **{c1 / c0:.3f}** |")
    print(f"(each: {(first[1] - first[0]) // loop} loops of the {loop}-frame video)")
    bounds = [args.warmup + (args.frames - args.warmup) * k // 10 for k in range(11)]
    print("wall FPS of each tenth after warm-up: " + ", ".join(
        f"{(b - a) / (at(samples, b, 't') - at(samples, a, 't')):.1f}" for a, b in itertools.pairwise(bounds)))
    print(f"\nresident memory: {warm:.1f} MB after {args.warmup} frames, {end:.1f} MB at the end "
          f"(**{end - warm:+.1f} MB**), peak after warm-up {peak:.1f} MB")
    marks = [args.warmup] + [args.frames * k // 10 for k in range(1, 11)]
    print("resident memory (MB) at " + ", ".join(f"{m}: {at(samples, m, 'rss'):.1f}" for m in marks))
    source, loop = final["source"], final["loop"]
    print(f"source: {source['frames']} frames read, {source['dropped']} dropped, {source['bad']} bad, "
          f"{source['stalls']} stalls; loop: {loop['detected']} detected, {loop['detector_stalls']} detector stalls; "
          f"events: {sum(row['count'] for row in final['events'])}; latency {json.dumps(final['latency'])}")
    if final.get("publisher"):
        print(f"publisher: {json.dumps(final['publisher'])}")


if __name__ == "__main__":
    main()
