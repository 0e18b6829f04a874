//! The datapath's token bucket (`TokenBucket`, which rate-limits the "fragmentation needed"
//! answers), on the host: burst, refill in whole tokens, no hoarding past the burst.

use lb_common::maps::TokenBucket;

const SEC: u64 = 1_000_000_000;

#[test]
fn a_fresh_bucket_gives_the_burst_then_refuses() {
    let mut b = TokenBucket::default();
    let t = 5 * SEC;
    let taken = (0..10).filter(|_| b.take(t, 1000, 4)).count();
    assert_eq!(taken, 4);
}

#[test]
fn tokens_come_back_at_the_rate_in_whole_tokens() {
    let mut b = TokenBucket::default();
    let t = SEC;
    while b.take(t, 1000, 2) {}
    // 1000 per second: one token per millisecond, none before.
    assert!(!b.take(t + 999_999, 1000, 2));
    assert!(b.take(t + 1_000_000, 1000, 2));
    assert!(!b.take(t + 1_000_000, 1000, 2));
    // A slow rate adds up across calls instead of rounding away.
    let mut slow = TokenBucket::default();
    while slow.take(t, 1, 1) {}
    for step in 1..10 {
        assert!(!slow.take(t + step * SEC / 10, 1, 1), "step {step}");
    }
    assert!(slow.take(t + SEC, 1, 1));
}

#[test]
fn a_long_quiet_time_refills_to_the_burst_only() {
    let mut b = TokenBucket::default();
    while b.take(SEC, 1000, 3) {}
    let later = 3600 * SEC;
    let taken = (0..10).filter(|_| b.take(later, 1000, 3)).count();
    assert_eq!(taken, 3);
}
