//! Streaming detokenization: text comes out only at UTF-8 boundaries, so a character whose bytes
//! are spread over several tokens (emoji, CJK, byte-level pieces of one code point) is emitted
//! once all its bytes have arrived.

use super::{Result, Specials, Tokenizer};

/// Feeds ids one at a time; each [`StreamDecoder::push`] returns the text completed by that id.
/// The concatenation of everything returned, plus [`StreamDecoder::finish`], equals
/// `String::from_utf8_lossy(&tokenizer.decode_with(ids, specials))`: invalid bytes become U+FFFD
/// exactly as the lossy conversion of the whole would make them.
pub struct StreamDecoder<'t> {
    tok: &'t Tokenizer,
    specials: Specials,
    pending: Vec<u8>,
}

impl<'t> StreamDecoder<'t> {
    pub fn new(tok: &'t Tokenizer, specials: Specials) -> Self {
        StreamDecoder {
            tok,
            specials,
            pending: Vec::new(),
        }
    }

    /// Adds one token; returns the text that is now complete (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.tok
            .decode_into(&[id], self.specials, &mut self.pending)?;
        Ok(self.drain(false))
    }

    /// Adds several tokens; returns the text that is now complete.
    pub fn push_all(&mut self, ids: &[u32]) -> Result<String> {
        self.tok
            .decode_into(ids, self.specials, &mut self.pending)?;
        Ok(self.drain(false))
    }

    /// Bytes held back because they may start a character not yet complete (at most 3).
    pub fn pending(&self) -> &[u8] {
        &self.pending
    }

    /// Ends the stream: an incomplete trailing sequence becomes U+FFFD.
    pub fn finish(&mut self) -> String {
        self.drain(true)
    }

    fn drain(&mut self, last: bool) -> String {
        let mut out = String::new();
        let mut start = 0;
        loop {
            let rest = &self.pending[start..];
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let good = e.valid_up_to();
                    // Valid by `valid_up_to`.
                    out.push_str(std::str::from_utf8(&rest[..good]).unwrap_or_default());
                    match e.error_len() {
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            start += good + bad;
                        }
                        None => {
                            // An incomplete sequence at the end: wait for more, unless ending.
                            if last {
                                out.push('\u{FFFD}');
                                start = self.pending.len();
                            } else {
                                start += good;
                            }
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }
}
