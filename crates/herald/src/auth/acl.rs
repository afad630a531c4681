//! Topic patterns and ntfy's rule for which ACL entry applies.
//!
//! A pattern is a topic name in which `*` stands for any run of characters (ntfy
//! implements it as SQL `LIKE` with `_` escaped, case-sensitive since v2.24). Of the
//! entries that match a topic, the user's own entries beat the everyone (`*`)
//! entries; among one principal's entries the longest pattern wins, then the one
//! that allows writing (ntfy's `ORDER BY user DESC, LENGTH(pattern) DESC, write DESC`).
//! No matching entry means `auth-default-access`.

use super::Access;

/// Longest topic pattern, as for topic names.
const MAX_PATTERN_LEN: usize = 64;

/// One ACL entry of a user (or of everyone): a topic pattern and what it allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub pattern: String,
    pub access: Access,
}

/// Whether `pattern` is a valid topic pattern: topic characters and `*`, 1-64 long
/// (ntfy's `AllowedTopicPattern`).
pub fn is_valid_pattern(pattern: &str) -> bool {
    !pattern.is_empty()
        && pattern.len() <= MAX_PATTERN_LEN
        && pattern
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'*'))
}

/// Whether `topic` matches `pattern`, where `*` matches any run of characters
/// (including none). Case-sensitive. Linear-time greedy matching with one
/// backtrack point, so a pattern of many `*` cannot blow up.
pub fn matches(pattern: &str, topic: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), topic.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    // Position after the last `*` seen, and the topic position it was tried at.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi + 1, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((after_star, tried)) = star {
            pi = after_star;
            ti = tried + 1;
            star = Some((after_star, tried + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

/// The entry of `grants` that decides access to `topic`: the longest matching
/// pattern, then the write-capable one, then the read-capable one.
pub fn best_match<'a>(grants: &'a [Grant], topic: &str) -> Option<&'a Grant> {
    grants
        .iter()
        .filter(|g| matches(&g.pattern, topic))
        .max_by_key(|g| (g.pattern.len(), g.access.write, g.access.read))
}

/// ntfy's resolution: the user's own matching entry, else everyone's, else the
/// default.
pub fn resolve(user: Option<&[Grant]>, everyone: &[Grant], topic: &str, default: Access) -> Access {
    user.and_then(|g| best_match(g, topic))
        .or_else(|| best_match(everyone, topic))
        .map_or(default, |g| g.access)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn grant(pattern: &str, access: Access) -> Grant {
        Grant {
            pattern: pattern.into(),
            access,
        }
    }

    #[test]
    fn wildcards() {
        assert!(matches("*", "anything"));
        assert!(matches("alerts*", "alerts"));
        assert!(matches("alerts*", "alerts-prod"));
        assert!(!matches("alerts*", "my-alerts"));
        assert!(matches("*-prod", "db-prod"));
        assert!(matches("a*b*c", "aXbYc"));
        assert!(matches("a*b*c", "abc"));
        assert!(!matches("a*b*c", "acb"));
        assert!(!matches("Alerts", "alerts"), "case-sensitive");
        // ntfy bug #840: `_` is a literal, not LIKE's single-character wildcard.
        assert!(!matches("a_c", "abc"));
        assert!(matches("a_c", "a_c"));
    }

    #[test]
    fn pattern_validity() {
        assert!(is_valid_pattern("alerts*"));
        assert!(is_valid_pattern("*"));
        assert!(!is_valid_pattern(""));
        assert!(!is_valid_pattern("a/b"));
        assert!(!is_valid_pattern("a%"));
        assert!(!is_valid_pattern(&"a".repeat(65)));
    }

    #[test]
    fn user_entry_beats_everyone_even_if_shorter() {
        let user = [grant("*", Access::DENY_ALL)];
        let everyone = [grant("alerts-prod", Access::READ_WRITE)];
        assert_eq!(
            resolve(Some(&user), &everyone, "alerts-prod", Access::READ_WRITE),
            Access::DENY_ALL
        );
        assert_eq!(
            resolve(None, &everyone, "alerts-prod", Access::DENY_ALL),
            Access::READ_WRITE
        );
    }

    #[test]
    fn longest_pattern_then_write_wins() {
        let user = [
            grant("alerts*", Access::READ_ONLY),
            grant("alerts-prod*", Access::DENY_ALL),
            grant("x*", Access::READ_ONLY),
            grant("*y", Access::WRITE_ONLY),
        ];
        assert_eq!(
            resolve(Some(&user), &[], "alerts-prod1", Access::READ_WRITE),
            Access::DENY_ALL
        );
        assert_eq!(
            resolve(Some(&user), &[], "alerts-dev", Access::READ_WRITE),
            Access::READ_ONLY
        );
        // Same length: the write-capable entry wins.
        assert_eq!(
            resolve(Some(&user), &[], "xy", Access::DENY_ALL),
            Access::WRITE_ONLY
        );
        assert_eq!(
            resolve(Some(&user), &[], "other", Access::WRITE_ONLY),
            Access::WRITE_ONLY,
            "no entry: the default"
        );
    }

    /// A plain recursive matcher as the oracle.
    fn oracle(p: &[u8], t: &[u8]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some((b'*', rest)) => (0..=t.len()).any(|i| oracle(rest, &t[i..])),
            Some((c, rest)) => t.first() == Some(c) && oracle(rest, &t[1..]),
        }
    }

    fn topic() -> impl Strategy<Value = String> {
        "[-_a-cA-C0-9]{1,12}"
    }

    fn pattern() -> impl Strategy<Value = String> {
        "[-_a-cA-C0-9*]{1,10}"
    }

    proptest! {
        #[test]
        fn matcher_agrees_with_the_oracle(p in pattern(), t in topic()) {
            prop_assert_eq!(matches(&p, &t), oracle(p.as_bytes(), t.as_bytes()));
        }

        #[test]
        fn a_pattern_without_wildcards_matches_only_itself(p in topic(), t in topic()) {
            prop_assert_eq!(matches(&p, &t), p == t);
        }

        #[test]
        fn replacing_any_slice_by_a_star_still_matches(t in topic(), a in 0usize..12, b in 0usize..12) {
            let (a, b) = (a.min(t.len()), b.min(t.len()));
            let (lo, hi) = (a.min(b), a.max(b));
            let p = format!("{}*{}", &t[..lo], &t[hi..]);
            prop_assert!(matches(&p, &t));
            prop_assert!(matches("*", &t));
        }

        #[test]
        fn the_decision_is_the_longest_matching_own_entry(
            entries in proptest::collection::vec((pattern(), 0u8..4), 0..6),
            everyone in proptest::collection::vec((pattern(), 0u8..4), 0..4),
            t in topic(),
        ) {
            let to_grants = |v: &[(String, u8)]| -> Vec<Grant> {
                v.iter().map(|(p, a)| grant(p, Access { read: a & 1 == 1, write: a & 2 == 2 })).collect()
            };
            let (own, all) = (to_grants(&entries), to_grants(&everyone));
            let got = resolve(Some(&own), &all, &t, Access::READ_ONLY);
            let own_matching: Vec<&Grant> = own.iter().filter(|g| oracle(g.pattern.as_bytes(), t.as_bytes())).collect();
            let all_matching: Vec<&Grant> = all.iter().filter(|g| oracle(g.pattern.as_bytes(), t.as_bytes())).collect();
            let deciding = if own_matching.is_empty() { all_matching } else { own_matching };
            match deciding.iter().map(|g| g.pattern.len()).max() {
                None => prop_assert_eq!(got, Access::READ_ONLY),
                Some(longest) => {
                    let candidates: Vec<&&Grant> = deciding.iter().filter(|g| g.pattern.len() == longest).collect();
                    prop_assert!(candidates.iter().any(|g| g.access == got));
                    // No equally long candidate allows writing while the decision does not.
                    prop_assert!(got.write || candidates.iter().all(|g| !g.access.write));
                }
            }
        }
    }
}
