"""`lmarc`: the command line. Exit 0 on success, 1 when some entries failed, 2 on a fatal error,
130 on Ctrl-C; errors are one line on stderr (a traceback only with --debug)."""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path

from archiver import archive as ops
from archiver import classic, crypt
from archiver.container import ArchiveError
from archiver.modelfile import ModelError
from archiver.progress import make_reporter

DEFAULT_ARCHIVE = "archive.lma"


def _global_options(p: argparse.ArgumentParser, suppress: bool) -> None:
    d = (lambda v: argparse.SUPPRESS) if suppress else (lambda v: v)
    p.add_argument("--threads", type=int, default=d(None),
                   help="CPU threads for the model (default: torch's) and the classic codecs (default: every CPU)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=d("cpu"), help="where the model runs")
    p.add_argument("-q", "--quiet", action="store_true", default=d(False), help="print nothing but errors")
    p.add_argument("--no-progress", action="store_true", default=d(False), help="no progress bar")
    p.add_argument("--debug", action="store_true", default=d(False), help="show tracebacks")
    p.add_argument("--password-file", metavar="FILE", default=d(None),
                   help="an encrypted archive's password: FILE's first line (else LMARC_PASSWORD, else asked)")


def _version() -> str:
    """This lmarc's release, and the archive format and index versions it writes and reads."""
    from importlib import metadata

    from archiver.container import ENCRYPTED, INDEX_VERSIONS, VERSION

    try:
        release = metadata.version("lmarc")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        release = "(not installed)"
    return (f"lmarc {release} (archive format {VERSION}, {ENCRYPTED} encrypted, index versions "
            f"{INDEX_VERSIONS[0]}-{INDEX_VERSIONS[-1]})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmarc",
                                     description="Lossless archiver whose compressor is a language model.")
    _global_options(parser, suppress=False)
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def exclude(p: argparse.ArgumentParser) -> None:
        p.add_argument("-x", "--exclude", action="append", default=[], metavar="PATTERN",
                       help="leave out names matching this shell pattern (repeatable): without '/' it matches any "
                            "one part of a name (*.o, .git), with '/' a whole name or a directory above it")
        p.add_argument("-X", "--exclude-from", action="append", default=[], metavar="FILE",
                       help="also the patterns FILE lists, one per line, as tar -X does (repeatable)")

    def until(p: argparse.ArgumentParser) -> None:
        p.add_argument("--until", type=int, metavar="N",
                       help="the archive as its Nth add left it (1: the first; `list --versions` shows them)")

    def cmd(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        _global_options(p, suppress=True)
        return p

    p = cmd("add", "create an archive or append files and directories to it")
    p.add_argument("-a", "--archive", default=DEFAULT_ARCHIVE, help=f"archive to write (default: ./{DEFAULT_ARCHIVE})")
    p.add_argument("--model", default="default",
                   help="model name or .safetensors file (default: default; none: classic codecs only, fast)")
    p.add_argument("--checksum", action="store_true",
                   help="read every file, even one whose size, mtime and mode match its entry (which is kept unread)")
    p.add_argument("--no-solid", dest="solid", action="store_false",
                   help="code each file on its own: smaller files share no block (extracting one decodes less)")
    exclude(p)
    p.add_argument("-T", "--files-from", metavar="FILE",
                   help="also add the paths listed in FILE, one per line ('-': standard input), as tar -T does")
    p.add_argument("--null", action="store_true", help="--files-from's paths end with NUL, not newline (find -print0)")
    p.add_argument("--encrypt", action="store_true",
                   help="create the archive encrypted (AES-256-GCM, names too) under a password: --password-file, "
                        "LMARC_PASSWORD, or asked on the terminal")
    p.add_argument("--remove-files", action="store_true",
                   help="remove what was added, once the archive is safely written (each file read, not trusted "
                        "by size and mtime; one changed since it was read is kept), as tar --remove-files")
    p.add_argument("--stdin-name", default="stdin", metavar="NAME",
                   help="the name under which PATH '-' (standard input's bytes) is stored (default: stdin)")
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="files and directories; '-' stores the bytes read from standard input as one file")

    p = cmd("extract", "restore files from an archive, byte for byte")
    p.add_argument("archive")
    p.add_argument("members", nargs="*", metavar="MEMBER", help="only these paths (and what is under them)")
    p.add_argument("-C", "--directory", default=".", help="extract into this directory (default: .)")
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    p.add_argument("--strip-components", type=int, default=0, metavar="N",
                   help="leave out the first N parts of each name (entries with no more parts are not extracted)")
    p.add_argument("--no-same-owner", dest="same_owner", action="store_false", default=None,
                   help="as root, leave files owned by root instead of giving them their recorded owners")
    p.add_argument("-O", "--to-stdout", action="store_true",
                   help="write the files' bytes to standard output, one after another, instead of to disk")
    exclude(p)
    until(p)

    p = cmd("delete", "remove entries (and what is under them) from an archive, and the room they took")
    p.add_argument("archive")
    p.add_argument("members", nargs="*", metavar="MEMBER", help="these paths and what is under them")

    p = cmd("rename", "rename entries (and what is under them), as 7z rn: a new version of the index, no data "
                      "rewritten")
    p.add_argument("archive")
    p.add_argument("names", nargs="+", metavar="OLD NEW", help="pairs: each OLD entry takes the name NEW")

    p = cmd("passwd", "give an encrypted archive a new password, or encrypt a plain one (rewriting it, as compact "
                      "does)")
    p.add_argument("archive")
    p.add_argument("--remove", action="store_true", help="decrypt it instead: no password from now on")
    p.add_argument("--new-password-file", metavar="FILE",
                   help="the new password: FILE's first line (else LMARC_NEW_PASSWORD, else asked twice)")

    p = cmd("compact", "rewrite an archive without the room of replaced files and superseded indexes")
    p.add_argument("archive")

    p = cmd("list", "list the entries of an archive")
    p.add_argument("archive")
    p.add_argument("members", nargs="*", metavar="MEMBER", help="only these paths (and what is under them)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("-l", "--long", action="store_true", help="also mode, owner and modification time (tar tv)")
    p.add_argument("--versions", action="store_true",
                   help="one line per add the archive holds (until a compact): what --until can read")
    until(p)

    p = cmd("diff", "compare an archive with the files on disk, as tar --diff does: what is missing, "
                    "changed (by checksum: no model, nothing decoded) or not in the archive")
    p.add_argument("archive")
    p.add_argument("members", nargs="*", metavar="MEMBER", help="only these paths (and what is under them)")
    p.add_argument("-C", "--directory", default=".", help="where the files are (default: .)")
    exclude(p)
    until(p)

    p = cmd("test", "decode everything and verify checksums without writing anything")
    p.add_argument("archive")
    p.add_argument("--quick", action="store_true",
                   help="only read the stored data back against its CRC-32s: no decoding, no model, disk speed")
    until(p)

    p = cmd("info", "show installed plugins, models and the inference engine; with an archive, what it holds "
                    "and which models it needs")
    p.add_argument("archive", nargs="?")
    p.add_argument("--json", action="store_true", help="machine-readable output (with an archive)")
    return parser


def _warn(note: str | None) -> None:
    if note:
        print(f"lmarc: warning: {note}", file=sys.stderr)


def _report(res: ops.Result, verb: str, quiet: bool, out=None) -> int:
    for p in res.problems:
        print(f"lmarc: {p}", file=sys.stderr)
    for n in res.notes:
        _warn(n)
    if not quiet:
        print(f"{verb} {res.ok} entries" + (f", {len(res.problems)} problems" if res.problems else "")
              + (f"; {res.detail}" if res.detail else ""), file=out)
    return 1 if res.problems else 0


def _print_json(obj: object) -> int:
    print(json.dumps(obj, indent=1))
    return 0


def _list(args) -> int:
    if args.versions:
        versions, note = ops.versions(Path(args.archive))
        _warn(note)
        return _print_json(versions) if args.json else _versions_table(versions)
    rows, free, note = ops.listing(Path(args.archive), args.members, args.until)
    _warn(note)
    if args.json:
        return _print_json(rows)
    long = "mode       owner        modified          " if args.long else ""
    print(f"{long}{'size':>10} {'stored':>10} {'ratio':>7}  {'plugin':<10} {'codec':<12} path")
    for r in rows:
        ratio = f"{r['ratio']:.1%}" if r["ratio"] is not None else "-"
        path = (r["path"] + ("/" if r["type"] == "dir" else "") + (f" -> {r['link']}" if r["type"] == "symlink" else "")
                + (f" link to {r['hardlink']}" if r["hardlink"] else ""))
        long = _long_columns(r) if args.long else ""
        print(f"{long}{r['size']:>10} {r['stored']:>10} {ratio:>7}  {r['plugin'] or '-':<10} {r['codec'] or '-':<12} "
              f"{path}")
    total, stored = sum(r["size"] for r in rows), sum(r["stored"] for r in rows)
    if total:
        print(f"{total:>10} {stored:>10} {stored / total:>7.1%}  {len(rows)} entries")
    if free and args.until is None:
        print(f"`lmarc compact` would free {free:,} bytes or more (replaced data, old indexes)")
    return 0


def _long_columns(r: dict) -> str:
    """tar tv's first columns: type and permission bits, owner (names, else numbers) and local
    modification time; '?' where the entry did not record them."""
    kind = {"dir": stat.S_IFDIR, "symlink": stat.S_IFLNK}.get(r["type"], stat.S_IFREG)
    mode = stat.filemode(kind | r["mode"]) if isinstance(r["mode"], int) else "?"
    owner = f"{r['user'] or r['uid']}/{r['group'] or r['gid']}" if r["uid"] is not None else "?"
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["mtime_ns"] / 1e9)) if r["mtime_ns"] else "?"
    return f"{mode:<10} {owner:<12} {when:<17} "


def _versions_table(rows: list[dict]) -> int:
    print(f"{'version':>7} {'entries':>8} {'added':>7} {'changed':>7} {'size':>12} {'archive':>12}")
    for r in rows:
        print(f"{r['version']:>7} {r['entries']:>8} {r['added']:>7} {r['changed']:>7} {r['size']:>12} "
              f"{r['archive_bytes']:>12}")
    return 0


def _archive_info(info: dict) -> int:
    n = info["entries"]
    print(f"archive: {info['archive']}, {info['bytes']:,} bytes (index version {info['index_version']}"
          + (", encrypted: AES-256-GCM, key from scrypt)" if info["encrypted"] else ")"))
    print(f"entries: {n['file']} files, {n['dir']} directories, {n['symlink']} symlinks; "
          f"{info['file_bytes']:,} bytes of files stored in {info['stored_bytes']:,}")
    print("codecs: " + (", ".join(f"{c} {b:,} bytes" for c, b in info["codecs"].items()) or "-"))
    for m in info["models"] or [{"id": None}]:
        if m["id"] is None:
            print("models: none needed")
            continue
        where = f"installed: {m['installed']}" if m["installed"] else \
            "NOT INSTALLED" + (f" ({m['install']})" if m["install"] else "")
        print(f"model: {m['name'] or '?'} (id {m['id'][:16]}), {where}")
    if info["compact_frees"]:
        print(f"`lmarc compact` would free {info['compact_frees']:,} bytes or more")
    return 0


def _info(args) -> int:
    if args.archive:
        info = ops.summary(Path(args.archive))
        _warn(info["warning"])
        return _print_json(info) if args.json else _archive_info(info)
    import torch

    from archiver import registry
    from archiver.classic import CODECS
    from archiver.engine import default_backend
    from archiver.plugins import formats, plugin_versions

    print("plugins:")
    for name, dist, version in plugin_versions():
        print(f"  {name:<12} {dist} {version}")
    print("formats:")
    for f in formats():
        print(f"  {f.name:<12} v{f.version}  priority {f.priority:<3} {f.description}")
    print("models:")
    for name, path in sorted(registry.available().items()):
        try:
            m = registry.load(str(path))
            c = m.config
            print(f"  {name:<12} id {m.model_id[:16]}  {c['num_layers']} layers x {c['hidden_size']}, "
                  f"context {c['context']}, vocab {c['vocab_size']}, keys {c.get('key_cache', 'f64')}, "
                  f"values {c.get('value_cache', 'f64')}  ({path})")
        except ModelError as e:
            print(f"  {name:<12} unusable: {e}")
    print(f"codecs: lm, {', '.join(CODECS)} (the smallest coding of each piece is kept; "
          "cm2d: image streams, cmpcm: audio streams)")
    dev = torch.device(args.device)
    print(f"engine: exact integer inference, torch {torch.__version__}, device {dev}, "
          f"GEMM backend {default_backend(dev)}, threads {args.threads or torch.get_num_threads()} "
          f"(classic codecs {classic.threads()}), "
          f"cuda available: {torch.cuda.is_available()}")
    return 0


def _listed_paths(source: str, null: bool) -> list[str]:
    """The paths in a --files-from file (or standard input), as the file system names them: bytes
    that are not UTF-8 come back as os.fsdecode makes them, as they do from the command line."""
    raw = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    return [os.fsdecode(p) for p in raw.split(b"\0" if null else b"\n") if p]


def _first_line(path: str | None) -> Callable[[], str] | None:
    """A password source reading a file's first line (None without a file); also the reset of any
    password had before, when main() runs again in one process."""
    return None if path is None else (lambda: next(iter(Path(path).read_text().splitlines()), ""))


def run(args) -> int:
    crypt.set_password_source(_first_line(args.password_file), _first_line(getattr(args, "new_password_file", None)))
    classic.set_threads(args.threads)
    settings = ops.Settings(model=getattr(args, "model", "default"), device=args.device, threads=args.threads,
                            solid=getattr(args, "solid", True), checksum=getattr(args, "checksum", False))
    ui = make_reporter(args.quiet, args.no_progress)
    if args.command == "add":
        stdin = (args.stdin_name, sys.stdin.buffer) if "-" in args.paths else None
        if stdin is not None and args.files_from == "-":
            raise ops.LmarcError("add: standard input cannot be both a file ('-') and the --files-from list")
        if stdin is not None and sys.stdin.isatty():
            raise ops.LmarcError("add: refusing to read a file's bytes from a terminal (PATH '-' wants a pipe)")
        paths = [p for p in args.paths if p != "-"]
        paths += _listed_paths(args.files_from, args.null) if args.files_from else []
        if not paths and stdin is None:
            raise ops.LmarcError("add: name at least one PATH (or --files-from FILE)")
        res = ops.add(Path(args.archive), paths, settings, ui, args.exclude, stdin, args.remove_files, args.encrypt)
        return _report(res, "added", args.quiet)
    if args.command == "extract":
        to = sys.stdout.buffer if args.to_stdout else None
        res = ops.extract(Path(args.archive), Path(args.directory), args.members, args.overwrite, settings, ui, to,
                          args.exclude, args.until, args.same_owner, args.strip_components)
        return _report(res, "extracted", args.quiet, sys.stderr if to else None)  # stdout carries the bytes
    if args.command == "diff":
        found, compared, note = ops.diff(Path(args.archive), Path(args.directory), args.members, args.exclude,
                                         args.until)
        _warn(note)
        for name, what in found:
            print(f"{name}: {what}")
        if not args.quiet:
            print(f"compared {compared} entries: " + (f"{len(found)} differences" if found else "no differences"),
                  file=sys.stderr)
        return 1 if found else 0
    if args.command == "test":
        res = ops.test(Path(args.archive), settings, ui, args.until, args.quick)
        code = _report(res, "tested", args.quiet)
        if not code and not args.quiet:
            print("all entries OK")
        return code
    if args.command in ("delete", "compact", "passwd"):
        path = Path(args.archive)
        if args.command == "delete":
            done = ops.delete(path, args.members, ui)
            verb = f"deleted {done.entries_before - done.entries_after} entries"
        elif args.command == "compact":
            done = ops.compact(path, ui)
            verb = f"compacted {done.entries_after} entries"
        else:
            done = ops.passwd(path, ui, args.remove)
            verb = f"{'decrypted' if args.remove else 'new password for'} {done.entries_after} entries"
        if not args.quiet:
            print(f"{verb}; archive {done.bytes_before:,} -> {done.bytes_after:,} bytes")
        return 0
    if args.command == "rename":
        n = ops.rename(Path(args.archive), list(zip(args.names[::2], args.names[1::2], strict=True)))
        if not args.quiet:
            print(f"renamed {n} entries")
        return 0
    if args.command == "list":
        return _list(args)
    return _info(args)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and hasattr(args, "members") and not any(r.startswith("-") for r in rest):
        args.members += rest  # members after options, as in `lmarc extract a.lma -C out notes.txt`
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "delete" and not args.members:
        parser.error("delete: name at least one MEMBER")
    for source in getattr(args, "exclude_from", []):
        try:
            args.exclude += [line for line in Path(source).read_text().splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            parser.error(f"--exclude-from {source}: {getattr(e, 'strerror', None) or e}")
    if args.command == "rename" and len(args.names) % 2:
        parser.error("rename: give OLD NEW pairs")
    if getattr(args, "strip_components", 0) < 0:
        parser.error("--strip-components: N cannot be negative")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("lmarc: --device cuda: no CUDA device is available", file=sys.stderr)
            return 2
    try:
        return run(args)
    except KeyboardInterrupt:
        print("lmarc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `lmarc list a.lma | head`: the reader has gone, as with any Unix tool
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141  # 128 + SIGPIPE
    except (ops.LmarcError, ArchiveError, ModelError, OSError, LookupError) as e:
        if args.debug:
            raise
        msg = f"{e.filename}: {e.strerror}" if isinstance(e, OSError) and e.filename else str(e)
        print(f"lmarc: {msg}", file=sys.stderr)
        return 2
    except Exception as e:  # a bug or an input we did not foresee: still one line, no traceback
        if args.debug:
            raise
        print(f"lmarc: internal error: {type(e).__name__}: {e} (run with --debug for details)", file=sys.stderr)
        return 2


def entry() -> None:
    """The `lmarc` command: main(), then exit. After Ctrl-C or an error in the middle of an add, a
    codec trial may still be running on another thread (`classic.busy`); the interpreter would wait
    for it (8-10 s measured on a 7.6 MB text file), so the process exits at once instead: everything
    main() had to undo is undone by then, and the output is flushed first."""
    code = main()
    if classic.busy():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
