"""The Hugging Face `tokenizers` side of the tokenizer benchmark (and a differential check).

    python3 host/benches/tokenizer_hf.py MODEL.gguf CORPUS.txt [--ours IDS.json]

Builds an HF tokenizer from the GGUF's own vocabulary and merges, configured as Qwen2's
tokenizer.json is (NFC normalizer, the qwen2 split regex, byte-level, BPE without unk), encodes
the corpus on one thread (best of 5) and prints one line per configuration, in the same columns as
the Rust bench. With --ours (the JSON of `host tokenize MODEL - --json < CORPUS`), it also
compares the ids with the no-NFC configuration (the reference llama.cpp does not normalize).
"""

import json
import os
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")

import gguf  # noqa: E402
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers  # noqa: E402
from tokenizers import AddedToken  # noqa: E402

QWEN2_HF_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def field_strings(r, key):
    f = r.fields[key]
    return [bytes(f.parts[i]).decode("utf-8") for i in f.data]


def build(path, nfc):
    r = gguf.GGUFReader(path)
    tokens = field_strings(r, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ")) for m in field_strings(r, "tokenizer.ggml.merges")]
    tf = r.fields["tokenizer.ggml.token_type"]
    types = [int(tf.parts[i][0]) for i in tf.data]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    if nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_HF_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    specials = [AddedToken(t, special=(ty == 3), normalized=False) for t, ty in zip(tokens, types) if ty in (3, 4)]
    tok.add_tokens(specials)
    return tok


def main():
    model, corpus = sys.argv[1], sys.argv[2]
    ours = sys.argv[sys.argv.index("--ours") + 1] if "--ours" in sys.argv else None
    text = open(corpus, encoding="utf-8").read()
    nbytes = len(text.encode("utf-8"))
    import tokenizers

    # Line-aligned chunks of at least 4 KiB: HF's per-call overhead grows with the length of
    # one input, so it is also timed the way it is usually fed.
    chunks, cur = [], []
    size = 0
    for line in text.splitlines(keepends=True):
        cur.append(line)
        size += len(line)
        if size >= 4096:
            chunks.append("".join(cur))
            cur, size = [], 0
    if cur:
        chunks.append("".join(cur))

    v = tokenizers.__version__
    for nfc, chunked in ((True, False), (False, False), (False, True)):
        tok = build(model, nfc)
        best = float("inf")
        ids = []
        for _ in range(5):
            t0 = time.perf_counter()
            if chunked:
                ids = [i for c in chunks for i in tok.encode(c, add_special_tokens=False).ids]
            else:
                ids = tok.encode(text, add_special_tokens=False).ids
            best = min(best, time.perf_counter() - t0)
        how = ("NFC as tokenizer.json" if nfc else "no NFC") + (", 4 KiB calls" if chunked else ", one call")
        label = f"HF tokenizers {v} ({how})"
        print(f"{label:<48} {best:>10.4f} {nbytes / 1e6 / best:>10.2f} {len(ids):>9}")
        if ours and not nfc and not chunked:
            mine = json.load(open(ours))["ids"]
            if mine == ids:
                print(f"ids: ours identical to HF without NFC ({len(ids)} tokens)")
            else:
                k = next((i for i, (a, b) in enumerate(zip(mine, ids)) if a != b), min(len(mine), len(ids)))
                print(f"ids: ours DIFFER from HF without NFC at index {k}: ours {mine[k:k+8]} hf {ids[k:k+8]}")


if __name__ == "__main__":
    main()
