//! The commands the docs tell people to run, checked against the real binaries, so that the
//! README and the scripts in deploy/ cannot drift from them again (issue 23: `forkpool
//! loadtest` was still written there long after the load tester became a binary of its own).
//!
//! Where commands are looked for: every shell block of README.md (```sh), the README's inline
//! code that starts with one of our commands (`forkpool ...`, `forkpool-loadtest ...`,
//! `cargo ...`, a `.sh` or `.py` script), every script in deploy/ (its code, and the inline
//! code of its comments), the `Exec*=` lines of the systemd units and the variables of the env
//! file. Each command of ours is checked far enough to catch a stale name:
//! - `forkpool` and `forkpool-loadtest` (by name or path, also through a shell variable such as
//!   `bin=target/.../forkpool; "$bin" ...`, and `cargo run [--bin NAME] -- ARGS`): each
//!   subcommand must be one that `--help` lists, and each flag must be an option of the
//!   `<binary> <subcommand> --help` it is given to;
//! - `cargo` with `--bin`, `--example`, `--test`, `--bench` or `-p`: the target or package
//!   must exist;
//! - a script of ours (`deploy/nginx/bench.sh`, `python3 benches/x.py`): the file must exist;
//! - a `FORKPOOL_*` variable: `forkpool --help` must list it.
//!
//! `forkpool worker` (the hidden worker mode, which only the server runs) is not checked.

use crate::common;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The load tester, which `cargo test` at the workspace root builds next to `forkpool` (both
/// packages are default members); it is another package, so Cargo gives this test no
/// `CARGO_BIN_EXE_` for it. (`cargo test --test docs` alone does not rebuild it: after a change
/// to its flags, build it first.)
fn loadtest_bin() -> PathBuf {
    let path = Path::new(common::BIN).with_file_name("forkpool-loadtest");
    assert!(
        path.is_file(),
        "forkpool-loadtest is not built next to forkpool ({}): run `cargo test` at the \
         workspace root, which builds both packages, or `cargo build -p forkpool-loadtest` \
         first",
        path.display()
    );
    path
}

/// A command line found in a document: where, and its words (quotes removed).
#[derive(Debug)]
struct Found {
    /// `README.md:123`, for the failure message.
    origin: String,
    words: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// A small shell lexer: enough of sh for the docs' commands (quotes, escapes, comments, `$(...)`,
// redirections, here-documents, `&&`, `|`, `;`, `&`), not a shell.

/// The simple commands of a shell text, with the comments' text on the side.
struct Lexed {
    /// Each simple command's words, with its line number (1-based, in the text given).
    commands: Vec<(usize, Vec<String>)>,
    /// Each comment's text (without `#`), with its line number.
    comments: Vec<(usize, String)>,
}

fn lex(text: &str) -> Lexed {
    let chars: Vec<char> = text.chars().collect();
    let mut lexed = Lexed {
        commands: Vec::new(),
        comments: Vec::new(),
    };
    let mut words: Vec<String> = Vec::new();
    let mut word: Option<String> = None;
    let mut line = 1;
    let mut start_line = 1;
    // Here-document delimiters whose bodies start after the current line.
    let mut heredocs: Vec<String> = Vec::new();
    // The next word is a redirection target (or a here-document delimiter), not an argument.
    let mut redirect: Option<bool> = None;
    let mut i = 0;

    fn end_word(
        word: &mut Option<String>,
        words: &mut Vec<String>,
        redirect: &mut Option<bool>,
        heredocs: &mut Vec<String>,
    ) {
        if let Some(w) = word.take() {
            match redirect.take() {
                Some(true) => heredocs.push(w),
                Some(false) => {}
                None => words.push(w),
            }
        }
    }
    let end_command = |words: &mut Vec<String>, commands: &mut Vec<(usize, Vec<String>)>, at| {
        if !words.is_empty() {
            commands.push((at, std::mem::take(words)));
        }
    };

    while i < chars.len() {
        let c = chars[i];
        if word.is_none() && words.is_empty() {
            start_line = line;
        }
        match c {
            '\n' => {
                end_word(&mut word, &mut words, &mut redirect, &mut heredocs);
                end_command(&mut words, &mut lexed.commands, start_line);
                line += 1;
                i += 1;
                // Skip the bodies of the here-documents started on this line.
                for delimiter in std::mem::take(&mut heredocs) {
                    while i < chars.len() {
                        let end = (i..chars.len())
                            .find(|&j| chars[j] == '\n')
                            .unwrap_or(chars.len());
                        let body_line: String = chars[i..end].iter().collect();
                        i = (end + 1).min(chars.len());
                        line += 1;
                        if body_line.trim_start_matches('\t') == delimiter {
                            break;
                        }
                    }
                }
            }
            ' ' | '\t' => {
                end_word(&mut word, &mut words, &mut redirect, &mut heredocs);
                i += 1;
            }
            '#' if word.is_none() => {
                let end = (i..chars.len())
                    .find(|&j| chars[j] == '\n')
                    .unwrap_or(chars.len());
                lexed
                    .comments
                    .push((line, chars[i + 1..end].iter().collect()));
                i = end;
            }
            '\\' => {
                match chars.get(i + 1) {
                    Some('\n') => line += 1,
                    Some(&next) => word.get_or_insert_with(String::new).push(next),
                    None => {}
                }
                i += 2;
            }
            '\'' => {
                let end = (i + 1..chars.len())
                    .find(|&j| chars[j] == '\'')
                    .unwrap_or(chars.len());
                let quoted: String = chars[i + 1..end].iter().collect();
                line += quoted.matches('\n').count();
                word.get_or_insert_with(String::new).push_str(&quoted);
                i = end + 1;
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' && matches!(chars.get(i + 1), Some('"' | '\\' | '$')) {
                        i += 1;
                    }
                    if chars[i] == '\n' {
                        line += 1;
                    }
                    w.push(chars[i]);
                    i += 1;
                }
                i += 1;
            }
            '$' if matches!(chars.get(i + 1), Some('(' | '{')) => {
                // `$(...)` or `${...}`, kept verbatim as part of the word.
                let (open, close) = match chars[i + 1] {
                    '(' => ('(', ')'),
                    _ => ('{', '}'),
                };
                let mut depth = 0;
                let mut j = i + 1;
                while j < chars.len() {
                    if chars[j] == open {
                        depth += 1;
                    } else if chars[j] == close {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    j += 1;
                }
                let end = (j + 1).min(chars.len());
                let text: String = chars[i..end].iter().collect();
                line += text.matches('\n').count();
                word.get_or_insert_with(String::new).push_str(&text);
                i = end;
            }
            '>' | '<' => {
                // A word of digits just before is the descriptor (`2>`), not an argument.
                if word
                    .as_deref()
                    .is_some_and(|w| w.chars().all(|c| c.is_ascii_digit()))
                {
                    word = None;
                }
                end_word(&mut word, &mut words, &mut redirect, &mut heredocs);
                let heredoc = c == '<' && chars.get(i + 1) == Some(&'<');
                i += 1;
                while i < chars.len() && matches!(chars[i], '>' | '<' | '&' | '-' | '|') {
                    i += 1;
                }
                // `2>&1`: the target is a descriptor, also a word.
                redirect = Some(heredoc);
            }
            '&' | '|' | ';' | '(' | ')' => {
                end_word(&mut word, &mut words, &mut redirect, &mut heredocs);
                end_command(&mut words, &mut lexed.commands, start_line);
                i += 1;
            }
            _ => {
                word.get_or_insert_with(String::new).push(c);
                i += 1;
            }
        }
    }
    end_word(&mut word, &mut words, &mut redirect, &mut heredocs);
    end_command(&mut words, &mut lexed.commands, start_line);
    lexed
}

/// Reserved words that may start a simple command, and what follows them is a command.
const KEYWORDS: [&str; 12] = [
    "if", "then", "else", "elif", "fi", "do", "done", "while", "until", "!", "{", "}",
];

/// The commands of a shell text, with `NAME=value` assignments followed through variables
/// (`bin=target/.../forkpool` then `"$bin" --flag`). `base_line` is the line of the text's
/// first line in its file.
fn shell_commands(file: &str, base_line: usize, text: &str, out: &mut Vec<Found>) {
    let mut variables: HashMap<String, String> = HashMap::new();
    for (line, mut words) in lex(text).commands {
        while words
            .first()
            .is_some_and(|w| KEYWORDS.contains(&w.as_str()))
        {
            words.remove(0);
        }
        if words
            .first()
            .is_some_and(|w| ["for", "case", "local", "export"].contains(&w.as_str()))
        {
            // `local x=$1`, `export X=y`: assignments; `for`, `case`: not simple commands.
            if let [keyword, rest @ ..] = words.as_slice() {
                if keyword == "local" || keyword == "export" {
                    for w in rest {
                        assignment(w, &mut variables);
                    }
                }
            }
            continue;
        }
        let assigned = words
            .iter()
            .take_while(|w| assignment_name(w).is_some())
            .count();
        if assigned == words.len() {
            for w in &words {
                assignment(w, &mut variables);
            }
        }
        if let Some(first) = words.get(assigned) {
            if let Some(value) = variable_reference(first).and_then(|name| variables.get(name)) {
                words[assigned] = value.clone();
            }
        }
        if !words.is_empty() {
            out.push(Found {
                origin: format!("{file}:{}", base_line + line - 1),
                words,
            });
        }
    }
}

fn assignment_name(word: &str) -> Option<&str> {
    let (name, _) = word.split_once('=')?;
    let valid = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    valid.then_some(name)
}

fn assignment(word: &str, variables: &mut HashMap<String, String>) {
    if let Some(name) = assignment_name(word) {
        variables.insert(name.to_owned(), word[name.len() + 1..].to_owned());
    }
}

/// `NAME` of a word that is exactly `$NAME` or `${NAME}`.
fn variable_reference(word: &str) -> Option<&str> {
    let name = word.strip_prefix('$')?;
    let name = match name.strip_prefix('{') {
        Some(braced) => braced.strip_suffix('}')?,
        None => name,
    };
    let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    valid.then_some(name)
}

// ---------------------------------------------------------------------------------------------
// Where the commands are.

/// Inline code spans of a Markdown (or comment) text, with the line each starts on; a span may
/// run over a line break, which counts as a space.
fn inline_code(text: &str) -> Vec<(usize, String)> {
    let mut spans = Vec::new();
    let mut rest = text;
    let mut line = 1;
    while let Some(open) = rest.find('`') {
        line += rest[..open].matches('\n').count();
        let ticks = rest[open..].chars().take_while(|&c| c == '`').count();
        let after = &rest[open + ticks..];
        let fence = "`".repeat(ticks);
        let Some(close) = after.find(&fence) else {
            break;
        };
        let span = &after[..close];
        if !span.contains("\n\n") {
            spans.push((line, span.replace('\n', " ").trim().to_owned()));
        }
        line += span.matches('\n').count();
        rest = &after[close + ticks..];
    }
    spans
}

/// Whether an inline code span is a command of ours (and not, say, a metric or a file name).
fn is_our_command(span: &str) -> bool {
    let first = span.split_whitespace().next().unwrap_or_default();
    let name = first.rsplit('/').next().unwrap_or_default();
    ["forkpool", "forkpool-loadtest", "cargo", "python3"].contains(&name)
        || [".sh", ".py"].iter().any(|ext| first.ends_with(ext))
}

/// The README's shell blocks and the commands in its inline code.
fn readme_commands(out: &mut Vec<Found>) {
    let text = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let mut prose = String::new();
    let mut block: Option<(usize, bool, String)> = None;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        match &mut block {
            None if trimmed.starts_with("```") => {
                let info = trimmed.trim_start_matches('`').trim();
                let shell = ["sh", "bash", "shell"].contains(&info);
                block = Some((n + 2, shell, String::new()));
                prose.push('\n');
            }
            None => {
                prose.push_str(line);
                prose.push('\n');
            }
            Some((start, shell, body)) => {
                if trimmed.starts_with("```") {
                    if *shell {
                        shell_commands("README.md", *start, body, out);
                    }
                    block = None;
                } else {
                    body.push_str(trimmed);
                    body.push('\n');
                }
                prose.push('\n');
            }
        }
    }
    for (line, span) in inline_code(&prose) {
        if is_our_command(&span) {
            shell_commands("README.md", line, &span, out);
        }
    }
}

/// Every file under deploy/: scripts (code and the inline code of their comments), the
/// `Exec*=` lines of systemd units, and the variables of env files (as `NAME=value`
/// commands, which [`check_variables`] looks at).
fn deploy_commands(out: &mut Vec<Found>) -> usize {
    let mut scripts = 0;
    let mut files = vec![Path::new(ROOT).join("deploy")];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let name = path.strip_prefix(ROOT).unwrap().display().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        if text.starts_with("#!") || name.ends_with(".sh") {
            scripts += 1;
            shell_commands(&name, 1, &text, out);
            for (line, comment) in lex(&text).comments {
                for (_, span) in inline_code(&comment) {
                    if is_our_command(&span) {
                        shell_commands(&name, line, &span, out);
                    }
                }
            }
        } else if name.ends_with(".service") {
            for (n, line) in text.lines().enumerate() {
                let Some((key, value)) = line.split_once('=') else {
                    continue;
                };
                if key.starts_with("Exec") {
                    // systemd's prefixes (`-`, `@`, `+`, ...) say how to run, not what.
                    let value = value.trim_start_matches(['-', '@', ':', '+', '!']);
                    shell_commands(&name, n + 1, value, out);
                }
            }
        } else if name.ends_with(".env") {
            for (n, line) in text.lines().enumerate() {
                let line = line.trim_start_matches(['#', ' ']);
                if assignment_name(line).is_some_and(|v| v.starts_with("FORKPOOL_")) {
                    let words = vec![line.to_owned()];
                    out.push(Found {
                        origin: format!("{name}:{}", n + 1),
                        words,
                    });
                }
            }
        }
    }
    scripts
}

// ---------------------------------------------------------------------------------------------
// The binaries' own word on their grammar.

/// What `<binary> [subcommands] --help` says.
struct Help {
    /// Subcommands listed under `Commands:`.
    commands: BTreeSet<String>,
    /// Options (`--listen`, `-h`), and whether each takes a value.
    options: HashMap<String, bool>,
    /// It takes positional arguments (an `Arguments:` section).
    arguments: bool,
    text: String,
}

struct Binaries {
    paths: HashMap<&'static str, PathBuf>,
    helps: HashMap<Vec<String>, Result<Help, String>>,
}

impl Binaries {
    fn new() -> Binaries {
        let paths = HashMap::from([
            ("forkpool", PathBuf::from(common::BIN)),
            ("forkpool-loadtest", loadtest_bin()),
        ]);
        Binaries {
            paths,
            helps: HashMap::new(),
        }
    }

    /// The help of `path[0] path[1..] --help`, run once.
    fn help(&mut self, path: &[String]) -> &Result<Help, String> {
        let program = &self.paths[path[0].as_str()];
        self.helps.entry(path.to_vec()).or_insert_with(|| {
            let output = Command::new(program)
                .args(&path[1..])
                .arg("--help")
                .stdin(Stdio::null())
                .env_remove("RUST_LOG")
                .output()
                .expect("run the binary");
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            let stderr = String::from_utf8_lossy(&output.stderr);
            match output.status.success() {
                true => Ok(parse_help(stdout)),
                false => Err(format!(
                    "`{} --help` fails: {}",
                    path.join(" "),
                    stderr.trim()
                )),
            }
        })
    }

    /// Problems of one invocation of our binary `path[0]` with `args`.
    fn check(&mut self, binary: &str, args: &[String]) -> Vec<String> {
        let mut path = vec![binary.to_owned()];
        let mut problems = Vec::new();
        let mut options_seen = false;
        let mut i = 0;
        while i < args.len() {
            let help = match self.help(&path) {
                Ok(help) => help,
                Err(e) => {
                    problems.push(e.clone());
                    break;
                }
            };
            let arg = &args[i];
            i += 1;
            if arg == "--" {
                break;
            }
            if arg.starts_with('-') && arg.len() > 1 && !arg.starts_with("-$") {
                options_seen = true;
                let name = arg.split('=').next().unwrap();
                match help.options.get(name) {
                    Some(&takes_value) => {
                        if takes_value && !arg.contains('=') {
                            i += 1;
                        }
                    }
                    None => {
                        problems.push(format!(
                            "`{}` has no option `{name}` (see `{0} --help`)",
                            path.join(" ")
                        ));
                        // Whether it took a value is unknown: the rest cannot be read.
                        break;
                    }
                }
                continue;
            }
            if help.commands.contains(arg) && !options_seen {
                path.push(arg.clone());
            } else if !help.commands.is_empty() && !help.arguments {
                problems.push(format!(
                    "`{arg}` is not a subcommand of `{}` (it has: {})",
                    path.join(" "),
                    help.commands.iter().cloned().collect::<Vec<_>>().join(", ")
                ));
                break;
            } else if !help.arguments {
                problems.push(format!(
                    "`{}` takes no arguments, but is given `{arg}`",
                    path.join(" ")
                ));
                break;
            }
        }
        // A subcommand given last must exist too (its help runs).
        if let Err(e) = self.help(&path) {
            if !problems.contains(e) {
                problems.push(e.clone());
            }
        }
        problems
    }

    /// The `FORKPOOL_*` variables `forkpool --help` lists (`[env: FORKPOOL_X=]`).
    fn variables(&mut self) -> BTreeSet<String> {
        let help = self.help(&["forkpool".to_owned()]).as_ref().unwrap();
        help.text
            .split("[env: ")
            .skip(1)
            .map(|rest| rest.split(['=', ']']).next().unwrap().to_owned())
            .collect()
    }
}

fn parse_help(text: String) -> Help {
    let mut help = Help {
        commands: BTreeSet::new(),
        options: HashMap::new(),
        arguments: false,
        text: String::new(),
    };
    let mut section = "";
    for line in text.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            section = line;
            help.arguments |= line == "Arguments:";
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim_start();
        match section {
            "Commands:" if indent == 2 => {
                let name = trimmed.split_whitespace().next().unwrap_or_default();
                help.commands.insert(name.to_owned());
            }
            "Options:" if indent <= 6 && trimmed.starts_with('-') => {
                // `-h, --help  Print help`, `--listen <LISTEN>`: up to the description.
                let head = trimmed.split("  ").next().unwrap_or_default();
                let takes_value = head.contains('<');
                for word in head.split([' ', ',']).filter(|w| w.starts_with('-')) {
                    help.options.insert(word.to_owned(), takes_value);
                }
            }
            _ => {}
        }
    }
    help.text = text;
    help
}

// ---------------------------------------------------------------------------------------------
// The checks.

/// The problems of one command found in the docs (none if it is not ours).
fn check_command(
    found: &Found,
    binaries: &mut Binaries,
    variables: &BTreeSet<String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let words = &found.words;
    let assigned = words
        .iter()
        .take_while(|w| assignment_name(w).is_some())
        .count();
    for w in &words[..assigned] {
        let name = assignment_name(w).unwrap();
        if name.starts_with("FORKPOOL_") && !variables.contains(name) {
            problems.push(format!(
                "`{name}` is not a variable of forkpool (`forkpool --help` lists them)"
            ));
        }
    }
    let Some(command) = words.get(assigned) else {
        return problems;
    };
    let args = &words[assigned + 1..];
    let name = command.rsplit('/').next().unwrap_or_default();
    match name {
        "forkpool" if args.first().is_some_and(|a| a == "worker") => {}
        "forkpool" | "forkpool-loadtest" => problems.extend(binaries.check(name, args)),
        "cargo" => problems.extend(check_cargo(args, binaries)),
        "python3" | "python" | "bash" | "sh" => {
            // `python3 -c CODE`, `bash -c CODE`: no script of ours.
            if let Some(script) = args.first().filter(|a| !a.starts_with('-')) {
                problems.extend(check_script(script));
            }
        }
        _ if command.ends_with(".sh") || command.ends_with(".py") => {
            problems.extend(check_script(command));
        }
        _ => {}
    }
    problems
}

/// A script of ours, named relative to the repository (or by its file name alone, as prose
/// does once the path has been given), must exist.
fn check_script(script: &str) -> Option<String> {
    let relative = script.strip_prefix("./").unwrap_or(script);
    if script.starts_with('/') || script.contains('$') {
        return None;
    }
    let exists = match relative.contains('/') {
        true => Path::new(ROOT).join(relative).is_file(),
        false => repository_files()
            .iter()
            .any(|path| path.ends_with(relative)),
    };
    (!exists).then(|| format!("no script `{script}` here"))
}

/// Every file of the repository but the build's and git's.
fn repository_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![PathBuf::from(ROOT)];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().map(Result::unwrap) {
            let path = entry.path();
            let skipped = ["target", ".git"].iter().any(|name| path.ends_with(name));
            match entry.file_type().unwrap().is_dir() {
                true if !skipped => dirs.push(path),
                true => {}
                false => files.push(path),
            }
        }
    }
    files
}

/// `cargo run|test|bench|build ...`: the targets and packages it names must exist, and what
/// `cargo run` runs is checked as a command of its own.
fn check_cargo(args: &[String], binaries: &mut Binaries) -> Vec<String> {
    let Some(subcommand) = args.first() else {
        return Vec::new();
    };
    if !["run", "r", "test", "t", "bench", "build", "b", "check", "c"]
        .contains(&subcommand.as_str())
    {
        return Vec::new();
    }
    let (ours, theirs) = match args.iter().position(|a| a == "--") {
        Some(split) => (&args[1..split], &args[split + 1..]),
        None => (&args[1..], &args[args.len()..]),
    };
    let mut problems = Vec::new();
    let mut bin: Option<String> = None;
    let mut package: Option<String> = None;
    let mut example = false;
    let value = |i: usize, flag: &str| -> Option<String> {
        let arg = &ours[i];
        match arg.strip_prefix(&format!("{flag}=")) {
            Some(v) => Some(v.to_owned()),
            None => (arg == flag).then(|| ours.get(i + 1).cloned()).flatten(),
        }
    };
    for i in 0..ours.len() {
        let root = Path::new(ROOT);
        if let Some(name) = value(i, "--bin") {
            if !binaries.paths.contains_key(name.as_str()) {
                problems.push(format!("no binary `{name}` in this workspace"));
            }
            bin = Some(name);
        }
        if let Some(name) = value(i, "--example") {
            example = true;
            if !root.join("examples").join(format!("{name}.rs")).is_file() {
                problems.push(format!("no example `{name}` (examples/{name}.rs)"));
            }
        }
        if let Some(name) = value(i, "--test") {
            // The files of tests/ are modules of one binary, `integration`; the load tester
            // keeps a test target per file.
            let found = match name.as_str() {
                "integration" => root.join("tests/integration.rs").is_file(),
                _ => root
                    .join("loadtest/tests")
                    .join(format!("{name}.rs"))
                    .is_file(),
            };
            if !found {
                problems.push(format!("no test target `{name}` (tests/integration.rs)"));
            }
        }
        if let Some(name) = value(i, "--bench") {
            if !root.join("benches").join(format!("{name}.rs")).is_file() {
                problems.push(format!("no bench `{name}` (benches/{name}.rs)"));
            }
        }
        for flag in ["-p", "--package"] {
            if let Some(name) = value(i, flag) {
                if !binaries.paths.contains_key(name.as_str()) {
                    problems.push(format!("no package `{name}` in this workspace"));
                }
                package = Some(name);
            }
        }
    }
    if matches!(subcommand.as_str(), "run" | "r") && !example {
        // `default-run = "forkpool"`; the load tester's package has one binary.
        let name = bin.or(package).unwrap_or_else(|| "forkpool".to_owned());
        if binaries.paths.contains_key(name.as_str()) {
            let mut words = vec![name];
            words.extend(theirs.iter().cloned());
            let found = Found {
                origin: String::new(),
                words,
            };
            problems.extend(check_command(&found, binaries, &BTreeSet::new()));
        }
    }
    problems
}

fn is_ours(found: &Found) -> bool {
    let assigned = found
        .words
        .iter()
        .take_while(|w| assignment_name(w).is_some())
        .count();
    let Some(command) = found.words.get(assigned) else {
        return false;
    };
    let name = command.rsplit('/').next().unwrap_or_default();
    ["forkpool", "forkpool-loadtest"].contains(&name)
        || (name == "cargo" && found.words.iter().any(|w| w == "run"))
}

#[test]
fn every_command_in_the_readme_and_in_deploy_matches_the_binaries() {
    let mut binaries = Binaries::new();
    let variables = binaries.variables();
    assert!(
        variables.contains("FORKPOOL_WORKERS"),
        "no variables in --help: {variables:?}"
    );
    let (mut readme, mut deploy) = (Vec::new(), Vec::new());
    readme_commands(&mut readme);
    let scripts = deploy_commands(&mut deploy);
    // The extraction itself must keep working: these are known to be there.
    assert!(
        readme.iter().filter(|f| is_ours(f)).count() >= 5,
        "too few of our commands found in the README: {readme:#?}"
    );
    assert!(scripts >= 1, "no script found in deploy/");
    assert!(
        deploy.iter().filter(|f| is_ours(f)).count() >= 3,
        "too few of our commands found in deploy/: {deploy:#?}"
    );
    let mut problems = Vec::new();
    for found in readme.iter().chain(&deploy) {
        for problem in check_command(found, &mut binaries, &variables) {
            problems.push(format!(
                "{}: `{}`: {problem}",
                found.origin,
                found.words.join(" ")
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "commands in the docs that the binaries do not take:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_lexer_finds_commands_through_variables_redirections_and_here_documents() {
    let script = r#"#!/bin/sh
# Usage: `forkpool --queue 9` (a comment)
bin=target/release/forkpool
"$bin" --listen "127.0.0.1:$1" --workers 1 2>"$dir/log" >/dev/null &
cat >"$dir/x" <<EOF
forkpool --not-checked
EOF
x=$(echo a) && FORKPOOL_QUEUE=3 forkpool-loadtest --url "$2" | sed -n '/^a/,/b/p'
"#;
    let mut found = Vec::new();
    shell_commands("s", 1, script, &mut found);
    let lines: Vec<String> = found
        .iter()
        .map(|f| format!("{} {}", f.origin, f.words.join(" ")))
        .collect();
    assert_eq!(
        lines,
        [
            "s:3 bin=target/release/forkpool",
            "s:4 target/release/forkpool --listen 127.0.0.1:$1 --workers 1",
            "s:5 cat",
            "s:8 x=$(echo a)",
            "s:8 FORKPOOL_QUEUE=3 forkpool-loadtest --url $2",
            "s:8 sed -n /^a/,/b/p",
        ]
    );
    let comments = lex(script).comments;
    assert_eq!(inline_code(&comments[1].1)[0].1, "forkpool --queue 9");
}
