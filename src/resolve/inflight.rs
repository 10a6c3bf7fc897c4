//! In-flight query merging: identical questions waiting on the same upstream work share one
//! resolution instead of each sending its own (Unbound and PowerDNS Recursor do the same). A
//! popular name that just left the cache would otherwise send a burst of duplicates upstream,
//! each one more chance for a spoofed reply to land.

use std::{
    collections::HashMap,
    future::Future,
    hash::{BuildHasher, Hash},
    sync::Mutex,
};

use tokio::sync::watch;

/// Shards of the map: a lock is taken only on a cache miss, and briefly, but the UDP workers
/// miss concurrently; keys spread over the shards keep them from queueing on one.
const SHARDS: usize = 64;

/// One shard: each question in flight, with the channel its leader will announce the result on.
type Shard<K, V> = Mutex<HashMap<K, watch::Receiver<Option<V>>>>;

/// The resolutions in flight, by question.
pub struct InFlight<K, V> {
    shards: Box<[Shard<K, V>]>,
    hasher: foldhash::fast::RandomState,
}

impl<K, V> std::fmt::Debug for InFlight<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight").finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Default for InFlight<K, V> {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }
}

/// Removes the leader's entry however its future ends (answered, or dropped mid-way: its
/// followers then see the channel close and resolve for themselves).
struct Leader<'a, K: Hash + Eq, V> {
    shard: &'a Mutex<HashMap<K, watch::Receiver<Option<V>>>>,
    key: K,
}

impl<K: Hash + Eq, V> Drop for Leader<'_, K, V> {
    fn drop(&mut self) {
        if let Ok(mut map) = self.shard.lock() {
            map.remove(&self.key);
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> InFlight<K, V> {
    /// Runs `resolve` for `key`, or, when the same key is already being resolved, waits for that
    /// result instead. Returns the result and whether it was another query's.
    pub async fn run<F: Future<Output = V>>(&self, key: K, resolve: F) -> (V, bool) {
        let shard = &self.shards[(self.hasher.hash_one(&key) as usize) % SHARDS];
        let waiting = {
            // A poisoned shard (a panic while it was held) is still a valid map.
            let mut map = shard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match map.get(&key) {
                Some(receiver) => Err(receiver.clone()),
                None => {
                    let (sender, receiver) = watch::channel(None);
                    map.insert(key.clone(), receiver);
                    Ok(sender)
                }
            }
        };
        match waiting {
            Ok(sender) => {
                let _leader = Leader { shard, key };
                let value = resolve.await;
                // Followers hold receivers; none may be left, which is fine.
                let _ = sender.send(Some(value.clone()));
                (value, false)
            }
            Err(mut receiver) => {
                let shared = receiver
                    .wait_for(Option::is_some)
                    .await
                    .ok()
                    .and_then(|value| value.clone());
                match shared {
                    Some(value) => (value, true),
                    // The leader went without an answer (its task was dropped).
                    None => (resolve.await, false),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
        time::Duration,
    };

    use super::InFlight;

    #[tokio::test]
    async fn identical_keys_share_one_resolution_and_others_do_not() {
        let inflight = Arc::new(InFlight::<&'static str, u32>::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for index in 0..20 {
            let inflight = Arc::clone(&inflight);
            let runs = Arc::clone(&runs);
            let key = if index % 2 == 0 { "a" } else { "b" };
            tasks.push(tokio::spawn(async move {
                inflight
                    .run(key, async {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        if key == "a" { 1 } else { 2 }
                    })
                    .await
            }));
        }
        let mut shared = 0;
        for (index, task) in tasks.into_iter().enumerate() {
            let (value, was_shared) = task.await.unwrap();
            assert_eq!(value, if index % 2 == 0 { 1 } else { 2 });
            shared += usize::from(was_shared);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 2, "one resolution per key");
        assert_eq!(shared, 18);
        // Done: the next one resolves again.
        let (value, was_shared) = inflight.run("a", async { 3 }).await;
        assert_eq!((value, was_shared), (3, false));
    }

    #[tokio::test]
    async fn a_dropped_leader_lets_its_followers_resolve() {
        let inflight = Arc::new(InFlight::<u8, u8>::default());
        let leader = {
            let inflight = Arc::clone(&inflight);
            tokio::spawn(async move {
                inflight
                    .run(1, async {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        0
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let follower = {
            let inflight = Arc::clone(&inflight);
            tokio::spawn(async move { inflight.run(1, async { 7 }).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        leader.abort();
        assert_eq!(follower.await.unwrap(), (7, false));
        assert_eq!(inflight.run(1, async { 8 }).await, (8, false));
    }
}
