//! A subscription's filters, checked as a provider checks them and matched against updates.
//!
//! Served: `slots`, `accounts` (by account and owner), `transactions` (by the accounts they
//! touch) and `blocks_meta`. The other filter kinds and the options the mock cannot honour
//! are refused with `INVALID_ARGUMENT`, never silently ignored, so that a test asking for
//! them learns it at once.

use std::collections::HashSet;

use tonic::Status;
use yellowstone_grpc_proto::geyser::SubscribeRequest;
use yellowstone_grpc_proto::geyser::subscribe_update::UpdateOneof;

use crate::chain::Update;

/// One named accounts filter.
#[derive(Debug)]
struct Accounts {
    name: String,
    accounts: HashSet<String>,
    owners: HashSet<String>,
}

/// One named transactions filter.
#[derive(Debug)]
struct Transactions {
    name: String,
    include: HashSet<String>,
    exclude: HashSet<String>,
    required: HashSet<String>,
    /// `vote = true` or `failed = true`: only votes or failed transactions, which the mock
    /// never produces.
    matches_nothing: bool,
}

/// The filters of one subscription.
#[derive(Debug, Default)]
pub struct Filter {
    slots: Vec<String>,
    accounts: Vec<Accounts>,
    transactions: Vec<Transactions>,
    blocks_meta: Vec<String>,
}

impl Filter {
    /// Checks `request`'s filters against the mock's abilities and `max_filters` (named
    /// filters in all).
    pub fn new(request: &SubscribeRequest, max_filters: Option<usize>) -> Result<Self, Status> {
        let unsupported = [
            ("transactions_status", request.transactions_status.len()),
            ("blocks", request.blocks.len()),
            ("entry", request.entry.len()),
            ("block_footer", request.block_footer.len()),
            ("accounts_data_slice", request.accounts_data_slice.len()),
        ];
        if let Some((kind, _)) = unsupported.iter().find(|(_, n)| *n > 0) {
            return Err(Status::invalid_argument(format!(
                "this mock Geyser does not serve {kind} filters"
            )));
        }
        let count = request.slots.len()
            + request.accounts.len()
            + request.transactions.len()
            + request.blocks_meta.len();
        if let Some(max) = max_filters
            && count > max
        {
            return Err(Status::invalid_argument(format!(
                "max amount of filters reached, only {max} allowed ({count} asked)"
            )));
        }
        let mut filter = Filter {
            slots: request.slots.keys().cloned().collect(),
            blocks_meta: request.blocks_meta.keys().cloned().collect(),
            ..Default::default()
        };
        for (name, accounts) in &request.accounts {
            if !accounts.filters.is_empty() || accounts.cuckoo_accounts_filter.is_some() {
                return Err(Status::invalid_argument(format!(
                    "accounts filter {name}: this mock Geyser does not serve data filters"
                )));
            }
            filter.accounts.push(Accounts {
                name: name.clone(),
                accounts: keys(name, &accounts.account)?,
                owners: keys(name, &accounts.owner)?,
            });
        }
        for (name, transactions) in &request.transactions {
            filter.transactions.push(Transactions {
                name: name.clone(),
                include: keys(name, &transactions.account_include)?,
                exclude: keys(name, &transactions.account_exclude)?,
                required: keys(name, &transactions.account_required)?,
                matches_nothing: transactions.vote == Some(true)
                    || transactions.failed == Some(true),
            });
        }
        Ok(filter)
    }

    /// The names of the filters `update` matches, sorted; empty when none does.
    pub fn matches(&self, update: &Update) -> Vec<String> {
        let mut names: Vec<String> = match &update.body {
            UpdateOneof::Slot(_) => self.slots.clone(),
            UpdateOneof::BlockMeta(_) => self.blocks_meta.clone(),
            UpdateOneof::Account(_) => self
                .accounts
                .iter()
                .filter(|f| {
                    let by_account = update.keys.iter().any(|k| f.accounts.contains(k));
                    let by_owner = update.owner.as_ref().is_some_and(|o| f.owners.contains(o));
                    (f.accounts.is_empty() && f.owners.is_empty()) || by_account || by_owner
                })
                .map(|f| f.name.clone())
                .collect(),
            UpdateOneof::Transaction(_) => self
                .transactions
                .iter()
                .filter(|f| {
                    let touches =
                        |set: &HashSet<String>| update.keys.iter().any(|k| set.contains(k));
                    !f.matches_nothing
                        && (f.include.is_empty() || touches(&f.include))
                        && !touches(&f.exclude)
                        && f.required.iter().all(|k| update.keys.contains(k))
                })
                .map(|f| f.name.clone())
                .collect(),
            _ => Vec::new(),
        };
        names.sort_unstable();
        names
    }
}

/// Base58 account keys of filter `name`, each checked to be a 32-byte key.
fn keys(name: &str, list: &[String]) -> Result<HashSet<String>, Status> {
    list.iter()
        .map(|key| match bs58::decode(key).into_vec() {
            Ok(bytes) if bytes.len() == 32 => Ok(key.clone()),
            _ => Err(Status::invalid_argument(format!(
                "filter {name}: invalid account key {key:?}"
            ))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use yellowstone_grpc_proto::geyser::{
        SubscribeRequestFilterAccounts, SubscribeRequestFilterBlocks, SubscribeRequestFilterSlots,
    };

    use super::*;
    use crate::chain::{Chain, ChainConfig, account_name};

    #[test]
    fn accounts_filters_match_by_key_and_slots_filters_match_slots() {
        let mut request = SubscribeRequest::default();
        request
            .slots
            .insert("s".into(), SubscribeRequestFilterSlots::default());
        request.accounts.insert(
            "a".into(),
            SubscribeRequestFilterAccounts {
                account: (0..64).map(account_name).collect(),
                ..Default::default()
            },
        );
        let filter = Filter::new(&request, None).expect("valid");
        let slot = Chain::new(ChainConfig::default()).build(7);
        let names: Vec<Vec<String>> = slot.updates.iter().map(|u| filter.matches(u)).collect();
        assert_eq!(names[0], ["s"]);
        assert!(names[1..9].iter().all(|n| n == &["a"]), "{names:?}");
        assert!(names[9..].iter().all(Vec::is_empty), "{names:?}");
    }

    #[test]
    fn unsupported_filters_bad_keys_and_too_many_filters_are_refused() {
        let mut request = SubscribeRequest::default();
        request
            .blocks
            .insert("b".into(), SubscribeRequestFilterBlocks::default());
        let error = Filter::new(&request, None).expect_err("blocks refused");
        assert!(error.message().contains("blocks"), "{error}");

        let mut request = SubscribeRequest::default();
        request.accounts.insert(
            "a".into(),
            SubscribeRequestFilterAccounts {
                account: vec!["not-base58-0OIl".into()],
                ..Default::default()
            },
        );
        assert!(Filter::new(&request, None).is_err());

        let mut request = SubscribeRequest::default();
        for i in 0..3 {
            request
                .slots
                .insert(format!("s{i}"), SubscribeRequestFilterSlots::default());
        }
        let error = Filter::new(&request, Some(2)).expect_err("over the limit");
        assert!(error.message().contains("only 2 allowed"), "{error}");
        assert!(Filter::new(&request, Some(3)).is_ok());
    }
}
