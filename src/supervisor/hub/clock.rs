//! The time text of room lines (`{time}`): formatting it dominated the hub's cost per line, so
//! the text is reused while the second has not changed.

/// The last `{time}` text and the second it is of. Formats with sub-second fields are
/// formatted every time.
#[derive(Default)]
pub(super) struct Clock {
    second: i64,
    format: String,
    text: String,
}

impl Clock {
    pub(super) fn now(&mut self, format: &str) -> &str {
        let now = chrono::Local::now();
        let second = now.timestamp();
        let sub_second = format.contains('f') || format.contains("%N");
        if sub_second || second != self.second || format != self.format || self.text.is_empty() {
            self.text = now.format(format).to_string();
            self.second = second;
            if self.format != format {
                self.format = format.to_string();
            }
        }
        &self.text
    }
}
