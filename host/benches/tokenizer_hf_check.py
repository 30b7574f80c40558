"""Checks the tokenizer snapshots (spec-tests/tests/snapshots/tokenizer_snapshots__*.snap) against
Hugging Face `tokenizers`, built from each GGUF's own vocabulary and merges and configured like the
model's tokenizer.json (without Qwen's NFC normalizer, which llama.cpp does not apply either):

    python3 host/benches/tokenizer_hf_check.py [MODEL_CACHE_DIR]

`ids` are compared with HF encoding special tokens as text (`encode_special_tokens = True`),
`ids_parse_special` with HF's default (special added tokens matched in the text).
"""

import json
import os
import sys

from tokenizers import AddedToken, Regex, Tokenizer, models, pre_tokenizers

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
QWEN2 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def build(path, pre):
    import gguf

    r = gguf.GGUFReader(path)

    def strings(key):
        f = r.fields[key]
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]

    tokens = strings("tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ")) for m in strings("tokenizer.ggml.merges")]
    tf = r.fields["tokenizer.ggml.token_type"]
    types = [int(tf.parts[i][0]) for i in tf.data]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    if pre == "qwen2":
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN2), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:  # smollm: SmolLM2's tokenizer.json
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    tok.add_tokens([AddedToken(t, special=(ty == 3), normalized=False) for t, ty in zip(tokens, types) if ty in (3, 4)])
    return tok


def snapshot(name):
    text = open(os.path.join(ROOT, f"spec-tests/tests/snapshots/tokenizer_snapshots__{name}.snap")).read()
    return json.loads(text.split("---\n", 2)[2])


def main():
    cache = sys.argv[1] if len(sys.argv) > 1 else os.environ.get(
        "GGUF_MODEL_CACHE", os.path.expanduser("~/.cache/gguf-models")
    )
    corpus = {c["name"]: c["text"] for c in json.load(open(os.path.join(ROOT, "spec-tests/tests/data/tokenizer_corpus.json")))}
    bad = 0
    total = 0
    for snap, file, pre in (
        ("qwen_corpus_ids", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "qwen2"),
        ("smollm_corpus_ids", "smollm2-135m-instruct-q4_1.gguf", "smollm"),
    ):
        tok = build(os.path.join(cache, file), pre)
        for row in snapshot(snap):
            text = corpus[row["name"]]
            tok.encode_special_tokens = False
            hf_parse = tok.encode(text, add_special_tokens=False).ids
            tok.encode_special_tokens = True
            hf_plain = tok.encode(text, add_special_tokens=False).ids
            for label, ours, hf in (
                ("ids", row["ids"], hf_plain),
                ("ids_parse_special", row.get("ids_parse_special", row["ids"]), hf_parse),
            ):
                total += 1
                if ours != hf:
                    bad += 1
                    print(f"{snap} {row['name']} {label}: ours {ours[:12]} hf {hf[:12]}")
    print(f"{total - bad}/{total} id lists identical to HF tokenizers")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
