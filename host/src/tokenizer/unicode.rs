//! Character classes the pre-tokenizer regexes ask about: `\p{L}`, `\p{N}` and `\s`.
//!
//! `\p{L}` and `\p{N}` are Unicode general categories (L* and N*), from the Unicode 16.0 tables of
//! the `unicode-general-category` crate; `\s` is the Unicode `White_Space` property, which is what
//! both llama.cpp's tables and the `regex` family treat as `\s`. The lookup goes through a
//! two-level table built once (256-codepoint pages, identical pages shared), so classifying a
//! character is two loads.

use std::sync::OnceLock;

use unicode_general_category::{GeneralCategory, get_general_category};

/// `\p{L}`.
pub const LETTER: u8 = 1;
/// `\p{N}`.
pub const NUMBER: u8 = 2;
/// `\s` (Unicode White_Space).
pub const SPACE: u8 = 4;

/// The Unicode `White_Space` property (PropList.txt; unchanged since Unicode 6.0).
pub fn is_white_space(c: char) -> bool {
    matches!(c as u32,
        0x09..=0x0D | 0x20 | 0x85 | 0xA0 | 0x1680 | 0x2000..=0x200A | 0x2028 | 0x2029 | 0x202F
        | 0x205F | 0x3000)
}

fn classify_slow(c: char) -> u8 {
    use GeneralCategory::*;
    let mut class = match get_general_category(c) {
        UppercaseLetter | LowercaseLetter | TitlecaseLetter | ModifierLetter | OtherLetter => {
            LETTER
        }
        DecimalNumber | LetterNumber | OtherNumber => NUMBER,
        _ => 0,
    };
    if is_white_space(c) {
        class |= SPACE;
    }
    class
}

struct Table {
    /// Page index per 256-codepoint block.
    index: Vec<u16>,
    pages: Vec<[u8; 256]>,
}

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut index = Vec::with_capacity(0x1100);
        let mut pages: Vec<[u8; 256]> = Vec::new();
        let mut seen: std::collections::HashMap<[u8; 256], u16> = std::collections::HashMap::new();
        for block in 0..0x1100u32 {
            let mut page = [0u8; 256];
            for (i, slot) in page.iter_mut().enumerate() {
                // Surrogates are not chars; they never occur in a &str, class 0 is fine.
                if let Some(c) = char::from_u32(block * 256 + i as u32) {
                    *slot = classify_slow(c);
                }
            }
            let id = *seen.entry(page).or_insert_with(|| {
                pages.push(page);
                (pages.len() - 1) as u16
            });
            index.push(id);
        }
        Table { index, pages }
    })
}

/// ASCII classes, computed without touching the table.
const fn ascii_class(b: u8) -> u8 {
    match b {
        b'a'..=b'z' | b'A'..=b'Z' => LETTER,
        b'0'..=b'9' => NUMBER,
        b'\t' | b'\n' | 0x0B | 0x0C | b'\r' | b' ' => SPACE,
        _ => 0,
    }
}

const ASCII: [u8; 128] = {
    let mut t = [0u8; 128];
    let mut i = 0;
    while i < 128 {
        t[i] = ascii_class(i as u8);
        i += 1;
    }
    t
};

/// The class bits of a character: a combination of [`LETTER`], [`NUMBER`], [`SPACE`] (0 for
/// everything else: punctuation, symbols, marks, controls, format characters, unassigned).
#[inline]
pub fn class(c: char) -> u8 {
    let cp = c as u32;
    if cp < 128 {
        return ASCII[cp as usize];
    }
    let t = table();
    t.pages[t.index[(cp >> 8) as usize] as usize][(cp & 0xFF) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_direct_classification_everywhere() {
        for cp in 0..=0x10FFFFu32 {
            if let Some(c) = char::from_u32(cp) {
                assert_eq!(class(c), classify_slow(c), "U+{cp:04X}");
            }
        }
    }

    #[test]
    fn examples() {
        assert_eq!(class('a'), LETTER);
        assert_eq!(class('日'), LETTER);
        assert_eq!(class('٣'), NUMBER); // ARABIC-INDIC DIGIT THREE (Nd)
        assert_eq!(class('½'), NUMBER); // No
        assert_eq!(class('Ⅻ'), NUMBER); // Nl
        assert_eq!(class('\u{3000}'), SPACE);
        assert_eq!(class('\u{85}'), SPACE);
        assert_eq!(class('\u{200D}'), 0); // ZWJ is Cf, not a space
        assert_eq!(class('\u{301}'), 0); // combining acute: a mark
        assert_eq!(class('👍'), 0);
        assert_eq!(class('\u{1C}'), 0); // not White_Space, though Python's isspace says so
    }
}
