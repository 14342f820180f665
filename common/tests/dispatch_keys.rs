//! The per-key dispatch tables (`concurrency_per_key`, `rate_per_key`) on SQLite and
//! PostgreSQL: the cap holds under concurrent claimers from several pools, a stale holder's
//! release frees nothing, expired leases are taken over or swept, rate rows go once their
//! time has passed, and no row is left once everything is released.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use surge_common::storage::dispatch_keys::{key_hash, KeyRows, KeySweep};
use surge_common::storage::flow::RateReservation;
use surge_common::storage::retention::RetentionPolicy;
use surge_common::storage::Storage;
use surge_common::testing::{self, POSTGRES_URL_VAR};

const LONG: Duration = Duration::from_secs(600);

async fn postgres() -> Option<String> {
    let base = testing::service(POSTGRES_URL_VAR, "PostgreSQL")?;
    Some(testing::fresh_postgres_database(&base).await.unwrap())
}

/// Polls `check` every 5 ms for up to 10 s; fails naming `what`.
async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..2000 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("gave up waiting for {what}");
}

/// 3 pools × 8 claimers of one key with `concurrency_per_key = 3`, 40 turns each: never
/// more than 3 holders at once (counted between a claim and its release), the cap reached,
/// and no row left afterwards. Another key is never held up by the full one.
async fn the_cap_holds_under_concurrent_claimers(url: &str) {
    const PER_KEY: u32 = 3;
    let hash = key_hash("tenant-a");
    let holding = Arc::new(AtomicU32::new(0));
    let peak = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for pool in 0..3 {
        let storage = Storage::connect(url).await.unwrap();
        for claimer in 0..8 {
            let (storage, hash) = (storage.clone(), hash.clone());
            let (holding, peak) = (holding.clone(), peak.clone());
            tasks.push(tokio::spawn(async move {
                let mut turns = 0;
                let mut tries = 0;
                while turns < 40 {
                    tries += 1;
                    assert!(tries < 100_000, "claimer starved");
                    let holder = format!("p{pool}-c{claimer}-{tries}");
                    let Some(slot) = storage
                        .acquire_key_slot("kind", &hash, &holder, PER_KEY, LONG)
                        .await
                        .unwrap()
                    else {
                        tokio::task::yield_now().await;
                        continue;
                    };
                    assert!(slot < PER_KEY, "slot {slot}");
                    let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    holding.fetch_sub(1, Ordering::SeqCst);
                    assert!(storage
                        .release_key_slot("kind", &hash, slot, &holder)
                        .await
                        .unwrap());
                    turns += 1;
                }
            }));
        }
    }
    // Meanwhile another key gets its slot at once, however busy the first one is.
    let storage = Storage::connect(url).await.unwrap();
    let other = key_hash("tenant-b");
    for i in 0..20 {
        let holder = format!("b-{i}");
        let slot = storage
            .acquire_key_slot("kind", &other, &holder, 1, LONG)
            .await
            .unwrap();
        assert_eq!(slot, Some(0), "another key's slot");
        assert!(storage
            .release_key_slot("kind", &other, 0, &holder)
            .await
            .unwrap());
    }
    for task in futures::future::join_all(tasks).await {
        task.unwrap();
    }
    let peak = peak.load(Ordering::SeqCst);
    assert!(peak <= PER_KEY, "{peak} holders at once");
    assert_eq!(peak, PER_KEY, "the claimers never filled the cap");
    assert_eq!(
        storage.dispatch_key_rows().await.unwrap(),
        KeyRows {
            slots: 0,
            rates: 0,
            pauses: 0
        }
    );
}

#[tokio::test]
async fn the_cap_holds_under_concurrent_claimers_on_sqlite() {
    the_cap_holds_under_concurrent_claimers(&testing::temp_sqlite_url()).await;
}

#[tokio::test]
#[cfg_attr(
    not(surge_postgres),
    ignore = "set SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn the_cap_holds_under_concurrent_claimers_on_postgres() {
    let Some(url) = postgres().await else {
        return;
    };
    the_cap_holds_under_concurrent_claimers(&url).await;
}

/// Leases: a full key refuses, a stale holder's release frees nothing, an expired lease is
/// taken over (same slot) or swept, a live one never is, and releases leave no row.
async fn key_slot_leases(storage: Storage) {
    let k = key_hash("k");
    let a = storage
        .acquire_key_slot("kind", &k, "a", 2, LONG)
        .await
        .unwrap();
    let b = storage
        .acquire_key_slot("kind", &k, "b", 2, LONG)
        .await
        .unwrap();
    assert_eq!((a, b), (Some(0), Some(1)));
    assert_eq!(
        storage
            .acquire_key_slot("kind", &k, "c", 2, LONG)
            .await
            .unwrap(),
        None,
        "the key is at its cap"
    );
    // The same key in another kind is another key.
    assert_eq!(
        storage
            .acquire_key_slot("other", &k, "x", 1, LONG)
            .await
            .unwrap(),
        Some(0)
    );
    assert_eq!(storage.key_slots_held("kind", &k).await.unwrap(), 2);
    // A release by a holder that does not hold the slot frees nothing.
    assert!(!storage.release_key_slot("kind", &k, 0, "b").await.unwrap());
    assert!(storage.release_key_slot("kind", &k, 0, "a").await.unwrap());
    assert!(!storage.release_key_slot("kind", &k, 0, "a").await.unwrap());
    assert_eq!(storage.key_slots_held("kind", &k).await.unwrap(), 1);

    // A lease that runs out (database clock) is taken over, on the same slot; the old
    // holder's release then frees nothing.
    assert_eq!(
        storage
            .acquire_key_slot("kind", &k, "short", 2, Duration::from_millis(1))
            .await
            .unwrap(),
        Some(0)
    );
    let mut taken = None;
    for _ in 0..2000 {
        taken = storage
            .acquire_key_slot("kind", &k, "e", 2, LONG)
            .await
            .unwrap();
        if taken.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(taken, Some(0), "the short lease is taken over");
    assert!(!storage
        .release_key_slot("kind", &k, 0, "short")
        .await
        .unwrap());
    assert_eq!(storage.key_slots_held("kind", &k).await.unwrap(), 2);

    // An expired row nobody takes over is swept; live ones are not.
    let gone = key_hash("gone");
    storage
        .acquire_key_slot("kind", &gone, "crashed", 1, Duration::from_millis(1))
        .await
        .unwrap()
        .unwrap();
    until("the crashed holder's lease to run out", || {
        let storage = storage.clone();
        let gone = gone.clone();
        async move { storage.key_slots_held("kind", &gone).await.unwrap() == 0 }
    })
    .await;
    assert_eq!(
        storage.dispatch_key_rows().await.unwrap(),
        KeyRows {
            slots: 4,
            rates: 0,
            pauses: 0
        }
    );
    assert_eq!(
        storage.sweep_dispatch_keys(100).await.unwrap(),
        KeySweep {
            slots: 1,
            ..KeySweep::default()
        }
    );
    assert_eq!(
        storage.dispatch_key_rows().await.unwrap(),
        KeyRows {
            slots: 3,
            rates: 0,
            pauses: 0
        }
    );
    assert!(!storage
        .release_key_slot("kind", &gone, 0, "crashed")
        .await
        .unwrap());

    // Everything released: no row left.
    assert!(storage.release_key_slot("kind", &k, 0, "e").await.unwrap());
    assert!(storage.release_key_slot("kind", &k, 1, "b").await.unwrap());
    assert!(storage.release_key_slot("other", &k, 0, "x").await.unwrap());
    assert_eq!(
        storage.dispatch_key_rows().await.unwrap(),
        KeyRows {
            slots: 0,
            rates: 0,
            pauses: 0
        }
    );
}

#[tokio::test]
async fn key_slot_leases_on_sqlite() {
    key_slot_leases(Storage::connect(&testing::temp_sqlite_url()).await.unwrap()).await;
}

#[tokio::test]
#[cfg_attr(
    not(surge_postgres),
    ignore = "set SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn key_slot_leases_on_postgres() {
    let Some(url) = postgres().await else {
        return;
    };
    key_slot_leases(Storage::connect(&url).await.unwrap()).await;
}

/// The per-key rate: one start per interval per key, a reservation too far ahead is
/// refused, keys are independent, and a row whose time has passed is deleted (by the
/// sweep, and by the retention pass).
async fn key_rates(storage: Storage) {
    const INTERVAL_US: i64 = 200_000;
    let a = key_hash("a");
    let b = key_hash("b");
    let reserve = |key: String, max_wait: Duration| {
        let storage = storage.clone();
        async move {
            storage
                .reserve_key_start("kind", &key, INTERVAL_US, max_wait)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        reserve(a.clone(), Duration::ZERO).await,
        RateReservation::StartAfter(Duration::ZERO)
    );
    let RateReservation::StartAfter(second) = reserve(a.clone(), Duration::from_secs(1)).await
    else {
        panic!("the second start fits within a second");
    };
    assert!(
        second > Duration::from_millis(100) && second <= Duration::from_millis(200),
        "{second:?}"
    );
    let RateReservation::Busy(busy) = reserve(a.clone(), Duration::from_millis(10)).await else {
        panic!("a third start within 10 ms");
    };
    assert!(busy > Duration::from_millis(200), "{busy:?}");
    // Another key starts at once.
    assert_eq!(
        reserve(b.clone(), Duration::ZERO).await,
        RateReservation::StartAfter(Duration::ZERO)
    );
    assert_eq!(
        storage.dispatch_key_rows().await.unwrap(),
        KeyRows {
            slots: 0,
            rates: 2,
            pauses: 0
        }
    );
    // Nothing to sweep while the times are ahead.
    assert_eq!(
        storage.sweep_dispatch_keys(100).await.unwrap(),
        KeySweep::default()
    );
    let clock = storage.dispatch_clock_us().await.unwrap();
    until("both keys' times to pass", || {
        let storage = storage.clone();
        async move { storage.dispatch_clock_us().await.unwrap() > clock + 3 * INTERVAL_US + 1_000 }
    })
    .await;
    assert_eq!(
        storage.sweep_dispatch_keys(1).await.unwrap(),
        KeySweep {
            rates: 1,
            ..KeySweep::default()
        },
        "a sweep deletes at most its limit"
    );
    let report = storage
        .prune(&RetentionPolicy::default(), testing_now(), 100)
        .await
        .unwrap();
    assert_eq!(
        report.dispatch_keys, 1,
        "the retention pass deletes the rest"
    );
    assert_eq!(
        storage.dispatch_key_rows().await.unwrap(),
        KeyRows {
            slots: 0,
            rates: 0,
            pauses: 0
        }
    );
    // Starting again after the row went: at once.
    assert_eq!(
        reserve(a.clone(), Duration::ZERO).await,
        RateReservation::StartAfter(Duration::ZERO)
    );
}

fn testing_now() -> i64 {
    surge_common::clock::now_micros()
}

#[tokio::test]
async fn key_rates_on_sqlite() {
    key_rates(Storage::connect(&testing::temp_sqlite_url()).await.unwrap()).await;
}

#[tokio::test]
#[cfg_attr(
    not(surge_postgres),
    ignore = "set SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn key_rates_on_postgres() {
    let Some(url) = postgres().await else {
        return;
    };
    key_rates(Storage::connect(&url).await.unwrap()).await;
}

/// Key pauses: a later, shorter pause never cuts one short; other keys and kinds are not
/// paused; an ended pause is swept.
async fn key_pauses(storage: Storage) {
    let a = key_hash("a");
    let b = key_hash("b");
    assert_eq!(storage.key_paused_for("kind", &a).await.unwrap(), None);
    storage
        .pause_key("kind", &a, Duration::from_secs(60))
        .await
        .unwrap();
    let left = storage.key_paused_for("kind", &a).await.unwrap().unwrap();
    assert!(
        left > Duration::from_secs(55) && left <= Duration::from_secs(60),
        "{left:?}"
    );
    storage
        .pause_key("kind", &a, Duration::from_millis(1))
        .await
        .unwrap();
    let left = storage.key_paused_for("kind", &a).await.unwrap().unwrap();
    assert!(left > Duration::from_secs(55), "{left:?}");
    assert_eq!(storage.key_paused_for("kind", &b).await.unwrap(), None);
    assert_eq!(storage.key_paused_for("other", &a).await.unwrap(), None);
    storage
        .pause_key("kind", &b, Duration::from_millis(1))
        .await
        .unwrap();
    until("b's pause to end", || {
        let (storage, b) = (storage.clone(), b.clone());
        async move { storage.key_paused_for("kind", &b).await.unwrap().is_none() }
    })
    .await;
    assert_eq!(
        storage.sweep_dispatch_keys(100).await.unwrap(),
        KeySweep {
            pauses: 1,
            ..KeySweep::default()
        }
    );
    assert_eq!(
        storage.dispatch_key_rows().await.unwrap(),
        KeyRows {
            slots: 0,
            rates: 0,
            pauses: 1
        },
        "a's pause, still running, is kept"
    );
}

#[tokio::test]
async fn key_pauses_on_sqlite() {
    key_pauses(Storage::connect(&testing::temp_sqlite_url()).await.unwrap()).await;
}

#[tokio::test]
#[cfg_attr(
    not(surge_postgres),
    ignore = "set SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn key_pauses_on_postgres() {
    let Some(url) = postgres().await else {
        return;
    };
    key_pauses(Storage::connect(&url).await.unwrap()).await;
}
