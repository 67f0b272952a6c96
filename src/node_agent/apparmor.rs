//! AppArmor profiles: the policy is checked, written to `<dir>/<name>` and loaded (or replaced)
//! with `apparmor_parser`; on a node without AppArmor in the kernel or without the parser, every
//! profile is reported `Unsupported` and nothing is written.
//!
//! `apparmor_parser --replace` loads every profile a file defines, and the parser reads every file
//! the policy includes, so an AppArmorProfile could otherwise replace the host's profiles, attach
//! itself to host programs or read host files. Two checks keep it to its own profile:
//! [`check_policy`] reads the text (no process; refuses includes other than `<abstractions/…>` and
//! `<tunables/…>`, attachments and a second top-level profile), then [`check_names`] asks the
//! parser which profiles the text defines (it parses and loads nothing), before anything is loaded.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Whether this node can load AppArmor profiles, and if not, why.
#[derive(Debug, Clone)]
pub enum Support {
    Available { parser: PathBuf, dir: PathBuf },
    Unsupported(String),
}

impl Support {
    /// AppArmor is usable when the kernel exposes its securityfs (`<sys>/kernel/security/apparmor`)
    /// and `parser` runs.
    pub fn detect(sys_root: &Path, parser: &Path, dir: &Path) -> Support {
        let fs = sys_root.join("kernel/security/apparmor");
        if !fs.exists() {
            return Support::Unsupported(format!(
                "AppArmor is not enabled in this node's kernel ({} is absent)",
                fs.display()
            ));
        }
        match Command::new(parser).arg("--version").output() {
            Ok(out) if out.status.success() => Support::Available {
                parser: parser.to_owned(),
                dir: dir.to_owned(),
            },
            Ok(out) => Support::Unsupported(format!("{} --version failed: {}", parser.display(), out.status)),
            Err(e) => Support::Unsupported(format!(
                "cannot run {} ({e}); install apparmor_parser on the node or set --apparmor-parser",
                parser.display()
            )),
        }
    }
}

/// The directories under the parser's search path a policy may include from: the distribution's
/// building blocks. Any other file (a host profile, `/etc/shadow`) must stay out of reach.
const INCLUDE_DIRS: [&str; 2] = ["abstractions", "tunables"];

/// Checks the policy text without running anything and returns the name of the one top-level
/// profile it declares (`profile <name> … {`). Refused: an `include`/`#include` of anything but
/// `<abstractions/…>` or `<tunables/…>` (also `include if exists` and quoted paths), an `abi`
/// other than `<abi/…>`, a profile with an attachment (`profile name /usr/bin/x {`, a profile
/// named by a path, `xattrs=`), and more than one top-level profile (profiles nested in it, and
/// `profile <name>//<child>`, are its own). The scan follows the parser's lexer where it matters
/// and errs towards reading text as policy: a `#` comment is skipped only where the parser is
/// certain to read it as one (after a finished rule or an opening brace).
pub fn check_policy(policy: &str) -> Result<&str, String> {
    if policy.contains('\0') {
        return Err("the policy holds a NUL character".into());
    }
    let tokens = tokens(policy);
    let mut top: Vec<(&str, usize)> = Vec::new();
    let mut depth: i64 = 0;
    let mut i = 0;
    while i < tokens.len() {
        let t = &tokens[i];
        let next = tokens.get(i + 1);
        path_header(t, next)?;
        i += 1;
        if t.quoted {
            continue;
        }
        let word = t.text.as_bytes();
        let mut p = 0;
        while p < word.len() {
            match word[p] {
                b'\\' => {
                    p += 2;
                    continue;
                }
                b'{' => depth += 1,
                b'}' => depth -= 1,
                _ => {}
            }
            let at = &word[p..];
            // The parser takes `#include` wherever a token starts, `include` before a blank.
            let include = if at.starts_with(b"#include") {
                Some(p + "#include".len())
            } else if at == b"include" && starts_token(word, p) {
                Some(word.len())
            } else {
                None
            };
            if let Some(end) = include {
                let (target, from_next) = operand(t, end, next);
                check_include(t.line, target)?;
                if from_next {
                    i += 1;
                }
                break;
            }
            if at.starts_with(b"abi") && starts_token(word, p) && !continues_keyword(word, p + 3) {
                let (target, from_next) = operand(t, p + 3, next);
                check_abi(t.line, target)?;
                if from_next {
                    i += 1;
                }
                break;
            }
            if at.starts_with(b"profile") && starts_token(word, p) && !continues_keyword(word, p + 7) {
                let (name, from_next) = operand(t, p + 7, next);
                let after = if from_next { tokens.get(i + 1) } else { next };
                let name = check_header(t.line, name, after)?;
                if depth <= 0 {
                    top.push((name, t.line));
                }
                if from_next {
                    i += 1;
                }
                break;
            }
            p += 1;
        }
    }
    let mut main = top.iter().filter(|(n, _)| !n.contains("//"));
    let Some(&(name, _)) = main.next() else {
        return Err(
            "the policy declares no `profile <name> {`; name the profile so pods can refer to it".into(),
        );
    };
    if let Some((other, line)) = main.next() {
        return Err(format!(
            "the policy declares more than one top-level profile ({name} and {other} on line {line}); use one AppArmorProfile each"
        ));
    }
    if !plain_name(name) {
        return Err(format!(
            "profile name {name:?} may hold only letters, digits, '-', '_' and '.'"
        ));
    }
    // `profile <name>//<child> {` outside the main profile defines a child of it; any other
    // prefix would be another profile's child.
    for (child, line) in top.iter().filter(|(n, _)| n.contains("//")) {
        if !is_child_of(child, name) {
            return Err(format!(
                "line {line}: profile {child} is not nested in {name}; an AppArmorProfile defines only {name} and its children"
            ));
        }
    }
    Ok(name)
}

/// [`check_policy`], and that the profile is named after the AppArmorProfile (`object`), which
/// is what pods name as `localhost/<object>`.
pub fn check_for_object(object: &str, policy: &str) -> Result<(), String> {
    let declared = check_policy(policy)?;
    if declared == object {
        Ok(())
    } else {
        Err(format!(
            "the policy declares profile {declared:?}; declare `profile {object}` (the object's name) so pods can refer to it as localhost/{object}"
        ))
    }
}

/// Asks `apparmor_parser --names` which profiles the policy file at `path` defines (it parses the
/// policy and loads nothing) and accepts only `name` and profiles nested in it. This is the
/// parser's own reading: whatever the text scan of [`check_policy`] may have missed shows here.
pub fn check_names(parser: &Path, path: &Path, name: &str) -> Result<(), String> {
    let out = Command::new(parser)
        .arg("--names")
        .arg(path)
        .output()
        .map_err(|e| format!("cannot run {} ({e})", parser.display()))?;
    if !out.status.success() {
        return Err(refused(&out.stderr));
    }
    let listed = String::from_utf8_lossy(&out.stdout);
    let names: Vec<&str> = listed.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if !names.contains(&name) {
        return Err(format!(
            "apparmor_parser finds no profile {name:?} in the policy (it finds: {}); declare `profile {name} {{ … }}`",
            shown(&names)
        ));
    }
    let others: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| *n != name && !is_child_of(n, name))
        .collect();
    if !others.is_empty() {
        return Err(format!(
            "the policy also defines {}: an AppArmorProfile may define only profile {name} and profiles nested in it (named, not by a path); give every other profile an AppArmorProfile of its own",
            shown(&others)
        ));
    }
    Ok(())
}

/// Writes the policy file and loads it into the kernel (replacing an older version), once both
/// checks pass; a refused policy leaves the loaded version and its file as they were.
pub fn load(parser: &Path, dir: &Path, name: &str, policy: &str) -> Result<(), String> {
    check_for_object(name, policy)?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {} ({e})", dir.display()))?;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, policy).map_err(|e| format!("cannot write {} ({e})", tmp.display()))?;
    if let Err(e) = check_names(parser, &tmp, name) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &path).map_err(|e| format!("cannot write {} ({e})", path.display()))?;
    run(parser, &["--replace", "--skip-cache"], &path)
}

/// Unloads the profile and removes its file. The removal names only this profile (through a
/// one-line policy), not the stored file: `--remove` unloads every profile its file defines, and
/// a file written before these checks existed may define others.
pub fn unload(parser: &Path, dir: &Path, name: &str) -> Result<(), String> {
    let path = dir.join(name);
    if !path.exists() {
        return Ok(());
    }
    if !plain_name(name) {
        return Err(format!(
            "cannot unload profile {name:?}: not a plain profile name"
        ));
    }
    let stub = dir.join(format!(".{name}.remove"));
    std::fs::write(&stub, format!("profile {name} {{\n}}\n"))
        .map_err(|e| format!("cannot write {} ({e})", stub.display()))?;
    let removed = run(parser, &["--remove"], &stub);
    let _ = std::fs::remove_file(&stub);
    removed?;
    std::fs::remove_file(&path).map_err(|e| format!("cannot remove {} ({e})", path.display()))
}

fn run(parser: &Path, args: &[&str], path: &Path) -> Result<(), String> {
    let out = Command::new(parser)
        .args(args)
        .arg(path)
        .output()
        .map_err(|e| format!("cannot run {} ({e})", parser.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(refused(&out.stderr))
    }
}

fn refused(stderr: &[u8]) -> String {
    let stderr = String::from_utf8_lossy(stderr);
    // The parser's note that it runs without a policy cache is noise here.
    let why: String = stderr
        .lines()
        .filter(|l| !l.starts_with("Cache read/write disabled"))
        .collect::<Vec<_>>()
        .join("; ");
    format!(
        "apparmor_parser refused the policy: {}",
        why.trim().chars().take(500).collect::<String>()
    )
}

fn shown(names: &[&str]) -> String {
    if names.is_empty() {
        return "none".into();
    }
    let mut s: String = names.iter().take(5).copied().collect::<Vec<_>>().join(", ");
    if names.len() > 5 {
        s.push_str(&format!(" and {} more", names.len() - 5));
    }
    s.chars().take(300).collect()
}

/// A profile name pods can name and the agent can use as a file name.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `parent//child`, `parent//child//hat`: a profile nested in `parent`, each part a plain name
/// (a part starting with `/` would be a program path, that is an attachment).
fn is_child_of(full: &str, parent: &str) -> bool {
    full.strip_prefix(parent)
        .and_then(|rest| rest.strip_prefix("//"))
        .is_some_and(|rest| rest.split("//").all(plain_name))
}

/// One word or quoted string of the policy, comments left out.
#[derive(Debug)]
struct Token<'a> {
    text: &'a str,
    line: usize,
    quoted: bool,
}

impl<'a> Token<'a> {
    /// The text inside the quotes of a quoted token.
    fn unquoted(&self) -> &'a str {
        if self.quoted {
            let inner = self.text.strip_prefix('"').unwrap_or(self.text);
            inner.strip_suffix('"').unwrap_or(inner)
        } else {
            self.text
        }
    }
}

/// What a keyword takes: the rest of its word if any (`#include<x>`, `profile/x`), else the next
/// token; `true` when it is the next token.
fn operand<'a>(t: &Token<'a>, end: usize, next: Option<&Token<'a>>) -> (Option<Token<'a>>, bool) {
    match t.text.get(end..) {
        Some(rest) if !rest.is_empty() => (
            Some(Token {
                text: rest,
                line: t.line,
                quoted: false,
            }),
            false,
        ),
        _ => (
            next.map(|n| Token {
                text: n.text,
                line: n.line,
                quoted: n.quoted,
            }),
            true,
        ),
    }
}

/// Whether a keyword at `p` starts a token for the parser: a letter, digit, `_`, `/`, `.`, `-`,
/// `*`, `@`, `$` or `\` before it makes it part of a longer name or path.
fn starts_token(word: &[u8], p: usize) -> bool {
    p == 0
        || !(word[p - 1].is_ascii_alphanumeric()
            || matches!(
                word[p - 1],
                b'_' | b'/' | b'.' | b'-' | b'*' | b'@' | b'$' | b'\\'
            ))
}

/// Whether the keyword ending at `end` goes on as a longer name (`profiles`, `abi_x`).
fn continues_keyword(word: &[u8], end: usize) -> bool {
    word.get(end)
        .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
}

fn check_include(line: usize, target: Option<Token<'_>>) -> Result<(), String> {
    let allowed = "only `include <abstractions/…>` and `include <tunables/…>` are allowed";
    let Some(target) = target else {
        return Err(format!("line {line}: `include` without a file; {allowed}"));
    };
    if !target.quoted && target.text == "if" {
        return Err(format!(
            "line {line}: `include if exists` is not allowed; {allowed}, of a file the node has"
        ));
    }
    let ok = !target.quoted
        && target
            .text
            .strip_prefix('<')
            .and_then(|t| t.strip_suffix('>'))
            .and_then(|t| t.split_once('/'))
            .is_some_and(|(dir, rest)| INCLUDE_DIRS.contains(&dir) && safe_relative(rest));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "line {line}: include of {} refused: {allowed} (any other file is read from the node; a comment after an unfinished rule is read as policy too)",
            shorten(target.text)
        ))
    }
}

fn check_abi(line: usize, target: Option<Token<'_>>) -> Result<(), String> {
    let ok = target.as_ref().is_some_and(|t| {
        !t.quoted
            && t.text
                .strip_suffix(',')
                .unwrap_or(t.text)
                .strip_prefix("<abi/")
                .and_then(|t| t.strip_suffix('>'))
                .is_some_and(safe_relative)
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "line {line}: abi {} refused: only `abi <abi/…>,` is allowed",
            target.map_or_else(|| "(nothing)".into(), |t| shorten(t.text))
        ))
    }
}

/// `a/b.c`: non-empty parts of letters, digits, `.`, `-`, `_`, `+`, none `.` or `..`.
fn safe_relative(path: &str) -> bool {
    path.split('/').all(|part| {
        !part.is_empty()
            && part != "."
            && part != ".."
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'+'))
    })
}

/// A `profile` header: the name must not be a path or a variable, and no attachment may follow
/// it (only `{`, `flags=…` or `(flags)`). Returns the name.
fn check_header<'a>(
    line: usize,
    name: Option<Token<'a>>,
    after: Option<&Token<'a>>,
) -> Result<&'a str, String> {
    let Some(name) = name else {
        return Err(format!("line {line}: `profile` without a name"));
    };
    let text = name.unquoted();
    if text.starts_with(['/', '@', '"']) {
        return Err(format!(
            "line {}: profile {} is named by a path, which attaches it to every program at that path; name it after the AppArmorProfile instead",
            name.line,
            shorten(text)
        ));
    }
    if text.starts_with(':') {
        return Err(format!(
            "line {}: profile {} names a policy namespace; declare a plain profile name",
            name.line,
            shorten(text)
        ));
    }
    if let Some(a) = after
        && !a.quoted
        && (a.text.starts_with(['{', '(']) || a.text.starts_with("flags"))
    {
        return Ok(text);
    }
    match after {
        None => Ok(text),
        Some(a) => Err(format!(
            "line {}: profile {} attaches to {}; remove the attachment (pods get the profile by name, as localhost/<name>, not by a program's path)",
            a.line,
            shorten(text),
            shorten(a.text)
        )),
    }
}

/// A profile declared by a path without the `profile` keyword (`/usr/bin/x {`,
/// `"/usr/bin/x" flags=(…) {`): the path is its attachment.
fn path_header(t: &Token<'_>, next: Option<&Token<'_>>) -> Result<(), String> {
    let text = t.unquoted();
    let pathy = text.starts_with('/') || text.starts_with("@{");
    let opens = next.is_some_and(|n| {
        !n.quoted
            && (n.text.starts_with(['{', '(']) || n.text.starts_with("flags") || n.text.starts_with("xattrs"))
    });
    if pathy && opens {
        return Err(format!(
            "line {}: profile {} is named by a path, which attaches it to every program at that path; declare `profile <name> {{` instead",
            t.line,
            shorten(text)
        ));
    }
    Ok(())
}

fn shorten(s: &str) -> String {
    let short: String = s.chars().take(80).collect();
    if short.len() < s.len() {
        format!("{short:?}…")
    } else {
        format!("{short:?}")
    }
}

/// Where the scan stands in a statement, to tell a comment from text the parser reads.
#[derive(Default)]
struct Statement {
    /// The parser is certain to be between statements: a `#` here starts a comment.
    between: bool,
    /// Words in the current statement.
    words: usize,
    /// The statement opens a block (a profile or hat header, `if`, `else`).
    header: bool,
    /// Unclosed `(`.
    parens: i64,
    /// A `)` without its `(`: the scan can no longer follow the parser's lists, and reads every
    /// `#` after this as policy.
    lost: bool,
}

impl Statement {
    fn start() -> Statement {
        Statement {
            between: true,
            ..Default::default()
        }
    }

    fn next_statement(&mut self) {
        self.between = !self.lost;
        self.words = 0;
        self.header = false;
    }

    fn quoted(&mut self) {
        if self.words == 0 {
            self.header = true;
        }
        self.words += 1;
        self.between = false;
    }

    fn word(&mut self, w: &[u8]) {
        let mut escaped = false;
        let mut ends_rule = false;
        for &b in w {
            ends_rule = false;
            if escaped {
                escaped = false;
                continue;
            }
            match b {
                b'\\' => escaped = true,
                b'(' => self.parens += 1,
                b')' => {
                    self.parens -= 1;
                    if self.parens < 0 {
                        self.lost = true;
                    }
                }
                b',' => ends_rule = true,
                _ => {}
            }
        }
        let braces = !w.is_empty() && w.iter().all(|b| matches!(b, b'{' | b'}'));
        if self.words == 0 {
            self.header = w.starts_with(b"profile")
                || w.starts_with(b"hat")
                || w.starts_with(b"^")
                || w.starts_with(b"/")
                || w.starts_with(b"@{")
                || w.starts_with(b":")
                || w == b"if"
                || w == b"else";
        }
        // A lone brace is a block's edge only after a header or between statements; after a
        // rule's keyword (`mount {`) the parser reads it as a name and stays in the rule. A
        // comma ends a rule only outside a list.
        let block_edge = braces && (self.words == 0 || self.header);
        if block_edge || (ends_rule && self.parens == 0) {
            self.next_statement();
        } else {
            self.words += 1;
            self.between = false;
        }
    }
}

/// Splits the policy into words and quoted strings as the parser's lexer would where it
/// matters: blanks and newlines separate, a quoted string runs to the first `"` not escaped
/// by a `\` (and may span lines), and comments are skipped only between statements.
fn tokens(src: &str) -> Vec<Token<'_>> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    let mut stmt = Statement::start();
    while i < b.len() {
        match b[i] {
            b'\n' => {
                line += 1;
                i += 1;
            }
            b' ' | b'\t' | b'\r' => i += 1,
            b'"' => match quoted_end(b, i) {
                Some(end) => {
                    out.push(Token {
                        text: &src[i..end],
                        line,
                        quoted: true,
                    });
                    line += b[i..end].iter().filter(|&&c| c == b'\n').count();
                    stmt.quoted();
                    i = end;
                }
                None => {
                    // Unterminated: the parser stops at this quote; read on as policy.
                    out.push(Token {
                        text: "\"",
                        line,
                        quoted: false,
                    });
                    stmt.word(b"\"");
                    i += 1;
                }
            },
            b'#' if stmt.between && !b[i..].starts_with(b"#include") => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            _ => {
                let start = i;
                while i < b.len() && !matches!(b[i], b' ' | b'\t' | b'\r' | b'\n' | b'"') {
                    // `\ `, `\"`: an escaped blank or quote stays in the word.
                    if b[i] == b'\\' && i + 1 < b.len() && !matches!(b[i + 1], b'\n' | b'\r') {
                        i += 1;
                    }
                    i += 1;
                }
                let i_end = i.min(b.len());
                // Words end at ASCII bytes or the end, so these are character boundaries.
                let text = src.get(start..i_end).unwrap_or_default();
                out.push(Token {
                    text,
                    line,
                    quoted: false,
                });
                stmt.word(text.as_bytes());
                i = i_end;
            }
        }
    }
    out
}

/// The end (exclusive) of the quoted string opening at `open`: after the first `"` that no `\`
/// precedes, else after the last escaped one (the lexer's longest match), else none.
fn quoted_end(b: &[u8], open: usize) -> Option<usize> {
    let mut last_escaped = None;
    for (j, &c) in b.iter().enumerate().skip(open + 1) {
        if c == b'"' {
            if b[j - 1] == b'\\' {
                last_escaped = Some(j + 1);
            } else {
                return Some(j + 1);
            }
        }
    }
    last_escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_declared_profile_name() {
        let policy = "#include <tunables/global>\nprofile deny-write flags=(attach_disconnected) {\n  #include <abstractions/base>\n  file,\n  deny /** w,\n}\n";
        assert_eq!(check_policy(policy), Ok("deny-write"));
        assert!(
            check_policy("/usr/bin/x {\n}\n")
                .unwrap_err()
                .contains("named by a path")
        );
        assert!(
            check_policy("profile a {}\nprofile b {}\n")
                .unwrap_err()
                .contains("more than one")
        );
        assert!(
            check_policy("profile ../../etc {}\n")
                .unwrap_err()
                .contains("may hold only")
        );
        assert_eq!(
            check_policy("  profiled\n"),
            Err("the policy declares no `profile <name> {`; name the profile so pods can refer to it".into())
        );
        assert_eq!(check_for_object("web", "profile web {\n}\n"), Ok(()));
        assert!(
            check_for_object("web", "profile other {\n}\n")
                .unwrap_err()
                .contains("declare `profile web`")
        );
    }

    #[test]
    fn a_second_profile_on_the_same_line_is_refused() {
        for policy in [
            "profile web { file, } profile other { file, }\n",
            "profile web { file, }profile other { file, }\n",
            "profile web { file, } profile\"other\" { file, }\n",
        ] {
            let e = check_policy(policy).unwrap_err();
            assert!(e.contains("more than one top-level profile"), "{policy}: {e}");
        }
    }

    #[test]
    fn includes_of_abstractions_and_tunables_only() {
        for ok in [
            "#include <tunables/global>\nprofile web {\n}\n",
            "include <tunables/global>\nprofile web {\n  include <abstractions/base>\n  #include <abstractions/nameservice>\n}\n",
            "abi <abi/3.0>,\nprofile web {\n}\n",
            // Words that only contain `include` are paths, not includes.
            "profile web {\n  /usr/include/** r,\n  /opt/x-include r,\n}\n",
        ] {
            assert_eq!(check_policy(ok), Ok("web"), "{ok}");
        }
        for (bad, why) in [
            ("#include </etc/passwd>\nprofile web {\n}\n", "refused"),
            ("profile web {\n  #include \"/etc/passwd\"\n}\n", "refused"),
            ("profile web {\n  include /etc/passwd\n}\n", "refused"),
            ("profile web { file, #include </etc/passwd>\n}\n", "refused"),
            (
                "profile web {\n  include if exists <abstractions/base>\n}\n",
                "if exists",
            ),
            (
                "profile web {\n  include if exists </etc/passwd>\n}\n",
                "if exists",
            ),
            (
                "profile web {\n  include <abstractions/../../etc/passwd>\n}\n",
                "refused",
            ),
            ("profile web {\n  include <tunables/./global>\n}\n", "refused"),
            ("profile web {\n  include <local/web>\n}\n", "refused"),
            ("profile web {\n  include <\"abstractions/base\">\n}\n", "refused"),
            ("profile web {\n  #include\n</etc/passwd>\n}\n", "refused"),
            ("profile web {\n  file,}include </etc/passwd>\n}\n", "refused"),
            ("profile web {\n  a#include</etc/passwd>\n}\n", "refused"),
            ("profile web {\n}\ninclude", "without a file"),
            ("abi </etc/shadow>,\nprofile web {\n}\n", "abi"),
        ] {
            let e = check_policy(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(e.starts_with("line "), "{e}");
        }
    }

    #[test]
    fn attachments_are_refused() {
        for bad in [
            "profile web /usr/bin/x {\n}\n",
            "profile web @{exe} {\n}\n",
            "profile web \"/usr/bin/x y\" {\n}\n",
            "profile web xattrs=(a=b) {\n}\n",
            "profile /usr/bin/x {\n}\n",
            "profile web {\n}\n/usr/bin/x flags=(complain) {\n}\n",
            "profile web {\n  profile child /usr/bin/y {\n  }\n}\n",
            "profile web {\n  \"/usr/bin/y\" {\n  }\n}\n",
        ] {
            let e = check_policy(bad).unwrap_err();
            assert!(e.contains("attaches"), "{bad}: {e}");
        }
        // Flags, children and hats are the profile's own.
        let ok = "profile web flags=(attach_disconnected,mediate_deleted) {\n  profile child flags=(complain) {\n  }\n  ^hat {\n  }\n  hat other {\n  }\n  /usr/bin/y cx -> child,\n}\nprofile web//extra {\n}\n";
        assert_eq!(check_policy(ok), Ok("web"));
        assert!(
            check_policy("profile web {\n}\nprofile other//child {\n}\n")
                .unwrap_err()
                .contains("not nested in web")
        );
        assert!(
            check_policy("profile :ns:web {\n}\n")
                .unwrap_err()
                .contains("namespace")
        );
    }

    #[test]
    fn comments_are_skipped_only_where_the_parser_skips_them() {
        // Between statements: a comment, whatever it says.
        let commented = "# This profile denies writes; include nothing else\nprofile web { # profile x /y {\n  file, # include </etc/passwd>\n  # abi </etc/shadow>,\n}\n";
        assert_eq!(check_policy(commented), Ok("web"));
        // After `->` the parser reads `#` as a name and goes on: what follows is policy.
        let hidden = "alias /a -> #, profile other { }\nprofile web {\n}\n";
        assert!(check_policy(hidden).unwrap_err().contains("more than one"));
        // Inside a rule (`mount {`, a list) `#` is a name too.
        let in_rule = "profile web {\n  mount {\n  # , profile child /usr/bin/y { }\n}\n";
        assert!(check_policy(in_rule).unwrap_err().contains("attaches"));
        let in_list = "profile web flags=(complain, # ) /usr/bin/y {\n}\n";
        assert!(check_policy(in_list).is_err());
        let escaped = "profile web flags=(a\\), # ) profile x /usr/bin/y {\n}\n";
        assert!(check_policy(escaped).unwrap_err().contains("attaches"));
        // A quoted string runs to the first unescaped quote, as the lexer's longest match.
        let quoted = "profile web {\n  \"/tmp/a\\\\\" profile x /usr/bin/y { }\" r,\n}\n";
        assert_eq!(check_policy(quoted), Ok("web"));
        let unterminated = "profile web {\n  \"/tmp/a\\\" profile x /usr/bin/y {\n}\n";
        assert!(check_policy(unterminated).unwrap_err().contains("attaches"));
    }

    #[test]
    fn odd_input_is_refused_or_read_without_panicking() {
        for odd in [
            "",
            "\"",
            "\\",
            "#",
            "profile",
            "profile \"",
            "include",
            "(((",
            ")))# profile x /y {",
            "é#includeé",
            "\u{0}",
        ] {
            let _ = check_policy(odd);
        }
        assert!(check_policy("profile web {\u{0}}").unwrap_err().contains("NUL"));
    }

    /// The parser's own list of the profiles a policy defines, from Debian's `apparmor` package
    /// (scripts/setup.sh installs it).
    fn parser() -> Option<PathBuf> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
            .map(|dir| dir.join("apparmor_parser"))
            .find(|p| p.is_file())
    }

    #[test]
    fn the_parser_refuses_a_second_profile_on_the_same_line() {
        let Some(parser) = parser() else {
            eprintln!(
                "SKIPPED: apparmor_parser is not installed (apt-get install apparmor; scripts/setup.sh does)"
            );
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web");
        let check = |policy: &str| {
            std::fs::write(&path, policy).unwrap();
            check_names(&parser, &path, "web")
        };
        // What the old first-word check let through: the parser sees both.
        let e = check("profile web { file, } profile other { file, }\n").unwrap_err();
        assert!(e.contains("also defines other"), "{e}");
        let e = check("profile web { file, }\nhat other { file, }\n").unwrap_err();
        assert!(e.contains("also defines other"), "{e}");
        let e = check("profile web { file,\n  profile /usr/bin/y { }\n}\n").unwrap_err();
        assert!(e.contains("also defines web///usr/bin/y"), "{e}");
        let e = check("profile other { file, }\n").unwrap_err();
        assert!(e.contains("finds no profile \"web\""), "{e}");
        let e = check("profile web { file\n").unwrap_err();
        assert!(e.contains("apparmor_parser refused the policy"), "{e}");
        // Children and hats of the one profile are its own.
        check("profile web flags=(complain) {\n  file,\n  profile child { file, }\n  ^hat { file, }\n}\nprofile web//more { file, }\n")
            .unwrap();
    }

    #[test]
    fn load_writes_nothing_the_checks_refuse() {
        let dir = tempfile::tempdir().unwrap();
        // The text check runs first: the parser is not even started.
        let e = load(
            Path::new("/nonexistent/apparmor_parser"),
            dir.path(),
            "web",
            "profile web { file, } profile other { file, }\n",
        )
        .unwrap_err();
        assert!(e.contains("more than one"), "{e}");
        let Some(parser) = parser() else {
            eprintln!(
                "SKIPPED: apparmor_parser is not installed (apt-get install apparmor; scripts/setup.sh does)"
            );
            return;
        };
        // The parser's check: a top-level hat passes the text check but not the parser's.
        let e = load(
            &parser,
            dir.path(),
            "web",
            "profile web { file, }\nhat other { file, }\n",
        )
        .unwrap_err();
        assert!(e.contains("also defines other"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_node_without_apparmor_says_why() {
        let sys = tempfile::tempdir().unwrap();
        match Support::detect(sys.path(), Path::new("apparmor_parser"), Path::new("/tmp")) {
            Support::Unsupported(why) => assert!(why.contains("not enabled"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
