//! The complaint service on both stores: the same scenario on memory and on the local PostgreSQL
//! (`SHENHE_TEST_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`; the PostgreSQL
//! tests fail, saying so, when it cannot be reached).

use std::path::Path;

use super::*;
use crate::config::units::HumanDuration;

pub fn test_database_url() -> String {
    std::env::var("SHENHE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A table of its own for each test, so tests run side by side.
fn unique_table() -> String {
    let n: u64 = rand::random();
    format!("shenhe_complaints_test_{n:016x}")
}

fn config(store: StoreKind, table: &str) -> ComplaintsConfig {
    let mut types = config::default_types();
    // Due at once: overdue as soon as it is filed.
    types.insert(
        "urgent".into(),
        ComplaintType {
            sla: HumanDuration::from_millis(1),
            name_zh: "紧急".into(),
            name_en: "Urgent".into(),
        },
    );
    ComplaintsConfig {
        enabled: true,
        store,
        database_url: test_database_url(),
        table: table.into(),
        max_open_per_user: 3,
        max_description_chars: 50,
        types,
        ..ComplaintsConfig::default()
    }
}

fn service(cfg: &ComplaintsConfig) -> Complaints {
    assert!(cfg.validate().is_empty(), "{:?}", cfg.validate());
    Complaints::new(cfg, Path::new("."))
        .expect("builds")
        .expect("enabled")
}

fn about(kind: &str, content_id: &str) -> NewComplaint {
    NewComplaint {
        kind: kind.into(),
        content_id: Some(content_id.into()),
        request_id: None,
        description: "这个回答含有违法信息".into(),
    }
}

pub async fn drop_table(table: &str) {
    run_sql(&format!("DROP TABLE IF EXISTS {table}")).await;
}

/// Run `sql` on the test database (set-up and clean-up of the store tests).
pub async fn run_sql(sql: &str) {
    let (client, conn) = tokio_postgres::connect(&test_database_url(), tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL reachable");
    tokio::spawn(conn);
    client.batch_execute(sql).await.expect("test SQL runs");
}

/// Everything a complaint goes through, on one store.
async fn lifecycle(c: &Complaints) {
    let user = "u-00000000000000000000000000000001".to_string();
    let filed = c
        .file(about("illegal_content", "pid-1"), Some(user.clone()), "app")
        .await
        .expect("filed");
    assert!(is_complaint_id(&filed.id), "{}", filed.id);
    assert_eq!(filed.status, Status::Open);
    assert_eq!(
        filed.due_at - filed.created_at,
        chrono::Duration::hours(24),
        "due by the type's time limit"
    );
    assert_eq!(c.get(&filed.id).await.expect("read back"), filed);

    // Bad input says which field.
    let e = c
        .file(about("spam", "pid-2"), Some(user.clone()), "app")
        .await
        .unwrap_err();
    assert!(
        matches!(e, ComplaintError::Invalid { param: "type", .. }),
        "{e}"
    );
    let e = c
        .file(
            NewComplaint {
                kind: "other".into(),
                ..NewComplaint::default()
            },
            Some(user.clone()),
            "app",
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ComplaintError::Invalid {
                param: "description",
                ..
            }
        ),
        "{e}"
    );
    let long = NewComplaint {
        description: "长".repeat(51),
        ..about("other", "pid-3")
    };
    let e = c.file(long, Some(user.clone()), "app").await.unwrap_err();
    assert!(
        matches!(
            e,
            ComplaintError::Invalid {
                param: "description",
                ..
            }
        ),
        "{e}"
    );
    let e = c
        .file(about("other", "pid-4"), None, "fax")
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ComplaintError::Invalid {
                param: "channel",
                ..
            }
        ),
        "{e}"
    );
    assert!(matches!(
        c.get("c-nope").await,
        Err(ComplaintError::NotFound)
    ));
    assert!(matches!(
        c.get("c-0123456789abcdef0123456789abcdef").await,
        Err(ComplaintError::NotFound)
    ));

    // An urgent one is overdue at once; the others are not.
    let urgent = c
        .file(about("urgent", "pid-5"), Some(user.clone()), "app")
        .await
        .expect("filed");
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    let overdue = c
        .list(ListFilter {
            overdue: true,
            limit: 10,
            ..ListFilter::default()
        })
        .await
        .expect("listed");
    assert_eq!(
        overdue.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        [urgent.id.as_str()]
    );
    let counts = c.store.counts(Utc::now()).await.expect("counts");
    assert_eq!(counts.get("urgent"), Some(&(1, 1)));
    assert_eq!(counts.get("illegal_content"), Some(&(1, 0)));

    // The third open complaint is the user's last; an operator's (no reporter) is not capped.
    c.file(about("other", "pid-6"), Some(user.clone()), "app")
        .await
        .expect("third");
    let e = c
        .file(about("other", "pid-7"), Some(user.clone()), "app")
        .await
        .unwrap_err();
    assert!(matches!(e, ComplaintError::TooManyOpen(3)), "{e}");
    let by_phone = c
        .file(about("other", "pid-1"), None, "phone")
        .await
        .expect("operator files");

    // Listing: newest first, by type, by the answer named.
    let all = c
        .list(ListFilter {
            limit: 10,
            ..ListFilter::default()
        })
        .await
        .expect("listed");
    assert_eq!(all.len(), 4);
    assert!(all.windows(2).all(|w| w[0].created_at >= w[1].created_at));
    let on_pid1 = c
        .list(ListFilter {
            content_id: Some("pid-1".into()),
            limit: 10,
            ..ListFilter::default()
        })
        .await
        .expect("listed");
    assert_eq!(on_pid1.len(), 2);

    // Resolving: a reply is required, once only; then the user may file again.
    let e = c
        .resolve(&filed.id, Outcome::Upheld, " ")
        .await
        .unwrap_err();
    assert!(
        matches!(e, ComplaintError::Invalid { param: "reply", .. }),
        "{e}"
    );
    let done = c
        .resolve(&filed.id, Outcome::Upheld, "已删除该内容并处理。")
        .await
        .expect("resolved");
    assert_eq!(done.status, Status::Resolved);
    assert_eq!(done.outcome, Some(Outcome::Upheld));
    assert_eq!(done.reply.as_deref(), Some("已删除该内容并处理。"));
    assert!(done.resolved_at.is_some());
    assert_eq!(c.get(&filed.id).await.expect("read"), done);
    assert!(matches!(
        c.resolve(&filed.id, Outcome::Rejected, "again").await,
        Err(ComplaintError::AlreadyResolved)
    ));
    assert!(matches!(
        c.resolve("c-0123456789abcdef0123456789abcdef", Outcome::Rejected, "x")
            .await,
        Err(ComplaintError::NotFound)
    ));
    c.file(about("other", "pid-8"), Some(user.clone()), "app")
        .await
        .expect("a slot is free again");
    let resolved = c
        .list(ListFilter {
            status: Some(Status::Resolved),
            limit: 10,
            ..ListFilter::default()
        })
        .await
        .expect("listed");
    assert_eq!(resolved, std::slice::from_ref(&done));

    // Erasure (Art. 11): the complaints stay without who filed them or what they wrote.
    assert_eq!(c.forget_reporter(&user).await.expect("forgotten"), 4);
    let kept = c.get(&filed.id).await.expect("still there");
    assert_eq!((kept.reporter, kept.description.as_str()), (None, ""));
    assert_eq!(kept.outcome, Some(Outcome::Upheld));
    assert_eq!(
        c.get(&by_phone.id).await.expect("untouched").description,
        by_phone.description
    );
}

#[tokio::test]
async fn a_complaint_is_filed_listed_and_resolved_in_memory() {
    lifecycle(&service(&config(StoreKind::Memory, "unused"))).await;
}

#[tokio::test]
async fn a_complaint_is_filed_listed_and_resolved_in_postgres() {
    let table = unique_table();
    lifecycle(&service(&config(StoreKind::Postgres, &table))).await;
    drop_table(&table).await;
}

#[tokio::test]
async fn replicas_share_complaints_and_only_one_resolve_wins() {
    let table = unique_table();
    let cfg = config(StoreKind::Postgres, &table);
    let (a, b) = (service(&cfg), service(&cfg));
    let filed = a
        .file(about("illegal_content", "pid-9"), None, "email")
        .await
        .expect("filed on a");
    assert_eq!(b.get(&filed.id).await.expect("seen on b"), filed);
    let (ra, rb) = tokio::join!(
        a.resolve(&filed.id, Outcome::Upheld, "removed"),
        b.resolve(&filed.id, Outcome::Rejected, "nothing found"),
    );
    let wins = [ra.is_ok(), rb.is_ok()];
    assert_eq!(wins.iter().filter(|w| **w).count(), 1, "{ra:?} {rb:?}");
    let loser = if ra.is_ok() { rb } else { ra };
    assert!(matches!(loser, Err(ComplaintError::AlreadyResolved)));
    drop_table(&table).await;
}

#[tokio::test]
async fn a_store_that_cannot_be_reached_fails_within_the_time_limit() {
    let cfg = ComplaintsConfig {
        // A port nothing listens on: the connection is refused at once.
        database_url: "postgres://postgres@127.0.0.1:1/test".into(),
        store_timeout: HumanDuration::from_millis(500),
        ..config(StoreKind::Postgres, "unused")
    };
    let c = service(&cfg);
    let before = metrics()
        .complaints_store_errors
        .with_label_values(&["insert"])
        .get();
    let started = std::time::Instant::now();
    let e = c
        .file(about("other", "pid-10"), None, "phone")
        .await
        .unwrap_err();
    assert!(matches!(e, ComplaintError::Store(_)), "{e}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(
        metrics()
            .complaints_store_errors
            .with_label_values(&["insert"])
            .get(),
        before + 1
    );
}

#[test]
fn the_default_procedure_names_each_type_and_its_time_limit_in_both_languages() {
    let p = default_procedure(&config::default_types());
    for needle in [
        "违法和不良信息（illegal_content）：24 小时",
        "个人信息保护（personal_information）：15 天",
        "Illegal or harmful content (illegal_content): 24 hours",
        "Personal information (personal_information): 15 days",
        "ProduceID",
    ] {
        assert!(p.contains(needle), "{needle} in\n{p}");
    }
}

/// The local PostgreSQL's certificate (Debian's `ssl-cert` snake-oil pair, `CN=localhost`), the
/// CA file the TLS tests trust.
const LOCAL_PG_CERT: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

#[tokio::test]
async fn sslmode_require_speaks_tls_and_verifies_the_server() {
    assert!(
        Path::new(LOCAL_PG_CERT).exists(),
        "this test needs the local PostgreSQL with ssl = on and its certificate at {LOCAL_PG_CERT}"
    );
    let table = unique_table();
    let url = "postgres://postgres@localhost:5432/test?sslmode=require";
    let trusted = ComplaintsConfig {
        database_url: url.into(),
        database_ca_file: Some(LOCAL_PG_CERT.into()),
        ..config(StoreKind::Postgres, &table)
    };
    let c = service(&trusted);
    let filed = c
        .file(about("other", "pid-tls"), None, "email")
        .await
        .expect("filed over TLS");
    assert_eq!(c.get(&filed.id).await.expect("read back").id, filed.id);
    // The certificate is verified: it names `localhost`, so the same server reached as
    // 127.0.0.1 is refused.
    let misnamed = ComplaintsConfig {
        database_url: "postgres://postgres@127.0.0.1:5432/test?sslmode=require".into(),
        ..trusted.clone()
    };
    let e = service(&misnamed)
        .get(&filed.id)
        .await
        .expect_err("a certificate for another name refuses the connection");
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    drop_table(&table).await;
}
