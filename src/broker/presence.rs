//! Presence across nodes, exact: `user:online` once cluster-wide when a user's first
//! connection anywhere opens, once when the last closes, and once when a node dies holding a
//! user's last connections.
//!
//! Kept in Redis by Lua scripts (atomic, so two nodes never both see a "first" or a "last"):
//! - `ss:pres:{user}`, a HASH: one field per node (hex id) with that node's count of the user's
//!   connections, plus `_chats`, the chats to announce in (the latest connection's, as JSON);
//! - `ss:nodes`, the SET of registered nodes, and `ss:nodeusers:{node}`, the users a node
//!   counts (what to undo when it dies);
//! - `ss:lease:{node}`, set with a time to live of `PRESENCE_LEASE` and renewed every third
//!   of it. A node whose lease lapsed is dead: the first survivor to notice runs the reap
//!   script, which removes its counts and returns the users who had no other connection,
//!   exactly once (a second reaper finds nothing).
//!
//! A user counts as online while any registered node counts a connection, whether its lease
//! is fresh or not: a user who reconnects elsewhere before the dead node is reaped is never
//! announced offline and online again (no flapping).
//!
//! After every reconnect a node sets its counts in Redis to what it holds ([`restore`]):
//! - users whose connections opened or closed while Redis could not be told ([`Local`] keeps
//!   them) are announced where that made a transition: a user whose last connection closed
//!   during an outage goes offline once, one who came during it goes online once, and no
//!   count of a gone connection stays behind (no ghost users);
//! - a node the others reaped while it was cut off (same Redis data, `ss:epoch` unchanged,
//!   but the node no longer registered) announces its users online again, once, since the
//!   reaper announced them offline;
//! - after Redis lost its data (a new `ss:epoch`), counts are registered again silently: the
//!   clients' presence was right, only Redis forgot it.
//!
//! Guarantees: transitions are decided in Redis, one script at a time. Not guaranteed: while
//! a node is cut off, its users' transitions reach the other nodes only once it is back; a
//! user who is online on a reaped node is seen offline by the others until then.

use std::collections::HashMap;
use std::sync::Arc;

use super::NodeId;

/// Sum of a user's counts over every node still registered.
const LIVE_TOTAL: &str = r"
local function live_total(key)
  local t = redis.call('HGETALL', key)
  local total = 0
  for i = 1, #t, 2 do
    if string.sub(t[i], 1, 1) ~= '_' then
      total = total + tonumber(t[i + 1])
    end
  end
  return total
end
";

/// KEYS[1] = `ss:pres:{user}`; ARGV = node, user, chats (JSON). Returns 1 when this is the
/// user's first connection anywhere.
const OPEN: &str = r"
local before = live_total(KEYS[1])
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('HSET', KEYS[1], '_chats', ARGV[3])
redis.call('SADD', 'ss:nodeusers:' .. ARGV[1], ARGV[2])
if before == 0 then return 1 end
return 0
";

/// KEYS[1] = `ss:pres:{user}`; ARGV = node, user. Returns 1 when this was the user's last
/// connection anywhere.
const CLOSE: &str = r"
local before = live_total(KEYS[1])
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if n <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('SREM', 'ss:nodeusers:' .. ARGV[1], ARGV[2])
end
local after = live_total(KEYS[1])
if after == 0 then redis.call('DEL', KEYS[1]) end
if before > 0 and after == 0 then return 1 end
return 0
";

/// ARGV = dead node. Returns [user, chats, user, chats, ...] for users left with no
/// connection; nothing if the node is alive or already reaped.
const REAP: &str = r"
if redis.call('EXISTS', 'ss:lease:' .. ARGV[1]) == 1 then return {} end
local users = redis.call('SMEMBERS', 'ss:nodeusers:' .. ARGV[1])
local gone = {}
for _, u in ipairs(users) do
  local key = 'ss:pres:' .. u
  local had = tonumber(redis.call('HGET', key, ARGV[1]) or '0')
  redis.call('HDEL', key, ARGV[1])
  if had > 0 and live_total(key) == 0 then
    table.insert(gone, u)
    table.insert(gone, redis.call('HGET', key, '_chats') or '[]')
    redis.call('DEL', key)
  end
end
redis.call('DEL', 'ss:nodeusers:' .. ARGV[1])
redis.call('SREM', 'ss:nodes', ARGV[1])
return gone
";

/// KEYS[1] = `ss:pres:{user}`; ARGV = node, user, count, chats. Sets this node's count to
/// what it holds (0 removes it). Returns 1 when that made the user online anywhere, -1 when
/// offline everywhere, 0 otherwise.
const RESTORE: &str = r"
local before = live_total(KEYS[1])
if tonumber(ARGV[3]) > 0 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  redis.call('HSETNX', KEYS[1], '_chats', ARGV[4])
  redis.call('SADD', 'ss:nodeusers:' .. ARGV[1], ARGV[2])
else
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('SREM', 'ss:nodeusers:' .. ARGV[1], ARGV[2])
end
local after = live_total(KEYS[1])
if after == 0 then redis.call('DEL', KEYS[1]) end
if before == 0 and after > 0 then return 1 end
if before > 0 and after == 0 then return -1 end
return 0
";

/// The scripts, loaded once per connection by redis-rs (EVALSHA, falling back to EVAL).
pub struct Scripts {
    open: redis::Script,
    close: redis::Script,
    reap: redis::Script,
    restore: redis::Script,
}

impl Default for Scripts {
    fn default() -> Self {
        let with_total = |body: &str| redis::Script::new(&format!("{LIVE_TOTAL}{body}"));
        Self {
            open: with_total(OPEN),
            close: with_total(CLOSE),
            reap: with_total(REAP),
            restore: with_total(RESTORE),
        }
    }
}

fn user_key(user: &str) -> String {
    format!("ss:pres:{user}")
}

/// What this node counts per user (to register again after a reconnect), and whose changes
/// Redis has not been told.
#[derive(Debug, Default)]
pub struct Local {
    users: HashMap<Arc<str>, (u32, Vec<Arc<str>>)>,
    /// Users whose open or close could not be sent, with the chats to announce in.
    unsent: HashMap<Arc<str>, Vec<Arc<str>>>,
}

impl Local {
    /// A change of `user`'s (in `chats`) could not be sent: [`restore`] announces what it
    /// changed.
    pub fn unsent(&mut self, user: &Arc<str>, chats: &[Arc<str>]) {
        self.unsent.insert(user.clone(), chats.to_vec());
    }

    /// Counts an open (`true`) or close.
    pub fn count(&mut self, user: &Arc<str>, chats: &[Arc<str>], opened: bool) {
        if opened {
            let e = self.users.entry(user.clone()).or_default();
            e.0 += 1;
            e.1 = chats.to_vec();
        } else if let Some(e) = self.users.get_mut(user) {
            e.0 = e.0.saturating_sub(1);
            if e.0 == 0 {
                self.users.remove(user);
            }
        }
    }
}

fn chats_json(chats: &[Arc<str>]) -> String {
    let list: Vec<&str> = chats.iter().map(|c| &**c).collect();
    serde_json::to_string(&list).unwrap_or_else(|_| "[]".into())
}

/// Records an open or close of `user`'s connection on `node`; `true` when it is a transition
/// to announce (first open anywhere, last close anywhere).
pub fn change(
    con: &mut redis::Connection,
    scripts: &Scripts,
    node: NodeId,
    user: &str,
    chats: &[Arc<str>],
    opened: bool,
) -> redis::RedisResult<bool> {
    let node = node.to_string();
    let announced: i64 = if opened {
        scripts
            .open
            .key(user_key(user))
            .arg(&node)
            .arg(user)
            .arg(chats_json(chats))
            .invoke(con)?
    } else {
        scripts
            .close
            .key(user_key(user))
            .arg(&node)
            .arg(user)
            .invoke(con)?
    };
    Ok(announced == 1)
}

/// Renews `node`'s lease (and registers it).
pub fn renew(
    con: &mut redis::Connection,
    node: NodeId,
    lease: std::time::Duration,
) -> redis::RedisResult<()> {
    let node = node.to_string();
    redis::pipe()
        .cmd("SET")
        .arg(format!("ss:lease:{node}"))
        .arg(1)
        .arg("PX")
        .arg(lease.as_millis() as u64)
        .ignore()
        .cmd("SADD")
        .arg("ss:nodes")
        .arg(&node)
        .ignore()
        .query(con)
}

/// Gives up `node`'s lease at once (a clean stop): the others reap it at their next look.
pub fn resign(con: &mut redis::Connection, node: NodeId) -> redis::RedisResult<()> {
    redis::cmd("DEL").arg(format!("ss:lease:{node}")).query(con)
}

/// Users a reap left with no connection anywhere, each with the chats to announce in.
pub type Gone = Vec<(Arc<str>, Vec<Arc<str>>)>;

/// Reaps every registered node but `me` whose lease lapsed; the users to announce offline.
pub fn reap(
    con: &mut redis::Connection,
    scripts: &Scripts,
    me: NodeId,
) -> redis::RedisResult<Gone> {
    let me = me.to_string();
    let nodes: Vec<String> = redis::cmd("SMEMBERS").arg("ss:nodes").query(con)?;
    let mut gone = Vec::new();
    for node in nodes.iter().filter(|n| **n != me) {
        let lapsed: Vec<String> = scripts.reap.arg(node).invoke(con)?;
        for pair in lapsed.chunks(2) {
            if let [user, chats] = pair {
                let chats: Vec<String> = serde_json::from_str(chats).unwrap_or_default();
                gone.push((
                    Arc::from(user.as_str()),
                    chats.into_iter().map(Arc::from).collect(),
                ));
            }
        }
    }
    Ok(gone)
}

/// A presence transition to announce: user, chats, online.
pub type Transition = (Arc<str>, Vec<Arc<str>>, bool);

/// The id of the data Redis holds: set once by the first node to look, new after Redis lost
/// its data.
pub fn epoch(con: &mut redis::Connection) -> redis::RedisResult<String> {
    let fresh = format!("{:016x}", NodeId::random().0);
    let (epoch,): (String,) = redis::pipe()
        .cmd("SET")
        .arg("ss:epoch")
        .arg(fresh)
        .arg("NX")
        .ignore()
        .cmd("GET")
        .arg("ss:epoch")
        .query(con)?;
    Ok(epoch)
}

/// Whether `node` is registered (not reaped, not resigned).
pub fn registered(con: &mut redis::Connection, node: NodeId) -> redis::RedisResult<bool> {
    redis::cmd("SISMEMBER")
        .arg("ss:nodes")
        .arg(node.to_string())
        .query(con)
}

/// Sets this node's counts in Redis to what it holds, and returns the transitions to
/// announce: those of users whose changes were not sent, or, when `reaped` (the others
/// announced this node's users offline), of every user. Forgets the unsent changes once done.
pub fn restore(
    con: &mut redis::Connection,
    scripts: &Scripts,
    node: NodeId,
    local: &mut Local,
    reaped: bool,
) -> redis::RedisResult<Vec<Transition>> {
    let node = node.to_string();
    let mut users: Vec<&Arc<str>> = local.users.keys().collect();
    users.extend(
        local
            .unsent
            .keys()
            .filter(|u| !local.users.contains_key(*u)),
    );
    let mut announce = Vec::new();
    for user in users {
        let (count, chats) = match local.users.get(user) {
            Some((n, chats)) => (*n, chats),
            None => (0, &local.unsent[user]),
        };
        let moved: i64 = scripts
            .restore
            .key(user_key(user))
            .arg(&node)
            .arg(&**user)
            .arg(count)
            .arg(chats_json(chats))
            .invoke(con)?;
        if moved != 0 && (reaped || local.unsent.contains_key(user)) {
            announce.push((user.clone(), chats.clone(), moved == 1));
        }
    }
    local.unsent.clear();
    Ok(announce)
}
