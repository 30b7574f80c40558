//! GPT-2's byte-level alphabet: every byte gets a printable character so that vocabulary
//! entries and merges are plain strings. Printable Latin-1 bytes (`!`..`~`, `¡`..`¬`, `®`..`ÿ`)
//! stand for themselves; the other 68 bytes (controls, space, DEL, NBSP, soft hyphen) are
//! mapped in increasing order to U+0100, U+0101, … So `' '` is `Ġ` (U+0120) and `'\n'` is `Ċ`
//! (U+010A).

const fn printable(b: u8) -> bool {
    matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// Byte → alphabet character.
pub const BYTE_TO_CHAR: [char; 256] = {
    let mut t = ['\0'; 256];
    let mut n = 0u32;
    let mut b = 0usize;
    while b < 256 {
        t[b] = if printable(b as u8) {
            match char::from_u32(b as u32) {
                Some(c) => c,
                None => '\0',
            }
        } else {
            let c = match char::from_u32(256 + n) {
                Some(c) => c,
                None => '\0',
            };
            n += 1;
            c
        };
        b += 1;
    }
    t
};

/// Alphabet character → byte; `None` for a character outside the alphabet.
#[inline]
pub fn char_to_byte(c: char) -> Option<u8> {
    let cp = c as u32;
    if cp < 256 {
        return printable(cp as u8).then_some(cp as u8);
    }
    if cp < 256 + 68 {
        // The n-th non-printable byte, in increasing order.
        let mut n = cp - 256;
        for b in 0..=255u8 {
            if !printable(b) {
                if n == 0 {
                    return Some(b);
                }
                n -= 1;
            }
        }
    }
    None
}

/// The bytes an alphabet string stands for, or the first character outside the alphabet.
pub fn decode(s: &str) -> Result<Vec<u8>, char> {
    s.chars().map(|c| char_to_byte(c).ok_or(c)).collect()
}

/// The alphabet string for some bytes.
pub fn encode(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| BYTE_TO_CHAR[b as usize]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_points() {
        assert_eq!(BYTE_TO_CHAR[b' ' as usize], 'Ġ');
        assert_eq!(BYTE_TO_CHAR[b'\n' as usize], 'Ċ');
        assert_eq!(BYTE_TO_CHAR[b'\t' as usize], 'ĉ');
        assert_eq!(BYTE_TO_CHAR[b'a' as usize], 'a');
        assert_eq!(BYTE_TO_CHAR[0xAD], 'Ń');
        assert_eq!(BYTE_TO_CHAR[0], 'Ā');
    }

    #[test]
    fn bijection() {
        let mut seen = std::collections::HashSet::new();
        for b in 0..=255u8 {
            let c = BYTE_TO_CHAR[b as usize];
            assert!(seen.insert(c));
            assert_eq!(char_to_byte(c), Some(b));
        }
        assert_eq!(char_to_byte(' '), None);
        assert_eq!(char_to_byte('\u{144}'), None);
        assert_eq!(decode("Ġhello"), Ok(b" hello".to_vec()));
        assert_eq!(encode(b" hi\n"), "ĠhiĊ");
    }
}
