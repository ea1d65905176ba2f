#!/usr/bin/env python3
"""Writes the GGUF parser's regression corpus: small hand-made files, valid and malformed, each
with the outcome the parser must give. tests/fixtures/gguf-corpus/EXPECTED lists them as
`name<TAB>ok` or `name<TAB>error<TAB>text the error message must contain`. Files found by
`cargo fuzz` are added to the same directory and listed by hand.

Usage: tools/gen-gguf-corpus.py  (rewrites the generated entries; keeps hand-listed ones)"""
import os
import struct

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "gguf-corpus")
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)


def s(text):
    b = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(b)) + b


def kv(key, vtype, payload):
    return s(key) + struct.pack("<I", vtype) + payload


def header(n_tensors, n_kv, version=3):
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)


def tensor(name, dims, ttype, offset):
    return s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", ttype, offset)


def pad(b, align=32):
    return b + b"\0" * (-len(b) % align)


def file(kvs, tensors, data=b"", version=3, align=32):
    head = header(len(tensors), len(kvs), version) + b"".join(kvs) + b"".join(tensors)
    return pad(head, align) + data


ALL_TYPES = [
    kv("u8", U8, b"\x07"), kv("i8", I8, b"\xf9"), kv("u16", U16, struct.pack("<H", 9)),
    kv("i16", I16, struct.pack("<h", -9)), kv("u32", U32, struct.pack("<I", 9)),
    kv("i32", I32, struct.pack("<i", -9)), kv("f32", F32, struct.pack("<f", 0.5)),
    kv("bool", BOOL, b"\x01"), kv("str", STRING, s("héllo")), kv("u64", U64, struct.pack("<Q", 9)),
    kv("i64", I64, struct.pack("<q", -9)), kv("f64", F64, struct.pack("<d", 0.5)),
    kv("arr", ARRAY, struct.pack("<IQ", STRING, 2) + s("a") + s("b")),
    kv("nested", ARRAY, struct.pack("<IQ", ARRAY, 1) + struct.pack("<IQ", I32, 2) + struct.pack("<ii", 1, 2)),
]
F32_TENSOR = tensor("t", [4], 0, 0)
F32_DATA = struct.pack("<4f", 1, 2, 3, 4)


def nested(depth):
    payload = struct.pack("<IQ", I32, 0)
    for _ in range(depth):
        payload = struct.pack("<IQ", ARRAY, 1) + payload
    return payload


valid = file(ALL_TYPES, [F32_TENSOR], F32_DATA)
CASES = {
    "empty": (b"", "error", "not a GGUF file"),
    "magic-only": (b"GGUF", "error", "truncated at byte 4"),
    "minimal-v3": (header(0, 0), "ok", None),
    "minimal-v2": (header(0, 0, version=2), "ok", None),
    "every-value-type": (valid, "ok", None),
    "version-1": (header(0, 0, version=1), "error", "version 1"),
    "big-endian": (b"GGUF" + struct.pack(">IQQ", 3, 0, 0), "error", "big-endian"),
    "truncated-in-key": (valid[:30], "error", "metadata count claims 14 entries"),
    "truncated-in-tensor-info": (valid[: len(valid) - len(F32_DATA) - 40], "error", "truncated"),
    "truncated-in-data": (valid[:-1], "error", "outside the file"),
    "tensor-count-huge": (header(1 << 60, 0), "error", "tensor count claims"),
    "kv-count-max": (header(0, 2**64 - 1), "error", "metadata count claims"),
    "key-length-4g": (header(0, 1) + struct.pack("<Q", 4 << 30) + b"\0" * 16, "error", "needs 4294967296 bytes"),
    "array-length-huge": (file([kv("a", ARRAY, struct.pack("<IQ", U32, 1 << 40))], []), "error", "array 'a' claims"),
    "nesting-100": (file([kv("deep", ARRAY, nested(100))], []), "error", "nested deeper"),
    "bool-2": (file([kv("b", BOOL, b"\x02")], []), "error", "neither 0 nor 1"),
    "unknown-value-type": (file([kv("x", 13, b"\0" * 8)], []), "error", "unknown metadata value type 13"),
    "invalid-utf8-key": (file([kv(b"\xff\xfe", U8, b"\0")], []), "error", "not valid UTF-8"),
    "duplicate-key": (file([kv("k", U8, b"\0"), kv("k", U8, b"\1")], []), "error", "duplicate metadata key 'k'"),
    "alignment-48": (file([kv("general.alignment", U32, struct.pack("<I", 48))], []), "error", "power of two"),
    "alignment-u64": (file([kv("general.alignment", U64, struct.pack("<Q", 32))], []), "error", "general.alignment"),
    "alignment-64": (file([kv("general.alignment", U32, struct.pack("<I", 64))], [F32_TENSOR], F32_DATA, align=64), "ok", None),
    "duplicate-tensor": (file([], [tensor("t", [4], 0, 0), tensor("t", [4], 0, 32)], F32_DATA + b"\0" * 48), "error", "duplicate tensor name 't'"),
    "five-dims": (file([], [tensor("t", [1] * 5, 0, 0)], F32_DATA), "error", "5 dimensions"),
    "unknown-tensor-type": (file([], [tensor("t", [4], 4, 0)], F32_DATA), "error", "unknown type id 4"),
    "shape-overflow": (file([], [tensor("t", [1 << 32, 1 << 32], 0, 0)]), "error", "overflows"),
    "partial-block": (file([], [tensor("t", [33], 8, 0)], b"\0" * 64), "error", "not a multiple of the block size 32"),
    "misaligned-offset": (file([], [tensor("t", [4], 0, 1)], F32_DATA + b"\0" * 32), "error", "not a multiple of the alignment"),
    "offset-past-end": (file([], [tensor("t", [4], 0, 2**64 - 32)], F32_DATA), "error", "outside the file"),
    "overlapping-tensors": (file([], [tensor("a", [8], 0, 0), tensor("b", [8], 0, 0)], b"\0" * 32), "error", "overlap"),
}


def main():
    os.makedirs(OUT, exist_ok=True)
    manifest = os.path.join(OUT, "EXPECTED")
    kept = []
    if os.path.exists(manifest):
        for line in open(manifest):
            name = line.split("\t")[0]
            if line.strip() and not line.startswith("#") and name not in CASES:
                kept.append(line.rstrip("\n"))
    lines = ["# name<TAB>ok | name<TAB>error<TAB>substring of the error message (see tools/gen-gguf-corpus.py)"]
    for name, (data, outcome, needle) in CASES.items():
        with open(os.path.join(OUT, name + ".bin"), "wb") as f:
            f.write(data)
        lines.append(f"{name}\t{outcome}" + (f"\t{needle}" if needle else ""))
    with open(manifest, "w") as f:
        f.write("\n".join(lines + kept) + "\n")


if __name__ == "__main__":
    main()
