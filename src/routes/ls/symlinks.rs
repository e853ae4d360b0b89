//! How symlink targets are shown in a listing, so that it never names the root's absolute path.
//!
//! `ls -l` prints a symlink as `name -> target`, the target as the link holds it. An absolute
//! symlink that points into the root (`ln -s "$PWD/x" y`, common) would show the root's
//! absolute path, which no listing or error may reveal. So before a row leaves the server, its
//! target is rewritten where it would name or pass through the root (read by name, `..` by
//! `..`, without asking the file system):
//! - an absolute target inside the root (the root itself or beneath it) is shown relative to
//!   the link's directory, as `ln -sr` would write it: `<root>/x` from a link in `<root>/sub`
//!   shows `../x`;
//! - an absolute target outside the root is shown as the absolute path it names, with `.`,
//!   `..` and repeated `/` resolved by name, so that it cannot pass through the root
//!   (`<root>/../etc` shows `/srv/etc` for a root `/srv/files`, not the root's path);
//! - a relative target that climbs out of the root on its way (`../files/x` from the root
//!   `/srv/files`, or `../../srv/other`) is shown as the shortest relative path from the link's
//!   directory to where it leads (`x`, `../other`): written as it was, it would spell the
//!   root's own name;
//! - any other relative target (the usual kind, which stays inside) is shown as written.
//!
//! A root of `/` hides nothing and is shown as `ls` prints it. Only the root as configured
//! (canonical) is recognised: a target that reaches it through another symlink, or a bind
//! mount, is not.
//!
//! # Finding the target in a row
//!
//! A row is `... NAME -> TARGET`, each written by `--quoting-style=c-maybe`: as it is, or as a
//! C string in double quotes when it needs escaping (then no unescaped `"` is inside). No file
//! name contains `/`, so the first `/` of a row is in its target, and a row without one needs
//! no change (a target without `/` is a name, `.` or `..`, which cannot name the root). A
//! quoted target starts at the row's last ` -> "`; an unquoted one right after the last ` -> `
//! before the row's first `/`. Only a relative target that itself contains ` -> ` before its
//! first `/` is misread (its tail is then taken for the target): its row may show a changed
//! target, but never the root's path.
//!
//! Rows are rewritten as the listing streams: [`Rows`] passes every complete line on as soon
//! as it arrives, keeping back only a line not yet ended, and copies nothing when a chunk has
//! no `/` at all (a listing without symlinks that leave their directory).

use bytes::{Bytes, BytesMut};

/// A line longer than this is not a row of `ls -l` (a name is at most 255 bytes, a target 4095,
/// four times that when escaped); it is passed on as it is rather than held.
const MAX_ROW: usize = 64 * 1024;

/// Where a listing is, to show targets relative to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Place {
    /// The root's canonical absolute path, as components (never empty: a root of `/` has no
    /// `Place`).
    root: Vec<Vec<u8>>,
    /// The directory whose entries are listed (where their links live), relative to the root,
    /// as components.
    dir: Vec<Vec<u8>>,
}

impl Place {
    /// `root` is the canonical root, `dir` the listed directory's path relative to it (empty
    /// for the root). `None` for a root of `/`, whose path is no secret.
    pub(super) fn new(root: &[u8], dir: &[u8]) -> Option<Place> {
        let root = components(root);
        (!root.is_empty()).then(|| Place {
            root,
            dir: components(dir),
        })
    }

    /// The link's directory, absolute.
    fn link_dir(&self) -> Vec<Vec<u8>> {
        [self.root.clone(), self.dir.clone()].concat()
    }

    /// Whether the absolute `path` is the root or beneath it.
    fn inside(&self, path: &[Vec<u8>]) -> bool {
        path.starts_with(&self.root)
    }

    /// How `target` (a symlink's, raw bytes) is shown; `None`: as written. See the module doc.
    pub(super) fn shown(&self, target: &[u8]) -> Option<Vec<u8>> {
        let absolute = target.first() == Some(&b'/');
        let from = self.link_dir();
        let mut path = match absolute {
            true => Vec::new(),
            false => from.clone(),
        };
        let mut left = false;
        for part in target.split(|&b| b == b'/') {
            match part {
                b"" | b"." => {}
                b".." => {
                    path.pop();
                }
                name => path.push(name.to_vec()),
            }
            left |= !self.inside(&path);
        }
        let shown = match (absolute, self.inside(&path)) {
            (true, true) => relative(&from, &path),
            (true, false) => {
                let mut shown = Vec::new();
                for part in &path {
                    shown.push(b'/');
                    shown.extend_from_slice(part);
                }
                match shown.is_empty() {
                    true => b"/".to_vec(),
                    false => shown,
                }
            }
            (false, _) if left => relative(&from, &path),
            (false, _) => return None,
        };
        (shown != target).then_some(shown)
    }
}

/// The components of a path (empty ones and `.` dropped; `..` kept as it is).
fn components(path: &[u8]) -> Vec<Vec<u8>> {
    path.split(|&b| b == b'/')
        .filter(|part| !part.is_empty() && *part != b".")
        .map(<[u8]>::to_vec)
        .collect()
}

/// The shortest relative path from the directory `from` to `to`, both absolute and resolved.
fn relative(from: &[Vec<u8>], to: &[Vec<u8>]) -> Vec<u8> {
    let common = from.iter().zip(to).take_while(|(a, b)| a == b).count();
    let parts: Vec<&[u8]> = std::iter::repeat_n(&b".."[..], from.len() - common)
        .chain(to[common..].iter().map(Vec::as_slice))
        .collect();
    match parts.is_empty() {
        true => b".".to_vec(),
        false => parts.join(&b'/'),
    }
}

/// Rewrites the rows of one listing as they stream; see the module doc.
#[derive(Debug)]
pub(super) struct Rows {
    /// `None`: pass everything on as it is.
    place: Option<Place>,
    /// The start of a line whose end has not arrived yet.
    carry: BytesMut,
}

impl Rows {
    pub(super) fn new(place: Option<Place>) -> Rows {
        Rows {
            place,
            carry: BytesMut::new(),
        }
    }

    /// The rows of `chunk` (and of what was kept back) that are complete, rewritten; `None` if
    /// none is complete yet.
    pub(super) fn feed(&mut self, chunk: Bytes) -> Option<Bytes> {
        let Some(place) = &self.place else {
            return Some(chunk);
        };
        let data = match self.carry.is_empty() {
            true => chunk,
            false => {
                self.carry.extend_from_slice(&chunk);
                self.carry.split().freeze()
            }
        };
        let complete = match data.iter().rposition(|&b| b == b'\n') {
            Some(end) => end + 1,
            None if data.len() > MAX_ROW => data.len(),
            None => {
                self.carry.extend_from_slice(&data);
                return None;
            }
        };
        self.carry.extend_from_slice(&data[complete..]);
        Some(rewrite(place, data.slice(..complete)))
    }

    /// What was kept back at the end of the output (a last line without its newline).
    pub(super) fn finish(&mut self) -> Option<Bytes> {
        let place = self.place.as_ref()?;
        let rest = self.carry.split().freeze();
        (!rest.is_empty()).then(|| rewrite(place, rest))
    }
}

/// Complete rows, each rewritten where needed; the chunk itself when none is.
fn rewrite(place: &Place, rows: Bytes) -> Bytes {
    if !rows.contains(&b'/') {
        return rows;
    }
    let mut out: Option<Vec<u8>> = None;
    let mut start = 0;
    while start < rows.len() {
        let end = rows[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rows.len(), |i| start + i);
        let row = &rows[start..end];
        if let Some(new) = row.contains(&b'/').then(|| rewrite_row(place, row)).flatten() {
            let out = out.get_or_insert_with(|| rows[..start].to_vec());
            out.extend_from_slice(&new);
        } else if let Some(out) = &mut out {
            out.extend_from_slice(row);
        }
        if let (Some(out), true) = (&mut out, end < rows.len()) {
            out.push(b'\n');
        }
        start = end + 1;
    }
    out.map_or(rows, Bytes::from)
}

/// One row (without its newline) with its symlink target shown as [`Place::shown`] says;
/// `None` if it stays as it is.
fn rewrite_row(place: &Place, row: &[u8]) -> Option<Vec<u8>> {
    const ARROW: &[u8] = b" -> ";
    let (start, target, quoted) = if row.ends_with(b"\"") {
        let at = rfind(row, b" -> \"")? + ARROW.len();
        (at, c_unquote(&row[at..])?, true)
    } else {
        let slash = row.iter().position(|&b| b == b'/')?;
        let at = rfind(&row[..slash], ARROW)? + ARROW.len();
        (at, row[at..].to_vec(), false)
    };
    let shown = place.shown(&target)?;
    let mut new = row[..start].to_vec();
    match quoted && needs_quoting(&shown) {
        true => new.extend_from_slice(&c_quote(&shown)),
        false => new.extend_from_slice(&shown),
    }
    Some(new)
}

/// Where `needle` last occurs in `haystack`.
fn rfind(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).rposition(|w| w == needle)
}

/// The bytes of a C string as `ls --quoting-style=c` writes it (`"caf\351"`); `None` if it is
/// not one.
fn c_unquote(quoted: &[u8]) -> Option<Vec<u8>> {
    let inner = quoted.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    let mut out = Vec::with_capacity(inner.len());
    let mut bytes = inner.iter().copied().peekable();
    while let Some(b) = bytes.next() {
        match b {
            b'"' => return None,
            b'\\' => {
                let escaped = bytes.next()?;
                out.push(match escaped {
                    b'a' => 0x07,
                    b'b' => 0x08,
                    b'f' => 0x0c,
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'v' => 0x0b,
                    b'\\' | b'"' | b'\'' | b'?' => escaped,
                    b'0'..=b'7' => {
                        let mut value = u32::from(escaped - b'0');
                        for _ in 0..2 {
                            match bytes.peek() {
                                Some(&d @ b'0'..=b'7') => {
                                    value = value * 8 + u32::from(d - b'0');
                                    bytes.next();
                                }
                                _ => break,
                            }
                        }
                        u8::try_from(value).ok()?
                    }
                    _ => return None,
                });
            }
            b => out.push(b),
        }
    }
    Some(out)
}

/// Whether `--quoting-style=c-maybe` would quote these bytes: a control character, a `"` or a
/// `\`, or bytes that are not UTF-8.
fn needs_quoting(bytes: &[u8]) -> bool {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.chars().any(|c| c.is_control() || c == '"' || c == '\\'),
        Err(_) => true,
    }
}

/// Bytes as a C string in double quotes, as `ls --quoting-style=c` writes one.
fn c_quote(bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![b'"'];
    let mut rest = bytes;
    while !rest.is_empty() {
        // The longest valid UTF-8 prefix, then one byte that is not.
        let (valid, invalid) = match std::str::from_utf8(rest) {
            Ok(text) => (text, None),
            Err(e) => {
                let (valid, after) = rest.split_at(e.valid_up_to());
                let valid = std::str::from_utf8(valid).expect("checked above");
                (valid, Some(after[0]))
            }
        };
        for c in valid.chars() {
            match c {
                '\x07' => out.extend_from_slice(b"\\a"),
                '\x08' => out.extend_from_slice(b"\\b"),
                '\x0c' => out.extend_from_slice(b"\\f"),
                '\n' => out.extend_from_slice(b"\\n"),
                '\r' => out.extend_from_slice(b"\\r"),
                '\t' => out.extend_from_slice(b"\\t"),
                '\x0b' => out.extend_from_slice(b"\\v"),
                '"' => out.extend_from_slice(b"\\\""),
                '\\' => out.extend_from_slice(b"\\\\"),
                c if c.is_control() => {
                    let mut buffer = [0; 4];
                    for &b in c.encode_utf8(&mut buffer).as_bytes() {
                        out.extend_from_slice(format!("\\{b:03o}").as_bytes());
                    }
                }
                c => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
            }
        }
        rest = &rest[valid.len()..];
        if let Some(b) = invalid {
            out.extend_from_slice(format!("\\{b:03o}").as_bytes());
            rest = &rest[1..];
        }
    }
    out.push(b'"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(dir: &str) -> Place {
        Place::new(b"/srv/files", dir.as_bytes()).unwrap()
    }

    fn shown(dir: &str, target: &str) -> String {
        match place(dir).shown(target.as_bytes()) {
            Some(shown) => String::from_utf8(shown).unwrap(),
            None => format!("as written: {target}"),
        }
    }

    #[test]
    fn absolute_targets_inside_the_root_are_shown_relative_to_the_link() {
        assert_eq!(shown("", "/srv/files/x"), "x");
        assert_eq!(shown("", "/srv/files"), ".");
        assert_eq!(shown("", "/srv/files/"), ".");
        assert_eq!(shown("sub", "/srv/files/x"), "../x");
        assert_eq!(shown("a/b", "/srv/files/a/c/d"), "../c/d");
        assert_eq!(shown("a/b", "/srv/files"), "../..");
        assert_eq!(shown("a", "/srv/files/a"), ".");
        // However it is spelled.
        assert_eq!(shown("", "//srv/./files//x/"), "x");
        assert_eq!(shown("", "/srv/other/../files/x"), "x");
        assert_eq!(shown("", "/../srv/files/x"), "x");
    }

    #[test]
    fn absolute_targets_outside_are_shown_resolved_so_they_cannot_pass_through_the_root() {
        assert_eq!(shown("", "/etc/passwd"), "as written: /etc/passwd");
        assert_eq!(shown("sub", "/srv"), "as written: /srv");
        assert_eq!(shown("", "/srv/files2/x"), "as written: /srv/files2/x");
        assert_eq!(shown("", "/srv/files/../etc"), "/srv/etc");
        assert_eq!(shown("", "/srv/files/x/../../.."), "/");
        assert_eq!(shown("", "/etc//passwd"), "/etc/passwd");
    }

    #[test]
    fn relative_targets_are_as_written_unless_they_climb_out() {
        assert_eq!(shown("", "x"), "as written: x");
        assert_eq!(shown("a/b", "../c/./d"), "as written: ../c/./d");
        assert_eq!(shown("a", ".."), "as written: ..");
        // Out and back in: shown the short way, without the root's name.
        assert_eq!(shown("", "../files/x"), "x");
        assert_eq!(shown("sub", "../../../srv/files/y"), "../y");
        // Out and elsewhere: the shortest way, which names nothing of the root's path.
        assert_eq!(shown("", ".."), "as written: ..");
        assert_eq!(shown("", "../other"), "as written: ../other");
        assert_eq!(shown("", "../../srv/other"), "../other");
        assert_eq!(shown("sub", "../../../etc"), "as written: ../../../etc");
    }

    #[test]
    fn a_root_of_slash_hides_nothing() {
        assert_eq!(Place::new(b"/", b"x"), None);
    }

    fn rows(place: Option<Place>, chunks: &[&[u8]]) -> Vec<String> {
        let mut rows = Rows::new(place);
        let mut out: Vec<String> = chunks
            .iter()
            .filter_map(|chunk| rows.feed(Bytes::copy_from_slice(chunk)))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .collect();
        out.extend(rows.finish().map(|b| String::from_utf8_lossy(&b).into_owned()));
        out
    }

    const ROW: &str = "   0 lrwxrwxrwx  1 root root   12 Dec  6 01:32 ";

    #[test]
    fn rows_are_rewritten_whole_and_passed_on_as_they_complete() {
        let listing = format!(
            "total 8.0K\n{ROW} a -> /srv/files/x\n{ROW} b -> c\n{ROW} d -> /etc/passwd\n"
        );
        let expected =
            format!("total 8.0K\n{ROW} a -> x\n{ROW} b -> c\n{ROW} d -> /etc/passwd\n");
        // In one chunk, and cut anywhere, even inside the root's path.
        assert_eq!(rows(Some(place("")), &[listing.as_bytes()]).concat(), expected);
        let bytes = listing.as_bytes();
        for cut in 1..bytes.len() {
            let out = rows(Some(place("")), &[&bytes[..cut], &bytes[cut..]]);
            assert_eq!(out.concat(), expected, "cut at {cut}");
        }
        // A line is passed on once complete, without waiting for more.
        let out = rows(Some(place("")), &[b"total 0\npartial"]);
        assert_eq!(out, ["total 0\n", "partial"]);
        // Without a place nothing changes.
        assert_eq!(rows(None, &[listing.as_bytes()]).concat(), listing);
    }

    #[test]
    fn quoted_names_and_targets_stay_quoted_where_they_must() {
        let place = Some(place(""));
        let cases = [
            // A quoted target whose rest needs no quoting any more loses its quotes.
            (r#""n\001" -> "/srv/files/caf""#, r#""n\001" -> caf"#),
            (r#"a -> "/srv/files/caf\351""#, r#"a -> "caf\351""#),
            (r#"a -> "/srv/files/new\nline""#, r#"a -> "new\nline""#),
            (r#"a -> "/srv/files/q\"uote""#, r#"a -> "q\"uote""#),
            // A name with ` -> ` in it.
            ("a -> b -> /srv/files/a", "a -> b -> a"),
            // Nothing to do.
            (r#"a -> "rel\ative""#, r#"a -> "rel\ative""#),
        ];
        for (row, expected) in cases {
            let out = rows(place.clone(), &[format!("{ROW}{row}\n").as_bytes()]);
            assert_eq!(out, [format!("{ROW}{expected}\n")], "{row}");
        }
    }

    #[test]
    fn c_strings_round_trip() {
        for bytes in [
            &b"plain"[..],
            b"new\nline\t\x07\x08\x0b\x0c\r",
            b"q\"uote\\",
            b"caf\xe9",
            "café \u{85}".as_bytes(),
        ] {
            let quoted = c_quote(bytes);
            assert_eq!(c_unquote(&quoted).as_deref(), Some(bytes), "{quoted:?}");
        }
        assert_eq!(c_quote(b"caf\xe9"), br#""caf\351""#);
        assert_eq!(c_unquote(br#""a\x""#), None);
        assert_eq!(c_unquote(br#""a"b""#), None);
    }
}
