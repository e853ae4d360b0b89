//! The config file (`--config FILE`, TOML): each key, a flag's long name, turned into that
//! flag's `--key=value` and checked by the flag's own parser. An unknown key, a value of the
//! wrong TOML type or a value the flag refuses is an error naming the file, the key and the
//! flag; a file that cannot be read or parsed names the file.

use std::ffi::OsString;
use std::path::Path;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory};

use super::grammar::{attributed, command_without_env};
use super::Cli;

/// Turns each key of the TOML file into `--key=value`, for flags not set by flag or env;
/// returns each with its key.
///
/// Keys are the long flag names (`job-timeout`, not `job_timeout`). Every value is checked by
/// its flag's own parser, also when a flag or env var overrides it: a file with a bad value is
/// wrong whatever else is set, and the message names the file, the key and the flag.
///
/// `label` names the file in messages about the whole file: `--config FILE`, and where that
/// came from when not from the flag.
pub(super) fn file_args(
    path: &Path,
    label: &str,
    matches: &ArgMatches,
) -> Result<Vec<(String, OsString)>, String> {
    let file = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {label}: {e}"))?;
    let table: toml::Table = text.parse().map_err(|e| format!("{label}: {e}"))?;
    let command = Cli::command();
    let mut args = Vec::new();
    for (key, value) in table {
        let flags = || file_flags(&command);
        let Some(arg) = flags().find(|a| a.get_long() == Some(key.as_str())) else {
            let kebab = key.replace('_', "-");
            let hint = match flags().any(|a| a.get_long() == Some(kebab.as_str())) {
                true => format!(" (did you mean `{kebab}`?)"),
                false => String::new(),
            };
            return Err(format!("{label}: unknown key `{key}`{hint}"));
        };
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => {
                return Err(format!(
                    "{label}: key `{key}` must be a string or a number, not {}",
                    other.type_str()
                ))
            }
        };
        // `--key=value` in one word, so that a value starting with `-` is not taken for a flag.
        let flag = format!("--{key}={value}");
        if let Err(e) = command_without_env().try_get_matches_from(["forkpool", flag.as_str()]) {
            return Err(attributed(&e, &format!("key `{key}` of {file}")));
        }
        let id = arg.get_id().as_str();
        if matches!(
            matches.value_source(id),
            None | Some(ValueSource::DefaultValue)
        ) {
            args.push((key, flag.into()));
        }
    }
    Ok(args)
}

/// The flags that a `--config` file may set: every top-level flag but `--config` itself.
fn file_flags(command: &clap::Command) -> impl Iterator<Item = &clap::Arg> {
    command
        .get_arguments()
        .filter(|a| a.get_long().is_some() && a.get_long() != Some("config"))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;
    use crate::cli::Sources;

    fn temp_file(name: &str, text: &str) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("forkpool-{}-{name}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }

    fn file_error(name: &str, text: &str) -> String {
        let path = temp_file(name, text);
        let matches = Cli::command().get_matches_from(["forkpool"]);
        let result = file_args(&path, "--config FILE", &matches);
        std::fs::remove_file(&path).unwrap();
        result.expect_err("the file should be refused")
    }

    #[test]
    fn config_file_errors_name_the_key_and_the_flag() {
        let e = file_error("unknown", "wrkers = 3\n");
        assert!(e.contains("unknown key `wrkers`"), "{e}");
        let e = file_error("snake", "job_timeout = \"5s\"\n");
        assert!(
            e.contains("`job_timeout`") && e.contains("did you mean `job-timeout`"),
            "{e}"
        );
        let e = file_error("config", "config = \"other.toml\"\n");
        assert!(e.contains("unknown key `config`"), "{e}");
        let e = file_error("many", "workers = \"many\"\n");
        assert!(
            e.contains("key `workers` of ") && e.contains("'--workers <WORKERS>' (from key"),
            "{e}"
        );
        // An enum's possible values are kept.
        let e = file_error("sched", "worker-sched = \"fast\"\n");
        assert!(e.contains("[possible values: other, idle]"), "{e}");
        let e = file_error("negative", "workers = -1\n");
        assert!(
            e.contains("key `workers`") && e.contains("--workers"),
            "{e}"
        );
        let e = file_error("array", "workers = [1]\n");
        assert!(e.contains("key `workers`") && e.contains("array"), "{e}");
        let e = file_error("syntax", "workers = \n");
        assert!(e.contains("--config"), "{e}");
    }

    #[test]
    fn flags_beat_the_config_file_and_the_file_beats_defaults() {
        let path = temp_file("merge", "workers = 1\njob-timeout = \"5s\"\nqueue = 7\n");
        let cli = Cli::load_from(
            ["forkpool", "--queue", "9", "--config"]
                .iter()
                .map(OsString::from)
                .chain([path.clone().into_os_string()])
                .collect(),
        );
        std::fs::remove_file(&path).unwrap();
        assert_eq!(cli.flags.workers, Some(1));
        assert_eq!(cli.flags.job_timeout, Duration::from_secs(5));
        assert_eq!(cli.flags.queue, 9);
        assert_eq!(cli.flags.max_digits, 10_000);
    }

    /// The example file, read through `--config` exactly as an operator would use it.
    const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/forkpool.example.toml");

    fn load(args: &[&str]) -> Cli {
        Cli::load_from(args.iter().map(OsString::from).collect())
    }

    #[test]
    fn the_example_config_file_loads_to_exactly_the_defaults() {
        // Checked first so that a bad key fails with its message, not with clap's exit(2).
        let matches = Cli::command().get_matches_from(["forkpool"]);
        file_args(Path::new(EXAMPLE), EXAMPLE, &matches)
            .expect("the example should parse");
        let mut example = load(&["forkpool", "--config", EXAMPLE]).flags;
        assert_eq!(example.config_file, Some(PathBuf::from(EXAMPLE)));
        assert_eq!(
            example.sources.from("queue"),
            format!(" (from key `queue` of {EXAMPLE})")
        );
        example.config_file = None;
        example.sources = Sources::default();
        assert_eq!(example, load(&["forkpool"]).flags);
    }

    #[test]
    fn the_example_config_file_names_every_flag_and_its_commented_out_values_parse() {
        let text = std::fs::read_to_string(EXAMPLE).unwrap();
        // `key = value` lines, active or commented out (`# key = value`), without the `# `.
        let settings: Vec<&str> = text
            .lines()
            .map(|line| line.strip_prefix("# ").unwrap_or(line))
            .filter(|line| {
                line.split_once(" = ")
                    .is_some_and(|(key, _)| key.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
            })
            .collect();
        let keys: std::collections::BTreeSet<&str> = settings
            .iter()
            .filter_map(|line| Some(line.split_once(" = ")?.0))
            .collect();
        let command = Cli::command();
        let flags = file_flags(&command).filter_map(clap::Arg::get_long).collect();
        assert_eq!(keys, flags, "the example's keys against the flags");
        // With every key active, the file still parses: the example values are valid too.
        let path = temp_file("example-all", &settings.join("\n"));
        let matches = Cli::command().get_matches_from(["forkpool"]);
        let result = file_args(&path, "--config FILE", &matches);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(result.map(|args| args.len()), Ok(settings.len()));
    }
}
