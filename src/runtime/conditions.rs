//! Status conditions by the meta/v1 rule: `lastTransitionTime` is when `status` last changed, so
//! a new reason or message keeps the time, and a condition seen for the first time gets now.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// A condition as a controller decides it; the transition time comes from the previous ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decided<'a> {
    pub type_: &'a str,
    pub status: bool,
    pub reason: &'a str,
    pub message: &'a str,
    pub observed_generation: Option<i64>,
}

/// `"True"`/`"False"`, as conditions spell it.
pub fn status_word(status: bool) -> &'static str {
    if status { "True" } else { "False" }
}

/// Builds a condition of `type_` with `status` (`True`, `False` or `Unknown`), keeping the
/// previous condition's transition time when its status is the same.
pub fn condition(
    previous: &[Condition],
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    observed_generation: Option<i64>,
) -> Condition {
    let since = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(Timestamp::now()));
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation,
        last_transition_time: since,
    }
}

/// [`condition`] for a two-valued decision.
pub fn decided(previous: &[Condition], d: &Decided<'_>) -> Condition {
    condition(
        previous,
        d.type_,
        status_word(d.status),
        d.reason,
        d.message,
        d.observed_generation,
    )
}

/// Keeps each condition's transition time from `previous` where its status did not change
/// (for conditions built elsewhere, e.g. by a pure aggregation that stamps them now).
pub fn carry_transition_times(previous: &[Condition], conditions: &mut [Condition]) {
    for c in conditions {
        if let Some(p) = previous
            .iter()
            .find(|p| p.type_ == c.type_ && p.status == c.status)
        {
            c.last_transition_time = p.last_transition_time.clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn previous() -> Vec<Condition> {
        vec![Condition {
            type_: "Ready".into(),
            status: "False".into(),
            reason: "Pending".into(),
            message: "waiting".into(),
            observed_generation: Some(1),
            last_transition_time: at(1_000),
        }]
    }

    #[test]
    fn same_status_keeps_the_time_even_with_a_new_reason_and_message() {
        let c = condition(&previous(), "Ready", "False", "Error", "boom", Some(2));
        assert_eq!(c.last_transition_time, at(1_000));
        assert_eq!((c.reason.as_str(), c.message.as_str()), ("Error", "boom"));
        assert_eq!(c.observed_generation, Some(2));
    }

    #[test]
    fn a_new_status_or_type_moves_the_time() {
        let c = condition(&previous(), "Ready", "True", "Ready", "ok", Some(2));
        assert!(c.last_transition_time > at(1_000));
        let other = decided(
            &previous(),
            &Decided {
                type_: "Reachable",
                status: false,
                reason: "Unreachable",
                message: "down",
                observed_generation: None,
            },
        );
        assert_eq!(other.status, "False");
        assert!(other.last_transition_time > at(1_000));
    }

    #[test]
    fn carried_times_follow_the_status() {
        let mut now = vec![
            condition(&[], "Ready", "False", "Error", "x", None),
            condition(&[], "Other", "True", "X", "y", None),
        ];
        carry_transition_times(&previous(), &mut now);
        assert_eq!(now[0].last_transition_time, at(1_000));
        assert!(now[1].last_transition_time > at(1_000));
    }
}
