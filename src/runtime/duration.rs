//! Durations on the command line and in specs are strings like Kubernetes uses: `15s`, `2m`,
//! `1h30m`, `500ms`.

use std::time::Duration;

/// Parses a duration, naming the accepted forms when it fails.
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration; use a number with a unit, e.g. 30s, 5m, 1h30m".into());
    }
    humantime::parse_duration(s).map_err(|e| {
        format!("invalid duration {s:?} ({e}); use a number with a unit, e.g. 500ms, 30s, 5m, 1h30m")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_style_durations() {
        assert_eq!(parse("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse(" 2m "), Ok(Duration::from_secs(120)));
    }

    #[test]
    fn bad_durations_say_what_is_accepted() {
        for bad in ["", "15", "fifteen", "-1s", "1x"] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains("e.g."), "{bad:?}: {err}");
        }
    }
}
