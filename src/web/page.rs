//! The web page, built into the binary: `page/index.html` with `page/style.css` and
//! `page/app.js` put inline, so one request fetches everything and nothing comes from elsewhere.
//! The Content-Security-Policy names the style and the script by their SHA-256, so the browser
//! runs those and nothing else, even if text ever reached the page as markup.

use std::sync::OnceLock;

use data_encoding::BASE64;
use ring::digest::{SHA256, digest};

const HTML: &str = include_str!("page/index.html");
const STYLE: &str = include_str!("page/style.css");
const SCRIPT: &str = include_str!("page/app.js");

/// The page and its policy (without `connect-src`, which names the request's host).
pub(super) struct Page {
    pub(super) html: String,
    pub(super) policy: String,
}

/// Built once, on the first request.
pub(super) fn page() -> &'static Page {
    static PAGE: OnceLock<Page> = OnceLock::new();
    PAGE.get_or_init(|| Page {
        html: HTML.replacen("/*style*/", STYLE, 1).replacen("/*script*/", SCRIPT, 1),
        policy: format!(
            "default-src 'none'; style-src '{}'; script-src '{}'; img-src data:; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            hash(STYLE),
            hash(SCRIPT)
        ),
    })
}

/// A CSP hash source: `sha256-BASE64`.
fn hash(text: &str) -> String {
    format!("sha256-{}", BASE64.encode(digest(&SHA256, text.as_bytes()).as_ref()))
}
