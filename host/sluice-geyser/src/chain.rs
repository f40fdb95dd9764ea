//! The synthetic chain: which updates each slot holds, the window kept for `from_slot` replays,
//! and the live feed of new slots.
//!
//! A slot's updates are a pure function of its number and the [`ChainConfig`], and slot
//! numbers follow the wall clock (`unix time / slot_interval`). Two mock providers started with
//! the same settings therefore serve the same slots with the same updates at the same time, as
//! two real providers of one chain do, and a monitor moved between them can be checked update
//! by update. Only `created_at` differs: it is stamped when a provider produces the slot, as a
//! real provider stamps an update when its validator notifies it, before fanning it out to its
//! subscribers (so a subscriber's delivery latency includes that fan-out). Two providers stamp
//! one slot differently, so duplicates across them must be found by what an update is, not by
//! its bytes.
//!
//! This module does not filter or send anything: that is the service's job.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tokio::sync::broadcast;
use yellowstone_grpc_proto::geyser::subscribe_update::UpdateOneof;
use yellowstone_grpc_proto::geyser::{
    SlotStatus, SubscribeUpdateAccount, SubscribeUpdateAccountInfo, SubscribeUpdateBlockMeta,
    SubscribeUpdateSlot, SubscribeUpdateTransaction, SubscribeUpdateTransactionInfo,
};
use yellowstone_grpc_proto::solana::storage::confirmed_block::{Message, Transaction};

/// What the chain produces.
#[derive(Debug, Clone)]
pub struct ChainConfig {
    /// Time between slots.
    pub slot_interval: Duration,
    /// Distinct accounts that updates touch.
    pub accounts: u32,
    /// Distinct owners of those accounts.
    pub owners: u32,
    /// Account updates per slot.
    pub account_updates_per_slot: u32,
    /// Transactions per slot.
    pub transactions_per_slot: u32,
    /// Slots kept for `from_slot` replays, counting back from the newest.
    pub replay_slots: u64,
}

impl Default for ChainConfig {
    fn default() -> Self {
        Self {
            slot_interval: Duration::from_millis(400),
            accounts: 64,
            owners: 4,
            account_updates_per_slot: 8,
            transactions_per_slot: 4,
            replay_slots: 300,
        }
    }
}

/// One update of a slot, with what filters match it on.
#[derive(Debug, Clone)]
pub struct Update {
    /// The update as sent, without filters and `created_at`.
    pub body: UpdateOneof,
    /// For accounts: the account's key and owner, as filters name them. For transactions: the
    /// accounts it touches.
    pub keys: Vec<String>,
    /// For accounts: the owner (base58).
    pub owner: Option<String>,
}

/// All updates of one slot, in the order they are sent.
#[derive(Debug)]
pub struct Slot {
    /// The slot number.
    pub number: u64,
    /// When this provider produced it: every update of the slot carries it as `created_at`.
    pub created_at: SystemTime,
    /// Its updates.
    pub updates: Vec<Update>,
}

/// A replay: the kept slots from the asked one on, then the live slots right after them.
pub type Replay = (Vec<Arc<Slot>>, broadcast::Receiver<Arc<Slot>>);

/// The running chain: the replay window and the live feed.
#[derive(Debug)]
pub struct Chain {
    config: ChainConfig,
    window: Mutex<VecDeque<Arc<Slot>>>,
    live: broadcast::Sender<Arc<Slot>>,
}

impl Chain {
    /// A chain that has produced nothing yet; [`Chain::run`] produces its slots.
    pub fn new(config: ChainConfig) -> Arc<Self> {
        let (live, _) = broadcast::channel(1024);
        Arc::new(Self {
            config,
            window: Mutex::new(VecDeque::new()),
            live,
        })
    }

    /// The slot the wall clock is in.
    pub fn current_slot(&self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        (now.as_micros() / self.config.slot_interval.as_micros().max(1)) as u64
    }

    /// Produces a slot every `slot_interval` until the process ends. Slots missed by a late
    /// tick are produced in order, so the feed never skips one.
    pub async fn run(self: Arc<Self>) {
        let mut next = self.current_slot();
        let mut ticks = tokio::time::interval(self.config.slot_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let now = self.current_slot();
            while next <= now {
                let slot = Arc::new(self.build(next));
                // Sent under the window's lock, so that a replay sees each slot either in the
                // window or on its receiver, never both.
                let mut window = self.window.lock();
                window.push_back(Arc::clone(&slot));
                while window.len() as u64 > self.config.replay_slots {
                    window.pop_front();
                }
                // No subscriber is fine: the slot is in the window.
                let _ = self.live.send(slot);
                drop(window);
                next += 1;
            }
        }
    }

    /// New slots from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Slot>> {
        self.live.subscribe()
    }

    /// The oldest slot a replay can start from, if any slot has been produced.
    pub fn first_available(&self) -> Option<u64> {
        self.window.lock().front().map(|slot| slot.number)
    }

    /// The newest slot produced.
    pub fn latest(&self) -> Option<u64> {
        self.window.lock().back().map(|slot| slot.number)
    }

    /// The kept slots from `from` on, and a live receiver that continues right after them;
    /// `Err(first available)` when `from` is older than the window.
    pub fn replay_from(&self, from: u64) -> Result<Replay, Option<u64>> {
        // Subscribing under the window's lock: no slot falls between the two.
        let window = self.window.lock();
        let first = window.front().map(|slot| slot.number);
        if first.is_none_or(|first| from < first) {
            return Err(first);
        }
        let receiver = self.live.subscribe();
        let kept = window
            .iter()
            .filter(|slot| slot.number >= from)
            .cloned()
            .collect();
        Ok((kept, receiver))
    }

    /// The updates of slot `number`.
    pub(crate) fn build(&self, number: u64) -> Slot {
        let config = &self.config;
        let mut updates = Vec::new();
        updates.push(Update {
            body: UpdateOneof::Slot(SubscribeUpdateSlot {
                slot: number,
                parent: number.checked_sub(1),
                status: SlotStatus::SlotProcessed as i32,
                dead_error: None,
                bank_id: None,
            }),
            keys: Vec::new(),
            owner: None,
        });
        for i in 0..config.account_updates_per_slot {
            let index = (mix(number, u64::from(i)) % u64::from(config.accounts.max(1))) as u32;
            let owner = index % config.owners.max(1);
            updates.push(Update {
                body: UpdateOneof::Account(SubscribeUpdateAccount {
                    account: Some(SubscribeUpdateAccountInfo {
                        pubkey: account_key(index).to_vec(),
                        lamports: mix(number, u64::from(i) + 1_000) % 1_000_000_000,
                        owner: owner_key(owner).to_vec(),
                        executable: false,
                        rent_epoch: 0,
                        data: mix(number, u64::from(i) + 2_000).to_le_bytes().to_vec(),
                        write_version: number * 10_000 + u64::from(i),
                        txn_signature: None,
                    }),
                    slot: number,
                    is_startup: false,
                    bank_id: None,
                }),
                keys: vec![account_name(index)],
                owner: Some(bs58::encode(owner_key(owner)).into_string()),
            });
        }
        for i in 0..config.transactions_per_slot {
            let touched: Vec<u32> = (0..2)
                .map(|k| {
                    (mix(number, u64::from(i) * 2 + k + 5_000) % u64::from(config.accounts.max(1)))
                        as u32
                })
                .collect();
            let signature = signature(number, i);
            updates.push(Update {
                body: UpdateOneof::Transaction(SubscribeUpdateTransaction {
                    transaction: Some(SubscribeUpdateTransactionInfo {
                        signature: signature.clone(),
                        is_vote: false,
                        transaction: Some(Transaction {
                            signatures: vec![signature],
                            message: Some(Message {
                                account_keys: touched
                                    .iter()
                                    .map(|&a| account_key(a).to_vec())
                                    .collect(),
                                ..Default::default()
                            }),
                        }),
                        meta: None,
                        index: u64::from(i),
                    }),
                    slot: number,
                    bank_id: 0,
                }),
                keys: touched.iter().map(|&a| account_name(a)).collect(),
                owner: None,
            });
        }
        updates.push(Update {
            body: UpdateOneof::BlockMeta(SubscribeUpdateBlockMeta {
                slot: number,
                blockhash: bs58::encode(mix(number, 9_000).to_le_bytes()).into_string(),
                parent_slot: number.saturating_sub(1),
                executed_transaction_count: u64::from(config.transactions_per_slot),
                ..Default::default()
            }),
            keys: Vec::new(),
            owner: None,
        });
        Slot {
            number,
            created_at: SystemTime::now(),
            updates,
        }
    }
}

/// A 64-bit mix of two numbers (SplitMix64's finaliser): the chain's only source of variety.
fn mix(a: u64, b: u64) -> u64 {
    let mut z = a
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(b)
        .wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// 32 bytes from `seed`, as a Solana key.
fn key(seed: u64) -> [u8; 32] {
    let mut key = [0; 32];
    for (i, chunk) in key.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&mix(seed, i as u64).to_le_bytes());
    }
    key
}

/// The key of account `index`.
pub fn account_key(index: u32) -> [u8; 32] {
    key(u64::from(index))
}

/// The key of owner `index`.
pub fn owner_key(index: u32) -> [u8; 32] {
    key(1 << 40 | u64::from(index))
}

/// The base58 name of account `index`, as an accounts filter names it.
pub fn account_name(index: u32) -> String {
    bs58::encode(account_key(index)).into_string()
}

/// The signature of transaction `index` of slot `number`.
fn signature(number: u64, index: u32) -> Vec<u8> {
    let mut signature = key(number << 16 | u64::from(index)).to_vec();
    signature.extend_from_slice(&key(!(number << 16 | u64::from(index))));
    signature
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_the_same_wherever_it_is_built() {
        let one = Chain::new(ChainConfig::default());
        let two = Chain::new(ChainConfig::default());
        let (a, b) = (one.build(1234), two.build(1234));
        assert_eq!(a.updates.len(), 1 + 8 + 4 + 1);
        for (a, b) in a.updates.iter().zip(&b.updates) {
            assert_eq!(a.body, b.body);
            assert_eq!(a.keys, b.keys);
        }
        assert_ne!(one.build(1235).updates[1].body, a.updates[1].body);
    }

    #[tokio::test]
    async fn replays_start_inside_the_window_and_continue_live() {
        let chain = Chain::new(ChainConfig {
            slot_interval: Duration::from_millis(5),
            replay_slots: 10,
            ..Default::default()
        });
        tokio::spawn(Arc::clone(&chain).run());
        let mut live = chain.subscribe();
        for _ in 0..15 {
            live.recv().await.expect("a slot");
        }
        let first = chain.first_available().expect("slots kept");
        let latest = chain.latest().expect("slots kept");
        assert!(latest - first < 10, "{first}..{latest}");
        assert_eq!(chain.replay_from(first - 1).err(), Some(Some(first)));
        let (kept, mut after) = chain.replay_from(first + 2).expect("inside the window");
        assert_eq!(kept[0].number, first + 2);
        let last_kept = kept.last().expect("kept slots").number;
        assert_eq!(after.recv().await.expect("live").number, last_kept + 1);
    }
}
