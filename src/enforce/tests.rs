//! The standing of users through both stores. The Redis store runs against the server at
//! `SHENHE_TEST_REDIS_URL` (default `redis://127.0.0.1:6379/`), under a key prefix of its own;
//! a test that cannot reach it fails and says so.

use std::time::Duration;

use super::config::{MinorsConfig, StrikesConfig};
use super::store::StrikeRules;
use super::*;

fn redis_url() -> String {
    std::env::var("SHENHE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
}

fn cfg(store: StoreKind) -> EnforceConfig {
    EnforceConfig {
        enabled: true,
        store,
        redis_url: redis_url(),
        key_prefix: format!("shenhe-test:{:016x}:", rand::random::<u64>()),
        strikes: StrikesConfig {
            window: crate::config::HumanDuration::from_secs(3600),
            warn_at: 1,
            restrict_at: 2,
            suspend_at: 3,
            suspend_consecutive: 0,
        },
        restricted_requests_per_minute: 2,
        suspend_for: crate::config::HumanDuration::from_secs(600),
        ..EnforceConfig::default()
    }
}

impl Enforcer {
    /// Whether the store would ask Redis about `user` (always true in memory).
    fn store_may_flag(&self, user: &str) -> bool {
        match &self.store {
            Store::Redis(r) => r.may_be_flagged(user),
            Store::Memory(_) => true,
        }
    }
}

async fn enforcer(c: &EnforceConfig) -> Enforcer {
    let e = Enforcer::new(c).expect("valid").expect("enabled");
    if let Store::Redis(_) = e.store {
        if let Err(err) = e.store.standing("u-probe", 1, 1).await {
            panic!(
                "the Redis store's tests need a Redis server at {} (SHENHE_TEST_REDIS_URL): {err}",
                redis_url()
            );
        }
    }
    e
}

fn kind(v: &Verdict) -> Result<Option<&'static str>, ErrorKind> {
    match v {
        Verdict::Serve { notice, .. } => Ok(*notice),
        Verdict::Refuse { error, .. } => Err(error.kind),
    }
}

/// Strikes raise a user's standing step by step; other users are untouched; the window and
/// the suspension's length end them; an operator lifts them.
async fn standing_rises_with_strikes(store: StoreKind) {
    let e = enforcer(&cfg(store)).await;
    let h = HeaderMap::new();
    let t0 = 1_800_000_000_000;
    assert_eq!(kind(&e.check(Some("u-a"), &h, t0).await), Ok(None));
    assert!(e.strike("u-a", "req-1", None, t0).await.unwrap().is_none());
    // The same request again is not a second strike.
    assert!(e
        .strike("u-a", "req-1", None, t0 + 1)
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        e.store
            .standing("u-a", t0 + 2, 3_600_000)
            .await
            .unwrap()
            .strikes,
        1
    );
    assert_eq!(
        kind(&e.check(Some("u-a"), &h, t0 + 2).await),
        Ok(Some("warning"))
    );
    assert_eq!(kind(&e.check(Some("u-b"), &h, t0 + 2).await), Ok(None));
    // Restricted: two requests a minute, the third refused until the next minute.
    assert!(e
        .strike("u-a", "req-2", None, t0 + 3)
        .await
        .unwrap()
        .is_none());
    let minute = (t0 / 60_000 + 1) * 60_000;
    for i in 0..2 {
        assert_eq!(
            kind(&e.check(Some("u-a"), &h, minute + i).await),
            Ok(Some("restricted"))
        );
    }
    match e.check(Some("u-a"), &h, minute + 2).await {
        Verdict::Refuse {
            error, retry_after, ..
        } => {
            assert_eq!(error.kind, ErrorKind::UserLimit);
            assert_eq!(retry_after, Some(60));
        }
        v => panic!("expected a refusal, got {v:?}"),
    }
    assert_eq!(
        kind(&e.check(Some("u-a"), &h, minute + 60_000).await),
        Ok(Some("restricted"))
    );
    // The third strike suspends, and says so once.
    let sanction = e.strike("u-a", "req-3", None, minute + 70_000).await;
    let detail = sanction.unwrap().unwrap_or_default();
    assert!(detail.starts_with("suspended for 600s"), "{detail}");
    assert!(e
        .strike("u-a", "req-4", None, minute + 70_001)
        .await
        .unwrap()
        .is_none());
    match e.check(Some("u-a"), &h, minute + 71_000).await {
        Verdict::Refuse {
            error, retry_after, ..
        } => {
            assert_eq!(error.kind, ErrorKind::UserSuspended);
            let left = retry_after.unwrap_or(0);
            assert!((595..=600).contains(&left), "{left}");
        }
        v => panic!("expected a refusal, got {v:?}"),
    }
    assert_eq!(
        kind(&e.check(Some("u-b"), &h, minute + 71_000).await),
        Ok(None)
    );
    e.lift("u-a").await.unwrap();
    assert_eq!(
        kind(&e.check(Some("u-a"), &h, minute + 72_000).await),
        Ok(None)
    );
    // Strikes older than the window do not count.
    assert!(e.strike("u-c", "req-5", None, t0).await.unwrap().is_none());
    assert_eq!(
        kind(&e.check(Some("u-c"), &h, t0 + 3_600_001).await),
        Ok(None)
    );
}

#[tokio::test]
async fn standing_rises_with_strikes_in_memory() {
    standing_rises_with_strikes(StoreKind::Memory).await;
}

#[tokio::test]
async fn standing_rises_with_strikes_in_redis() {
    standing_rises_with_strikes(StoreKind::Redis).await;
}

#[tokio::test]
async fn replicas_on_one_redis_share_a_users_standing() {
    let mut c = cfg(StoreKind::Redis);
    c.sync_interval = crate::config::HumanDuration::from_millis(20);
    let (a, b) = (enforcer(&c).await, enforcer(&c).await);
    let (h, now) = (HeaderMap::new(), Enforcer::now_ms());
    // Once b has read the (empty) list of flagged users, it answers for a clean user alone
    // (before its first read it asks Redis about everyone).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while b.store_may_flag("u-shared") {
        assert!(
            std::time::Instant::now() < deadline,
            "b never read the list"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.strike("u-shared", "req-0", None, now).await.unwrap();
    assert!(
        a.store_may_flag("u-shared"),
        "a strike counts at once where it is made"
    );
    // b learns of a's strike at its next read of the list (every 20 ms; how soon that comes
    // on a loaded machine is not this test's to say, so it waits up to 5 s).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let seen = kind(&b.check(Some("u-shared"), &h, now + 2).await);
        if seen == Ok(Some("warning")) {
            break;
        }
        assert_eq!(seen, Ok(None), "before its next read b serves as before");
        assert!(
            std::time::Instant::now() < deadline,
            "b never read a's strike"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (i, e) in [&b, &a].into_iter().enumerate() {
        e.strike(
            "u-shared",
            &format!("req-{}", i + 1),
            None,
            now + 3 + i as u64,
        )
        .await
        .unwrap();
    }
    assert_eq!(
        kind(&b.check(Some("u-shared"), &h, now + 10).await),
        Err(ErrorKind::UserSuspended)
    );
    assert_eq!(
        kind(&a.check(Some("u-shared"), &h, now + 10).await),
        Err(ErrorKind::UserSuspended)
    );
}

#[tokio::test]
async fn minors_are_served_within_their_hours_and_their_daily_cap() {
    let mut c = cfg(StoreKind::Memory);
    c.minors = MinorsConfig {
        header: Some("X-User-Minor".into()),
        daily_requests: 2,
        hours: Some("06:00-22:00".into()),
        utc_offset: "+08:00".into(),
        ..MinorsConfig::default()
    };
    let e = enforcer(&c).await;
    let mut minor = HeaderMap::new();
    minor.insert("x-user-minor", HeaderValue::from_static("true"));
    // 2027-01-15 12:00 in +08:00 is 04:00 UTC.
    let noon = 1_800_000_000_000 / DAY_MS * DAY_MS + 4 * 3_600_000;
    assert_eq!(kind(&e.check(Some("u-m"), &minor, noon).await), Ok(None));
    assert_eq!(
        kind(&e.check(Some("u-m"), &minor, noon + 1).await),
        Ok(None)
    );
    match e.check(Some("u-m"), &minor, noon + 2).await {
        Verdict::Refuse {
            error, retry_after, ..
        } => {
            assert_eq!(error.kind, ErrorKind::UserLimit);
            // Until local midnight: twelve hours.
            assert_eq!(retry_after, Some(12 * 3600));
        }
        v => panic!("expected a refusal, got {v:?}"),
    }
    // The next local day (after 00:00 +08:00, before the hours open at 06:00): refused for
    // the hour, with the wait until 06:00.
    let night = noon + 13 * 3_600_000;
    match e.check(Some("u-m"), &minor, night).await {
        Verdict::Refuse {
            error, retry_after, ..
        } => {
            assert_eq!(error.kind, ErrorKind::MinorHours);
            assert_eq!(retry_after, Some(5 * 3600));
        }
        v => panic!("expected a refusal, got {v:?}"),
    }
    // Without the header, or with it saying no, no limits; nor with no user id for the cap.
    assert_eq!(
        kind(&e.check(Some("u-m"), &HeaderMap::new(), night).await),
        Ok(None)
    );
    minor.insert("x-user-minor", HeaderValue::from_static("0"));
    assert_eq!(kind(&e.check(Some("u-m"), &minor, night).await), Ok(None));
    minor.insert("x-user-minor", HeaderValue::from_static("1"));
    assert_eq!(
        kind(&e.check(None, &minor, night).await),
        Err(ErrorKind::MinorHours)
    );
    assert_eq!(kind(&e.check(None, &minor, noon + DAY_MS).await), Ok(None));
}

#[tokio::test]
async fn a_store_that_does_not_answer_serves_or_refuses_as_configured() {
    // Nothing listens on port 1.
    let mut c = cfg(StoreKind::Redis);
    c.redis_url = "redis://127.0.0.1:1/".into();
    c.store_timeout = crate::config::HumanDuration::from_millis(200);
    let h = HeaderMap::new();
    let open = Enforcer::new(&c).unwrap().unwrap();
    let started = std::time::Instant::now();
    assert_eq!(kind(&open.check(Some("u-x"), &h, 1).await), Ok(None));
    assert!(open.strike("u-x", "req", None, 1).await.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded by the timeout"
    );
    c.on_store_error = StoreFailure::Closed;
    let closed = Enforcer::new(&c).unwrap().unwrap();
    assert_eq!(
        kind(&closed.check(Some("u-x"), &h, 1).await),
        Err(ErrorKind::Unavailable)
    );
}

/// Strikes counted over `window` ms that never suspend.
fn rules(window: u64) -> StrikeRules {
    StrikeRules {
        window,
        suspend_at: 0,
        suspend_consecutive: 0,
        suspend_for: 0,
    }
}

#[test]
fn the_memory_store_keeps_at_most_its_cap_of_users() {
    let m = MemoryStore::new(3);
    for (i, u) in ["u-1", "u-2", "u-3"].iter().enumerate() {
        m.strike(u, "r", None, 1_000 + i as u64, &rules(100));
    }
    // Full of users with strikes in force: a fourth is counted but not kept.
    assert_eq!(m.strike("u-4", "r", None, 1_050, &rules(100)).0.strikes, 1);
    assert_eq!(m.standing("u-4", 1_050, 100).strikes, 0);
    assert_eq!(m.len(), 3);
    // Once their strikes are past the window, they make room.
    assert_eq!(m.strike("u-4", "r", None, 5_000, &rules(100)).0.strikes, 1);
    assert_eq!(m.standing("u-4", 5_000, 100).strikes, 1);
    assert_eq!(m.len(), 1);
}

fn seq(v: &Verdict) -> Option<u64> {
    match v {
        Verdict::Serve { seq, .. } => *seq,
        Verdict::Refuse { .. } => None,
    }
}

/// Strikes in a row suspend (`suspend_consecutive`) where the window's total would not: a
/// request without a strike between two ends the streak, the same request twice is one strike.
async fn strikes_in_a_row_suspend(store: StoreKind) {
    let mut c = cfg(store);
    c.strikes = StrikesConfig {
        warn_at: 1,
        restrict_at: 0,
        suspend_at: 10,
        suspend_consecutive: 3,
        ..StrikesConfig::default()
    };
    let e = enforcer(&c).await;
    let h = HeaderMap::new();
    let t = Enforcer::now_ms();
    // A user with no strikes is numbered only where the store cannot yet tell (a Redis
    // replica before its first read of the flagged users); either way the streak starts.
    let first = e.check(Some("u-s"), &h, t).await;
    if store == StoreKind::Memory {
        assert_eq!(seq(&first), None);
    }
    assert!(e
        .strike("u-s", "r-1", seq(&first), t)
        .await
        .unwrap()
        .is_none());
    let next = e.check(Some("u-s"), &h, t + 1).await;
    let n = seq(&next).expect("a flagged user's request is numbered");
    assert!(e
        .strike("u-s", "r-2", Some(n), t + 1)
        .await
        .unwrap()
        .is_none());
    assert_eq!(e.standing("u-s").await.unwrap().streak, 2);
    // A clean request: the streak ends.
    let clean = seq(&e.check(Some("u-s"), &h, t + 2).await).unwrap();
    assert_eq!(clean, n + 1);
    for (i, req) in ["r-3", "r-4"].iter().enumerate() {
        let s = seq(&e.check(Some("u-s"), &h, t + 3 + i as u64).await);
        assert!(e
            .strike("u-s", req, s, t + 3 + i as u64)
            .await
            .unwrap()
            .is_none());
    }
    // The same request again changes nothing.
    let again = e.strike("u-s", "r-4", Some(n + 3), t + 5).await;
    assert!(again.unwrap().is_none());
    let st = e.standing("u-s").await.unwrap();
    assert_eq!((st.strikes, st.streak), (4, 2));
    // A third in a row suspends, with four strikes in the window of ten.
    let s = seq(&e.check(Some("u-s"), &h, t + 6).await);
    let detail = e
        .strike("u-s", "r-5", s, t + 6)
        .await
        .unwrap()
        .unwrap_or_default();
    assert!(detail.ends_with("5 strikes, 3 in a row"), "{detail}");
    assert_eq!(
        kind(&e.check(Some("u-s"), &h, t + 7).await),
        Err(ErrorKind::UserSuspended)
    );
    e.lift("u-s").await.unwrap();
    assert_eq!(e.standing("u-s").await.unwrap().streak, 0);
}

#[tokio::test]
async fn strikes_in_a_row_suspend_in_memory() {
    strikes_in_a_row_suspend(StoreKind::Memory).await;
}

#[tokio::test]
async fn strikes_in_a_row_suspend_in_redis() {
    strikes_in_a_row_suspend(StoreKind::Redis).await;
}

/// A minor's continuous use past `session_reminder` is reminded of on each answer; a pause
/// longer than `session_gap` starts a new session; adults are never reminded.
async fn minors_are_reminded_of_long_sessions(store: StoreKind) {
    let mut c = cfg(store);
    c.minors = MinorsConfig {
        header: Some("x-user-minor".into()),
        ..MinorsConfig::default()
    };
    let e = enforcer(&c).await;
    let mut minor = HeaderMap::new();
    minor.insert("x-user-minor", HeaderValue::from_static("1"));
    let adult = HeaderMap::new();
    let reminder = |v: Verdict| match v {
        Verdict::Serve { reminder, .. } => reminder,
        v => panic!("expected to be served, got {v:?}"),
    };
    let t0 = Enforcer::now_ms();
    let min = 60_000;
    // Requests every 20 minutes: two hours on, each answer reminds.
    for i in 0..=6u64 {
        let got = reminder(e.check(Some("u-kid"), &minor, t0 + i * 20 * min).await);
        assert_eq!(got, (i == 6).then_some(120), "after {} minutes", i * 20);
        let adult_got = reminder(e.check(Some("u-adult"), &adult, t0 + i * 20 * min).await);
        assert_eq!(adult_got, None);
    }
    assert_eq!(
        reminder(e.check(Some("u-kid"), &minor, t0 + 125 * min).await),
        Some(125)
    );
    // A 31-minute pause: a new session.
    assert_eq!(
        reminder(e.check(Some("u-kid"), &minor, t0 + 156 * min).await),
        None
    );
}

#[tokio::test]
async fn minors_are_reminded_of_long_sessions_in_memory() {
    minors_are_reminded_of_long_sessions(StoreKind::Memory).await;
}

#[tokio::test]
async fn minors_are_reminded_of_long_sessions_in_redis() {
    minors_are_reminded_of_long_sessions(StoreKind::Redis).await;
}
