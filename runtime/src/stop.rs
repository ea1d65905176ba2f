//! Stop strings: text that ends a generation, matched on the decoded text as it streams. A stop
//! string never reaches the output, even when it arrives split over several tokens or in the
//! middle of one: text that could be the start of a stop string is held back until the next
//! piece shows whether it is.

pub struct StopText {
    stops: Vec<String>,
    /// Decoded text not yet released.
    held: String,
    stopped: bool,
}

impl StopText {
    /// Empty strings are ignored (they would stop before anything is said).
    pub fn new(stops: impl IntoIterator<Item = String>) -> Self {
        StopText {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
            stopped: false,
        }
    }

    /// Whether a stop string has been seen: generation should end, and nothing more is released.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Takes the next decoded piece; returns the text now safe to show (up to the stop string,
    /// once one is found).
    pub fn push(&mut self, piece: &str) -> String {
        if self.stopped {
            return String::new();
        }
        self.held.push_str(piece);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            self.stopped = true;
            self.held.truncate(at);
            return std::mem::take(&mut self.held);
        }
        // Hold back the longest end of the text that begins some stop string.
        let keep = self
            .stops
            .iter()
            .map(|s| {
                (1..s.len().min(self.held.len() + 1))
                    .rev()
                    .find(|&n| {
                        let from = self.held.len() - n;
                        self.held.is_char_boundary(from) && s.starts_with(&self.held[from..])
                    })
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0);
        let release = self.held.len() - keep;
        let rest = self.held.split_off(release);
        std::mem::replace(&mut self.held, rest)
    }

    /// The text held back when generation ended for another reason: it was no stop string.
    pub fn finish(&mut self) -> String {
        if self.stopped {
            String::new()
        } else {
            std::mem::take(&mut self.held)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut s = StopText::new(stops.iter().map(|s| s.to_string()));
        let mut out = String::new();
        for p in pieces {
            out.push_str(&s.push(p));
        }
        out.push_str(&s.finish());
        (out, s.stopped())
    }

    #[test]
    fn stop_strings_never_reach_the_output() {
        // Whole, split over pieces, inside a piece, and the earliest of several.
        assert_eq!(
            stream(&["\n\n"], &["Hi", "\n\n", "more"]),
            ("Hi".into(), true)
        );
        assert_eq!(
            stream(&["STOP"], &["a S", "T", "OP b"]),
            ("a ".into(), true)
        );
        assert_eq!(
            stream(&["end"], &["the weekend is"]),
            ("the week".into(), true)
        );
        assert_eq!(stream(&["b", "a"], &["xab"]), ("x".into(), true));
        // A held prefix that turns out not to be one is released, at the end too.
        assert_eq!(stream(&["STOP"], &["ST", "ART"]), ("START".into(), false));
        assert_eq!(stream(&["STOP"], &["go ST"]), ("go ST".into(), false));
        // Multi-byte text around a stop string.
        assert_eq!(
            stream(&["»"], &["«Grüße", " \u{bb}"]),
            ("«Grüße ".into(), true)
        );
        assert_eq!(stream(&["", "x"], &["abc"]), ("abc".into(), false));
    }

    #[test]
    fn text_is_released_as_soon_as_it_cannot_start_a_stop_string() {
        let mut s = StopText::new(["<|end|>".to_string()]);
        assert_eq!(s.push("Hello <"), "Hello ");
        assert_eq!(s.push("|e"), "");
        assert_eq!(s.push("x"), "<|ex");
        assert_eq!(s.push(" <|end|> after"), " ");
        assert!(s.stopped());
        assert_eq!(s.push("more"), "");
    }
}
