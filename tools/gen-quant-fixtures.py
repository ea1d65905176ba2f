#!/usr/bin/env python3
"""Generate bit-exact reference fixtures for llamart's quantization code (runtime/src/quant).

Two modes:

  gen-quant-fixtures.py [--out runtime/tests/fixtures/quant]
      Seeded random (plus hand-picked edge-case) blocks of every format llamart dequantizes,
      dequantized with the `gguf` package's NumPy reference (`gguf.quants.dequantize`), and seeded
      f32 vectors quantized to Q8_0 with `gguf.quants.quantize`. gguf-py implements neither Q8_1 nor
      Q8_K, so for those this script carries a NumPy float32 transcription of ggml's C reference
      (`quantize_row_q8_1_ref`, `quantize_row_q8_K_ref`, `dequantize_row_q8_K`); see `q8_1_ref`,
      `q8_k_ref` below. Files written (all little-endian):
        <type>.blocks.bin        raw blocks (or raw f32/f16/bf16 elements)
        <type>.f32.bin           their dequantized values
        <type>.quant-in.f32.bin  f32 input vector            (q8_0, q8_1, q8_K only)
        <type>.quant-out.bin     the blocks it quantizes to  (q8_0, q8_1, q8_K only)
        README.md                versions and provenance
      <type> is ggml's name, as `GgmlType::name` prints it (q4_0, q4_K, bf16, ...).

  gen-quant-fixtures.py --real-tensors [--models-dir models-cache] [--real-out tests/fixtures/real-tensors.json]
      For each test model, one tensor per tensor type present (the smallest, preferring 2-D for
      quantized types), dequantized with gguf-py; writes its sha256 (over the little-endian f32
      values in file order) and first 8 values.

Needs `pip install gguf numpy` (a scratch venv is enough: this is not a project dependency).
Output is deterministic for a given gguf/numpy version.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import warnings
from pathlib import Path

import numpy as np

import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import np_roundf

ROOT = Path(__file__).resolve().parent.parent
SEED = 0x5EED_0001

QK = 32
QK_K = 256

# type -> (block bytes, block length, byte offsets of f16 fields), as in ggml-common.h.
# (gguf-py's GGML_QUANT_SIZES says 40 bytes for Q8_1, the pre-2024 layout with f32 d/s; ggml's
# block_q8_1 is 36 bytes with f16 d/s, which is what llamart and GGUF files use.)
LAYOUT = {
    T.Q4_0: (18, QK, [0]),
    T.Q4_1: (20, QK, [0, 2]),
    T.Q5_0: (22, QK, [0]),
    T.Q5_1: (24, QK, [0, 2]),
    T.Q8_0: (34, QK, [0]),
    T.Q8_1: (36, QK, [0, 2]),
    T.Q2_K: (84, QK_K, [80, 82]),
    T.Q3_K: (110, QK_K, [108]),
    T.Q4_K: (144, QK_K, [0, 2]),
    T.Q5_K: (176, QK_K, [0, 2]),
    T.Q6_K: (210, QK_K, [208]),
    T.Q8_K: (292, QK_K, []),  # d is an f32 at offset 0, handled separately
}

GGML_NAME = {t: t.name.lower().replace("_k", "_K") for t in T}


def ggml_name(t: T) -> str:
    """ggml's spelling of a type name: q4_K, q8_0, bf16, f32."""
    return GGML_NAME[t]


# ---------------------------------------------------------------------------------------------
# Dequantization fixtures


def special_f16() -> np.ndarray:
    """f16 scale values that exercise edge cases: signed zeros, subnormals, extremes. No inf/NaN."""
    bits = [
        0x0000, 0x8000,  # +0, -0
        0x0001, 0x8001,  # smallest subnormal
        0x03FF, 0x83FF,  # largest subnormal
        0x0155, 0x0200,  # more subnormals
        0x0400, 0x8400,  # smallest normal
        0x7BFF, 0xFBFF,  # +-65504
        0x3C00, 0xBC00,  # +-1
        0x3555, 0x2E66,  # 1/3-ish, 0.1-ish
        0x1400, 0x9400,  # +-2^-10
    ]
    return np.array(bits, dtype=np.uint16)


def random_f16(rng: np.random.Generator, n: int) -> np.ndarray:
    """Finite f16 bit patterns: mostly log-uniform magnitudes from 2^-20 to 2^8, random sign."""
    mag = np.exp2(rng.uniform(-20, 8, size=n))
    sign = rng.choice([-1.0, 1.0], size=n)
    return (mag * sign).astype(np.float16).view(np.uint16)


def f16_field_values(rng: np.random.Generator, n_blocks: int, field: int) -> np.ndarray:
    """Per-block values for one f16 field: the special values first (rotated per field so that
    d and dmin/m see different combinations), random ones after."""
    special = np.roll(special_f16(), 3 * field)
    vals = random_f16(rng, n_blocks)
    k = min(len(special), n_blocks)
    vals[:k] = special[:k]
    return vals


def make_blocks(rng: np.random.Generator, qtype: T, n_blocks: int) -> np.ndarray:
    size, _, f16_offsets = LAYOUT[qtype]
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    # Quant-byte edge patterns in the last blocks: all zero bits, all one bits, a ramp that walks
    # every byte value, and alternating nibbles. (Scales are set below for every block.)
    raw[-1, :] = 0x00
    raw[-2, :] = 0xFF
    raw[-3, :] = np.arange(size, dtype=np.uint32).astype(np.uint8) * np.uint8(7)
    raw[-4, :] = 0x5A
    raw[-5, :] = 0xA5
    raw[-6, :] = np.arange(size, dtype=np.uint32).astype(np.uint8)[::-1]
    for field, off in enumerate(f16_offsets):
        raw[:, off : off + 2] = f16_field_values(rng, n_blocks, field).reshape(-1, 1).view(np.uint8)
    if qtype == T.Q8_K:
        d = rng.standard_normal(n_blocks).astype(np.float32) * np.exp2(rng.uniform(-30, 10, n_blocks)).astype(np.float32)
        special = np.array([0.0, -0.0, 1e-40, -1e-44, 1.0, -1.0, 3.4e38 / 256, 1.1754944e-38], dtype=np.float32)
        d[: len(special)] = special
        raw[:, 0:4] = d.reshape(-1, 1).view(np.uint8)
    return raw


def q8_1_dequant_ref(blocks: np.ndarray) -> np.ndarray:
    """d * qs for 36-byte Q8_1 blocks (not in gguf-py; `s` is ignored)."""
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)
    qs = blocks[:, 4:36].copy().view(np.int8).astype(np.float32)
    return (qs * d).astype(np.float32)


def q8_k_dequant_ref(blocks: np.ndarray) -> np.ndarray:
    """ggml's dequantize_row_q8_K: y = d * qs (not in gguf-py)."""
    d = blocks[:, 0:4].copy().view(np.float32)
    qs = blocks[:, 4:260].copy().view(np.int8).astype(np.float32)
    return (d * qs).astype(np.float32)


def dequant_fixture(rng: np.random.Generator, qtype: T) -> tuple[bytes, np.ndarray]:
    if qtype == T.F32:
        vals = (rng.standard_normal(256) * np.exp2(rng.uniform(-40, 40, 256))).astype(np.float32).view(np.uint32)
        special = np.array(
            [0x00000000, 0x80000000, 0x00000001, 0x807FFFFF, 0x7F7FFFFF, 0xFF7FFFFF, 0x7F800000, 0xFF800000,
             0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FBFFFFF, 0xFFC12345, 0x3F800000],
            dtype=np.uint32,
        )
        vals[: len(special)] = special
        raw = vals.view(np.uint8)
    elif qtype in (T.F16, T.BF16):
        # Every 16-bit pattern, NaNs included: the conversion must be exact for all of them.
        raw = np.arange(1 << 16, dtype=np.uint32).astype("<u2").view(np.uint8)
    else:
        n_blocks = 96 if LAYOUT[qtype][1] == QK else 40
        raw = make_blocks(rng, qtype, n_blocks)

    if qtype == T.Q8_1:
        out = q8_1_dequant_ref(raw)
    elif qtype == T.Q8_K:
        out = q8_k_dequant_ref(raw)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = gguf.quants.dequantize(raw.reshape(-1), qtype)
    out = np.ascontiguousarray(out, dtype=np.float32).reshape(-1)
    return raw.tobytes(), out


# ---------------------------------------------------------------------------------------------
# Quantization fixtures


def quant_inputs(rng: np.random.Generator, block_len: int, n_blocks: int) -> np.ndarray:
    """Seeded f32 blocks: varied magnitudes, exact zeros, signed zeros, and exact rounding ties.

    Tie blocks hold one element of magnitude 127 * 2^e, so the scale is exactly 2^e (Q8_0/Q8_1:
    d = amax/127) or its inverse is (Q8_K: iscale = -127/max), and the other elements are
    (k + 0.5) * 2^e, which land exactly halfway between two integers after scaling.
    """
    blocks = []
    # Exact ties, both signs of the extreme, several exponents.
    for e, sign in [(0, 1.0), (0, -1.0), (-3, 1.0), (5, -1.0), (-20, -1.0), (10, 1.0)]:
        k = rng.integers(-127, 127, size=block_len).astype(np.float64)
        x = (k + 0.5) * 2.0**e
        x[rng.integers(0, block_len)] = sign * 127 * 2.0**e
        blocks.append(x)
    # All ties of one parity pattern: 0.5, 1.5, ... cover round-half-even vs away explicitly.
    x = np.tile(np.arange(block_len // 2, dtype=np.float64) % 127 + 0.5, 2)[:block_len]
    x[block_len // 2 :] *= -1
    x[3] = 127.0
    blocks.append(x)
    # All zeros, signed zeros, a single nonzero, zeros mixed into random data.
    blocks.append(np.zeros(block_len))
    blocks.append(np.where(np.arange(block_len) % 2 == 0, -0.0, 0.0))
    x = np.zeros(block_len)
    x[block_len - 1] = -3.75
    blocks.append(x)
    # Max magnitude shared by two elements of opposite sign (first one wins in Q8_K).
    x = rng.standard_normal(block_len)
    x[1], x[7] = 2.0, -2.0
    blocks.append(x)
    x = rng.standard_normal(block_len)
    x[1], x[7] = -2.0, 2.0
    blocks.append(x)
    # Random blocks of widely varying magnitude: from d underflowing f16 (1e-30) to d overflowing
    # it (amax 1e7 -> d ~ 78740 > 65504 -> inf), with a sprinkling of exact zeros.
    while len(blocks) < n_blocks:
        scale = 10.0 ** rng.choice([-30, -9, -6, -4, -2, 0, 0, 0, 1, 2, 3, 6, 7])
        x = rng.standard_normal(block_len) * scale
        x[rng.random(block_len) < 0.1] = 0.0
        if rng.random() < 0.3:
            x = np.abs(x) * rng.choice([-1.0, 1.0])  # one-signed block
        blocks.append(x)
    return np.concatenate(blocks[:n_blocks]).astype(np.float32)


def q8_1_ref(x: np.ndarray) -> np.ndarray:
    """NumPy float32 transcription of ggml's quantize_row_q8_1_ref (gguf-py has no Q8_1).

    amax over |x|; d = amax / 127 (f32); id = d ? 1/d : 0; qs = roundf(x * id) (half away from
    zero); d stored as f16 (round to nearest even); s = f16(sum(qs) * d) with the integer sum
    converted to f32 first.
    """
    x = x.reshape(-1, QK).astype(np.float32)
    amax = np.abs(x).max(axis=1, keepdims=True)
    d = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        idv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    qs = np_roundf((x * idv).astype(np.float32)).astype(np.int8)
    s = qs.astype(np.int32).sum(axis=1, keepdims=True).astype(np.float32) * d
    with np.errstate(over="ignore"):
        d16 = d.astype(np.float16)
        s16 = s.astype(np.float32).astype(np.float16)
    return np.concatenate([d16.view(np.uint8), s16.view(np.uint8), qs.view(np.uint8)], axis=1)


def nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's nearest_int: add 1.5 * 2^23 in f32 and read the mantissa (round half to even)."""
    val = (v.astype(np.float32) + np.float32(12582912.0)).astype(np.float32)
    return (val.view(np.int32) & np.int32(0x007FFFFF)) - np.int32(0x00400000)


def q8_k_ref(x: np.ndarray) -> np.ndarray:
    """NumPy float32 transcription of ggml's quantize_row_q8_K_ref (gguf-py has no Q8_K).

    max = the first element of largest |x| (strict >, so the first wins ties); an all-zero block
    gives d = 0, qs = 0 (ggml leaves bsums as they were; we and llamart write 0); otherwise
    iscale = -127 / max (f32), qs = MIN(127, nearest_int(iscale * x)), bsums[j] = sum of qs[16j..16j+16],
    d = 1 / iscale kept as f32.
    """
    x = x.reshape(-1, QK_K).astype(np.float32)
    out = np.zeros((x.shape[0], 292), dtype=np.uint8)
    for i, blk in enumerate(x):
        ax = np.abs(blk)
        j = int(np.argmax(ax))  # first occurrence of the maximum, like the strict `>` loop
        amax, mx = ax[j], blk[j]
        if amax == 0:
            continue
        iscale = np.float32(-127.0) / mx
        q = np.minimum(np.int32(127), nearest_int((iscale * blk).astype(np.float32))).astype(np.int8)
        bsums = q.astype(np.int32).reshape(16, 16).sum(axis=1).astype(np.int16)
        d = np.float32(1.0) / iscale
        out[i, 0:4] = np.array([d], dtype="<f4").view(np.uint8)
        out[i, 4:260] = q.view(np.uint8)
        out[i, 260:292] = bsums.astype("<i2").view(np.uint8)
    return out


def quant_fixture(rng: np.random.Generator, qtype: T) -> tuple[np.ndarray, bytes]:
    if qtype == T.Q8_0:
        x = quant_inputs(rng, QK, 128)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # f16 overflow of d for the 1e7 blocks is intended
            out = gguf.quants.quantize(x, T.Q8_0)
    elif qtype == T.Q8_1:
        x = quant_inputs(rng, QK, 128)
        out = q8_1_ref(x)
    elif qtype == T.Q8_K:
        x = quant_inputs(rng, QK_K, 32)
        out = q8_k_ref(x)
    else:
        raise ValueError(qtype)
    return x, np.ascontiguousarray(out, dtype=np.uint8).tobytes()


def self_check() -> None:
    """Sanity-check the Q8_1/Q8_K transcriptions against gguf-py's Q8_0 where they overlap and
    against hand-computed values, so a slip in them cannot silently become the fixture."""
    rng = np.random.default_rng(1)
    x = quant_inputs(rng, QK, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = gguf.quants.quantize(x, T.Q8_0).reshape(-1, 34)
    b = q8_1_ref(x)
    assert (a[:, :2] == b[:, :2]).all() and (a[:, 2:] == b[:, 4:]).all(), "q8_1 d/qs disagree with gguf Q8_0"
    t = np.zeros(QK_K, dtype=np.float32)
    t[0], t[1], t[2], t[3] = -127.0, 2.5, 3.5, -0.5
    blk = q8_k_ref(t)[0]
    assert blk[0:4].view("<f4")[0] == 1.0
    assert list(blk[4:8].view(np.int8)) == [-127, 2, 4, 0]
    assert blk[260:262].view("<i2")[0] == -121


def write_quant_fixtures(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    self_check()
    dequant_types = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q8_1,
                     T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.Q8_K]
    lines = []
    total = 0
    for i, qtype in enumerate(dequant_types):
        rng = np.random.default_rng([SEED, int(qtype)])
        raw, out = dequant_fixture(rng, qtype)
        name = ggml_name(qtype)
        (out_dir / f"{name}.blocks.bin").write_bytes(raw)
        (out_dir / f"{name}.f32.bin").write_bytes(out.astype("<f4").tobytes())
        total += len(raw) + 4 * out.size
        ref = "NumPy transcription of ggml (not in gguf-py)" if qtype in (T.Q8_1, T.Q8_K) else "gguf.quants.dequantize"
        lines.append(f"| `{name}.blocks.bin` / `{name}.f32.bin` | {out.size} values | {ref} |")
    for qtype in [T.Q8_0, T.Q8_1, T.Q8_K]:
        rng = np.random.default_rng([SEED, 1000 + int(qtype)])
        x, out = quant_fixture(rng, qtype)
        name = ggml_name(qtype)
        (out_dir / f"{name}.quant-in.f32.bin").write_bytes(x.astype("<f4").tobytes())
        (out_dir / f"{name}.quant-out.bin").write_bytes(out)
        total += 4 * x.size + len(out)
        ref = "gguf.quants.quantize" if qtype == T.Q8_0 else "NumPy transcription of ggml's quantize_row_*_ref"
        lines.append(f"| `{name}.quant-in.f32.bin` / `{name}.quant-out.bin` | {x.size} values | {ref} |")

    readme = f"""# Quantization fixtures

Generated by `tools/gen-quant-fixtures.py` (seed `{SEED:#x}`) with
gguf {gguf_version()} and numpy {np.__version__}; checked by `runtime/tests/quant_golden.rs`,
which compares every value bit for bit (`f32::to_bits`, so signed zeros and NaN payloads count).

All files are little-endian. `*.blocks.bin` are raw ggml blocks (raw elements for f32/f16/bf16:
the f16 and bf16 files hold all 65536 bit patterns); `*.f32.bin` the values they dequantize to;
`*.quant-in.f32.bin` f32 vectors and `*.quant-out.bin` the blocks they quantize to.

Blocks are seeded random bytes with f16 scales replaced by a mix of edge cases (signed zeros,
subnormals, +-65504, +-1) and log-uniform random values; the last six blocks of each type have
all-zero, all-one, ramp and alternating quant bytes. No scale is inf or NaN. Quantization inputs
include exact rounding ties (`x * id == k + 0.5`), exact and signed zeros, all-zero blocks, and
magnitudes from 1e-30 (f16 scale underflows) to 1e7 (f16 scale overflows to inf).

gguf-py implements neither Q8_1 nor Q8_K; their expected values come from a NumPy float32
transcription of ggml's C reference inside the script (`q8_1_ref`, `q8_k_ref`, and `d * qs` for
dequantization), which the script cross-checks against gguf-py's Q8_0 where the formats agree.
For all-zero Q8_K blocks ggml leaves `bsums` unwritten; the fixtures (like llamart) have zeros.

f16 NaNs convert as NumPy converts them: sign and payload kept, signalling NaNs stay signalling
(ggml's own conversion, F16C or software, returns them quieted). Finite values and infinities
are exact either way.

| files | elements | reference |
| --- | --- | --- |
""" + "\n".join(lines) + f"\n\nTotal: {total} bytes.\n"
    (out_dir / "README.md").write_text(readme)
    print(f"wrote {len(lines)} fixture pairs, {total} bytes, to {out_dir}")


def gguf_version() -> str:
    try:
        from importlib.metadata import version

        return version("gguf")
    except Exception:  # pragma: no cover
        return "unknown"


# ---------------------------------------------------------------------------------------------
# Real tensors

MODELS = ["smollm2-135m-q4_1", "qwen2.5-0.5b-q4_k_m", "gemma3-270m-q4_k_m"]
UNQUANTIZED = {T.F32, T.F16, T.BF16}


def write_real_tensors(models_dir: Path, out_file: Path) -> None:
    entries = []
    for model in MODELS:
        path = models_dir / f"{model}.gguf"
        if not path.exists():
            sys.exit(f"missing {path}: run tools/fetch-models first")
        reader = gguf.GGUFReader(path)
        by_type: dict[T, list] = {}
        for t in reader.tensors:
            by_type.setdefault(T(t.tensor_type), []).append(t)
        for qtype in sorted(by_type, key=int):
            cands = by_type[qtype]
            if qtype not in UNQUANTIZED:
                two_d = [t for t in cands if len(t.shape) == 2]
                cands = two_d or cands
            t = min(cands, key=lambda t: (int(t.n_elements), t.name))
            vals = gguf.quants.dequantize(np.asarray(t.data), qtype)
            vals = np.ascontiguousarray(vals, dtype="<f4").reshape(-1)
            assert vals.size == int(t.n_elements), (model, t.name)
            entries.append({
                "model": model,
                "tensor": t.name,
                "type": ggml_name(qtype),
                "n_elements": int(t.n_elements),
                "f32_sha256": hashlib.sha256(vals.tobytes()).hexdigest(),
                "first8": [float(v) for v in vals[:8]],
            })
            print(f"{model}: {t.name} {ggml_name(qtype)} {int(t.n_elements)}")
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps(entries, indent=2) + "\n")
    print(f"wrote {len(entries)} entries to {out_file} (gguf {gguf_version()})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "runtime/tests/fixtures/quant")
    ap.add_argument("--real-tensors", action="store_true", help="write the real-tensor manifest instead")
    ap.add_argument("--models-dir", type=Path, default=ROOT / "models-cache")
    ap.add_argument("--real-out", type=Path, default=ROOT / "tests/fixtures/real-tensors.json")
    args = ap.parse_args()
    if args.real_tensors:
        write_real_tensors(args.models_dir, args.real_out)
    else:
        write_quant_fixtures(args.out)


if __name__ == "__main__":
    main()
