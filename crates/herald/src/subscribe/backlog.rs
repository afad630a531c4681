//! Backlog replay: which stored messages a new subscription gets before the live
//! ones (`since=`), read from the store a page at a time (see
//! [`crate::core::HistoryPages`]) so that a subscriber that does not read holds one
//! page of server memory, and filtered like live events.

use super::params::{Filters, SinceParam};
use crate::core::HistoryPages;
use crate::error::ApiError;
use crate::model::{Message, id as message_id};
use crate::store::Since;

/// Turns `since=` into a store query bound. An ID that herald could have issued
/// recently (its embedded time is within the retention window, and not ahead of the
/// clock or of the newest ID issued, which is ahead of the clock after the clock
/// went back) selects what came after it, even if that message is gone; any other ID
/// selects everything, as ntfy does for unknown IDs.
pub fn resolve_since(since: &SinceParam, poll: bool, now: i64, cache_secs: i64) -> Since {
    match since {
        SinceParam::Unset if poll => Since::All,
        SinceParam::Unset | SinceParam::None => Since::None,
        SinceParam::All => Since::All,
        SinceParam::Latest => Since::Latest,
        SinceParam::Time(t) => Since::Time(*t),
        SinceParam::Id(id) => {
            let plausible = message_id::timestamp_ms(id).is_some_and(|ms| {
                let secs = (ms / 1000) as i64;
                secs >= now - cache_secs - 86_400
                    && (secs <= now + 60 || ms <= message_id::newest_issued_ms())
            });
            if plausible {
                Since::AfterId(id.clone())
            } else {
                Since::All
            }
        }
    }
}

/// A subscriber's backlog being read: the history pages, filtered by its `Filters`.
pub struct Backlog {
    pages: HistoryPages,
    filters: Filters,
}

impl Backlog {
    /// The backlog of `pages`, keeping what passes `filters`.
    pub(crate) fn new(pages: HistoryPages, filters: Filters) -> Self {
        Backlog { pages, filters }
    }

    /// The next non-empty page of messages that pass the filters, or `None` when
    /// the backlog is complete.
    pub async fn next_page(&mut self) -> Result<Option<Vec<Message>>, ApiError> {
        while let Some(mut page) = self.pages.next_page().await? {
            page.retain(|m| self.filters.pass(m));
            if !page.is_empty() {
                return Ok(Some(page));
            }
        }
        Ok(None)
    }

    /// Whether every page has been read.
    pub fn is_finished(&self) -> bool {
        self.pages.is_finished()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_resolution() {
        let now = 2_000_000_000;
        assert_eq!(
            resolve_since(&SinceParam::Unset, true, now, 3600),
            Since::All
        );
        assert_eq!(
            resolve_since(&SinceParam::Unset, false, now, 3600),
            Since::None
        );
        // Not `generate_at`: it is monotonic over the whole test process, so another
        // test's later ID would move this one's time.
        let recent = crate::model::MessageId::floor_at((now as u64 - 10) * 1000);
        assert_eq!(
            resolve_since(&SinceParam::Id(recent.clone()), false, now, 3600),
            Since::AfterId(recent)
        );
        // An ID that herald did not issue in the retention window: everything.
        assert_eq!(
            resolve_since(&SinceParam::Id("zzzzzzzzzzzz".into()), false, now, 3600),
            Since::All
        );
    }
}
