"""Compare lmarc with the codecs people use, per modality, on the corpus's dev split.

    python benchmarks/run.py --quick            # a small dev sample, under 10 minutes
    python benchmarks/run.py                    # the whole dev split (hours at today's speed)
    python benchmarks/run.py --unseen           # files from Debian packages outside the corpus
    python benchmarks/run.py --kinds text       # rerun one modality, keep the others' last results

`--unseen` checks the thresholds on files no one on the team has seen and the model never trained
on: it downloads the Debian packages listed in UNSEEN with apt-get, unpacks them, and draws a fixed
pseudo-random sample (by a hash of each path) of their audio, images and text up to a byte budget.

The classic codecs compress each file on its own. lmarc, through its CLI, puts each modality's files
in one archive, as a user archives a folder: its chunks never share context across files, so this
changes its ratio only by the archive overhead it amortises, but it lets extraction step the chunks
of many files in one batch (per-file decoding of small files is bound by per-step latency). The
archive's header and index count, and every extracted file is compared with its original. Missing
command-line codecs are installed with apt-get (the runner says so).
Writes a markdown report (default docs/benchmarks.md) and a ratio-vs-speed plot next to it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from training.data import split_files  # noqa: E402

# tool -> (modalities, command template with {i} input and {o} output, apt package)
CODECS: dict[str, tuple[tuple[str, ...], str, str]] = {
    "gzip -9": (("text",), "gzip -9 -c {i} > {o}", "gzip"),
    "bzip2 -9": (("text",), "bzip2 -9 -c {i} > {o}", "bzip2"),
    "xz -9e": (("text", "audio", "image"), "xz -9e -c {i} > {o}", "xz-utils"),
    "zstd -19 --long": (("text",), "zstd -q -19 --long -c {i} > {o}", "zstd"),
    "brotli -q 11": (("text",), "brotli -q 11 -c {i} > {o}", "brotli"),
    "7z PPMd": (("text",), "7z a -bd -bso0 -m0=PPMd -mx=9 {o}.7z {i} && mv {o}.7z {o}", "p7zip-full"),
    "flac -8": (("audio",), "flac -s -8 --no-padding -f -o {o} {i}", "flac"),
    "optipng -o7": (("image",), "cp {i} {o}.png && optipng -quiet -o7 {o}.png && mv {o}.png {o}", "optipng"),
    "cwebp -lossless -z 9": (("image",), "cwebp -quiet -lossless -z 9 -exact {i} -o {o}", "webp"),
    "cjxl -d 0 -e 9": (("image",), "cjxl {i} {o} -d 0 -e 9 >/dev/null 2>&1", "libjxl-tools"),
}
# tool -> decompression command ({o} compressed input, {d} decoded output)
DECODE = {
    "gzip -9": "gzip -dc {o} > {d}", "bzip2 -9": "bzip2 -dc {o} > {d}", "xz -9e": "xz -dc {o} > {d}",
    "zstd -19 --long": "zstd -q -d --long=31 -c {o} > {d}", "brotli -q 11": "brotli -dc {o} > {d}",
    "7z PPMd": "7z e -so {o} > {d}", "flac -8": "flac -s -d -f -o {d} {o}",
    "cwebp -lossless -z 9": "dwebp -quiet {o} -o {d}", "cjxl -d 0 -e 9": "djxl {o} {d}.png >/dev/null 2>&1",
}
QUICK_BUDGET = {"text": 48_000, "image": 40_000, "audio": 48_000}
# modality -> (Debian package, glob inside it): sources outside ../shared/corpus
UNSEEN: dict[str, list[tuple[str, str]]] = {
    "text": [("bash-completion", "usr/share/bash-completion/completions/*"),
             ("debian-faq", "usr/share/doc/debian/FAQ/*.en.html")],
    "image": [("pingus-data", "usr/share/games/pingus/data/images/**/*.png"),
              ("tango-icon-theme", "usr/share/icons/Tango/32x32/**/*.png")],
    "audio": [("alsa-utils", "usr/share/sounds/alsa/*.wav"),
              ("lbreakout2-data", "usr/share/games/lbreakout2/sounds/*.wav"),
              ("pingus-data", "usr/share/games/pingus/data/sounds/*.wav")],
}
UNSEEN_BUDGET = 250_000  # bytes per modality
# the thresholds of the default-model issue: lmarc / reference codec, per modality
TARGETS = {"text": ("xz -9e", 0.80), "image": ("optipng -o7", 0.95), "audio": ("flac -8", 1.00)}


def ensure_tools() -> None:
    missing = sorted({pkg for name, (_, _, pkg) in CODECS.items() if shutil.which(name.split()[0]) is None})
    if missing and shutil.which("apt-get"):
        print(f"installing missing codecs with apt-get: {' '.join(missing)}", file=sys.stderr)
        subprocess.run("apt-get update -qq && apt-get install -y -qq " + " ".join(missing), shell=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


def modality(p: Path) -> str | None:
    if p.suffix.lower() in (".png", ".pbm", ".ppm", ".pgm", ".bmp"):
        return "image"
    if p.suffix.lower() == ".wav":
        return "audio"
    if "text" in p.parts and p.suffix.lower() not in (".xls",) and "LICENSE" not in p.name:
        return "text"
    return None


def pick(dev: list[Path], quick: bool, budget: int | None = None) -> dict[str, list[Path]]:
    files: dict[str, list[Path]] = {"text": [], "image": [], "audio": []}
    for p in dev:
        m = modality(p)
        if m:
            files[m].append(p)
    if quick:  # smallest-first round robin over folders, up to a byte budget per modality
        for m, lst in files.items():
            by_dir: dict[Path, list[Path]] = {}
            for p in sorted(lst, key=lambda q: q.stat().st_size):
                by_dir.setdefault(p.parent, []).append(p)
            chosen, total = [], 0
            cap = budget or QUICK_BUDGET[m]
            while any(by_dir.values()) and total < cap:
                for d in list(by_dir):
                    if by_dir[d] and total < cap:
                        p = by_dir[d].pop(0)
                        if total + p.stat().st_size <= cap * 1.5:
                            chosen.append(p)
                            total += p.stat().st_size
            files[m] = chosen
    return files


def unseen_files(root: Path, budget: int) -> tuple[dict[str, list[Path]], list[str]]:
    """Download and unpack the UNSEEN packages under root; returns the sample per modality and the
    package versions used."""
    import hashlib

    pkgs = sorted({pkg for srcs in UNSEEN.values() for pkg, _ in srcs})
    debs = root / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "download", *pkgs], cwd=debs, check=True, capture_output=True)
    versions = []
    for pkg in pkgs:
        deb = sorted(debs.glob(f"{pkg}_*.deb"))[-1]
        versions.append(deb.name.split("_")[1].replace("%3a", ":"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root / pkg)], check=True)
    files: dict[str, list[Path]] = {}
    for m, srcs in UNSEEN.items():
        pool = sorted({p for pkg, pat in srcs for p in (root / pkg).glob(pat) if p.is_file() and not p.is_symlink()})
        pool.sort(key=lambda p: hashlib.sha256(str(p.relative_to(root)).encode()).digest())
        chosen, total = [], 0
        for p in pool:
            size = p.stat().st_size
            if size <= budget // 4 and total + size <= budget:
                chosen.append(p)
                total += size
        files[m] = chosen
    return files, [f"{p} {v}" for p, v in zip(pkgs, versions, strict=True)]


_WRAP = ("import json, resource, subprocess, sys; a = json.loads(sys.argv[1]); "
         "subprocess.run(a['cmd'], shell=a['shell'], check=True, cwd=a['cwd'], stdout=subprocess.DEVNULL); "
         "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def timed(cmd: list[str] | str, shell: bool = False, cwd: Path | None = None) -> tuple[float, int]:
    """(wall seconds, peak RSS in KiB) of one command, measured in its own wrapper process."""
    arg = json.dumps({"cmd": cmd, "shell": shell, "cwd": str(cwd) if cwd else None})
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _WRAP, arg], check=True, capture_output=True, text=True)
    return time.perf_counter() - t, int(out.stdout.strip().splitlines()[-1])


def run_lmarc(files: list[Path], corpus: Path, model: str, tmp: Path) -> dict:
    """One archive of all the files (kept at their corpus paths), extracted and compared file by file."""
    arc, src, out = tmp / "x.lma", tmp / "in", tmp / "out"
    arc.unlink(missing_ok=True)
    shutil.rmtree(src, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    rel = [p.relative_to(corpus) for p in files]
    for p, r in zip(files, rel, strict=True):
        (src / r).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, src / r)
    model = str(Path(model).resolve()) if Path(model).is_file() else model
    lmarc = [sys.executable, "-m", "archiver.cli", "--no-progress", "-q"]
    ct, mem = timed([*lmarc, "add", "-a", str(arc), "--model", model, *map(str, rel)], cwd=src)
    dt, mem2 = timed([*lmarc, "extract", str(arc), "-C", str(out)])
    for p, r in zip(files, rel, strict=True):
        assert (out / r).read_bytes() == p.read_bytes(), p
    rows = json.loads(subprocess.run([*lmarc, "list", str(arc), "--json"], capture_output=True, text=True,
                                     check=True).stdout)
    codecs = sorted({row["codec"] for row in rows})
    return {"size": arc.stat().st_size, "ctime": ct, "dtime": dt, "mem": max(mem, mem2), "codecs": codecs}


def run_codec(name: str, p: Path, tmp: Path) -> dict | None:
    _, cmd, _ = CODECS[name]
    if shutil.which(name.split()[0]) is None:
        return None
    o = tmp / "codec.out"
    o.unlink(missing_ok=True)
    try:
        ct, mem = timed(cmd.format(i=shlex.quote(str(p)), o=o), shell=True)
        dt = None
        if name in DECODE:
            dt, mem2 = timed(DECODE[name].format(o=o, d=tmp / "codec.dec"), shell=True)
            mem = max(mem, mem2)
    except subprocess.CalledProcessError:
        return None
    return {"size": o.stat().st_size, "ctime": ct, "dtime": dt, "mem": mem}


def raw_pixels(p: Path) -> int:
    from PIL import Image

    with Image.open(p) as im:
        return im.width * im.height * len(im.getbands())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpus")
    ap.add_argument("--quick", action="store_true", help="a small dev sample (< 10 minutes)")
    ap.add_argument("--budget", type=int, help="with --quick: bytes per modality")
    ap.add_argument("--models", default="default", help="comma-separated lmarc models")
    ap.add_argument("--unseen", action="store_true", help="files from Debian packages instead of the corpus")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    ap.add_argument("--kinds", default="text,image,audio",
                    help="modalities to measure; the report keeps the others from the last run's JSON")
    a = ap.parse_args()
    ensure_tools()
    kinds = a.kinds.split(",")
    saved = a.out.parent / f"{'benchmarks-unseen' if a.unseen else 'benchmarks'}.json"
    partial = saved.exists() and set(kinds) != {"text", "image", "audio"}
    results: dict[str, dict] = json.loads(saved.read_text()) if partial else {}
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        if a.unseen:
            a.corpus = tmp / "unseen"
            files, a.sources = unseen_files(a.corpus, a.budget or UNSEEN_BUDGET)
        else:
            if not a.corpus.is_dir():
                sys.exit(f"corpus not found: {a.corpus}")
            files = pick(split_files(a.corpus)[1], a.quick, a.budget)
        for m, lst in files.items():
            if m not in kinds:
                continue
            classic = [n for n, (ms, _, _) in CODECS.items() if m in ms]
            agg = {}  # lmarc rows first, then the classic codecs, in the report's order
            for model in a.models.split(","):
                print(f"{m}: lmarc {model}, {len(lst)} files in one archive", file=sys.stderr)
                agg[f"lmarc {model}"] = dict(run_lmarc(lst, a.corpus, model, tmp), n=len(lst))
            agg |= {t: {"size": 0, "ctime": 0.0, "dtime": 0.0, "mem": 0, "n": 0} for t in classic}
            orig = sum(p.stat().st_size for p in lst)
            for p in lst:
                print(f"{m}: {p.relative_to(a.corpus)}", file=sys.stderr)
                for t in classic:
                    r = run_codec(t, p, tmp)
                    if r is None:
                        agg[t]["n"] = -1
                        continue
                    g = agg[t]
                    g["size"] += r["size"]
                    g["ctime"] += r["ctime"]
                    g["dtime"] = None if r["dtime"] is None or g["dtime"] is None else g["dtime"] + r["dtime"]
                    g["mem"] = max(g["mem"], r["mem"])
                    g["n"] += 1 if g["n"] >= 0 else 0
            results[m] = {"files": len(lst), "bytes": orig, "tools": agg, "date": str(datetime.date.today()),
                          "pixels": sum(raw_pixels(p) for p in lst) if m == "image" else None,
                          "shipped": orig}
            write_report(a, results)  # after every modality, so a run cut short keeps what it measured


def write_report(a, results: dict) -> None:
    from archiver import registry

    model_bytes = {n: registry.available()[n].stat().st_size for n in a.models.split(",") if n in registry.available()}
    flag = " --unseen" if a.unseen else " --quick" if a.quick else ""
    data = (f"files no one on the team had seen, sampled from Debian packages outside the corpus "
            f"({', '.join(a.sources)}; see UNSEEN in the script)" if a.unseen else
            "dev split of `../shared/corpus` (the last ~20% of each folder, never trained on)")
    lines = [
        "## lmarc on files no one has seen" if a.unseen else "## lmarc against the classic codecs",
        "",
        f"Produced by `python benchmarks/run.py{flag}` ({platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}), {data}. The classic"
        " codecs compress each file on its own; lmarc puts each modality's files in one archive (whole"
        " archive size, header and index included; every file extracted and compared).",
        "",
        "Ratio = compressed / original; bpb = bits per original byte; speeds are wall-clock KB/s of"
        " original data on 2 cores. *Adjusted* ratio counts the model file once, as the paper does.",
        "",
    ]
    for m, r in results.items():
        lines += [f"### {m}: {r['files']} files, {r['bytes']:,} bytes (measured {r['date']})", ""]
        if r["pixels"]:
            lines += [f"Raw pixels: {r['pixels']:,} bytes (ratios to pixels in the last column).", ""]
        lines += ["| tool | bytes | ratio | bpb | adjusted | compress KB/s | decompress KB/s | peak RAM MB |"
                  + (" ratio to pixels |" if r["pixels"] else ""),
                  "|---|---|---|---|---|---|---|---|" + ("---|" if r["pixels"] else "")]
        for t, g in r["tools"].items():
            if g["n"] <= 0:
                lines.append(f"| {t} | not available | | | | | | |" + (" |" if r["pixels"] else ""))
                continue
            size, orig = g["size"], r["bytes"]
            adj = size + model_bytes.get(t.split(" ", 1)[1], 0) if t.startswith("lmarc") else size
            dk = f"{orig / 1000 / g['dtime']:.1f}" if g["dtime"] else "-"
            row = (f"| {t} | {size:,} | {size / orig:.3f} | {8 * size / orig:.2f} | {adj / orig:.3f} | "
                   f"{orig / 1000 / g['ctime']:.1f} | {dk} | {g['mem'] / 1024:.0f} |")
            if r["pixels"]:
                row += f" {size / r['pixels']:.3f} |"
            lines.append(row)
        lines += ["", *target_lines(m, r["tools"]), ""]
    from report import replace_section

    name = "unseen" if a.unseen else "codecs"
    replace_section(a.out, name, "\n".join(lines))
    stem = "benchmarks-unseen" if a.unseen else "benchmarks"
    (a.out.parent / f"{stem}.json").write_text(json.dumps(results, indent=1, default=str))
    plot(results, a.out.parent / f"{stem}.png")
    print(f"wrote the {name} section of {a.out}", file=sys.stderr)


def target_lines(m: str, tools: dict) -> list[str]:
    """The issue's threshold for this modality, met or not, for each lmarc model measured."""
    ref, limit = TARGETS[m]
    if tools.get(ref, {}).get("n", 0) <= 0:
        return []
    out = []
    for t, g in tools.items():
        if t.startswith("lmarc") and g["n"] > 0:
            x = g["size"] / tools[ref]["size"]
            out.append(f"Target {t} <= {limit:.2f} x {ref}: {x:.3f} x, {'met' if x <= limit else 'not met'}.")
    return out


def plot(results: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
        return
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), squeeze=False)
    for ax, (m, r) in zip(axes[0], results.items(), strict=True):
        for t, g in r["tools"].items():
            if g["n"] > 0:
                ax.scatter(r["bytes"] / 1000 / g["ctime"], g["size"] / r["bytes"], color="C3" if "lmarc" in t else "C0")
                ax.annotate(t, (r["bytes"] / 1000 / g["ctime"], g["size"] / r["bytes"]), fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("compress speed, KB/s (log)")
        ax.set_ylabel("ratio (lower is better)")
        ax.set_title(m)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
