//! An idle session lets its expanded record keys go and derives them again from its secrets.

use super::*;

/// Two quiet ticks: the first only notes that the keys were not used since the one before.
fn go_quiet(pair: &mut Pair) {
    pair.server.release_idle();
    pair.server.release_idle();
    assert!(!pair.server.tx.has_key() && !pair.server.rx.has_key(), "keys released");
}

#[test]
fn an_idle_session_drops_its_keys_and_carries_on_after() {
    let mut pair = connect();
    pair.chat("before");
    go_quiet(&mut pair);
    pair.chat("after");
    assert!(pair.server.tx.has_key() && pair.server.rx.has_key(), "derived again");
    go_quiet(&mut pair);
    pair.chat("after a second release");
}

#[test]
fn a_busy_session_keeps_its_keys_from_tick_to_tick() {
    let mut pair = connect();
    for round in 0..3 {
        pair.chat(&format!("round {round}"));
        pair.server.release_idle();
        assert!(pair.server.tx.has_key() && pair.server.rx.has_key(), "round {round}");
    }
}

#[test]
fn a_client_key_update_while_released_moves_both_directions_on() {
    let mut pair = connect();
    pair.chat("before");
    go_quiet(&mut pair);
    pair.client.refresh_traffic_keys().expect("key update");
    let records = pair.client_seals(b"under the new key\n");
    let (mut plain, mut out) = (Vec::new(), Vec::new());
    pair.server.open(&records, &mut plain, &mut out).expect("open");
    assert_eq!(plain, b"under the new key\n");
    assert!(!out.is_empty(), "chatd answers with its own KeyUpdate");
    assert!(client_input(&mut pair.client, &out).expect("client takes it").is_empty());
    go_quiet(&mut pair);
    pair.chat("after");
}

#[test]
fn chatd_moves_to_a_new_key_while_released() {
    let mut pair = connect();
    pair.server.rekey_after(2);
    pair.chat("first");
    go_quiet(&mut pair);
    pair.chat("second");
    go_quiet(&mut pair);
    pair.chat("under chatd's next key");
    assert_eq!(pair.server.tx.seq, 1, "one record under the new key");
}

#[test]
fn a_released_session_is_handed_off_and_goes_on() {
    let mut pair = connect();
    pair.chat("before");
    go_quiet(&mut pair);
    let mut pair = pair.hand_off();
    pair.chat("after the hand-off");
}
