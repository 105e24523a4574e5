//! Parsing a client's line into a chat message or a command.
//!
//! Parsing is separate from acting so that every rule of the syntax — case-insensitive names,
//! `//` escaping, argument counts, the exact error texts — lives in one pure function that is
//! tested on its own; the worker only matches on [`Command`] and prints [`CommandError`] after
//! `"! "`. Whether a nick is taken or a `/msg` target exists is for the hub to say, not here.

use std::fmt;
use std::num::IntErrorKind;

/// What a line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A chat message to the room.
    Say(String),
    /// `/me ACTION`.
    Me(String),
    /// `/nick NAME`, with a valid name.
    Nick(String),
    /// `/who`.
    Who,
    /// `/msg NICK TEXT`.
    Msg { to: String, text: String },
    /// `/history [N]`; `N` is at least 1, and saturates rather than overflowing.
    History(Option<usize>),
    /// `/help`.
    Help,
    /// `/quit [REASON]`, or the line `quit` on its own: any letter case, spaces or tabs around
    /// it allowed (docs/architecture.md).
    Quit(Option<String>),
}

/// Why a line is not a valid command. `Display` gives the text that follows `"! "`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    /// Wrong arguments; holds the command's synopsis, e.g. `/nick NAME`.
    Usage(&'static str),
    /// `/nick` with a name that is not 1–32 ASCII letters, digits, `_` or `-`.
    InvalidNick(String),
    /// A command name that does not exist, as typed, with its slash.
    Unknown(String),
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandError::Usage(synopsis) => write!(f, "usage: {synopsis}"),
            CommandError::InvalidNick(nick) => {
                write!(f, "invalid nickname '{nick}' (1-32 ASCII letters, digits, _ or -)")
            }
            CommandError::Unknown(name) => write!(f, "unknown command '{name}' (try /help)"),
        }
    }
}

impl std::error::Error for CommandError {}

/// What `/help` prints, one line per command.
pub const HELP: &[&str] = &[
    "/nick NAME — change your nickname (1-32 ASCII letters, digits, _ or -)",
    "/who — list everyone in the room",
    "/me ACTION — tell the room what you are doing",
    "/msg NICK TEXT — send a private message",
    "/history [N] — show the last N room lines (default 20)",
    "/help — show this help",
    "/quit [REASON] — leave (typing quit does the same)",
    "//TEXT — say something that starts with a slash",
];

const NICK: &str = "/nick NAME";
const ME: &str = "/me ACTION";
const MSG: &str = "/msg NICK TEXT";
/// `/history 0` asks for nothing: a usage error that says what N may be, rather than silence.
const HISTORY_USAGE: &str = "/history [N] (N ≥ 1)";
const WHO: &str = "/who";
const HELP_USAGE: &str = "/help";

/// Argument separators.
const SEPARATORS: [char; 2] = [' ', '\t'];

/// Parses a (sanitized, non-blank) line. Text is kept as typed: a chat message is not trimmed,
/// command arguments are trimmed of spaces and tabs at both ends.
pub fn parse(line: &str) -> Result<Command, CommandError> {
    let Some(body) = line.strip_prefix('/') else {
        return Ok(if is_bare_quit(line) {
            Command::Quit(None)
        } else {
            Command::Say(line.to_owned())
        });
    };
    if body.starts_with('/') {
        return Ok(Command::Say(body.to_owned()));
    }
    let (name, args) = body.split_once(SEPARATORS).unwrap_or((body, ""));
    let args = args.trim_matches(SEPARATORS);
    match name.to_ascii_lowercase().as_str() {
        "nick" => match single_word(args) {
            Some(nick) if is_valid_nick(nick) => Ok(Command::Nick(nick.to_owned())),
            Some(nick) => Err(CommandError::InvalidNick(nick.to_owned())),
            None => Err(CommandError::Usage(NICK)),
        },
        "me" if !args.is_empty() => Ok(Command::Me(args.to_owned())),
        "me" => Err(CommandError::Usage(ME)),
        "msg" => match args.split_once(SEPARATORS) {
            Some((to, text)) => Ok(Command::Msg {
                to: to.to_owned(),
                text: text.trim_start_matches(SEPARATORS).to_owned(),
            }),
            None => Err(CommandError::Usage(MSG)),
        },
        "history" if args.is_empty() => Ok(Command::History(None)),
        "history" => match single_word(args).map(str::parse::<usize>) {
            Some(Ok(0)) | None => Err(CommandError::Usage(HISTORY_USAGE)),
            Some(Ok(n)) => Ok(Command::History(Some(n))),
            // More lines than anyone keeps: the worker caps it at the history size anyway.
            Some(Err(e)) if *e.kind() == IntErrorKind::PosOverflow => {
                Ok(Command::History(Some(usize::MAX)))
            }
            Some(Err(_)) => Err(CommandError::Usage(HISTORY_USAGE)),
        },
        "who" if args.is_empty() => Ok(Command::Who),
        "who" => Err(CommandError::Usage(WHO)),
        "help" if args.is_empty() => Ok(Command::Help),
        "help" => Err(CommandError::Usage(HELP_USAGE)),
        "quit" if args.is_empty() => Ok(Command::Quit(None)),
        "quit" => Ok(Command::Quit(Some(args.to_owned()))),
        _ => Err(CommandError::Unknown(format!("/{name}"))),
    }
}

/// True for the line `quit` on its own: a person typing `Quit` or ` quit ` into telnet means to
/// leave; `quit now` or `quits` is chat.
fn is_bare_quit(line: &str) -> bool {
    line.trim_matches(SEPARATORS).eq_ignore_ascii_case("quit")
}

/// True for a nickname of 1–32 ASCII letters, digits, `_` or `-`.
pub fn is_valid_nick(nick: &str) -> bool {
    (1..=32).contains(&nick.len())
        && nick.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `args` (already trimmed) if it is exactly one word.
fn single_word(args: &str) -> Option<&str> {
    (!args.is_empty() && !args.contains(SEPARATORS)).then_some(args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(line: &str) -> Command {
        parse(line).unwrap()
    }

    fn err(line: &str) -> String {
        parse(line).unwrap_err().to_string()
    }

    fn say(text: &str) -> Command {
        Command::Say(text.to_string())
    }

    #[test]
    fn plain_lines_are_said_as_typed() {
        assert_eq!(ok("hello"), say("hello"));
        assert_eq!(ok("  indented\t"), say("  indented\t"));
        assert_eq!(ok(" /nick bob"), say(" /nick bob"));
        assert_eq!(ok("quit now"), say("quit now"));
    }

    #[test]
    fn double_slash_says_a_slash() {
        assert_eq!(ok("//text"), say("/text"));
        assert_eq!(ok("//nick bob"), say("/nick bob"));
        assert_eq!(ok("//"), say("/"));
    }

    #[test]
    fn bare_quit() {
        for line in ["quit", "QUIT", "Quit", " quit", "quit ", "\t qUiT \t"] {
            assert_eq!(ok(line), Command::Quit(None), "{line:?}");
        }
        for line in
            ["quit now", "quits", "quit.", "q uit", "quit\u{a0}", "\u{3000}quit", "quitquit"]
        {
            assert_ne!(ok(line), Command::Quit(None), "{line:?}");
        }
    }

    #[test]
    fn names_are_case_insensitive() {
        assert_eq!(ok("/NICK bob"), Command::Nick("bob".into()));
        assert_eq!(ok("/Who"), Command::Who);
        assert_eq!(ok("/HeLp"), Command::Help);
    }

    #[test]
    fn nick() {
        assert_eq!(ok("/nick bob"), Command::Nick("bob".into()));
        assert_eq!(ok("/nick\t Bob_the-2nd \t"), Command::Nick("Bob_the-2nd".into()));
        assert_eq!(err("/nick"), "usage: /nick NAME");
        assert_eq!(err("/nick   "), "usage: /nick NAME");
        assert_eq!(err("/nick a b"), "usage: /nick NAME");
        let invalid =
            |nick: &str| format!("invalid nickname '{nick}' (1-32 ASCII letters, digits, _ or -)");
        assert_eq!(err("/nick b@d"), invalid("b@d"));
        assert_eq!(err("/nick 张三"), invalid("张三"));
        assert_eq!(err("/nick café"), invalid("café"));
        let long = "x".repeat(33);
        assert_eq!(err(&format!("/nick {long}")), invalid(&long));
        assert_eq!(ok(&format!("/nick {}", "x".repeat(32))), Command::Nick("x".repeat(32)));
    }

    #[test]
    fn valid_nicks() {
        assert!(is_valid_nick("a"));
        assert!(is_valid_nick("guest-7"));
        assert!(is_valid_nick("A_b-9"));
        assert!(!is_valid_nick(""));
        assert!(!is_valid_nick("caf\u{e9}"));
        assert!(!is_valid_nick("a b"));
        assert!(!is_valid_nick(&"x".repeat(33)));
    }

    #[test]
    fn me() {
        assert_eq!(ok("/me waves"), Command::Me("waves".into()));
        assert_eq!(ok("/me  waves  at \tyou  "), Command::Me("waves  at \tyou".into()));
        assert_eq!(err("/me"), "usage: /me ACTION");
        assert_eq!(err("/me \t "), "usage: /me ACTION");
    }

    #[test]
    fn msg() {
        let msg = |to: &str, text: &str| Command::Msg { to: to.into(), text: text.into() };
        assert_eq!(ok("/msg alice psst"), msg("alice", "psst"));
        assert_eq!(ok("/msg  alice \t psst,  you there? "), msg("alice", "psst,  you there?"));
        assert_eq!(err("/msg"), "usage: /msg NICK TEXT");
        assert_eq!(err("/msg alice"), "usage: /msg NICK TEXT");
        assert_eq!(err("/msg alice  "), "usage: /msg NICK TEXT");
    }

    #[test]
    fn history() {
        assert_eq!(ok("/history"), Command::History(None));
        assert_eq!(ok("/history 5"), Command::History(Some(5)));
        assert_eq!(ok("/history  50 "), Command::History(Some(50)));
        assert_eq!(ok("/history 99999999999999999999999"), Command::History(Some(usize::MAX)));
        for bad in ["/history 0", "/history -1", "/history x", "/history 1 2", "/history 1.5"] {
            assert_eq!(err(bad), "usage: /history [N] (N ≥ 1)", "{bad}");
        }
    }

    #[test]
    fn commands_without_arguments() {
        assert_eq!(ok("/who"), Command::Who);
        assert_eq!(ok("/who "), Command::Who);
        assert_eq!(ok("/help"), Command::Help);
        assert_eq!(err("/who all"), "usage: /who");
        assert_eq!(err("/help me"), "usage: /help");
    }

    #[test]
    fn quit() {
        assert_eq!(ok("/quit"), Command::Quit(None));
        assert_eq!(ok("/QUIT"), Command::Quit(None));
        assert_eq!(ok("/quit some reason "), Command::Quit(Some("some reason".into())));
    }

    #[test]
    fn unknown_commands() {
        assert_eq!(err("/foo"), "unknown command '/foo' (try /help)");
        assert_eq!(err("/FOO bar"), "unknown command '/FOO' (try /help)");
        assert_eq!(err("/"), "unknown command '/' (try /help)");
        assert_eq!(err("/ hello"), "unknown command '/' (try /help)");
    }

    #[test]
    fn help_lists_every_command_with_its_usage() {
        for synopsis in [NICK, ME, MSG, "/history [N]", WHO, HELP_USAGE, "/quit [REASON]"] {
            let prefix = format!("{synopsis} — ");
            assert!(HELP.iter().any(|l| l.starts_with(&prefix)), "{synopsis}");
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(line in any::<String>()) {
            let _ = parse(&line);
        }

        #[test]
        fn parse_commands_never_panics(
            line in "/(nick|NICK|me|msg|who|history|help|quit|x)?[ \t]{0,2}[a-z0-9 \t@é-]{0,12}",
        ) {
            match parse(&line) {
                Ok(Command::Nick(nick)) => prop_assert!(is_valid_nick(&nick)),
                Ok(Command::History(Some(n))) => prop_assert!(n > 0),
                Ok(Command::Me(text) | Command::Quit(Some(text))) => {
                    prop_assert!(!text.is_empty() && text.trim_matches(SEPARATORS) == text);
                }
                Ok(Command::Msg { to, text }) => {
                    prop_assert!(!to.is_empty() && !to.contains(SEPARATORS) && !text.is_empty());
                }
                Ok(_) => {}
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }

        #[test]
        fn lines_without_a_slash_are_said(line in "[^/][^\n]{0,20}") {
            let expected = if line.trim_matches(SEPARATORS).eq_ignore_ascii_case("quit") {
                Command::Quit(None)
            } else {
                say(&line)
            };
            prop_assert_eq!(ok(&line), expected);
        }
    }
}
