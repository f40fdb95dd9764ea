//! Splitting one endpoint limit between the live instances: the shares each should have
//! ([`targets`]), and the grants that move towards them without the sum ever going over the
//! limit ([`next_grants`]).
//!
//! Pure arithmetic, so that it can be checked exhaustively: nothing here talks to etcd or the
//! pool.

/// Each instance's fair share of `limit` for its `demands`: a floor of one each (while the
/// limit allows), the rest in proportion to demand (an instance that wants nothing still
/// weighs one), rounded by largest remainder. The shares add up to `limit` exactly (0 for no
/// instance).
pub fn targets(limit: u32, demands: &[u32]) -> Vec<u32> {
    let n = demands.len() as u64;
    if n == 0 {
        return Vec::new();
    }
    let limit = u64::from(limit);
    let floor = (limit / n).min(1);
    let rest = limit - floor * n;
    let weights: Vec<u64> = demands.iter().map(|&d| u64::from(d).max(1)).collect();
    let total: u64 = weights.iter().sum();
    let mut shares: Vec<u64> = weights.iter().map(|w| floor + rest * w / total).collect();
    let mut left = limit - shares.iter().sum::<u64>();
    // Largest remainders first; ties to the earlier instance (the caller's order is stable).
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(rest * weights[i] % total));
    for i in order.into_iter().cycle() {
        if left == 0 {
            break;
        }
        shares[i] += 1;
        left -= 1;
    }
    shares.into_iter().map(|s| s as u32).collect()
}

/// The grants to publish next, given the `current` grants, the `targets` and what each
/// instance may be `holding` now (the larger of the grant it last applied and what it uses:
/// connections still draining, streams not yet ended). Grants above their target shrink at
/// once; grants below grow only into room no one holds, so that the grants and holdings
/// together never exceed `limit`: an instance grows only after the others have shrunk.
pub fn next_grants(limit: u32, current: &[u32], targets: &[u32], holding: &[u32]) -> Vec<u32> {
    let mut next: Vec<u32> = current
        .iter()
        .zip(targets)
        .map(|(&c, &t)| c.min(t))
        .collect();
    let claimed = |next: &[u32]| -> u64 {
        next.iter()
            .zip(holding)
            .map(|(&g, &h)| u64::from(g.max(h)))
            .sum()
    };
    for i in 0..next.len() {
        if next[i] >= targets[i] {
            continue;
        }
        let room = u64::from(limit).saturating_sub(claimed(&next));
        // Growing i's grant up to what it already holds costs no room.
        let free_up_to = holding[i].max(next[i]);
        let wanted = targets[i] - next[i];
        let costless = free_up_to.saturating_sub(next[i]).min(wanted);
        let paid = (wanted - costless).min(room.min(u64::from(u32::MAX)) as u32);
        next[i] += costless + paid;
    }
    next
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn shares_follow_demand_above_a_floor() {
        assert_eq!(targets(100, &[10, 30]), [26, 74]);
        assert_eq!(targets(10, &[0, 0, 0]), [4, 3, 3]);
        assert_eq!(targets(2, &[5, 5, 5]), [1, 1, 0]);
        assert!(targets(7, &[]).is_empty());
    }

    #[test]
    fn a_newcomer_grows_only_after_the_others_shrank() {
        // Two instances hold 50 each of 100; a third joins.
        let target = targets(100, &[1, 1, 1]);
        let first = next_grants(100, &[50, 50, 0], &target, &[50, 50, 0]);
        assert_eq!(
            first[..2],
            [target[0], target[1]],
            "the others shrink at once"
        );
        assert_eq!(first[2], 0, "nothing is free while they still hold it");
        // Once they report holding only their new grants, the newcomer grows.
        let second = next_grants(100, &first, &target, &[first[0], first[1], 0]);
        assert_eq!(second, target);
    }

    proptest! {
        #[test]
        fn grants_and_holdings_never_exceed_the_limit(
            limit in 0u32..200,
            state in prop::collection::vec((0u32..120, 0u32..120, 0u32..400), 0..6),
        ) {
            let demands: Vec<u32> = state.iter().map(|s| s.2).collect();
            let target = targets(limit, &demands);
            prop_assert_eq!(target.iter().map(|&t| u64::from(t)).sum::<u64>(), if state.is_empty() { 0 } else { u64::from(limit) });
            // Start from any grants and holdings that fit the limit.
            let mut current: Vec<u32> = state.iter().map(|s| s.0).collect();
            let mut holding: Vec<u32> = state.iter().map(|s| s.1).collect();
            let fits = |g: &[u32], h: &[u32]| g.iter().zip(h).map(|(&g, &h)| u64::from(g.max(h))).sum::<u64>() <= u64::from(limit);
            prop_assume!(fits(&current, &holding));
            for _ in 0..4 {
                let next = next_grants(limit, &current, &target, &holding);
                prop_assert!(fits(&next, &holding), "{next:?} {holding:?}");
                // Each instance then applies its grant and lets go of what is above it.
                holding = next.iter().zip(&holding).map(|(&g, &h)| h.min(g)).collect();
                current = next;
            }
            prop_assert_eq!(current, target, "converges once holdings follow the grants");
        }
    }
}
