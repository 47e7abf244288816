"""The integer model file: a Llama-family causal LM in exact integer form.

A model file is safetensors holding int8 weights with integer per-row multipliers, and every table
the engine needs (rotary cos/sin, exp for softmax and for output frequencies, sigmoid for SiLU).
Tables are computed once, at conversion, and stored: loading never calls libm, so two machines
holding the same file run the same integer program. The file's SHA-256 is the model id that
archives record.

`convert_llama` turns a `transformers` LlamaForCausalLM into this form. RMSNorm gains are folded
into the following matrices and 1/sqrt(head_dim) into the query projection, so the engine only
needs integer norms and integer matrix products.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from archiver.fixedpoint import F32_EXACT_K
from archiver.modelfile import ModelError, file_sha256

FORMAT = "lmarc-intmodel-1"
ROPE_FRAC = 14  # cos/sin tables in Q14
ATT_FRAC = 8  # attention scores in Q8 nats before the exp table
ATT_EXP_FRAC = 15  # exp table for attention, Q15
FREQ_EXP_FRAC = 32  # exp table for output frequencies, Q32
SIG_STEP_FRAC = 8  # sigmoid table indexed in steps of 2**-8
SIG_RANGE = 16  # sigmoid table covers [-16, 16)
SIG_FRAC = 15  # sigmoid values in Q15
MULT_BITS = 15  # weight row multipliers stay below 2**15


@dataclass
class QMatrix:
    """W ~= q * mult[:, None] * 2**-shift, q int8 [n, k], mult int64 [n]."""

    q: torch.Tensor
    mult: torch.Tensor
    shift: int

    @classmethod
    def from_float(cls, w: torch.Tensor) -> QMatrix:
        w = w.to(torch.float64)
        scale = w.abs().amax(1).clamp(min=1e-30) / 127.0
        q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
        _, exp = math.frexp(float(scale.max()))  # max scale = f * 2**exp with 0.5 <= f < 1
        shift = MULT_BITS - exp
        mult = torch.round(scale * (2.0**shift)).to(torch.int64).clamp(min=1)
        return cls(q, mult, shift)


@dataclass
class Layer:
    qkv: QMatrix  # input RMSNorm gain and 1/sqrt(head_dim) folded in
    o: QMatrix
    gate_up: QMatrix  # post-attention RMSNorm gain folded in
    down: QMatrix


def query_bits_limit(head_dim: int) -> int:
    """The most bits of a query magnitude with the int8 key cache: its products with 7-bit keys stay
    below 2**24, exact in float32 (11 for head_dim 64). A model file may set fewer ("query_bits")."""
    return (((1 << 24) - 1) // (127 * head_dim)).bit_length() - 1


@dataclass
class IntModel:
    config: dict
    embed: QMatrix
    layers: list[Layer]
    head: QMatrix  # final RMSNorm gain folded in
    tables: dict[str, torch.Tensor]
    model_id: str = ""
    path: Path | None = field(default=None)

    @property
    def vocab_size(self) -> int:
        return self.config["vocab_size"]

    @property
    def context(self) -> int:
        return self.config["context"]

    def check_bounds(self) -> None:
        """Assert the properties that make every product in the engine exact."""
        c = self.config
        if c.get("format") != FORMAT:
            raise ModelError(f"unknown model format {c.get('format')!r}")
        if c.get("key_cache", "f64") not in ("f64", "int8"):
            raise ModelError(f"unknown key cache {c['key_cache']!r}: made by a newer lmarc?")
        if c.get("value_cache", "f64") not in ("f64", "int8"):
            raise ModelError(f"unknown value cache {c['value_cache']!r}: made by a newer lmarc?")
        ab = c.get("att_exp_bits")
        if ab is not None and not (type(ab) is int and 8 <= ab <= 15 and int(self.tables["att_exp"].max()) < 1 << ab):
            raise ModelError(f"attention exp table of {ab!r} bits does not match the file: made by a newer lmarc?")
        qb = c.get("query_bits")
        if qb is not None and not (c.get("key_cache") == "int8" and type(qb) is int
                                   and 1 <= qb <= query_bits_limit(c["head_dim"])):
            raise ModelError(f"query bits {qb!r} do not fit this model's keys: made by a newer lmarc?")
        if c.get("value_cache") == "int8" and c.get("key_cache") != "int8":
            raise ModelError("int8 values need int8 keys (the engine's byte cache holds both)")
        if c.get("value_cache") == "int8" and 127 * 127 * c["context"] >= 1 << 31:
            raise ModelError("context too long for int32 sums of int8 values")  # kernels.attend_bytes
        if c["head_dim"] > F32_EXACT_K or c["hidden_size"] > 16384:
            raise ModelError("model dimensions exceed the exactness bounds")
        for name, m in self._matrices():
            if m.q.dtype != torch.int8 or int(m.q.abs().max()) > 127:
                raise ModelError(f"{name}: weights must be int8 in [-127, 127]")
            if int(m.mult.min()) < 1 or int(m.mult.max()) >= 1 << (MULT_BITS + 1):
                raise ModelError(f"{name}: row multipliers out of range")
        if int(self.tables["att_exp"][-1]) != 0 or int(self.tables["freq_exp"][-1]) != 0:
            raise ModelError("exp tables must end in 0")

    def _matrices(self):
        yield "embed", self.embed
        yield "head", self.head
        for i, layer in enumerate(self.layers):
            for n in ("qkv", "o", "gate_up", "down"):
                yield f"layers.{i}.{n}", getattr(layer, n)

    def save(self, path: Path) -> str:
        tensors: dict[str, torch.Tensor] = {}
        shifts = {}
        for name, m in self._matrices():
            tensors[f"{name}.q"] = m.q.contiguous()
            tensors[f"{name}.mult"] = m.mult.contiguous()
            shifts[name] = m.shift
        for name, t in self.tables.items():
            tensors[f"tables.{name}"] = t.contiguous()
        meta = dict(self.config, shifts=shifts)
        save_file(tensors, str(path), metadata={"lmarc": json.dumps(meta, sort_keys=True)})
        return file_sha256(path)


def load(path: Path) -> IntModel:
    """Load and validate an integer model file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads(f.metadata()["lmarc"])
        tensors = load_file(str(path))
    except (OSError, KeyError, ValueError, json.JSONDecodeError) as e:
        raise ModelError(f"cannot read model file {path}: {e}") from e
    shifts = meta.pop("shifts")

    def qm(name: str) -> QMatrix:
        return QMatrix(tensors[f"{name}.q"], tensors[f"{name}.mult"], int(shifts[name]))

    layers = [
        Layer(*(qm(f"layers.{i}.{n}") for n in ("qkv", "o", "gate_up", "down")))
        for i in range(meta["num_layers"])
    ]
    tables = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("tables.")}
    model = IntModel(meta, qm("embed"), layers, qm("head"), tables, file_sha256(path), path)
    model.check_bounds()
    return model


def _tables(head_dim: int, context: int, rope_theta: float, att_bits: int | None) -> dict[str, torch.Tensor]:
    half = head_dim // 2
    inv_freq = [1.0 / (rope_theta ** (2 * i / head_dim)) for i in range(half)]
    cos = [[round(math.cos(p * f) * (1 << ROPE_FRAC)) for f in inv_freq] for p in range(context)]
    sin = [[round(math.sin(p * f) * (1 << ROPE_FRAC)) for f in inv_freq] for p in range(context)]
    fre = [round(math.exp(-i / (1 << ATT_FRAC)) * (1 << FREQ_EXP_FRAC)) for i in range(24 << ATT_FRAC)]
    fre[-1] = 0
    n = 2 * SIG_RANGE << SIG_STEP_FRAC
    sig = [
        round((1 << SIG_FRAC) / (1 + math.exp(-(i - n // 2) / (1 << SIG_STEP_FRAC)))) for i in range(n)
    ]
    i64 = torch.int64
    return {
        "rope_cos": torch.tensor(cos, dtype=i64),
        "rope_sin": torch.tensor(sin, dtype=i64),
        "att_exp": att_exp_table(att_bits),
        "freq_exp": torch.tensor(fre, dtype=i64),
        "sigmoid": torch.tensor(sig, dtype=i64),
    }


def att_exp_table(bits: int | None = None) -> torch.Tensor:
    """Attention's exp table, indexed by a score's distance below its row's maximum in steps of
    2**-ATT_FRAC, 16 nats long, last entry 0. Without bits, Q15 with top entry 2**15 (the first
    programs); with bits, Q(bits) capped at 2**bits - 1, so that every entry fits that many bits:
    `kernels.attend_bytes` writes each weight e_j << (ev_j - low) as base-128 digits, and at 11
    bits two digits hold every weight of a row whose value exponents span up to 3, where Q15 took
    three. (Over whole chunks the default model's value exponents span more: 10-13 on a real
    decode step at position 544, so its rows take three or four.)"""
    frac = ATT_EXP_FRAC if bits is None else bits
    top = (1 << 62) if bits is None else (1 << bits) - 1
    att = [min(top, round(math.exp(-i / (1 << ATT_FRAC)) * (1 << frac))) for i in range(16 << ATT_FRAC)]
    att[-1] = 0
    return torch.tensor(att, dtype=torch.int64)


def reprogram(model: IntModel, **program) -> IntModel:
    """The same weights under other integer program settings (config keys key_cache, value_cache,
    query_bits, att_exp_bits; None removes one): another model file with its own id, whose
    arithmetic is the new program's. The attention exp table follows att_exp_bits."""
    config = {k: v for k, v in {**model.config, **program}.items() if v is not None}
    tables = {**model.tables, "att_exp": att_exp_table(config.get("att_exp_bits"))}
    new = IntModel(config, model.embed, model.layers, model.head, tables)
    new.check_bounds()
    return new


def convert_llama(hf_model, extra: dict | None = None, context: int | None = None) -> IntModel:
    """Convert a transformers LlamaForCausalLM (SiLU-gated MLP, RMSNorm, RoPE, no biases)."""
    cfg = hf_model.config
    if getattr(cfg, "hidden_act", "silu") != "silu":
        raise ModelError(f"unsupported activation {cfg.hidden_act}")
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        raise ModelError("biases are not supported")
    rope = dict(getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {})
    if rope.get("rope_type", "default") != "default":
        raise ModelError(f"rope scaling {rope.get('rope_type')!r} is not supported")
    d = cfg.hidden_size
    heads = cfg.num_attention_heads
    kv_heads = cfg.num_key_value_heads or heads
    head_dim = getattr(cfg, "head_dim", None) or d // heads
    rope_theta = rope.get("rope_theta") or getattr(cfg, "rope_theta", None) or 10000.0
    ctx = context or cfg.max_position_embeddings
    sd = {k: v.detach().to(torch.float64).cpu() for k, v in hf_model.state_dict().items()}
    layers = []
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        g1 = sd[p + "input_layernorm.weight"]
        g2 = sd[p + "post_attention_layernorm.weight"]
        wq = sd[p + "self_attn.q_proj.weight"] / math.sqrt(head_dim)
        qkv = torch.cat([wq, sd[p + "self_attn.k_proj.weight"], sd[p + "self_attn.v_proj.weight"]]) * g1
        gate_up = torch.cat([sd[p + "mlp.gate_proj.weight"], sd[p + "mlp.up_proj.weight"]]) * g2
        layers.append(
            Layer(
                QMatrix.from_float(qkv),
                QMatrix.from_float(sd[p + "self_attn.o_proj.weight"]),
                QMatrix.from_float(gate_up),
                QMatrix.from_float(sd[p + "mlp.down_proj.weight"]),
            )
        )
    embed = sd["model.embed_tokens.weight"]
    head = sd.get("lm_head.weight", embed) * sd["model.norm.weight"]
    config = {
        "format": FORMAT,
        "hidden_size": d,
        "num_layers": cfg.num_hidden_layers,
        "num_heads": heads,
        "num_kv_heads": kv_heads,
        "head_dim": head_dim,
        "intermediate_size": cfg.intermediate_size,
        "vocab_size": cfg.vocab_size,
        "context": ctx,
        **(extra or {}),
    }
    tables = _tables(head_dim, ctx, rope_theta, config.get("att_exp_bits"))
    model = IntModel(config, QMatrix.from_float(embed), layers, QMatrix.from_float(head), tables)
    model.check_bounds()
    return model
