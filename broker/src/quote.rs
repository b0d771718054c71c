//! Quoting client input inside error messages: never more than [`QUOTE_CHARS`] characters of
//! it, so a hostile name cannot make an error reply large.

/// Characters of client input an error message quotes.
pub const QUOTE_CHARS: usize = 64;

/// At most [`QUOTE_CHARS`] characters of `s`.
pub fn quote(s: &str) -> String {
    s.chars().take(QUOTE_CHARS).collect()
}
