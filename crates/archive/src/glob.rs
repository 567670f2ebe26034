//! Exclusion patterns: `*` and `?` within one path component, `**` across components,
//! `[abc]`, `[a-z]`, `[!x]` classes. Matching is on bytes, so non-UTF-8 names work.

/// True when `text` matches the glob `pat`.
pub fn matches(pat: &[u8], text: &[u8]) -> bool {
    match pat.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) if rest.first() == Some(&b'*') => {
            // `**`, and `**/` also matching zero components.
            let rest = &rest[1..];
            if let Some(after) = rest.strip_prefix(b"/")
                && matches(after, text)
            {
                return true;
            }
            (0..=text.len()).any(|i| matches(rest, &text[i..]))
        }
        Some((b'*', rest)) => {
            let mut i = 0;
            loop {
                if matches(rest, &text[i..]) {
                    return true;
                }
                if i == text.len() || text[i] == b'/' {
                    return false;
                }
                i += 1;
            }
        }
        Some((b'?', rest)) => text.first().is_some_and(|&c| c != b'/') && matches(rest, &text[1..]),
        Some((b'[', rest)) => match (class(rest, text.first().copied()), text.first()) {
            (Some((true, after)), Some(_)) => matches(after, &text[1..]),
            (None, Some(b'[')) => matches(rest, &text[1..]),
            _ => false,
        },
        Some((c, rest)) => text.first() == Some(c) && matches(rest, &text[1..]),
    }
}

/// Parses a class after `[`: (does `c` match, the pattern after `]`); None when unclosed.
fn class(p: &[u8], c: Option<u8>) -> Option<(bool, &[u8])> {
    let (negate, mut p) = match p.first() {
        Some(b'!' | b'^') => (true, &p[1..]),
        _ => (false, p),
    };
    let mut hit = false;
    let mut first = true;
    loop {
        match p {
            [] => return None,
            [b']', rest @ ..] if !first => {
                let c = c?;
                return Some(((hit != negate) && c != b'/', rest));
            }
            [lo, b'-', hi, rest @ ..] if *hi != b']' => {
                hit |= c.is_some_and(|c| (*lo..=*hi).contains(&c));
                p = rest;
            }
            [x, rest @ ..] => {
                hit |= c == Some(*x);
                p = rest;
            }
        }
        first = false;
    }
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
}
