//! Text from peers, made safe to show: every string a peer controls (messages, names, file
//! names, group names) may hold terminal escape sequences, control characters, or invisible
//! formatting characters that reorder or hide what is shown (the right-to-left override makes
//! `invoice\u{202e}fdp.exe` read as `invoiceexe.pdf`). Anything that shows such text on a terminal
//! or uses it as a name passes it through here first.
//!
//! ```
//! use kith_core::text::{for_terminal, single_line};
//!
//! // An escape sequence that would set the terminal's title and clear the screen.
//! assert_eq!(for_terminal("hi\u{1b}]0;pwned\u{7}\u{1b}[2J"), "hi␛]0;pwned�␛[2J");
//! assert_eq!(single_line("two\nlines\u{202e}"), "two lines");
//! ```

use std::borrow::Cow;

/// Whether `c` is an invisible formatting character that can change how surrounding text is
/// shown: bidirectional embeddings, overrides, isolates and marks; zero-width characters;
/// the byte-order mark; invisible operators; interlinear annotation; language tags.
pub fn is_hidden_format(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'                     // soft hyphen
            | '\u{034F}'               // combining grapheme joiner
            | '\u{061C}'               // Arabic letter mark
            | '\u{115F}' | '\u{1160}' // Hangul fillers
            | '\u{17B4}' | '\u{17B5}'
            | '\u{180B}'..='\u{180F}'  // Mongolian variation selectors and vowel separator
            | '\u{200B}'..='\u{200F}'  // zero-width space, (non-)joiners, LRM, RLM
            | '\u{202A}'..='\u{202E}'  // bidi embeddings and overrides
            | '\u{2060}'..='\u{206F}'  // word joiner, invisible operators, bidi isolates
            | '\u{3164}'               // Hangul filler
            | '\u{FEFF}'               // byte-order mark
            | '\u{FFA0}'
            | '\u{FFF9}'..='\u{FFFB}'  // interlinear annotation
            | '\u{E0000}'..='\u{E007F}' // language tags
    )
}

/// Text for a terminal, newlines kept: the escape character shows as `␛`, other control
/// characters (C0, DEL, C1; tabs become a space) as `�`, and hidden formatting characters
/// are dropped. Borrows when there is nothing to change.
pub fn for_terminal(text: &str) -> Cow<'_, str> {
    clean(text, true)
}

/// Like [`for_terminal`], for text shown on one line (names, titles, file names): newlines
/// and other line breaks become a space.
pub fn single_line(text: &str) -> Cow<'_, str> {
    clean(text, false)
}

fn clean(text: &str, newlines: bool) -> Cow<'_, str> {
    let unsafe_char = |c: char| {
        (c.is_control() && !(newlines && c == '\n'))
            || is_hidden_format(c)
            || c == '\u{2028}'
            || c == '\u{2029}'
    };
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' if newlines => out.push('\n'),
            '\n' | '\r' | '\t' | '\u{2028}' | '\u{2029}' => out.push(' '),
            '\u{1b}' => out.push('␛'),
            c if c.is_control() => out.push('\u{FFFD}'),
            c if is_hidden_format(c) => {}
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_controls_and_hidden_characters_never_pass() {
        let nasty = "a\u{1b}[31mred\u{9b}2J\u{7}\u{0}\u{7f}\r\tb\u{202e}c\u{2066}d\u{feff}e\u{200b}f\u{e0041}";
        let shown = for_terminal(nasty);
        assert!(shown.chars().all(|c| !c.is_control() || c == '\n'), "{shown:?}");
        assert!(!shown.chars().any(is_hidden_format), "{shown:?}");
        assert_eq!(shown, "a␛[31mred�2J���  bcdef");
        assert_eq!(for_terminal("line 1\nline 2"), "line 1\nline 2");
        assert_eq!(single_line("line 1\nline 2\u{2028}3"), "line 1 line 2 3");
        assert!(matches!(for_terminal("plain ünïcödé 👍🏽 עברית"), Cow::Borrowed(_)));
    }
}
