//! The embedded store: SQLite (WAL) holding users, hashed tokens, chats, participants, messages
//! and read receipts. It is the default backend, so a fresh checkout runs without any service.
//!
//! One thread owns the connection. Requests queue on a channel; the thread takes everything
//! queued (up to [`MAX_BATCH`]), runs it in one transaction and commits once, then answers —
//! so a message is acknowledged (and broadcast) only after it is durable, and a burst of
//! messages costs one commit, not one per message. Tokens are stored as SHA-256 hashes, never in
//! clear. A message carrying a `clientMessageId` already stored for the same sender and chat
//! is not stored again: the stored one is returned (and so re-broadcast with its original id).
//! [`Admin`] is the synchronous face used by the CLI (`user add`, `chat add`) and demo
//! seeding; it may run while a server has the file open (WAL allows it).

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use crossbeam_channel::{unbounded, Receiver, Sender};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use sha2::{Digest, Sha256};

use super::{Backend, BackendError, BackendResult, History, NewMessage, Profile, Reply, Responder};
use crate::protocol::{timestamp, ChatMessage, HistoryPage};

/// Most requests handled in one transaction.
pub const MAX_BATCH: usize = 256;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL DEFAULT '',
  role TEXT NOT NULL DEFAULT 'user', created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
  hash TEXT PRIMARY KEY, user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chats (
  id TEXT PRIMARY KEY, name TEXT NOT NULL DEFAULT '', created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS participants (
  chat_id TEXT NOT NULL REFERENCES chats(id) ON DELETE CASCADE,
  user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  PRIMARY KEY (chat_id, user_id));
CREATE INDEX IF NOT EXISTS participants_by_user ON participants(user_id);
CREATE TABLE IF NOT EXISTS messages (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
  chat_id TEXT NOT NULL REFERENCES chats(id) ON DELETE CASCADE, sender_id TEXT NOT NULL,
  content TEXT NOT NULL, created_at TEXT NOT NULL, client_message_id TEXT);
CREATE INDEX IF NOT EXISTS messages_by_chat ON messages(chat_id, seq);
CREATE INDEX IF NOT EXISTS messages_by_client_id ON messages(chat_id, sender_id, client_message_id)
  WHERE client_message_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS read_receipts (
  message_id TEXT NOT NULL, user_id TEXT NOT NULL, chat_id TEXT NOT NULL, read_at TEXT NOT NULL,
  PRIMARY KEY (message_id, user_id));
";

/// Opens (creating if needed) the store file with the pragmas the gateway relies on.
pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

/// SHA-256 of a token, hex-encoded: what the store keeps instead of the token.
pub fn hash_token(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn new_token() -> String {
    let bytes: [u8; 24] = rand::random();
    format!(
        "sst_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

fn failed(e: rusqlite::Error) -> BackendError {
    BackendError::StoreFailed(e.to_string())
}

enum Request {
    Authenticate(String, Responder<Profile>),
    Chats(String, Responder<Vec<String>>),
    Create(String, NewMessage, Responder<ChatMessage>),
    Read {
        token: String,
        chat_id: String,
        message_id: String,
        reply: Responder<Option<String>>,
    },
    History {
        token: String,
        chat_id: String,
        page: HistoryPage,
        reply: Responder<History>,
    },
    Probe(Responder<()>),
}

/// The store backend: a handle to the store thread.
pub struct Store {
    tx: Sender<Request>,
}

impl Store {
    /// Opens the store at `path` and starts its thread.
    pub fn start(path: &Path) -> rusqlite::Result<Self> {
        let conn = open(path)?;
        let (tx, rx) = unbounded();
        std::thread::Builder::new()
            .name("store".into())
            .spawn(move || run(conn, rx))
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(Self { tx })
    }

    fn send<T>(&self, make: impl FnOnce(Responder<T>) -> Request) -> Reply<T> {
        let (tx, reply) = Reply::channel();
        if let Err(e) = self.tx.send(make(tx)) {
            drop(e); // the responder inside is dropped, so the reply resolves to Stopped
        }
        reply
    }
}

/// A deferred answer, sent after the batch's commit (`Err` if the commit failed).
type Answer = Box<dyn FnOnce(Option<&BackendError>) + Send>;

fn answer<T: Send + 'static>(reply: Responder<T>, result: BackendResult<T>) -> Answer {
    Box::new(move |commit_error| {
        let result = match commit_error {
            Some(e) => Err(e.clone()),
            None => result,
        };
        let _ = reply.send(result);
    })
}

fn run(mut conn: Connection, rx: Receiver<Request>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let tx = match conn.transaction() {
            Ok(tx) => tx,
            Err(e) => {
                let e = failed(e);
                for req in batch {
                    fail(req, &e);
                }
                continue;
            }
        };
        let answers: Vec<Answer> = batch.into_iter().map(|req| handle(&tx, req)).collect();
        let commit_error = tx.commit().err().map(failed);
        if let Some(e) = &commit_error {
            tracing::error!(error = %e, "store commit failed");
        }
        for a in answers {
            a(commit_error.as_ref());
        }
    }
}

fn fail(req: Request, e: &BackendError) {
    let e = Some(e);
    match req {
        Request::Authenticate(_, r) => answer(r, Err(BackendError::Stopped))(e),
        Request::Chats(_, r) => answer(r, Err(BackendError::Stopped))(e),
        Request::Create(_, _, r) => answer(r, Err(BackendError::Stopped))(e),
        Request::Read { reply, .. } => answer(reply, Err(BackendError::Stopped))(e),
        Request::History { reply, .. } => answer(reply, Err(BackendError::Stopped))(e),
        Request::Probe(r) => answer(r, Err(BackendError::Stopped))(e),
    }
}

fn handle(tx: &Transaction<'_>, req: Request) -> Answer {
    match req {
        Request::Authenticate(token, r) => answer(r, authenticate(tx, &token)),
        Request::Chats(token, r) => answer(r, chats(tx, &token)),
        Request::Create(token, m, r) => answer(r, create(tx, &token, m)),
        Request::Read {
            token,
            chat_id,
            message_id,
            reply,
        } => answer(reply, mark_read(tx, &token, &chat_id, &message_id)),
        Request::History {
            token,
            chat_id,
            page,
            reply,
        } => answer(reply, history(tx, &token, &chat_id, &page)),
        Request::Probe(r) => answer(r, Ok(())),
    }
}

fn authenticate(tx: &Transaction<'_>, token: &str) -> BackendResult<Profile> {
    tx.prepare_cached(
        "SELECT u.id, u.name, u.email, u.role FROM tokens t JOIN users u ON u.id = t.user_id
         WHERE t.hash = ?1",
    )
    .and_then(|mut s| {
        s.query_row([hash_token(token)], |row| {
            Ok(Profile {
                user_id: row.get(0)?,
                name: row.get(1)?,
                email: row.get(2)?,
                role: row.get(3)?,
            })
        })
        .optional()
    })
    .map_err(failed)?
    .ok_or_else(|| BackendError::TokenRejected("Invalid token".into()))
}

fn user_of(tx: &Transaction<'_>, token: &str) -> BackendResult<String> {
    authenticate(tx, token).map(|p| p.user_id)
}

fn chats(tx: &Transaction<'_>, token: &str) -> BackendResult<Vec<String>> {
    let user = user_of(tx, token)?;
    let mut s = tx
        .prepare_cached("SELECT chat_id FROM participants WHERE user_id = ?1 ORDER BY chat_id")
        .map_err(failed)?;
    let rows = s
        .query_map([user], |row| row.get::<_, String>(0))
        .map_err(failed)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(failed)
}

fn is_participant(tx: &Transaction<'_>, chat: &str, user: &str) -> BackendResult<bool> {
    tx.prepare_cached("SELECT 1 FROM participants WHERE chat_id = ?1 AND user_id = ?2")
        .and_then(|mut s| s.exists(params![chat, user]))
        .map_err(failed)
}

fn create(tx: &Transaction<'_>, token: &str, m: NewMessage) -> BackendResult<ChatMessage> {
    // The token is checked on every write, so a revoked token stops working at once.
    if user_of(tx, token)? != m.sender_id {
        return Err(BackendError::TokenRejected("Invalid token".into()));
    }
    if !is_participant(tx, &m.chat_id, &m.sender_id)? {
        return Err(BackendError::NotParticipant(
            "Not a participant of this chat".into(),
        ));
    }
    // A resend (same sender, chat and clientMessageId, e.g. after a lost acknowledgement) gets
    // the message already stored, never a second one: the store's side of the REST API's
    // Idempotency-Key. One writer thread, so the look-up and the insert cannot race.
    if let Some(id) = &m.client_message_id {
        let stored = tx
            .prepare_cached(
                "SELECT id, content, created_at FROM messages
                 WHERE chat_id = ?1 AND sender_id = ?2 AND client_message_id = ?3
                 ORDER BY seq LIMIT 1",
            )
            .and_then(|mut s| {
                s.query_row(params![m.chat_id, m.sender_id, id], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })
                .optional()
            })
            .map_err(failed)?;
        if let Some((id, content, created_at)) = stored {
            return Ok(ChatMessage {
                id,
                chat_id: m.chat_id,
                sender_id: m.sender_id,
                sender_name: m.sender_name,
                content,
                created_at,
                client_message_id: m.client_message_id,
            });
        }
    }
    let msg = ChatMessage {
        id: uuid::Uuid::new_v4().to_string(),
        chat_id: m.chat_id,
        sender_id: m.sender_id,
        sender_name: m.sender_name,
        content: m.content,
        created_at: timestamp::now(),
        client_message_id: m.client_message_id,
    };
    tx.prepare_cached(
        "INSERT INTO messages (id, chat_id, sender_id, content, created_at, client_message_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut s| {
        s.execute(params![
            msg.id,
            msg.chat_id,
            msg.sender_id,
            msg.content,
            msg.created_at,
            msg.client_message_id
        ])
    })
    .map_err(failed)?;
    Ok(msg)
}

/// A page of `chat`'s messages in store order (`seq`), oldest first. The sender's current name
/// comes from `users` (messages do not copy it).
fn history(
    tx: &Transaction<'_>,
    token: &str,
    chat: &str,
    page: &HistoryPage,
) -> BackendResult<History> {
    let user = user_of(tx, token)?;
    if !is_participant(tx, chat, &user)? {
        return Err(BackendError::NotParticipant(
            "Not a participant of this chat".into(),
        ));
    }
    let anchor = |id: &str| -> BackendResult<i64> {
        tx.prepare_cached("SELECT seq FROM messages WHERE id = ?1 AND chat_id = ?2")
            .and_then(|mut s| s.query_row(params![id, chat], |r| r.get(0)).optional())
            .map_err(failed)?
            .ok_or_else(|| BackendError::InvalidRequest("Message not found in this chat".into()))
    };
    const COLUMNS: &str = "SELECT m.id, m.sender_id, COALESCE(NULLIF(u.name, ''), m.sender_id),
        m.content, m.created_at, m.client_message_id
        FROM messages m LEFT JOIN users u ON u.id = m.sender_id WHERE m.chat_id = ?1";
    // One more than asked tells whether there are more.
    let want = i64::from(page.limit) + 1;
    let (sql, bound, forward) = match (&page.after, &page.before) {
        (Some(after), _) => (
            format!("{COLUMNS} AND m.seq > ?2 ORDER BY m.seq ASC LIMIT ?3"),
            anchor(after)?,
            true,
        ),
        (None, Some(before)) => (
            format!("{COLUMNS} AND m.seq < ?2 ORDER BY m.seq DESC LIMIT ?3"),
            anchor(before)?,
            false,
        ),
        (None, None) => (
            format!("{COLUMNS} AND m.seq < ?2 ORDER BY m.seq DESC LIMIT ?3"),
            i64::MAX,
            false,
        ),
    };
    let mut stmt = tx.prepare_cached(&sql).map_err(failed)?;
    let rows = stmt
        .query_map(params![chat, bound, want], |r| {
            Ok(ChatMessage {
                id: r.get(0)?,
                chat_id: chat.to_string(),
                sender_id: r.get(1)?,
                sender_name: r.get(2)?,
                content: r.get(3)?,
                created_at: r.get(4)?,
                client_message_id: r.get(5)?,
            })
        })
        .map_err(failed)?;
    let mut messages = rows.collect::<Result<Vec<_>, _>>().map_err(failed)?;
    let has_more = messages.len() > page.limit as usize;
    messages.truncate(page.limit as usize);
    if !forward {
        messages.reverse();
    }
    Ok(History { messages, has_more })
}

fn mark_read(
    tx: &Transaction<'_>,
    token: &str,
    chat: &str,
    message: &str,
) -> BackendResult<Option<String>> {
    let user = user_of(tx, token)?;
    if !is_participant(tx, chat, &user)? {
        return Err(BackendError::NotParticipant(
            "Not a participant of this chat".into(),
        ));
    }
    let exists = tx
        .prepare_cached("SELECT 1 FROM messages WHERE id = ?1 AND chat_id = ?2")
        .and_then(|mut s| s.exists(params![message, chat]))
        .map_err(failed)?;
    if !exists {
        return Err(BackendError::InvalidRequest(
            "Message not found in this chat".into(),
        ));
    }
    let read_at = timestamp::now();
    tx.prepare_cached(
        "INSERT INTO read_receipts (message_id, user_id, chat_id, read_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (message_id, user_id) DO UPDATE SET read_at = excluded.read_at",
    )
    .and_then(|mut s| s.execute(params![message, user, chat, read_at]))
    .map_err(failed)?;
    Ok(Some(read_at))
}

impl Backend for Store {
    fn name(&self) -> &'static str {
        "store"
    }
    fn authenticate(&self, token: &str) -> Reply<Profile> {
        let token = token.to_string();
        self.send(|r| Request::Authenticate(token, r))
    }
    fn chats(&self, token: &str) -> Reply<Vec<String>> {
        let token = token.to_string();
        self.send(|r| Request::Chats(token, r))
    }
    fn create_message(&self, token: &str, message: NewMessage) -> Reply<ChatMessage> {
        let token = token.to_string();
        self.send(|r| Request::Create(token, message, r))
    }
    fn mark_read(&self, token: &str, chat_id: &str, message_id: &str) -> Reply<Option<String>> {
        let (token, chat_id, message_id) = (
            token.to_string(),
            chat_id.to_string(),
            message_id.to_string(),
        );
        self.send(|reply| Request::Read {
            token,
            chat_id,
            message_id,
            reply,
        })
    }
    fn history(&self, token: &str, chat_id: &str, page: &HistoryPage) -> Reply<History> {
        let (token, chat_id, page) = (token.to_string(), chat_id.to_string(), page.clone());
        self.send(|reply| Request::History {
            token,
            chat_id,
            page,
            reply,
        })
    }
    fn probe(&self) -> Reply<()> {
        self.send(Request::Probe)
    }
}

/// Synchronous administration of the store (CLI and demo seeding).
pub struct Admin {
    conn: Connection,
}

/// The demo users: (id, name, token).
pub const DEMO_USERS: [(&str, &str, &str); 3] = [
    ("alice", "Alice", "demo-alice"),
    ("bob", "Bob", "demo-bob"),
    ("carol", "Carol", "demo-carol"),
];
/// The demo chat everyone is in.
pub const DEMO_CHAT: &str = "general";
/// The demo chats: (id, name, members). The first is [`DEMO_CHAT`]; the others give the demo
/// page's chat switcher something to switch between.
pub const DEMO_CHATS: [(&str, &str, &[&str]); 3] = [
    (DEMO_CHAT, "General", &["alice", "bob", "carol"]),
    ("random", "Random", &["alice", "bob", "carol"]),
    ("alice-bob", "Alice & Bob", &["alice", "bob"]),
];

impl Admin {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> rusqlite::Result<Self> {
        Ok(Self { conn: open(path)? })
    }

    /// Creates or updates a user; returns a fresh token for them (printed once, stored hashed).
    pub fn add_user(&self, id: &str, name: &str, email: &str) -> rusqlite::Result<String> {
        let token = new_token();
        self.add_user_with_token(id, name, email, &token)?;
        Ok(token)
    }

    /// Creates or updates a user and registers `token` for them.
    pub fn add_user_with_token(
        &self,
        id: &str,
        name: &str,
        email: &str,
        token: &str,
    ) -> rusqlite::Result<()> {
        let now = timestamp::now();
        self.conn.execute(
            "INSERT INTO users (id, name, email, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, email = excluded.email",
            params![id, name, email, now],
        )?;
        self.conn.execute(
            "INSERT OR IGNORE INTO tokens (hash, user_id, created_at) VALUES (?1, ?2, ?3)",
            params![hash_token(token), id, now],
        )?;
        Ok(())
    }

    /// Creates a chat if needed and adds `members` to it. Unknown users are an error.
    pub fn add_chat(&mut self, id: &str, name: &str, members: &[String]) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO chats (id, name, created_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (id) DO UPDATE SET name = CASE WHEN excluded.name = '' THEN chats.name
             ELSE excluded.name END",
            params![id, name, timestamp::now()],
        )?;
        for m in members {
            tx.execute(
                "INSERT OR IGNORE INTO participants (chat_id, user_id) VALUES (?1, ?2)",
                params![id, m],
            )?;
        }
        tx.commit()
    }

    /// Seeds the demo users and chat (idempotent).
    pub fn seed_demo(&mut self) -> rusqlite::Result<()> {
        for (id, name, token) in DEMO_USERS {
            self.add_user_with_token(id, name, &format!("{id}@example.com"), token)?;
        }
        for (id, name, members) in DEMO_CHATS {
            let members: Vec<String> = members.iter().map(|m| m.to_string()).collect();
            self.add_chat(id, name, &members)?;
        }
        Ok(())
    }

    /// Number of stored messages in `chat` (tests and diagnostics).
    pub fn message_count(&self, chat: &str) -> rusqlite::Result<u64> {
        self.conn.query_row(
            "SELECT COUNT(*) FROM messages WHERE chat_id = ?1",
            [chat],
            |r| r.get(0),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block<T>(r: Reply<T>) -> BackendResult<T> {
        futures_executor_lite(r)
    }

    /// Waits for a reply on this thread (the store answers from its own thread).
    fn futures_executor_lite<T>(r: Reply<T>) -> BackendResult<T> {
        use std::future::Future;
        use std::sync::{Arc, Condvar, Mutex};
        use std::task::{Context, Poll, Wake, Waker};
        struct Flag(Mutex<bool>, Condvar);
        impl Wake for Flag {
            fn wake(self: Arc<Self>) {
                *self.0.lock().unwrap() = true;
                self.1.notify_all();
            }
        }
        let flag = Arc::new(Flag(Mutex::new(false), Condvar::new()));
        let waker = Waker::from(flag.clone());
        let mut r = Box::pin(r);
        loop {
            if let Poll::Ready(v) = r.as_mut().poll(&mut Context::from_waker(&waker)) {
                return v;
            }
            let mut woken = flag.0.lock().unwrap();
            while !*woken {
                woken = flag.1.wait(woken).unwrap();
            }
            *woken = false;
        }
    }

    #[test]
    fn store_round_trip_and_rules() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut admin = Admin::open(&path).unwrap();
        let ann = admin.add_user("ann", "Ann", "").unwrap();
        let bob = admin.add_user("bob", "Bob", "").unwrap();
        admin.add_chat("c1", "One", &["ann".into()]).unwrap();

        let store = Store::start(&path).unwrap();
        assert_eq!(block(store.authenticate(&ann)).unwrap().name, "Ann");
        assert_eq!(
            block(store.authenticate("nope")).unwrap_err().code(),
            crate::protocol::ErrorCode::AuthFailed
        );
        assert_eq!(block(store.chats(&ann)).unwrap(), vec!["c1".to_string()]);
        assert!(block(store.chats(&bob)).unwrap().is_empty());

        let new = |sender: &str| NewMessage {
            chat_id: "c1".into(),
            content: "hello".into(),
            client_message_id: Some("k1".into()),
            sender_id: sender.into(),
            sender_name: "x".into(),
        };
        let m = block(store.create_message(&ann, new("ann"))).unwrap();
        assert_eq!(m.client_message_id.as_deref(), Some("k1"));
        assert_eq!(
            block(store.create_message(&bob, new("bob"))).unwrap_err(),
            BackendError::NotParticipant("Not a participant of this chat".into())
        );
        // A token that is not the sender's (revoked, or someone else's) cannot post.
        assert_eq!(
            block(store.create_message("revoked", new("ann")))
                .unwrap_err()
                .code(),
            crate::protocol::ErrorCode::AuthFailed
        );
        assert!(block(store.mark_read(&ann, "c1", &m.id)).unwrap().is_some());
        assert!(matches!(
            block(store.mark_read(&ann, "c1", "missing")),
            Err(BackendError::InvalidRequest(_))
        ));
        assert_eq!(admin.message_count("c1").unwrap(), 1);
    }

    #[test]
    fn a_resent_client_message_id_returns_the_stored_message() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut admin = Admin::open(&path).unwrap();
        let ann = admin.add_user("ann", "Ann", "").unwrap();
        admin.add_chat("c1", "One", &["ann".into()]).unwrap();
        admin.add_chat("c2", "Two", &["ann".into()]).unwrap();
        let store = Store::start(&path).unwrap();
        let send = |chat: &str, content: &str, id: Option<&str>| {
            block(store.create_message(
                &ann,
                NewMessage {
                    chat_id: chat.into(),
                    content: content.into(),
                    client_message_id: id.map(str::to_string),
                    sender_id: "ann".into(),
                    sender_name: "Ann".into(),
                },
            ))
            .unwrap()
        };
        let first = send("c1", "hello", Some("k1"));
        let again = send("c1", "hello (resent)", Some("k1"));
        assert_eq!(again, first, "a resend gets the stored message, unchanged");
        assert_eq!(admin.message_count("c1").unwrap(), 1);
        // Another id, no id, or the same id in another chat: new messages.
        assert_ne!(send("c1", "two", Some("k2")).id, first.id);
        assert_ne!(send("c1", "three", None).id, first.id);
        assert_ne!(send("c1", "four", None).id, first.id);
        assert_ne!(send("c2", "hello", Some("k1")).id, first.id);
        assert_eq!(admin.message_count("c1").unwrap(), 4);
        assert_eq!(admin.message_count("c2").unwrap(), 1);
    }

    #[test]
    fn history_pages_both_ways_in_store_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut admin = Admin::open(&path).unwrap();
        let ann = admin.add_user("ann", "Ann", "").unwrap();
        let bob = admin.add_user("bob", "Bob", "").unwrap();
        admin.add_chat("c1", "One", &["ann".into()]).unwrap();
        admin
            .add_chat("c2", "Two", &["ann".into(), "bob".into()])
            .unwrap();
        let store = Store::start(&path).unwrap();
        let ids: Vec<String> = (0..7)
            .map(|i| {
                let new = NewMessage {
                    chat_id: "c1".into(),
                    content: format!("m{i}"),
                    client_message_id: None,
                    sender_id: "ann".into(),
                    sender_name: "Ann".into(),
                };
                block(store.create_message(&ann, new)).unwrap().id
            })
            .collect();
        let page = |after: Option<&str>, before: Option<&str>, limit| HistoryPage {
            after: after.map(str::to_string),
            before: before.map(str::to_string),
            limit,
        };
        let contents =
            |h: &History| -> Vec<String> { h.messages.iter().map(|m| m.content.clone()).collect() };
        let latest = block(store.history(&ann, "c1", &page(None, None, 3))).unwrap();
        assert_eq!(
            (contents(&latest), latest.has_more),
            (vec!["m4".into(), "m5".into(), "m6".into()], true)
        );
        assert_eq!(latest.messages[0].sender_name, "Ann");
        let back = block(store.history(&ann, "c1", &page(None, Some(&ids[4]), 3))).unwrap();
        assert_eq!(
            (contents(&back), back.has_more),
            (vec!["m1".into(), "m2".into(), "m3".into()], true)
        );
        let first = block(store.history(&ann, "c1", &page(None, Some(&ids[1]), 3))).unwrap();
        assert_eq!(
            (contents(&first), first.has_more),
            (vec!["m0".into()], false)
        );
        let fwd = block(store.history(&ann, "c1", &page(Some(&ids[2]), None, 3))).unwrap();
        assert_eq!(
            (contents(&fwd), fwd.has_more),
            (vec!["m3".into(), "m4".into(), "m5".into()], true)
        );
        let end = block(store.history(&ann, "c1", &page(Some(&ids[4]), None, 3))).unwrap();
        assert_eq!(
            (contents(&end), end.has_more),
            (vec!["m5".into(), "m6".into()], false)
        );
        let all = block(store.history(&ann, "c1", &page(None, None, 100))).unwrap();
        assert_eq!((all.messages.len(), all.has_more), (7, false));
        // Errors: not a member; an id of no message of this chat.
        assert!(matches!(
            block(store.history(&bob, "c1", &page(None, None, 3))),
            Err(BackendError::NotParticipant(_))
        ));
        assert!(matches!(
            block(store.history(&ann, "c2", &page(Some(&ids[0]), None, 3))),
            Err(BackendError::InvalidRequest(_))
        ));
        let empty = block(store.history(&bob, "c2", &page(None, None, 3))).unwrap();
        assert_eq!(empty, History::default());
    }

    #[test]
    fn tokens_are_stored_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let admin = Admin::open(&dir.path().join("s.db")).unwrap();
        let token = admin.add_user("ann", "Ann", "").unwrap();
        let stored: String = admin
            .conn
            .query_row("SELECT hash FROM tokens", [], |r| r.get(0))
            .unwrap();
        assert_ne!(stored, token);
        assert_eq!(stored, hash_token(&token));
    }
}
