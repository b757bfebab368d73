//! The review queue on both stores (PostgreSQL at `SHENHE_TEST_DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`; those tests fail, saying so, without it).

use super::*;
use crate::audit::{Action, Direction, Record};
use crate::complaints::tests::{drop_table, run_sql, test_database_url};

fn unique_table() -> String {
    format!("shenhe_review_test_{:016x}", rand::random::<u64>())
}

fn config(store: StoreKind, table: &str) -> ReviewConfig {
    ReviewConfig {
        enabled: true,
        store,
        database_url: test_database_url(),
        table: table.into(),
        actions: vec![crate::policy::Action::Flag, crate::policy::Action::Redact],
        ..ReviewConfig::default()
    }
}

fn decision(request: &str, user: &str, action: Action, ms_ago: i64) -> Record {
    Record {
        ts: Utc::now() - chrono::Duration::milliseconds(ms_ago),
        user: Some(user.into()),
        excerpt: Some("……可疑内容……".into()),
        policy_version: Some("p-1".into()),
        ..Record::decision(request, Direction::Completion, "A2b", action)
    }
}

/// Offered items reach the store through the writer task.
async fn stored(r: &Review, n: usize) -> Vec<Item> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let items = r
            .list(ListFilter {
                status: Status::Pending,
                category: None,
                limit: 100,
            })
            .await
            .expect("listed");
        if items.len() >= n || std::time::Instant::now() > deadline {
            return items;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn lifecycle(r: &Review) {
    r.offer(&decision("req-1", "u-a", Action::Flag, 3000));
    r.offer(&decision("req-2", "u-b", Action::Redact, 2000));
    // Not reviewed: a block (not in `actions`) and a record that is not a decision.
    r.offer(&decision("req-3", "u-a", Action::Block, 1000));
    r.offer(&Record::delivery("req-4"));
    let items = stored(r, 2).await;
    assert_eq!(
        items
            .iter()
            .map(|i| i.request_id.as_deref().unwrap())
            .collect::<Vec<_>>(),
        ["req-1", "req-2"],
        "oldest first"
    );
    let first = &items[0];
    assert!(is_item_id(&first.id));
    assert_eq!(
        (first.category.as_str(), first.action.as_str()),
        ("A2b", "flag")
    );
    assert_eq!(first.direction.as_deref(), Some("completion"));
    assert_eq!(first.excerpt.as_deref(), Some("……可疑内容……"));
    assert_eq!(r.get(&first.id).await.expect("read"), *first);

    let (depth, oldest) = r.store.pending_counts().await.expect("counts");
    assert_eq!(depth, 2);
    assert!(Utc::now() - oldest.unwrap() >= chrono::Duration::seconds(3));

    let done = r
        .decide(&first.id, Verdict::Dismissed, Some("误报：历史讨论".into()))
        .await
        .expect("decided");
    assert_eq!(done.status, Status::Reviewed);
    assert_eq!(done.verdict, Some(Verdict::Dismissed));
    assert_eq!(done.note.as_deref(), Some("误报：历史讨论"));
    assert!(matches!(
        r.decide(&first.id, Verdict::Confirmed, None).await,
        Err(ReviewError::AlreadyReviewed)
    ));
    assert!(matches!(
        r.decide(
            "r-0123456789abcdef0123456789abcdef",
            Verdict::Confirmed,
            None
        )
        .await,
        Err(ReviewError::NotFound)
    ));
    assert!(matches!(
        r.decide(&items[1].id, Verdict::Confirmed, Some("长".repeat(1001)))
            .await,
        Err(ReviewError::Invalid(_))
    ));
    let reviewed = r
        .list(ListFilter {
            status: Status::Reviewed,
            category: Some("A2b".into()),
            limit: 10,
        })
        .await
        .expect("listed");
    assert_eq!(reviewed, [done]);
    assert_eq!(r.store.pending_counts().await.expect("counts").0, 1);

    // Erasure: the user's items go.
    assert_eq!(r.erase_user("u-a").await.expect("erased"), 1);
    assert!(matches!(r.get(&first.id).await, Err(ReviewError::NotFound)));
    assert_eq!(stored(r, 1).await.len(), 1);
}

#[tokio::test]
async fn decisions_are_queued_reviewed_and_erased_in_memory() {
    let r = Review::start(
        &config(StoreKind::Memory, "unused"),
        std::path::Path::new("."),
    )
    .unwrap()
    .unwrap();
    lifecycle(&r).await;
}

#[tokio::test]
async fn decisions_are_queued_reviewed_and_erased_in_postgres() {
    let table = unique_table();
    let r = Review::start(
        &config(StoreKind::Postgres, &table),
        std::path::Path::new("."),
    )
    .unwrap()
    .unwrap();
    lifecycle(&r).await;
    drop_table(&table).await;
}

#[tokio::test]
async fn a_store_that_cannot_be_reached_holds_items_and_drops_past_the_queue() {
    let cfg = ReviewConfig {
        database_url: "postgres://postgres@127.0.0.1:1/test".into(),
        store_timeout: crate::config::units::HumanDuration::from_millis(200),
        queue_capacity: 2,
        ..config(StoreKind::Postgres, "unused")
    };
    let r = Review::start(&cfg, std::path::Path::new("."))
        .unwrap()
        .unwrap();
    let dropped = || metrics().review_items.with_label_values(&["dropped"]).get();
    let before = dropped();
    // The writer takes the first into its batch and retries it; two more fill the queue; the
    // rest are dropped, and offering never waits.
    let started = std::time::Instant::now();
    for i in 0..10 {
        r.offer(&decision(&format!("req-{i}"), "u-x", Action::Flag, 0));
        tokio::task::yield_now().await;
    }
    assert!(started.elapsed() < Duration::from_secs(1));
    let now_dropped = dropped() - before;
    assert!((6..=8).contains(&now_dropped), "{now_dropped}");
    assert!(matches!(
        r.list(ListFilter {
            status: Status::Pending,
            category: None,
            limit: 1
        })
        .await,
        Err(ReviewError::Store(_))
    ));
}

/// A keyword decision on term `term` of policy `p-1`, `ms_ago`.
fn keyword(request: &str, term: &str, ms_ago: i64) -> Record {
    Record {
        detector: Some("keyword".into()),
        term_id: Some(term.into()),
        ..decision(request, "u-t", Action::Flag, ms_ago)
    }
}

/// Verdicts counted by what found the item: the term dismissed most comes first, with its
/// newest dismissals as examples; items before `since` are not counted.
async fn tally(r: &Review) {
    r.offer(&keyword("old", "7", 10 * 86_400_000));
    for (i, ago) in [5000, 4000, 3000].iter().enumerate() {
        r.offer(&keyword(&format!("t7-{i}"), "7", *ago));
    }
    r.offer(&keyword("t9-0", "9", 2500));
    r.offer(&keyword("t9-1", "9", 2400));
    r.offer(&Record {
        detector: Some("pii:mobile".into()),
        ..decision("p-0", "u-t", Action::Flag, 2000)
    });
    let items = stored(r, 7).await;
    assert_eq!(items.len(), 7);
    let by_request = |rq: &str| {
        items
            .iter()
            .find(|i| i.request_id.as_deref() == Some(rq))
            .unwrap()
            .id
            .clone()
    };
    for (rq, v) in [
        ("t7-0", Verdict::Dismissed),
        ("t7-1", Verdict::Dismissed),
        ("t7-2", Verdict::Confirmed),
        ("t9-0", Verdict::Confirmed),
        ("p-0", Verdict::Dismissed),
        ("old", Verdict::Dismissed),
    ] {
        r.decide(&by_request(rq), v, None).await.expect("decided");
    }
    let since = Utc::now() - chrono::Duration::days(1);
    let rows = r.tally(since).await.expect("tallied");
    let view: Vec<_> = rows
        .iter()
        .map(|t| {
            (
                t.detector.as_deref(),
                t.term_id.as_deref(),
                t.pending,
                t.confirmed,
                t.dismissed,
            )
        })
        .collect();
    assert_eq!(
        view,
        [
            (Some("keyword"), Some("7"), 0, 1, 2),
            (Some("pii:mobile"), None, 0, 0, 1),
            (Some("keyword"), Some("9"), 1, 1, 0),
        ]
    );
    assert_eq!(
        rows[0].dismissed_examples,
        [by_request("t7-1"), by_request("t7-0")],
        "newest first"
    );
    assert_eq!(rows[0].policy_version.as_deref(), Some("p-1"));
    assert!(rows[2].dismissed_examples.is_empty());
}

#[tokio::test]
async fn verdicts_are_tallied_by_what_found_them_in_memory() {
    let r = Review::start(
        &config(StoreKind::Memory, "unused"),
        std::path::Path::new("."),
    )
    .unwrap()
    .unwrap();
    tally(&r).await;
}

#[tokio::test]
async fn verdicts_are_tallied_by_what_found_them_in_postgres() {
    let table = unique_table();
    // A table made before items kept their detector and term: the store adds the columns.
    run_sql(&format!(
        "CREATE TABLE {table} (id TEXT PRIMARY KEY, created_at TIMESTAMPTZ NOT NULL, \
         request_id TEXT, content_id TEXT, user_id TEXT, route TEXT, direction TEXT, \
         category TEXT NOT NULL, action TEXT NOT NULL, excerpt TEXT, policy_version TEXT, \
         status TEXT NOT NULL, verdict TEXT, note TEXT, reviewed_at TIMESTAMPTZ)"
    ))
    .await;
    let r = Review::start(
        &config(StoreKind::Postgres, &table),
        std::path::Path::new("."),
    )
    .unwrap()
    .unwrap();
    tally(&r).await;
    drop_table(&table).await;
}
