//! The page in a real browser: headless Chromium ([`cdp::Browser`]) opens `/` from chatd's
//! `[web] listen`, types into the page as a user would, and reads the DOM. A web user and plain
//! TCP clients chat in one room; a line that looks like HTML stays text; two tabs see one order.
//!
//! Every wait is on a DOM condition or a line read, with a deadline.

mod cdp;

use std::net::SocketAddr;

use serde_json::json;

use super::common::*;
use super::{start_web, web_addr};
use cdp::{Browser, Tab};

/// The text of every line the page shows, in order.
const LOG_LINES: &str = "Array.from(document.querySelectorAll('#log > div'), d => d.textContent)";

/// A server with a web listener too; returns it with the web address.
fn web_server(builder: ServerBuilder) -> (Server, SocketAddr) {
    let server = start_web(builder, None);
    let web = web_addr(&server);
    (server, web)
}

/// Opens the page in a new tab and waits for the welcome line; focuses its input.
fn open_page(browser: &mut Browser, web: SocketAddr) -> Tab {
    let tab = browser.open(&format!("http://{web}/"));
    browser.wait_for(
        &tab,
        "Array.from(document.querySelectorAll('#log > div'))\
         .some(d => d.textContent.startsWith('* Welcome to '))",
        "the welcome line in the page",
    );
    browser.eval(&tab, "document.getElementById('line').focus()");
    tab
}

/// Waits until the page shows a line equal to `line`, or ending with `suffix` when it is a chat
/// line (whose time the test does not know).
fn wait_for_line(browser: &mut Browser, tab: &Tab, suffix: &str) {
    let expression = format!("({LOG_LINES}).some(l => l.endsWith({}))", json!(suffix));
    browser.wait_for(tab, &expression, &format!("the line {suffix:?} in the page"));
}

fn page_lines(browser: &mut Browser, tab: &Tab) -> Vec<String> {
    serde_json::from_value(browser.eval(tab, LOG_LINES)).expect("the page's lines")
}

#[test]
fn the_page_chats_with_tcp_clients_and_shows_html_as_text() {
    let (server, web) = web_server(ServerBuilder::new().workers(2).chat_key("history_on_join = 0"));
    let (mut bob, bob_nick, _) = server.join("bob");
    let mut browser = Browser::start(1000, 700);
    let tab = open_page(&mut browser, web);
    bob.read_until(LINE_TIMEOUT, |l| l.contains(" joined (")).unwrap();

    // Typed into the page, received over TCP.
    browser.type_line(&tab, "/nick alice");
    bob.read_until(LINE_TIMEOUT, |l| l.ends_with(" is now known as alice")).unwrap();
    wait_for_line(&mut browser, &tab, " is now known as alice");
    browser.type_line(&tab, "hello from the browser");
    bob.expect_chat("alice", "hello from the browser");
    wait_for_line(&mut browser, &tab, "<alice> hello from the browser");
    assert_eq!(browser.eval(&tab, "document.getElementById('line').value"), json!(""));

    // Markup from a TCP client is shown as the characters it is made of.
    let markup = "<img src=x onerror=alert(1)> <b>bold</b> <script>alert(2)</script>";
    bob.send_line(markup);
    bob.expect_chat(&bob_nick, markup);
    wait_for_line(&mut browser, &tab, &format!("<{bob_nick}> {markup}"));
    let elements = browser.eval(
        &tab,
        "[document.querySelectorAll('img, b, #log script').length, \
          document.querySelector('#log > div:last-child').childElementCount]",
    );
    assert_eq!(elements, json!([0, 0]), "a line became markup");
    assert!(browser.dialogs().is_empty(), "a dialog opened: {:?}", browser.dialogs());
}

#[test]
fn two_tabs_see_the_room_in_the_same_order() {
    let (server, web) = web_server(ServerBuilder::new().workers(3).chat_key("history_on_join = 0"));
    let mut browser = Browser::start(800, 600);
    let first = open_page(&mut browser, web);
    let second = open_page(&mut browser, web);
    let (mut bob, bob_nick, _) = server.join("bob");
    let (mut carol, carol_nick, _) = server.join("carol");
    wait_for_line(&mut browser, &first, &format!("* {carol_nick} joined (4 online)"));
    wait_for_line(&mut browser, &second, &format!("* {carol_nick} joined (4 online)"));

    // Lines from four senders at once: two plain clients and both tabs.
    for i in 0..5 {
        bob.send_line(&format!("bob {i}"));
        carol.send_line(&format!("carol {i}"));
        browser.type_line(&first, &format!("first {i}"));
        browser.type_line(&second, &format!("second {i}"));
    }
    bob.send_line("end");
    let end = format!("<{bob_nick}> end");
    wait_for_line(&mut browser, &first, &end);
    wait_for_line(&mut browser, &second, &end);
    for tab in [&first, &second] {
        wait_for_line(&mut browser, tab, "> second 4");
        wait_for_line(&mut browser, tab, "> first 4");
        wait_for_line(&mut browser, tab, &format!("<{carol_nick}> carol 4"));
    }
    let from = |lines: Vec<String>| -> Vec<String> {
        let start = lines.iter().position(|l| l.contains(" joined (4 online)")).unwrap();
        lines[start..].iter().filter(|l| parse_chat(l).is_some()).cloned().collect()
    };
    let (a, b) = (from(page_lines(&mut browser, &first)), from(page_lines(&mut browser, &second)));
    assert_eq!(a.len(), 21, "{a:?}");
    assert_eq!(a, b, "the two tabs saw different orders");
    // A plain client saw that order too.
    let plain: Vec<String> = (0..21)
        .map(|_| bob.read_until(LINE_TIMEOUT, |l| parse_chat(l).is_some()).unwrap())
        .collect();
    assert_eq!(plain, a, "the page's order differs from a TCP client's");
}

/// Makes `docs/web-page.png` (or the path in `CHATD_SCREENSHOT`): the page in a conversation
/// with plain clients. Run by hand: `cargo test --test web screenshot -- --ignored`.
#[test]
#[ignore = "writes docs/web-page.png; run by hand"]
fn screenshot() {
    let (server, web) = web_server(ServerBuilder::new().workers(2).chat_key("history_on_join = 0"));
    let mut people: Vec<(Client, String)> = ["bob", "carol", "dave"]
        .iter()
        .map(|name| {
            let (mut c, _, _) = server.join(name);
            c.send_line(&format!("/nick {name}"));
            c.read_until(LINE_TIMEOUT, |l| l.ends_with(&format!(" is now known as {name}")))
                .unwrap();
            (c, name.to_string())
        })
        .collect();
    let mut browser = Browser::start(900, 560);
    let tab = open_page(&mut browser, web);
    browser.type_line(&tab, "/nick alice");
    wait_for_line(&mut browser, &tab, " is now known as alice");
    let script: [(usize, &str); 7] = [
        (0, "morning all! the new release is out"),
        (4, "/me waves"),
        (1, "did the reload go through? I never lost the connection"),
        (0, "yes, every session moved to the new workers"),
        (4, "same here, and this is the page, no plugin needed"),
        (2, "<b>does html work?</b>"),
        (4, "no, text stays text :)"),
    ];
    for (who, line) in script {
        if who == 4 {
            browser.type_line(&tab, line);
        } else {
            let (client, _) = &mut people[who];
            client.send_line(line);
        }
        let shown = line.strip_prefix("/me ").unwrap_or(line);
        wait_for_line(&mut browser, &tab, shown);
    }
    browser.type_line(&tab, "/who");
    wait_for_line(&mut browser, &tab, "* 4 online: alice, bob, carol, dave");
    browser.eval(&tab, "document.getElementById('line').value = 'see you at the next reload'");
    let png = browser.screenshot(&tab);
    let path = std::env::var("CHATD_SCREENSHOT")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/docs/web-page.png").into());
    std::fs::write(&path, png).expect("write the screenshot");
}
