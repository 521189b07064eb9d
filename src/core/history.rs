//! `chat:history` pages: which end of a page to keep when it must shrink, and how `hasMore`
//! follows.
//!
//! A page is sent as one frame into the connection's outbox, whose cap (`MAX_OUTBOX_BYTES`)
//! closes a connection that overflows it; a page of 100 large messages could. [`fit`] cuts a
//! page to a byte budget from the end away from where the client is reading: a page `after` an
//! id keeps its oldest messages (the client continues after the last one it got), any other
//! page keeps its newest (the client pages back before the first). A cut page says
//! `hasMore: true`, so following the recipe (page until `hasMore` is false) still gets
//! everything. Guarantees: at least one message is kept (a single message always fits: the
//! budget is at least a maximal message); order is untouched.

use crate::protocol::{ChatMessage, HistoryPage};

/// Bytes of JSON a message adds to a page (its serialised size plus a separator).
fn weight(m: &ChatMessage) -> usize {
    serde_json::to_vec(m).map_or(0, |v| v.len()) + 1
}

/// Cuts `messages` (oldest first) to at most `budget` bytes of JSON, keeping the end the
/// client continues from; sets `has_more` when anything was cut.
pub fn fit(
    page: &HistoryPage,
    messages: &mut Vec<ChatMessage>,
    has_more: &mut bool,
    budget: usize,
) {
    let weights: Vec<usize> = messages.iter().map(weight).collect();
    if weights.iter().sum::<usize>() <= budget {
        return;
    }
    let forward = page.after.is_some();
    let mut kept = 0;
    let mut used = 0;
    let order: Box<dyn Iterator<Item = &usize>> = if forward {
        Box::new(weights.iter())
    } else {
        Box::new(weights.iter().rev())
    };
    for w in order {
        if kept > 0 && used + w > budget {
            break;
        }
        used += w;
        kept += 1;
    }
    if forward {
        messages.truncate(kept);
    } else {
        messages.drain(..messages.len() - kept);
    }
    *has_more = true;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: usize, len: usize) -> ChatMessage {
        ChatMessage {
            id: format!("m{id}"),
            chat_id: "c".into(),
            sender_id: "u".into(),
            sender_name: "U".into(),
            content: "x".repeat(len),
            created_at: "2024-01-01T00:00:00.000Z".into(),
            client_message_id: None,
        }
    }

    fn page(after: Option<&str>, before: Option<&str>) -> HistoryPage {
        HistoryPage {
            after: after.map(Into::into),
            before: before.map(Into::into),
            limit: 100,
        }
    }

    fn ids(m: &[ChatMessage]) -> Vec<&str> {
        m.iter().map(|m| m.id.as_str()).collect()
    }

    #[test]
    fn a_page_that_fits_is_untouched() {
        let mut m: Vec<_> = (0..3).map(|i| msg(i, 10)).collect();
        let mut more = false;
        fit(&page(None, None), &mut m, &mut more, 10_000);
        assert_eq!((ids(&m), more), (vec!["m0", "m1", "m2"], false));
    }

    #[test]
    fn after_keeps_the_oldest_other_pages_the_newest() {
        let all: Vec<_> = (0..5).map(|i| msg(i, 1000)).collect();
        let one = weight(&all[0]);
        let mut m = all.clone();
        let mut more = false;
        fit(&page(Some("x"), None), &mut m, &mut more, 2 * one);
        assert_eq!((ids(&m), more), (vec!["m0", "m1"], true));
        for p in [page(None, Some("x")), page(None, None)] {
            let mut m = all.clone();
            let mut more = false;
            fit(&p, &mut m, &mut more, 2 * one + 10);
            assert_eq!((ids(&m), more), (vec!["m3", "m4"], true));
        }
    }

    #[test]
    fn one_message_is_always_kept() {
        let mut m = vec![msg(0, 5000), msg(1, 5000)];
        let mut more = false;
        fit(&page(None, None), &mut m, &mut more, 10);
        assert_eq!((ids(&m), more), (vec!["m1"], true));
    }
}
