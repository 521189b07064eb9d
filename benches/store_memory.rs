//! Memory of the embedded store under the soak's write pattern, without the gateway around it:
//! 20 users in one chat; each round 15 of them authenticate, fetch their chats and post one
//! message (with a clientMessageId), all 15 posts in flight at once, as the soak's churn does.
//! Prints the process's RSS (anonymous and file-backed) every 30,000 messages, so a growth in
//! the SQLite path shows apart from the gateway's own memory.
//!
//! `cargo bench --bench store_memory -- [MESSAGES]` (default 600,000, about two minutes).

use std::time::Instant;

use socket_server::backend::store::{Admin, Store};
use socket_server::backend::{Backend, NewMessage};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `VmRSS`, `RssAnon` and `RssFile` of this process, from /proc/self/status.
fn rss() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .filter(|l| {
            ["VmRSS", "RssAnon", "RssFile"]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(" | ")
}

fn main() -> anyhow::Result<()> {
    let total: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(600_000);
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("store.db");
    let mut admin = Admin::open(&path)?;
    let ids: Vec<String> = (0..20).map(|i| format!("u{i}")).collect();
    let mut tokens = Vec::new();
    for id in &ids {
        tokens.push(admin.add_user(id, &format!("User {id}"), "")?);
    }
    admin.add_chat("soak", "soak", &ids)?;
    drop(admin);

    let store = Store::start(&path)?;
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    let started = Instant::now();
    println!("start: {}", rss());
    rt.block_on(async {
        let (mut sent, mut round) = (0usize, 0u64);
        while sent < total {
            let mut replies = Vec::new();
            for (id, token) in ids.iter().zip(&tokens).skip(1).take(15) {
                store.authenticate(token).await?;
                store.chats(token).await?;
                replies.push(store.create_message(
                    token,
                    NewMessage {
                        chat_id: "soak".into(),
                        content: format!("round {round} from {id}"),
                        client_message_id: Some(format!("{id}-{round}")),
                        sender_id: id.clone(),
                        sender_name: format!("User {id}"),
                    },
                ));
            }
            for reply in replies {
                reply.await?;
                sent += 1;
            }
            round += 1;
            if sent % 30_000 < 15 {
                let secs = started.elapsed().as_secs_f64();
                println!("{secs:7.1} s {sent:8} messages  {}", rss());
            }
        }
        anyhow::Ok(())
    })?;
    println!("end: {}", rss());
    Ok(())
}
