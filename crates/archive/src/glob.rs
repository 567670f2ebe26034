//! Exclusion patterns: `*` and `?` within one path component, `**` across components,
//! `[abc]`, `[a-z]`, `[!x]` classes; every other character (`\`, `{`, `}`, an unclosed `[`)
//! stands for itself. Matching is done by `globset` (a regular expression: linear time, where
//! a backtracking matcher takes minutes on `*a*a*a*…b`), on bytes, so non-UTF-8 names work.

use std::cell::RefCell;
use std::collections::HashMap;

use globset::{Candidate, GlobBuilder, GlobMatcher};

/// A compiled pattern.
#[derive(Debug, Clone)]
pub enum Glob {
    Matcher(GlobMatcher),
    /// A class that can match nothing (`[z-a]`): the pattern matches nothing.
    Never,
    /// Not UTF-8 (never from a config or a command line): compared byte for byte.
    Literal(Vec<u8>),
}

impl Glob {
    pub fn new(pat: &[u8]) -> Glob {
        let Ok(text) = std::str::from_utf8(pat) else {
            return Glob::Literal(pat.to_vec());
        };
        let Some(translated) = translate(text) else {
            return Glob::Never;
        };
        let built = GlobBuilder::new(&translated)
            .literal_separator(true)
            .backslash_escape(false)
            .allow_unclosed_class(true)
            .build();
        match built {
            Ok(g) => Glob::Matcher(g.compile_matcher()),
            // `translate` leaves nothing globset refuses; should it, the text is taken as is.
            Err(_) => Glob::Literal(pat.to_vec()),
        }
    }

    pub fn is_match(&self, text: &[u8]) -> bool {
        match self {
            Glob::Matcher(m) => m.is_match_candidate(&Candidate::from_bytes(text)),
            Glob::Never => false,
            Glob::Literal(l) => l == text,
        }
    }
}

/// True when `text` matches the glob `pat`. Patterns are compiled once per thread.
pub fn matches(pat: &[u8], text: &[u8]) -> bool {
    thread_local! {
        static COMPILED: RefCell<HashMap<Vec<u8>, Glob>> = RefCell::new(HashMap::new());
    }
    COMPILED.with(|c| {
        let mut c = c.borrow_mut();
        if !c.contains_key(pat) {
            // The patterns of one config are few; a caller with endless new ones starts over.
            if c.len() >= 1024 {
                c.clear();
            }
            c.insert(pat.to_vec(), Glob::new(pat));
        }
        c.get(pat).is_some_and(|g| g.is_match(text))
    })
}

/// Our syntax in globset's: braces made literal (globset reads `{a,b}` as alternatives), a
/// `**` inside a component (`/var/**.log`) made to cross components as ours does, classes
/// rewritten without empty ranges. None when a class can match nothing.
fn translate(pat: &str) -> Option<String> {
    let chars: Vec<char> = pat.chars().collect();
    let mut out = String::with_capacity(pat.len() + 8);
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '{' => out.push_str("[{]"),
            '}' => out.push_str("[}]"),
            '*' if chars.get(i + 1) == Some(&'*') => {
                let mut j = i;
                while chars.get(j) == Some(&'*') {
                    j += 1;
                }
                let before = i == 0 || chars[i - 1] == '/';
                let after = j == chars.len() || chars[j] == '/';
                if before && after {
                    out.push_str("**");
                } else {
                    // `a**b`: `a*b`, or `a*`, folders, `*b`.
                    out.push_str("{*,*/**/*}");
                }
                i = j;
                continue;
            }
            '[' => match class(&chars[i + 1..]) {
                Some((Class::Items(text), len)) => {
                    out.push_str(&text);
                    i += 1 + len;
                    continue;
                }
                Some((Class::Empty, _)) => return None,
                None => out.push_str("[[]"),
            },
            c => out.push(c),
        }
        i += 1;
    }
    Some(out)
}

enum Class {
    /// The class in globset's syntax.
    Items(String),
    /// Matches no character.
    Empty,
}

/// The class after a `[`, as ours reads it (`!` or `^` negates, a `]` first is literal,
/// `a-z` a range, a range backwards matches nothing), and its length up to its `]`; None
/// when unclosed (the `[` is then a plain character).
fn class(p: &[char]) -> Option<(Class, usize)> {
    let negated = matches!(p.first(), Some('!' | '^'));
    let mut i = usize::from(negated);
    let mut items: Vec<(char, char)> = Vec::new();
    let mut first = true;
    loop {
        match p.get(i..)? {
            [] => return None,
            [']', ..] if !first => break,
            [lo, '-', hi, ..] if *hi != ']' => {
                if lo <= hi {
                    items.push((*lo, *hi));
                }
                i += 3;
            }
            [x, ..] => {
                items.push((*x, *x));
                i += 1;
            }
        }
        first = false;
    }
    let len = i + 1;
    if items.is_empty() {
        return Some((if negated { Class::Items("?".into()) } else { Class::Empty }, len));
    }
    Some((Class::Items(globset_class(negated, items)), len))
}

/// A class written so that globset reads each item back as it is: a `]` stays first (ours has
/// it only there), a lone `-` goes last, or first when a `!` or `^` would otherwise open a
/// class that is not negated.
fn globset_class(negated: bool, mut items: Vec<(char, char)>) -> String {
    let before = items.len();
    items.retain(|&r| r != ('-', '-'));
    let dash = items.len() < before;
    let opens_badly = |items: &[(char, char)]| !negated && items.first().is_some_and(|r| matches!(r.0, '!' | '^'));
    let mut dash_first = false;
    if opens_badly(&items) {
        if dash {
            dash_first = true;
        } else if let Some(pos) = items.iter().position(|r| !matches!(r.0, '!' | '^')) {
            items.swap(0, pos);
        } else {
            // Only `!`/`^` and ranges from them: `{!,["-x]}`.
            let alts: Vec<String> = items
                .iter()
                .map(|&(lo, hi)| match char::from_u32(u32::from(lo) + 1).filter(|_| lo < hi) {
                    Some(next) => format!("{lo},[{next}-{hi}]"),
                    None => lo.to_string(),
                })
                .collect();
            return format!("{{{}}}", alts.join(","));
        }
    }
    let mut text = String::from(if negated { "[!" } else { "[" });
    if dash_first {
        text.push('-');
    }
    for (lo, hi) in items {
        text.push(lo);
        if lo != hi {
            text.push('-');
            text.push(hi);
        }
    }
    if dash && !dash_first {
        text.push('-');
    }
    text.push(']');
    text
}

/// Whether a pattern has glob characters (else it is a plain path or name).
pub fn is_glob(p: &[u8]) -> bool {
    p.iter().any(|c| matches!(c, b'*' | b'?' | b'['))
}

#[cfg(test)]
mod tests {
    use super::matches as m;

    #[test]
    fn star_stays_in_a_component() {
        assert!(m(b"*.log", b"app.log"));
        assert!(!m(b"*.log", b"dir/app.log"));
        assert!(m(b"/var/*/cache", b"/var/www/cache"));
        assert!(!m(b"/var/*/cache", b"/var/www/x/cache"));
    }

    #[test]
    fn double_star_crosses() {
        assert!(m(b"**/node_modules", b"/srv/app/node_modules"));
        assert!(m(b"/srv/**/tmp", b"/srv/tmp"));
        assert!(m(b"/srv/**/tmp", b"/srv/a/b/tmp"));
        assert!(!m(b"**/node_modules", b"/srv/node_modules_old"));
    }

    #[test]
    fn classes_and_question() {
        assert!(m(b"file[0-9].txt", b"file7.txt"));
        assert!(!m(b"file[!0-9].txt", b"file7.txt"));
        assert!(m(b"?.c", b"a.c"));
        assert!(!m(b"?.c", b"ab.c"));
        assert!(m(b"a[", b"a["));
    }

    #[test]
    fn everything_else_is_itself() {
        assert!(m(b"/srv/**", b"/srv/a/b"));
        assert!(m(b"**", b"/any/thing"));
        assert!(m(b"/var/**.log", b"/var/a/b/x.log") && m(b"/var/**.log", b"/var/x.log"));
        assert!(!m(b"/var/**.log", b"/var/a/x.txt"));
        assert!(m(b"a{b,c}", b"a{b,c}") && !m(b"a{b,c}", b"ab"));
        assert!(m(br"back\slash*", br"back\slash.txt"));
        assert!(m(b"[]x]", b"]") && m(b"[]x]", b"x") && !m(b"[]x]", b"y"));
        assert!(m(b"[a-]", b"-") && m(b"[!a]b", b"cb") && m(b"[^a]b", b"cb") && !m(b"[^a]b", b"ab"));
        assert!(!m(b"/a[!x]b", b"/a/b"), "a class never matches /");
        assert!(!m(b"x[z-a]", b"xz") && m(b"x[!z-a]", b"xz"), "a backwards range matches nothing");
        assert!(m(b"x[[]", b"x[") && m(b"[", b"["));
        assert!(m(b"[-!]", b"!") && m(b"[-!]", b"-") && !m(b"[-!]", b"x"));
        assert!(m(b"[z-a!]", b"!") && !m(b"[z-a!]", b"x"));
        assert!(m(b"[z-a!-#]", b"\"") && m(b"[z-a!-#]", b"!") && !m(b"[z-a!-#]", b"a"));
        assert!(m(b"[a-b-c]", b"-") && m(b"[a-b-c]", b"c") && !m(b"[a-b-c]", b"d"));
        // Non-UTF-8 names.
        assert!(m(b"*.txt", b"caf\xe9.txt") && m(b"caf?.txt", b"caf\xe9.txt"));
    }

    /// A backtracking matcher takes minutes on this; a regular expression no time at all.
    #[test]
    fn pathological_patterns_match_in_linear_time() {
        let pat = b"*a*a*a*a*a*a*a*a*a*a*a*a*b";
        let name = [b'a'; 60];
        assert!(!m(pat, &name));
        let mut hit = name.to_vec();
        hit.push(b'b');
        assert!(m(pat, &hit));
        let deep = format!("/{}", ["a"; 30].join("/"));
        assert!(!m(b"/**/a**a**a**a**a**a**a**a**a**a**b", deep.as_bytes()));
        assert!(m(b"/**/a**a**a**a**a**a**a**a**a**a**b", format!("{deep}b").as_bytes()));
    }
}
