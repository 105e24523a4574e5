//! Which nick the client has, so that after a reconnect it can take it back.
//!
//! The server is the authority: the nick is read from what it says (the welcome line, `* OLD is
//! now known as NEW`), never from what the user typed, so a refused `/nick` changes nothing.
//! After a reconnect the server hands out a fresh guest nick; the client then asks for the old
//! one. The old session may still hold it for a moment (the server has not yet noticed that the
//! connection is gone), so a refusal is tried again a few times before giving up.

use crate::protocol::command::is_valid_nick;

/// How many times a nick that is still taken is asked for after a reconnect.
const CLAIM_TRIES: u32 = 5;

/// What the session should do after a line from the server.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Reaction {
    Nothing,
    /// Send `/nick NAME` now.
    Claim(String),
    /// The nick is still taken: send `/nick NAME` again after a pause.
    ClaimLater(String),
    /// The nick stayed taken; the client keeps the one it was given.
    GaveUp(String),
}

#[derive(Debug, Default)]
pub(super) struct Nick {
    /// The nick the server last said this connection has.
    current: Option<String>,
    /// The nick to take back on this connection, until the server has granted or refused it.
    claiming: Option<String>,
    tries: u32,
}

impl Nick {
    /// The connection is gone: the nick it had is the one to ask for on the next (or the one
    /// it was still asking for, if the server had not answered yet).
    pub(super) fn lost(&mut self) {
        let current = self.current.take();
        if self.claiming.is_none() {
            self.claiming = current;
        }
        self.tries = 0;
    }

    /// Follows one line from the server.
    pub(super) fn observe(&mut self, line: &str) -> Reaction {
        if let Some(given) = welcome_nick(line) {
            self.current = Some(given.to_owned());
            return match self.claiming.take() {
                Some(wanted) if !wanted.eq_ignore_ascii_case(given) => {
                    self.tries = 1;
                    self.claiming = Some(wanted.clone());
                    Reaction::Claim(wanted)
                }
                _ => Reaction::Nothing,
            };
        }
        if let Some((old, new)) = renamed(line) {
            if self.current.as_deref().is_some_and(|nick| nick.eq_ignore_ascii_case(old)) {
                self.current = Some(new.to_owned());
                if self.claiming.as_deref().is_some_and(|nick| nick.eq_ignore_ascii_case(new)) {
                    self.claiming = None;
                }
            }
            return Reaction::Nothing;
        }
        match (taken(line), self.claiming.take()) {
            (Some(nick), Some(wanted)) if nick.eq_ignore_ascii_case(&wanted) => {
                if self.tries >= CLAIM_TRIES {
                    return Reaction::GaveUp(wanted);
                }
                self.claiming = Some(wanted.clone());
                Reaction::ClaimLater(wanted)
            }
            (_, claiming) => {
                self.claiming = claiming;
                Reaction::Nothing
            }
        }
    }

    /// A delayed claim is being sent now.
    pub(super) fn claiming_again(&mut self) {
        self.tries += 1;
    }

    /// The pause before claim number `tries + 1`: 1 s, 2 s, 4 s, …
    pub(super) fn claim_pause(&self) -> std::time::Duration {
        std::time::Duration::from_secs(1 << self.tries.saturating_sub(1).min(4))
    }
}

/// `guest-7` from `* Welcome to chatd. You are guest-7. 3 online. …` (the server's name may be
/// anything, so the last `. You are ` counts).
fn welcome_nick(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("* Welcome to ")?;
    let after = &rest[rest.rfind(". You are ")? + ". You are ".len()..];
    let nick = after.split_once('.')?.0;
    is_valid_nick(nick).then_some(nick)
}

/// `(OLD, NEW)` from `* OLD is now known as NEW`.
fn renamed(line: &str) -> Option<(&str, &str)> {
    let (old, new) = line.strip_prefix("* ")?.split_once(" is now known as ")?;
    (is_valid_nick(old) && is_valid_nick(new)).then_some((old, new))
}

/// `NAME` from `! nickname 'NAME' is taken`.
fn taken(line: &str) -> Option<&str> {
    let nick = line.strip_prefix("! nickname '")?.strip_suffix("' is taken")?;
    is_valid_nick(nick).then_some(nick)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WELCOME_7: &str =
        "* Welcome to chatd. You are guest-7. 3 online. Type /help for commands.";
    const WELCOME_9: &str =
        "* Welcome to chatd. You are guest-9. 1 online. Type /help for commands.";

    #[test]
    fn reads_the_nick_from_what_the_server_says() {
        assert_eq!(welcome_nick(WELCOME_7), Some("guest-7"));
        assert_eq!(welcome_nick("* Welcome to a. You are b. You are x. 1 online."), Some("x"));
        assert_eq!(welcome_nick("12:00 <bob> * Welcome to chatd. You are bob."), None);
        assert_eq!(renamed("* guest-7 is now known as alice"), Some(("guest-7", "alice")));
        assert_eq!(renamed("12:00 * bob is now known as carol"), None);
        assert_eq!(renamed("* a b is now known as c"), None);
        assert_eq!(taken("! nickname 'alice' is taken"), Some("alice"));
    }

    #[test]
    fn takes_back_the_last_nick_after_a_reconnect() {
        let mut nick = Nick::default();
        assert_eq!(nick.observe(WELCOME_7), Reaction::Nothing);
        // A refused /nick changes nothing; someone else's rename neither.
        assert_eq!(nick.observe("! nickname 'bob' is taken"), Reaction::Nothing);
        nick.observe("* guest-3 is now known as carol");
        nick.observe("* guest-7 is now known as alice");
        nick.observe("* Alice is now known as alice2");
        nick.lost();
        assert_eq!(nick.observe(WELCOME_9), Reaction::Claim("alice2".into()));
        nick.observe("* guest-9 is now known as alice2");
        // Granted: a later loss asks for it again, and nothing is claimed meanwhile.
        assert_eq!(nick.observe("! nickname 'alice2' is taken"), Reaction::Nothing);
        nick.lost();
        assert_eq!(nick.observe(WELCOME_7), Reaction::Claim("alice2".into()));
    }

    #[test]
    fn a_nick_still_taken_is_asked_for_again_then_given_up() {
        let mut nick = Nick::default();
        nick.observe(WELCOME_7);
        nick.lost();
        assert_eq!(nick.observe(WELCOME_9), Reaction::Claim("guest-7".into()));
        let mut pauses = Vec::new();
        for _ in 1..CLAIM_TRIES {
            let reaction = nick.observe("! nickname 'guest-7' is taken");
            assert_eq!(reaction, Reaction::ClaimLater("guest-7".into()));
            pauses.push(nick.claim_pause().as_secs());
            nick.claiming_again();
        }
        assert_eq!(pauses, [1, 2, 4, 8]);
        assert_eq!(
            nick.observe("! nickname 'guest-7' is taken"),
            Reaction::GaveUp("guest-7".into())
        );
        assert_eq!(nick.observe("! nickname 'guest-7' is taken"), Reaction::Nothing);
    }

    #[test]
    fn a_claim_cut_short_by_another_loss_goes_on() {
        let mut nick = Nick::default();
        nick.observe(WELCOME_7);
        nick.observe("* guest-7 is now known as alice");
        nick.lost();
        assert_eq!(nick.observe(WELCOME_9), Reaction::Claim("alice".into()));
        nick.lost();
        assert_eq!(nick.observe(WELCOME_7), Reaction::Claim("alice".into()));
    }

    #[test]
    fn the_same_nick_is_not_claimed_again() {
        let mut nick = Nick::default();
        nick.observe(WELCOME_7);
        nick.lost();
        assert_eq!(nick.observe(WELCOME_7), Reaction::Nothing);
        assert_eq!(nick.observe("! nickname 'guest-7' is taken"), Reaction::Nothing);
    }
}
