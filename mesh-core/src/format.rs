//! Envoy's header-value format strings, parsed once.
//!
//! Istio passes VirtualService `headers` values (`set`, `add`) to Envoy as format strings:
//! `%%` is a literal `%`, and `%NAME%` or `%NAME(ARGS)%` is a command operator evaluated per
//! request. [`parse`] is the one parser of that syntax in the project: validation calls it
//! for Istio's check (`validateHeaderValue`, a port of Envoy's `header_parser.cc`, with
//! their messages), keeps what it parsed ([`Precompiled`](crate::pattern::Precompiled)),
//! and the route table builds its evaluators from the pieces without parsing again.
//! Which operators exist is the route table's business (Envoy refuses unknown ones when the
//! route configuration loads; Istio's validation does not know them).
//!
//! ```
//! use mesh_core::format::{Piece, parse};
//!
//! let f = parse("id=%REQ(x-request-id)% (%%)").unwrap();
//! assert_eq!(f.pieces[0], Piece::Literal("id=".into()));
//! assert_eq!(
//!     f.pieces[1],
//!     Piece::Operator { name: "REQ".into(), args: Some("x-request-id".into()), max: None }
//! );
//! assert_eq!(f.pieces[2], Piece::Literal(" (%)".into()));
//! assert!(parse("100%").is_err());
//! ```

/// A parsed format string.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeaderFormat {
    /// Literal text and operators, in order (adjacent literals merged, `%%` unescaped).
    pub pieces: Vec<Piece>,
}

/// One piece of a format string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Text copied as is.
    Literal(String),
    /// A command operator: `%NAME%`, `%NAME(ARGS)%`, `%NAME:MAX%`.
    Operator {
        /// The operator's name (`REQ`, `START_TIME`, …).
        name: String,
        /// What is between the parentheses, as written.
        args: Option<String>,
        /// The length the value is cut to (`:MAX`), when given.
        max: Option<usize>,
    },
}

/// Parses a header value as Envoy's format string, with Istio's rules and messages
/// (`validateHeaderValue`): a `%` that is not `%%` must open an operator closed by `%`;
/// arguments are a string or a JSON array of strings.
pub fn parse(v: &str) -> Result<HeaderFormat, String> {
    #[derive(PartialEq)]
    enum S {
        Literal,
        VarName,
        ExpectArray,
        ExpectString,
        Str,
        ExpectDelimOrEnd,
        ExpectArgsEnd,
        ExpectVarEnd,
    }
    let b = v.as_bytes();
    let mut out = HeaderFormat::default();
    let mut lit = String::new();
    let mut pos = 0;
    let mut st = S::Literal;
    // the current operator: where its name starts, where its arguments start and end
    let (mut var_start, mut args_start, mut args_end) = (0, None, None);
    let mut lit_start = 0;
    while pos < b.len() {
        let ch = b[pos];
        let has_next = pos + 1 < b.len();
        match st {
            S::Literal => {
                if ch == b'%' {
                    if !has_next {
                        return Err("invalid header configuration. Un-escaped %".into());
                    }
                    lit.push_str(&v[lit_start..pos]);
                    if b[pos + 1] == b'%' {
                        lit.push('%');
                        pos += 1;
                        lit_start = pos + 1;
                    } else {
                        st = S::VarName;
                        var_start = pos + 1;
                        (args_start, args_end) = (None, None);
                    }
                }
            }
            S::VarName => {
                if ch == b'%' {
                    push_operator(&mut out, &mut lit, v, var_start, pos, None);
                    st = S::Literal;
                    lit_start = pos + 1;
                } else if ch == b'(' {
                    args_start = Some(pos + 1);
                    st = S::ExpectArray;
                }
            }
            S::ExpectArray => {
                if ch == b'[' {
                    st = S::ExpectString;
                } else if ch != b' ' {
                    st = S::Str;
                    if ch == b')' {
                        args_end = Some(pos);
                        st = S::ExpectVarEnd;
                    }
                }
            }
            S::ExpectDelimOrEnd => {
                if ch == b',' {
                    st = S::ExpectString;
                } else if ch == b']' {
                    st = S::ExpectArgsEnd;
                } else if ch != b' ' {
                    return Err(
                        "invalid header configuration. Expecting ',', ']', or whitespace".into(),
                    );
                }
            }
            S::ExpectString => {
                if ch == b'"' {
                    st = S::Str;
                } else if ch != b' ' {
                    return Err("invalid header configuration. Expecting '\"'".into());
                }
            }
            S::Str => {
                if ch == b'\\' {
                    if !has_next {
                        return Err(
                            "invalid header configuration. Un-terminated backslash in JSON string"
                                .into(),
                        );
                    }
                    pos += 1;
                } else if ch == b')' {
                    args_end = Some(pos);
                    st = S::ExpectVarEnd;
                } else if ch == b'"' {
                    st = S::ExpectDelimOrEnd;
                }
            }
            S::ExpectArgsEnd => {
                if ch == b')' {
                    args_end = Some(pos);
                    st = S::ExpectVarEnd;
                } else if ch != b' ' {
                    // Envoy's header_parser.cc names what it read of the operator so far
                    return Err(format!(
                        "invalid header configuration. Expecting ')' or whitespace after '{}', but found '{}'",
                        &v[var_start..pos],
                        char::from(ch)
                    ));
                }
            }
            S::ExpectVarEnd => {
                if ch == b'%' {
                    let name_end = args_start.map_or(pos, |a| a - 1);
                    let args = match (args_start, args_end) {
                        (Some(a), Some(e)) => Some(v[a..e].to_string()),
                        _ => None,
                    };
                    push_operator(&mut out, &mut lit, v, var_start, name_end, args);
                    st = S::Literal;
                    lit_start = pos + 1;
                } else if ch != b' ' {
                    return Err(format!(
                        "invalid header configuration. Expecting '%' or whitespace after '{}', but found '{}'",
                        &v[var_start..pos],
                        char::from(ch)
                    ));
                }
            }
        }
        pos += 1;
    }
    if st != S::Literal {
        return Err(format!(
            "invalid header configuration. Un-terminated variable expression '{v}'"
        ));
    }
    lit.push_str(&v[lit_start.min(v.len())..]);
    if !lit.is_empty() {
        out.pieces.push(Piece::Literal(lit));
    }
    Ok(out)
}

/// Ends the literal before an operator and adds the operator `v[start..end]` (its name, and
/// `:MAX` when written after a name without arguments).
fn push_operator(
    out: &mut HeaderFormat,
    lit: &mut String,
    v: &str,
    start: usize,
    end: usize,
    args: Option<String>,
) {
    if !lit.is_empty() {
        out.pieces.push(Piece::Literal(std::mem::take(lit)));
    }
    let text = v[start..end].trim_end();
    // `NAME:MAX` (a name without arguments cannot hold a ':'); any other ':' stays in the
    // name, which no operator has
    let (name, max) = match text.split_once(':') {
        Some((n, m)) if m.parse::<usize>().is_ok() => (n, m.parse().ok()),
        _ => (text, None),
    };
    out.pieces.push(Piece::Operator {
        name: name.to_string(),
        args,
        max,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(name: &str, args: Option<&str>, max: Option<usize>) -> Piece {
        Piece::Operator {
            name: name.into(),
            args: args.map(Into::into),
            max,
        }
    }

    #[test]
    fn pieces_of_a_format() {
        assert_eq!(
            parse("plain").unwrap().pieces,
            [Piece::Literal("plain".into())]
        );
        assert_eq!(parse("").unwrap().pieces, []);
        assert_eq!(
            parse("%HOSTNAME%").unwrap().pieces,
            [op("HOSTNAME", None, None)]
        );
        assert_eq!(
            parse("a%%b%START_TIME(%s.%3f)%c").unwrap().pieces,
            [
                Piece::Literal("a%b".into()),
                op("START_TIME", Some("%s.%3f"), None),
                Piece::Literal("c".into())
            ]
        );
        assert_eq!(
            parse("%FILTER_STATE([\"a\", \"b\"])%").unwrap().pieces,
            [op("FILTER_STATE", Some("[\"a\", \"b\"]"), None)]
        );
        assert_eq!(
            parse("%HOSTNAME:3%").unwrap().pieces,
            [op("HOSTNAME", None, Some(3))]
        );
        assert_eq!(
            parse("%REQ()%").unwrap().pieces,
            [op("REQ", Some(""), None)]
        );
    }

    #[test]
    fn istio_refusals_with_their_messages() {
        assert_eq!(
            parse("100%").unwrap_err(),
            "invalid header configuration. Un-escaped %"
        );
        assert!(
            parse("%REQ(x)")
                .unwrap_err()
                .contains("Un-terminated variable")
        );
        assert_eq!(
            parse("%FILTER_STATE([\"a\"] x)%").unwrap_err(),
            "invalid header configuration. Expecting ')' or whitespace after 'FILTER_STATE([\"a\"] ', but found 'x'"
        );
        assert_eq!(
            parse("%REQ(x):10%").unwrap_err(),
            "invalid header configuration. Expecting '%' or whitespace after 'REQ(x)', but found ':'"
        );
        assert!(parse("%F([x])%").unwrap_err().contains("Expecting '\"'"));
    }

    proptest::proptest! {
        /// Any text: a result, never a panic; literal pieces put back together with the
        /// operators as written give the input again when it has no `%%`.
        #[test]
        fn any_text_parses_or_is_refused(v in "[a-zA-Z%()\\[\\]\",: é]{0,40}") {
            if let Ok(f) = parse(&v)
                && !v.contains("%%")
            {
                let mut back = String::new();
                for p in &f.pieces {
                    match p {
                        Piece::Literal(l) => back.push_str(l),
                        Piece::Operator { .. } => back.push('%'),
                    }
                }
                proptest::prop_assert!(back.len() <= v.len());
            }
        }
    }

    #[test]
    fn parsing_never_panics_on_any_input() {
        // every prefix and suffix of tricky inputs, including multi-byte characters
        for s in ["%é%", "%%%", "%(\\", "%A([\"\\", "é%%é%B(é)%é", "%A( )%"] {
            for i in 0..=s.len() {
                if s.is_char_boundary(i) {
                    let _ = parse(&s[..i]);
                    let _ = parse(&s[i..]);
                }
            }
        }
    }
}
