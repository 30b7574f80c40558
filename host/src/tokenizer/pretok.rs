//! Pre-tokenizers: the regex splits that cut text into pieces before byte-level BPE, one per
//! `tokenizer.ggml.pre` value, written by hand (no regex engine at run time) and checked against
//! the reference regexes by tests (`tests::*_matches_regex`, run with a backtracking engine that
//! supports `(?!…)`).
//!
//! The reference for each is the regex llama.cpp applies for that `pre` name (its forms below);
//! a list of several regexes is applied in sequence, each one inside the pieces the previous one
//! produced, and the text between two matches becomes a piece of its own. Look-ahead never sees
//! past the end of the piece (or special-token fragment) being split.

use super::unicode::{LETTER, NUMBER, SPACE, class};

/// A pre-tokenizer known to this engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PreTokenizer {
    /// `qwen2`: like llama-bpe, but every digit is its own piece.
    Qwen2,
    /// `llama-bpe` (Llama 3): digits in groups of up to three; a piece that is a whole token is
    /// not merged (`ignore_merges`).
    Llama3,
    /// `smollm`: every digit split off first, then the GPT-2 regex inside what is left.
    Smollm,
    /// `gpt-2` (`gpt2` accepted too): the original GPT-2 regex.
    Gpt2,
}

/// The regexes (as llama.cpp writes them) that each pre-tokenizer reproduces.
pub const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
pub const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
pub const GPT2_REGEX: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
pub const DIGIT_REGEX: &str = r"\p{N}";

impl PreTokenizer {
    /// Every accepted `tokenizer.ggml.pre` value and what it selects.
    pub const NAMES: &'static [(&'static str, PreTokenizer)] = &[
        ("qwen2", PreTokenizer::Qwen2),
        ("llama-bpe", PreTokenizer::Llama3),
        ("llama3", PreTokenizer::Llama3),
        ("llama-v3", PreTokenizer::Llama3),
        ("smollm", PreTokenizer::Smollm),
        ("gpt-2", PreTokenizer::Gpt2),
        ("gpt2", PreTokenizer::Gpt2),
    ];

    pub fn from_name(name: &str) -> Option<Self> {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| *p)
    }

    /// The canonical `pre` name.
    pub fn name(self) -> &'static str {
        match self {
            PreTokenizer::Qwen2 => "qwen2",
            PreTokenizer::Llama3 => "llama-bpe",
            PreTokenizer::Smollm => "smollm",
            PreTokenizer::Gpt2 => "gpt-2",
        }
    }

    /// The reference regexes, applied in sequence.
    pub fn regexes(self) -> &'static [&'static str] {
        match self {
            PreTokenizer::Qwen2 => &[QWEN2_REGEX],
            PreTokenizer::Llama3 => &[LLAMA3_REGEX],
            PreTokenizer::Smollm => &[DIGIT_REGEX, GPT2_REGEX],
            PreTokenizer::Gpt2 => &[GPT2_REGEX],
        }
    }

    /// Whether a piece that is itself a vocabulary token is emitted as that token without
    /// running the merges (llama.cpp's `ignore_merges`, set for llama-bpe).
    pub fn ignore_merges(self) -> bool {
        matches!(self, PreTokenizer::Llama3)
    }

    /// Calls `out(start, end)` with the byte range of each piece of `text`, in order; the pieces
    /// tile `text` exactly.
    pub fn split_ranges(self, text: &str, out: &mut impl FnMut(usize, usize)) {
        match self {
            PreTokenizer::Qwen2 => split_llama3_like(text, 0, 1, out),
            PreTokenizer::Llama3 => split_llama3_like(text, 0, 3, out),
            PreTokenizer::Gpt2 => split_gpt2(text, 0, out),
            PreTokenizer::Smollm => split_smollm(text, out),
        }
    }

    /// The pieces of `text` (a convenience over [`PreTokenizer::split_ranges`]).
    pub fn split(self, text: &str) -> Vec<&str> {
        let mut v = Vec::new();
        self.split_ranges(text, &mut |a, b| v.push(&text[a..b]));
        v
    }
}

/// The character starting at byte `i` of `s` and its class, or `None` at the end.
#[inline(always)]
fn at(s: &str, i: usize) -> Option<(char, usize, u8)> {
    let b = s.as_bytes();
    let b0 = *b.get(i)?;
    if b0 < 0x80 {
        let c = b0 as char;
        return Some((c, 1, class(c)));
    }
    // `i` is on a char boundary (every caller advances by whole chars).
    let c = s[i..].chars().next()?;
    Some((c, c.len_utf8(), class(c)))
}

/// `'s|'t|'re|'ve|'m|'ll|'d` at byte `i` (which holds `'`); `ci`: ASCII case-insensitive.
#[inline]
fn contraction(b: &[u8], i: usize, ci: bool) -> Option<usize> {
    let low = |x: u8| if ci { x.to_ascii_lowercase() } else { x };
    let c1 = low(*b.get(i + 1)?);
    if matches!(c1, b's' | b't' | b'm' | b'd') {
        return Some(i + 2);
    }
    let c2 = low(*b.get(i + 2)?);
    matches!((c1, c2), (b'r', b'e') | (b'v', b'e') | (b'l', b'l')).then_some(i + 3)
}

/// End of the run of characters from byte `i` whose class satisfies `keep`.
#[inline]
fn run_end(s: &str, mut i: usize, keep: impl Fn(u8) -> bool) -> usize {
    while let Some((_, l, cl)) = at(s, i) {
        if !keep(cl) {
            break;
        }
        i += l;
    }
    i
}

#[inline]
fn is_other(cl: u8) -> bool {
    cl & (LETTER | NUMBER | SPACE) == 0
}

/// The llama-bpe / qwen2 rule (`max_digits` 3 / 1):
/// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,max}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`.
/// At each position the first alternative that matches wins, as in a backtracking engine.
fn split_llama3_like(s: &str, base: usize, max_digits: usize, out: &mut impl FnMut(usize, usize)) {
    let b = s.as_bytes();
    let n = b.len();
    let mut i = 0;
    let mut emit = |a: usize, e: usize| out(base + a, base + e);
    while let Some((c, l, cl)) = at(s, i) {
        // (?i:'s|'t|'re|'ve|'m|'ll|'d)
        if c == '\''
            && let Some(e) = contraction(b, i, true)
        {
            emit(i, e);
            i = e;
            continue;
        }
        // [^\r\n\p{L}\p{N}]?\p{L}+
        if cl & LETTER != 0 {
            let e = run_end(s, i + l, |k| k & LETTER != 0);
            emit(i, e);
            i = e;
            continue;
        }
        if c != '\r'
            && c != '\n'
            && cl & NUMBER == 0
            && let Some((_, l2, cl2)) = at(s, i + l)
            && cl2 & LETTER != 0
        {
            let e = run_end(s, i + l + l2, |k| k & LETTER != 0);
            emit(i, e);
            i = e;
            continue;
        }
        // \p{N}{1,max_digits}
        if cl & NUMBER != 0 {
            let mut e = i + l;
            let mut k = 1;
            while k < max_digits
                && let Some((_, l2, cl2)) = at(s, e)
                && cl2 & NUMBER != 0
            {
                e += l2;
                k += 1;
            }
            emit(i, e);
            i = e;
            continue;
        }
        // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
        let j = if c == ' ' { i + 1 } else { i };
        if let Some((_, _, clj)) = at(s, j)
            && is_other(clj)
        {
            let mut e = run_end(s, j, is_other);
            while e < n && (b[e] == b'\r' || b[e] == b'\n') {
                e += 1;
            }
            emit(i, e);
            i = e;
            continue;
        }
        // Here `c` is whitespace. `\s*[\r\n]+`: through the last \r or \n of the run.
        let mut e = i;
        let mut last_nl = None;
        let mut last_start = i;
        let mut count = 0usize;
        while let Some((c2, l2, cl2)) = at(s, e) {
            if cl2 & SPACE == 0 {
                break;
            }
            if c2 == '\r' || c2 == '\n' {
                last_nl = Some(e + l2);
            }
            last_start = e;
            e += l2;
            count += 1;
        }
        if let Some(end) = last_nl {
            emit(i, end);
            i = end;
            continue;
        }
        // `\s+(?!\S)`: all but the last whitespace when something follows; `\s+` otherwise.
        let end = if count > 1 && e < n { last_start } else { e };
        emit(i, end);
        i = end;
    }
}

/// The GPT-2 rule: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)`, with
/// text no alternative matches (a lone whitespace before a non-space) as a piece of its own.
fn split_gpt2(s: &str, base: usize, out: &mut impl FnMut(usize, usize)) {
    let b = s.as_bytes();
    let n = b.len();
    let mut i = 0;
    let mut emit = |a: usize, e: usize| out(base + a, base + e);
    while let Some((c, _, cl)) = at(s, i) {
        if c == '\''
            && let Some(e) = contraction(b, i, false)
        {
            emit(i, e);
            i = e;
            continue;
        }
        // The class that decides: the next character's after a space.
        let (j, clj) = if c == ' ' {
            (i + 1, at(s, i + 1).map(|x| x.2))
        } else {
            (i, Some(cl))
        };
        let keep: Option<fn(u8) -> bool> = match clj {
            Some(k) if k & LETTER != 0 => Some(|k| k & LETTER != 0),
            Some(k) if k & NUMBER != 0 => Some(|k| k & NUMBER != 0),
            Some(k) if is_other(k) => Some(is_other),
            _ => None,
        };
        if let Some(keep) = keep {
            let e = run_end(s, j, keep);
            emit(i, e);
            i = e;
            continue;
        }
        // Whitespace run.
        let mut e = i;
        let mut last_start = i;
        let mut count = 0usize;
        while let Some((_, l2, cl2)) = at(s, e) {
            if cl2 & SPACE == 0 {
                break;
            }
            last_start = e;
            e += l2;
            count += 1;
        }
        let end = if count > 1 && e < n { last_start } else { e };
        emit(i, end);
        i = end;
    }
}

/// `\p{N}` first (each digit a piece), then GPT-2 inside the text between digits.
fn split_smollm(s: &str, out: &mut impl FnMut(usize, usize)) {
    let mut start = 0;
    let mut i = 0;
    while let Some((_, l, cl)) = at(s, i) {
        if cl & NUMBER != 0 {
            if start < i {
                split_gpt2(&s[start..i], start, out);
            }
            out(i, i + l);
            start = i + l;
        }
        i += l;
    }
    if start < s.len() {
        split_gpt2(&s[start..], start, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Applies regexes the way llama.cpp does: each inside the pieces of the previous one, the
    /// text between matches kept as pieces.
    fn reference_split(regexes: &[&str], text: &str) -> Vec<String> {
        thread_local! {
            static COMPILED: std::cell::RefCell<std::collections::HashMap<String, fancy_regex::Regex>> =
                Default::default();
        }
        let mut pieces = vec![text.to_string()];
        for r in regexes {
            let re = COMPILED.with(|c| {
                c.borrow_mut()
                    .entry(r.to_string())
                    .or_insert_with(|| fancy_regex::Regex::new(r).unwrap())
                    .clone()
            });
            let mut next = Vec::new();
            for p in &pieces {
                let mut last = 0;
                for m in re.find_iter(p) {
                    let m = m.unwrap();
                    if m.start() > last {
                        next.push(p[last..m.start()].to_string());
                    }
                    next.push(m.as_str().to_string());
                    last = m.end();
                }
                if last < p.len() {
                    next.push(p[last..].to_string());
                }
            }
            pieces = next;
        }
        pieces
    }

    fn check(pre: PreTokenizer, text: &str) {
        let ours: Vec<String> = pre.split(text).into_iter().map(String::from).collect();
        let theirs = reference_split(pre.regexes(), text);
        assert_eq!(ours, theirs, "{pre:?} on {text:?}");
    }

    const ALL: [PreTokenizer; 4] = [
        PreTokenizer::Qwen2,
        PreTokenizer::Llama3,
        PreTokenizer::Smollm,
        PreTokenizer::Gpt2,
    ];

    #[test]
    fn hand_picked_cases_match_regex() {
        let cases = [
            "",
            "Hello world",
            "  leading two spaces",
            "multiple    spaces   between  words",
            "\n\n\n",
            "\t\ttabs\tand\ttext\t",
            "trailing   ",
            "a \n b\r\n\r\nc",
            "x  \n  y",
            "1234567 12 a1b22c333d4444",
            "don't We're they've it's he'd you'll I'm DON'T o'clock 'S 'Ll",
            "'sound ''s '",
            "日本語のテキストです。カタカナとひらがな。",
            "Thumbs 👍 up 👍🏽 family 👨‍👩‍👧‍👦 flag 🇫🇷",
            "مرحبا بالعالم",
            "Ｆｕｌｌｗｉｄｔｈ　ｔｅｘｔ",
            "e\u{301}te\u{301} n\u{303}",
            "!!!!!!???...,,,;;;\n\n(foo) .Net _bar",
            "٣٤٥ ½ Ⅻ x²",
            "\u{a0}nbsp\u{2003}em\u{3000}",
            "\u{85}x\u{b}y\u{c}z\u{1c}w",
            "int main() {\n\tprintf(\"%d\\n\", 42);\n\treturn 0;\n}\n",
            " ",
            "  ",
            " a",
            "\u{fffd}\u{fffd}A\u{fffd}B",
        ];
        for pre in ALL {
            for c in cases {
                check(pre, c);
            }
        }
    }

    fn tricky_char() -> impl Strategy<Value = char> {
        prop_oneof![
            3 => prop::sample::select(vec![
                ' ', ' ', '\t', '\n', '\r', '\u{b}', '\u{c}', '\u{85}', '\u{a0}', '\u{3000}',
                '\u{2028}', '\'', 's', 'S', 't', 'r', 'e', 'E', 'v', 'm', 'l', 'L', 'd', 'a', 'Z',
                '1', '0', '٣', '½', 'Ⅻ', '.', ',', '!', '_', '(', '"', '\u{301}', '\u{200d}',
                '👍', '🏽', '日', 'é', 'ß', '\u{1c}', '\u{0}', '\u{fffd}', '\u{e000}', '\u{10ffff}',
            ]),
            1 => any::<char>(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn splitters_match_regex(chars in prop::collection::vec(tricky_char(), 0..40)) {
            let text: String = chars.into_iter().collect();
            for pre in ALL {
                let ours: Vec<String> = pre.split(&text).into_iter().map(String::from).collect();
                let theirs = reference_split(pre.regexes(), &text);
                prop_assert_eq!(&ours, &theirs, "{:?} on {:?}", pre, text);
            }
        }

        #[test]
        fn pieces_tile_the_text(text in any::<String>()) {
            for pre in ALL {
                let pieces = pre.split(&text);
                prop_assert_eq!(pieces.concat(), text.clone());
                prop_assert!(pieces.iter().all(|p| !p.is_empty()));
            }
        }
    }

    /// The hand-written classes agree with the regex engine's `\p{L}`, `\p{N}`, `\s` on every
    /// codepoint (both use Unicode 16 tables), so the random tests above may use any char.
    #[test]
    fn classes_agree_with_regex_engine() {
        let regexes = [
            (LETTER, fancy_regex::Regex::new(r"\p{L}").unwrap()),
            (NUMBER, fancy_regex::Regex::new(r"\p{N}").unwrap()),
            (SPACE, fancy_regex::Regex::new(r"\s").unwrap()),
        ];
        let mut bad = Vec::new();
        for block in 0..0x110u32 {
            let chars: Vec<char> = (block * 0x1000..(block + 1) * 0x1000)
                .filter_map(char::from_u32)
                .collect();
            let s: String = chars.iter().collect();
            let mut want: std::collections::HashMap<usize, u8> = Default::default();
            for (bit, re) in &regexes {
                for m in re.find_iter(&s) {
                    let m = m.unwrap();
                    for (off, _) in s[m.start()..m.end()].char_indices() {
                        *want.entry(m.start() + off).or_default() |= bit;
                    }
                }
            }
            for (off, c) in s.char_indices() {
                if want.get(&off).copied().unwrap_or(0) != class(c) {
                    bad.push(c as u32);
                }
            }
        }
        assert!(
            bad.is_empty(),
            "{} codepoints differ, first {:X?}",
            bad.len(),
            &bad[..bad.len().min(20)]
        );
    }
}
