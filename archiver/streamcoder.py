"""Streams -> coded chunks and back: chunking, batched LM scoring, range coding, classic fallback.

Each LM-coded stream is cut into chunks of at most context-1 tokens; every chunk starts cold from
its kind's BOS token, so chunks decode independently (one member extracts only its own chunks,
damage stays inside one chunk). A chunk keeps the LM coding only when it beats the classic codecs
on the same bytes, and a whole stream goes classic when that is smaller still: the LM never costs
more than a few bytes over xz/zstd, and incompressible data is stored.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from archiver import classic, coder

if TYPE_CHECKING:
    from archiver.engine import Engine
    from archiver.intmodel import IntModel

CLASSIC_BLOCK = 4 << 20  # classic-coded streams are cut into blocks this size (bounds memory on extract)
DECODE_BATCH = 256  # chunks decoded in lockstep at most: per-step overheads amortize over the batch
GUESSES = 2  # a chunk decoded alone feeds this many guesses of its next tokens with each step: with the
# weights read once (kernels.gemv) a SmolLM2 step costs 15.5 ms for one token, 18 for three, 28 for five


def _decode_memory() -> int:
    """Key/value cache budget of a decoding batch: a quarter of physical memory, at most 4 GiB
    (1 GiB where it cannot be read). The default model's chunk needs 1 MiB, SmolLM2's about 23."""
    try:
        phys = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 30
    return max(1 << 28, min(4 << 30, phys // 4))


DECODE_MEMORY = _decode_memory()
SCORE_TOKENS = 8192  # tokens scored per engine call: progress moves, memory stays bounded
SCORE_CELLS = 1 << 27  # and at most this many table entries (1 GiB of int64): large vocabularies
PROBE_CHUNKS = 4  # a stream of more chunks than this is probed first: this many spread over it are
# LM-coded, and when they come out larger than the whole-stream classic coding
# (per byte, with PROBE_MARGIN) the rest is not scored: the LM would lose anyway. This was for
# streams of 64 KiB and up only, until a trace of `add` on the dev text showed 10.5 of its 36 s
# spent scoring three 38-49 KB files whole, which the classic codecs won anyway (dev text 36 -> 26 s,
# images 90 -> 58 s, audio 124 -> 100 s, the same archives)
TRACK_BYTES = 64 << 10  # once the LM has been scored on this much of a kind's data in one run
TRACK_GAIN = 0.01  # and saved less than this share of the classic codings, it is not tried on that kind again
PROBE_MARGIN = 1.0  # (1.1 until cm2d: photos, where cm2d beats the LM by ~4%, were scored in full and then discarded)
PROBE_SHARE = 8  # probing goes on in stages of 4x more chunks until this share (1/8) of them is scored:
# 4 chunks of a 1.2 MB photo put the LM 12% ahead of cm2d, which won by more than that on the whole


@dataclass
class Track:
    """How the LM has done against the classic codecs on one kind's streams so far in a run.

    Why: a stream of up to PROBE_CHUNKS chunks is scored whole before the LM can lose, and a
    folder of small files is all such streams. With the default model on text (~3.9 bits/byte
    against cm's ~1.2) that is nearly all of `add`'s time, for nothing. What counts is what the LM saved where it won,
    not its total against the classic codecs: one stream of near-silence, where cm is 2x smaller,
    must not switch the LM off for the recordings after it."""

    data: int = 0  # bytes the LM was scored on
    classic: int = 0  # what the classic codecs made of them (prorated for a probe)
    gain: int = 0  # bytes the LM path saved over the classic codings, summed over streams it won
    blocked_upto: int = -1  # solid blocks beat what the LM made of this kind's streams up to this size (solid.py)

    def hopeless(self, size: int = 0) -> bool:
        """Whether to skip the LM on a stream of `size` bytes of this kind."""
        return size <= self.blocked_upto or (self.data >= TRACK_BYTES and self.gain < TRACK_GAIN * self.classic)

    def add(self, data: int, lm: int, classic: int) -> None:
        self.data, self.classic, self.gain = self.data + data, self.classic + classic, self.gain + max(0, classic - lm)


@dataclass
class Coded:
    record: dict  # chunk table entry without its location
    payload: bytes


class Predictor:
    """An engine plus the vocabulary that maps streams to its tokens."""

    def __init__(self, model: IntModel, device: str = "cpu", threads: int | None = None):
        from archiver.engine import Engine  # torch is imported only once a model is used
        from archiver.vocab import make_vocab

        self.model = model
        self.engine = Engine(model, device=device, threads=threads)
        self.vocab = make_vocab(model.config)
        self.chunk_tokens = model.context - 1
        self.name = model.config.get("name", "")


def classic_blocks(data: bytes, geometry: tuple[int, int] | None = None, kind: str | None = None,
                   cm: bool = True) -> list[Coded]:
    """The stream in blocks of CLASSIC_BLOCK bytes, each coded with the best classic codec (cm=False:
    of those but the cm family, see classic.best); with a geometry the blocks end on row (image) or
    channel (audio) boundaries where those fit in a block, else on pixel or sample boundaries, so
    the structured codecs see whole units."""
    step = CLASSIC_BLOCK
    if geometry is not None:
        row, unit = max(1, geometry[0]), max(1, geometry[1])
        step = CLASSIC_BLOCK // row * row if row <= CLASSIC_BLOCK else CLASSIC_BLOCK // unit * unit
    starts = range(0, len(data), step)
    chosen = classic.best_each((data[i : i + step] for i in starts), cm, geometry, kind)
    return [Coded({"codec": codec, "size": min(step, len(data) - i), "tokens": 0}, payload)
            for i, (codec, payload) in zip(starts, chosen, strict=True)]


def looks_random(data: bytes, classic_coded: list[Coded]) -> bool:
    """Data no classic codec shrinks and whose bytes are near-uniform: not worth LM time.

    (Audio and images also resist zstd/xz, but their byte histograms are far from flat.)
    """
    if sum(len(c.payload) for c in classic_coded) < len(data) or len(data) < 4096:
        return False
    return classic.order0_bits(data) > classic.NEAR_UNIFORM


def encode_stream(kind: str, data: bytes, predictor: Predictor | None,
                  on_progress: Callable[[int], None] | None = None,
                  fallback: Callable[[], Predictor] | None = None,
                  geometry: tuple[int, int] | None = None, track: Track | None = None) -> list[Coded]:
    """Code one stream; `on_progress(n)` is called with bytes done as chunks finish.

    A stream the predictor's vocabulary cannot represent exactly (text a tokenizer drops bytes of)
    goes to `fallback()` (a byte-level predictor), or to the classic codecs when there is none.
    `geometry` is an image or audio stream's (see formats.Stream), for the structured classic
    codecs. `track` is this kind's record in the run: consulted first, updated whenever the LM is
    scored.
    """
    whole = classic_blocks(data, geometry, kind)
    if (kind == "stored" or predictor is None or not data or looks_random(data, whole)
            or (track is not None and track.hopeless(len(data)))):
        if on_progress:
            on_progress(len(data))
        return whole
    symbols = predictor.vocab.symbols(kind, data)
    if symbols is None and fallback is not None:
        other = fallback()
        if other is not predictor:
            predictor, symbols = other, other.vocab.symbols(kind, data)
    if symbols is None:
        if on_progress:
            on_progress(len(data))
        return whole
    v = predictor.vocab
    n = predictor.chunk_tokens
    pieces = [symbols[i : i + n] for i in range(0, len(symbols), n)]
    table = v.alphabet(kind)
    width = predictor.model.vocab_size if table is None else len(table)
    group = max(1, min(SCORE_TOKENS // n, SCORE_CELLS // (n * width)))
    stages = probe_stages(len(pieces))
    taken = {i for st in stages for i in st}
    rest = [i for i in range(len(pieces)) if i not in taken]
    batches = stages + [rest[g : g + group] for g in range(0, len(rest), group)]
    coded: dict[int, Coded] = {}
    classic_size = sum(len(c.payload) for c in whole)
    track = Track() if track is None else track
    for k, batch in enumerate(batches):
        for g in range(0, len(batch), group):  # a stage too is scored group by group: bounded memory
            part = batch[g : g + group]
            coded |= _code_pieces(kind, [pieces[i] for i in part], part, predictor, on_progress)
        if k < len(stages):
            probed = sum(c.record["size"] for c in coded.values())
            lm_size = sum(len(c.payload) for c in coded.values())
            classic_share = classic_size * probed / len(data)  # the classic coding of the probed bytes
            if lm_size > PROBE_MARGIN * classic_share:
                track.add(probed, lm_size, round(classic_share))
                if on_progress:
                    on_progress(len(data) - probed)
                return whole
    chunks = [coded[i] for i in range(len(pieces))]
    lm_size = sum(len(c.payload) for c in chunks)
    track.add(len(data), lm_size, classic_size)
    return whole if classic_size <= lm_size else chunks


def probe_stages(n: int) -> list[list[int]]:
    """The chunks (of n) that probe a stream, stage by stage: PROBE_CHUNKS spread over it, then 4x
    as many more at each stage, until PROBE_SHARE of them are taken; none for a stream of at most
    PROBE_CHUNKS chunks."""
    if n <= PROBE_CHUNKS:
        return []
    stages: list[list[int]] = []
    taken: set[int] = set()
    want, goal = PROBE_CHUNKS, max(PROBE_CHUNKS, n // PROBE_SHARE)
    while len(taken) < goal:
        m = min(want, goal - len(taken))
        if stages:  # evenly among the chunks not yet taken
            free = [i for i in range(n) if i not in taken]
            spread = [free[round((j + 0.5) * len(free) / m - 0.5)] for j in range(m)]
        else:  # the first and last chunks and evenly between
            spread = [round(j * (n - 1) / (m - 1)) for j in range(m)]
        stages.append(spread)
        taken.update(spread)
        want *= 4
    return stages


def _code_pieces(kind: str, pieces: list[np.ndarray], ids: list[int], predictor: Predictor,
                 on_progress: Callable[[int], None] | None) -> dict[int, Coded]:
    """LM-code pieces (scored in one engine call), each kept only where it beats the classic codecs."""
    v = predictor.vocab
    bos = v.bos(kind)
    seqs = [[bos, *v.token_ids(p).tolist()] for p in pieces]
    encoders = [coder.Encoder() for _ in pieces]
    predictor.engine.score(seqs, v.alphabet(kind),
                           sink=lambda j, i, rows: encoders[j].encode(pieces[j][i : i + len(rows)], rows))
    out = {}
    for i, p, enc in zip(ids, pieces, encoders, strict=True):
        raw = v.to_bytes(kind, p)
        lm = enc.finish()
        codec, payload = classic.best(raw, cm=False)
        rec = {"codec": codec, "size": len(raw), "tokens": 0}
        if len(lm) < len(payload):
            payload = lm
            rec = {"codec": "lm", "size": len(raw), "tokens": len(p), "model": predictor.model.model_id}
        out[i] = Coded(rec, payload)
        if on_progress:
            on_progress(len(raw))
    return out


def decode_chunks(kind_chunks: list[tuple[str, dict, bytes]], predictor_for: Callable[[str], Predictor],
                  on_progress: Callable[[int], None] | None = None,
                  blocks: dict[int, bytes | ValueError] | None = None) -> list[bytes]:
    """Decode chunks (kind, record, payload) in any mix; LM chunks run in lockstep batches, the parts
    of a solid block (records with "part": [start, block size]) share one decoding, kept in `blocks`
    (by payload offset, with the error if it failed) so that a caller retrying file by file after a
    damaged block does not decode it again."""
    out: list[bytes | None] = [None] * len(kind_chunks)
    lm: dict[str, list[int]] = {}
    blocks = {} if blocks is None else blocks
    todo: dict[tuple[str, int], tuple[str, bytes, int]] = {}  # the classic decodings, run side by side
    for i, (_kind, rec, payload) in enumerate(kind_chunks):
        if rec["codec"] == "lm":
            lm.setdefault(rec["model"], []).append(i)
        elif "part" not in rec:
            todo[("chunk", i)] = (rec["codec"], payload, rec["size"])
        elif rec["offset"] not in blocks:
            todo.setdefault(("block", rec["offset"]), (rec["codec"], payload, rec["part"][1]))
    for (what, key), data in zip(todo, classic.decompress_each(todo.values()), strict=True):
        if what == "block":
            blocks[key] = data
            continue
        if isinstance(data, ValueError):
            raise data
        out[key] = data
        if on_progress:
            on_progress(len(data))
    for i, (_kind, rec, _payload) in enumerate(kind_chunks):
        if rec["codec"] != "lm" and "part" in rec:
            block = blocks[rec["offset"]]
            if isinstance(block, ValueError):
                raise block
            start = rec["part"][0]
            out[i] = block[start : start + rec["size"]]
    for model_id, idxs in lm.items():
        pred = predictor_for(model_id)
        groups: dict[int, list[int]] = {}  # a lockstep batch shares its alphabet: a BPE model's text
        for i in idxs:  # is coded over its whole vocabulary, its other kinds over the bytes
            groups.setdefault(id(pred.vocab.alphabet(kind_chunks[i][0])), []).append(i)
        size = decode_batch(pred.engine)
        batches = []
        for group in groups.values():
            group.sort(key=lambda i: -kind_chunks[i][1]["tokens"])
            batches += [group[b : b + size] for b in range(0, len(group), size)]
        for batch in batches:
            for i, symbols in zip(batch, _decode_lm_batch(pred, [kind_chunks[i] for i in batch]), strict=True):
                kind, rec, _ = kind_chunks[i]
                data = pred.vocab.to_bytes(kind, symbols)
                if len(data) != rec["size"]:
                    raise ValueError("LM chunk decodes to the wrong size")
                out[i] = data
                if on_progress:
                    on_progress(rec["size"])
    return out  # type: ignore[return-value]


T = TypeVar("T")


def size_groups(items: Iterable[T], size: Callable[[T], int], limit: int) -> Iterator[list[T]]:
    """items in order, in consecutive groups, each closed by the item that brings its size to limit
    (the last may be smaller): how files, and a large file's chunks, are decoded a bounded amount at
    a time while their LM chunks still fill the lockstep batches of `decode_chunks`."""
    group: list[T] = []
    total = 0
    for item in items:
        group.append(item)
        total += size(item)
        if total >= limit:
            yield group
            group, total = [], 0
    if group:
        yield group


def decode_batch(engine: Engine) -> int:
    """Chunks decoded in lockstep: DECODE_BATCH, or fewer when their caches exceed DECODE_MEMORY."""
    return max(1, min(DECODE_BATCH, DECODE_MEMORY // engine.cache_bytes()))


class _Guesses:
    """Guesses of a chunk's next tokens from its own history (prompt lookup): what followed the
    last earlier occurrence of its two latest tokens. Logs, code and markup repeat themselves."""

    def __init__(self):
        self.history: list[int] = []
        self.after: dict[tuple[int, int], int] = {}  # token pair -> index of what followed it last

    def push(self, symbol: int) -> None:
        h = self.history
        if len(h) >= 2:
            self.after[(h[-2], h[-1])] = len(h)
        h.append(symbol)

    def next(self, k: int) -> list[int]:
        h = self.history
        i = self.after.get((h[-2], h[-1])) if len(h) >= 2 and k > 0 else None
        return [] if i is None else h[i : i + k]


def _decode_alone(pred: Predictor, kind: str, rec: dict, payload: bytes) -> np.ndarray:
    """One chunk with no lockstep batch to share the reading of the model's weights, which bounds
    a step of a large model at batch 1. Each step feeds the last decoded token and up to GUESSES
    guesses of the next ones (`_Guesses`) in one pass, which costs about what one token does; the
    tables come out the same as token by token, so every guess that proves right saves a step, and
    the cache forgets the positions of the first wrong one and those after it."""
    v = pred.vocab
    n = rec["tokens"]
    session = pred.engine.session(1, v.alphabet(kind))
    dec = coder.Decoder(payload)
    out = np.empty(n, dtype=np.int32)
    guesses = _Guesses()
    last = v.bos(kind)  # token id decoded and not yet fed
    done = 0
    while done < n:
        guess = guesses.next(min(GUESSES, n - done - 1))
        ids = np.array([[last, *v.token_ids(np.asarray(guess, dtype=np.int64))]], dtype=np.int64)
        tables = session.feed_run(ids)[0]
        for i in range(len(ids[0])):
            s = dec.decode(tables[i])
            out[done] = s
            done += 1
            guesses.push(s)
            if i == len(guess) or s != guess[i]:
                break
        session.rewind(len(guess) - i)  # keeps `last` and the guesses that were right
        last = int(v.token_ids(np.array([s]))[0])
    return out


def _decode_lm_batch(pred: Predictor, chunks: list[tuple[str, dict, bytes]]) -> list[np.ndarray]:
    v = pred.vocab
    kinds = {id(v.alphabet(k)) for k, _, _ in chunks}
    if len(kinds) != 1:
        raise ValueError("one lockstep batch must share its alphabet")
    lengths = [rec["tokens"] for _, rec, _ in chunks]
    if max(lengths) > pred.chunk_tokens:
        raise ValueError("chunk claims more tokens than the model's context")
    if len(chunks) == 1:
        return [_decode_alone(pred, *chunks[0])]
    session = pred.engine.session(len(chunks), v.alphabet(chunks[0][0]))
    decoders = [coder.Decoder(p) for _, _, p in chunks]
    feed = np.array([v.bos(k) for k, _, _ in chunks], dtype=np.int64)
    out = [np.empty(n, dtype=np.int32) for n in lengths]
    for step in range(max(lengths)):
        freqs = session.feed(feed)
        for r, dec in enumerate(decoders):
            if step < lengths[r]:
                s = dec.decode(freqs[r])
                out[r][step] = s
                feed[r] = v.token_ids(np.array([s]))[0]
    return out
