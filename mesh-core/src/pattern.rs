//! The configuration's regexes and header formats, compiled once.
//!
//! Validation checks every `StringMatch` regex (Istio's `validateStringRegexp`), every
//! `uriRegexRewrite` pattern and every header format string; to check them it compiles
//! them, exactly as the route table will use them, and keeps the results in a
//! [`Precompiled`] that travels with the snapshot. The route table then takes each regex and
//! format from there instead of compiling it a second time (on a large mesh, regex
//! compilation is the costly part of building a table).
//!
//! One size limit holds everywhere: [`SIZE_LIMIT`] bytes of compiled program per regex.
//! Istio's rules do not know it (they check the syntax and the length), so validation only
//! reports syntax errors; the route table build refuses a regex over the limit, naming its
//! field, in `validate` and `run` alike.
//!
//! ```
//! use mesh_core::pattern::{FullMatch, SIZE_LIMIT};
//!
//! let re = FullMatch::compile("/api/v[0-9]+", SIZE_LIMIT).unwrap();
//! assert!(re.is_match(b"/api/v2"));
//! assert!(!re.is_match(b"/api/v2/users")); // a full match, as Envoy's safe_regex
//! assert!(FullMatch::compile("a)|(b", SIZE_LIMIT).is_err()); // no escape from the anchors
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use regex::bytes::{Regex as BytesRegex, RegexBuilder as BytesRegexBuilder};

use crate::format::{self, HeaderFormat};

/// The largest compiled program one regex may produce, in bytes (the `regex` crate's
/// `size_limit`): 256 KiB. A short pattern with a huge expansion (`\w{40}-\w{40}`) is over.
pub const SIZE_LIMIT: usize = 256 * 1024;

/// A regex that must match the whole input (Envoy's `safe_regex`), with the literal prefix
/// every match starts with checked first: most candidates fail on it without running the
/// regex engine.
#[derive(Debug, Clone)]
pub struct FullMatch {
    re: BytesRegex,
    prefix: Box<[u8]>,
}

/// Why a regex cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatternError {
    /// Not RE2 syntax (the reason, in one line).
    Syntax(String),
    /// The compiled program is larger than this many bytes.
    TooBig(usize),
}

/// Regexes and formats compiled while validating a configuration, by their text.
#[derive(Debug, Clone, Default)]
pub struct Precompiled {
    full: HashMap<Box<str>, Result<Arc<FullMatch>, PatternError>>,
    search: HashMap<Box<str>, Result<regex::Regex, PatternError>>,
    formats: HashMap<Box<str>, Result<Arc<HeaderFormat>, String>>,
}

// === impl FullMatch ===

impl FullMatch {
    /// Compiles an RE2-style regex anchored at both ends, with a program size limit. The
    /// pattern's own syntax is checked first, so that `a)|(b` cannot escape the anchors.
    pub fn compile(pattern: &str, size_limit: usize) -> Result<FullMatch, PatternError> {
        check_syntax(pattern)?;
        let re = BytesRegexBuilder::new(&format!("^(?:{pattern})$"))
            .size_limit(size_limit)
            .build()
            .map_err(PatternError::from)?;
        Ok(FullMatch {
            re,
            prefix: literal_prefix(pattern).into(),
        })
    }

    /// Whether `v` matches, whole.
    #[inline]
    pub fn is_match(&self, v: &[u8]) -> bool {
        v.starts_with(&self.prefix) && self.re.is_match(v)
    }

    /// The literal text every match starts with (possibly empty).
    pub fn literal_prefix(&self) -> &[u8] {
        &self.prefix
    }
}

/// Compiles an unanchored RE2-style regex (for `uriRegexRewrite`, whose matches are
/// replaced) with a program size limit.
pub fn compile_search(pattern: &str, size_limit: usize) -> Result<regex::Regex, PatternError> {
    regex::RegexBuilder::new(pattern)
        .size_limit(size_limit)
        .build()
        .map_err(PatternError::from)
}

/// RE2 syntax, as the `regex` crate reads it.
fn check_syntax(pattern: &str) -> Result<(), PatternError> {
    regex_syntax::Parser::new()
        .parse(pattern)
        .map(drop)
        .map_err(|e| PatternError::Syntax(summary(&e.to_string())))
}

/// The `regex` crate's syntax errors span several lines (with a caret diagram); keep the
/// reason.
fn summary(s: &str) -> String {
    let reason = s
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error: "))
        .unwrap_or(s);
    format!("error parsing regexp: {reason}")
}

/// The literal text every match of `pattern` starts with (conservatively: empty when the
/// pattern has an alternation or starts with anything but plain or escaped characters).
pub fn literal_prefix(pattern: &str) -> Vec<u8> {
    if pattern.contains('|') {
        return Vec::new();
    }
    let mut out = Vec::new();
    let bytes = pattern.strip_prefix('^').unwrap_or(pattern).as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'\\' => match bytes.get(i + 1) {
                // An escaped punctuation character is itself; letters and digits are classes,
                // `\<` and `\>` word boundaries.
                Some(&e) if e.is_ascii_punctuation() && e != b'<' && e != b'>' => {
                    out.push(e);
                    i += 2;
                    continue;
                }
                _ => break,
            },
            b'.' | b'[' | b']' | b'(' | b')' | b'*' | b'+' | b'?' | b'{' | b'}' | b'^' | b'$' => {
                break;
            }
            b if b.is_ascii() && !b.is_ascii_control() => {
                out.push(b);
                i += 1;
            }
            _ => break, // non-ASCII: leave it to the regex
        }
    }
    // A quantifier that can repeat zero times makes the last literal optional.
    if matches!(bytes.get(i), Some(b'*' | b'?' | b'{')) {
        out.pop();
    }
    out
}

// === impl PatternError ===

impl From<regex::Error> for PatternError {
    fn from(e: regex::Error) -> Self {
        match e {
            regex::Error::CompiledTooBig(n) => PatternError::TooBig(n),
            regex::Error::Syntax(s) => PatternError::Syntax(summary(&s)),
            other => PatternError::Syntax(other.to_string()),
        }
    }
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PatternError::Syntax(s) => f.write_str(s),
            PatternError::TooBig(n) => write!(
                f,
                "regex compiles to more than {n} bytes (the proxy's limit on one regex)"
            ),
        }
    }
}

impl std::error::Error for PatternError {}

// === impl Precompiled ===

impl Precompiled {
    /// The full-match regex of `pattern` at [`SIZE_LIMIT`], compiled on first use.
    pub fn full(&mut self, pattern: &str) -> &Result<Arc<FullMatch>, PatternError> {
        if !self.full.contains_key(pattern) {
            let r = FullMatch::compile(pattern, SIZE_LIMIT).map(Arc::new);
            self.full.insert(pattern.into(), r);
        }
        &self.full[pattern]
    }

    /// The search regex of `pattern` at [`SIZE_LIMIT`], compiled on first use.
    pub fn search(&mut self, pattern: &str) -> &Result<regex::Regex, PatternError> {
        if !self.search.contains_key(pattern) {
            let r = compile_search(pattern, SIZE_LIMIT);
            self.search.insert(pattern.into(), r);
        }
        &self.search[pattern]
    }

    /// The parsed header format `value`, parsed on first use.
    pub fn format(&mut self, value: &str) -> &Result<Arc<HeaderFormat>, String> {
        if !self.formats.contains_key(value) {
            let r = format::parse(value).map(Arc::new);
            self.formats.insert(value.into(), r);
        }
        &self.formats[value]
    }

    /// The full-match regex of `pattern`, if it was compiled.
    pub fn get_full(&self, pattern: &str) -> Option<&Result<Arc<FullMatch>, PatternError>> {
        self.full.get(pattern)
    }

    /// The search regex of `pattern`, if it was compiled.
    pub fn get_search(&self, pattern: &str) -> Option<&Result<regex::Regex, PatternError>> {
        self.search.get(pattern)
    }

    /// The header format `value`, if it was parsed.
    pub fn get_format(&self, value: &str) -> Option<&Result<Arc<HeaderFormat>, String>> {
        self.formats.get(value)
    }

    /// Adds what `other` compiled.
    pub fn merge(&mut self, other: Precompiled) {
        self.full.extend(other.full);
        self.search.extend(other.search);
        self.formats.extend(other.formats);
    }

    /// How many regexes and formats it holds.
    pub fn len(&self) -> usize {
        self.full.len() + self.search.len() + self.formats.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_prefixes() {
        assert_eq!(literal_prefix("/items/[0-9]+"), b"/items/");
        assert_eq!(literal_prefix(r"^/a\.b/c"), b"/a.b/c");
        assert_eq!(literal_prefix("/ab*"), b"/a");
        assert_eq!(literal_prefix("/ab?c"), b"/a");
        assert_eq!(literal_prefix("/ab{0,2}"), b"/a");
        assert_eq!(literal_prefix("/a|/b"), b"");
        assert_eq!(literal_prefix("(?i)/a"), b"");
        assert_eq!(literal_prefix(r"\d+"), b"");
        // word boundaries, not literals (regex 1.10+)
        assert_eq!(literal_prefix(r"/a\<b"), b"/a");
        assert_eq!(literal_prefix(r"\>"), b"");
    }

    #[test]
    fn syntax_size_and_anchoring() {
        assert!(matches!(
            FullMatch::compile("(unclosed", SIZE_LIMIT),
            Err(PatternError::Syntax(s)) if s.starts_with("error parsing regexp: ")
        ));
        assert!(matches!(
            FullMatch::compile(r"\w{40}-\w{40}", SIZE_LIMIT),
            Err(PatternError::TooBig(SIZE_LIMIT))
        ));
        let alt = FullMatch::compile("a|b", SIZE_LIMIT).unwrap();
        assert!(alt.is_match(b"a") && alt.is_match(b"b") && !alt.is_match(b"ab"));
    }

    #[test]
    fn precompiled_keeps_one_compilation_per_text() {
        let mut p = Precompiled::default();
        let a = p.full("/x+").as_ref().map(Arc::clone).unwrap();
        let b = p.full("/x+").as_ref().map(Arc::clone).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(p.format("%HOSTNAME%").is_ok());
        assert!(p.search("(a").is_err());
        assert_eq!(p.len(), 3);
    }
}
