//! The webhook tables on SQLite and PostgreSQL: endpoints with encrypted secrets and
//! event filters, the outbox's attempts, the cap and the dead letters and their replay.
#![allow(clippy::unwrap_used)]

use chrono::{SubsecRound as _, Utc};
use tokenvisor_core::SecretString;
use tokenvisor_store::sql::{DeadLetterReason, EndpointSource, ReplayOutcome, WebhookEndpoint};
use tokenvisor_store::{Keyring, SqlStore};
use tokenvisor_testkit::database::{Backend, TestDatabase};

fn endpoint(id: &str, event_types: &[&str]) -> WebhookEndpoint {
    let now = Utc::now().trunc_subsecs(3);
    WebhookEndpoint {
        id: id.to_owned(),
        url: format!("https://hooks.example/{id}"),
        event_types: event_types.iter().map(|t| (*t).to_owned()).collect(),
        enabled: true,
        source: EndpointSource::Api,
        secret: SecretString::new(format!("whsec_secret-of-{id}")),
        previous_secret: None,
        previous_secret_expires_at: None,
        max_attempts: None,
        max_age_seconds: None,
        outbox_cap: None,
        created_at: now,
        updated_at: now,
    }
}

async fn endpoints_filters_cap_dead_letters_and_replay(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    let store = SqlStore::connect(db.url(), Keyring::new([7; 32], vec![]))
        .await
        .expect("the store opens");
    let outbox = store.webhook_outbox();

    let all = endpoint("all", &[]);
    let mut only_reauth = endpoint("only-reauth", &["needs_reauth", "deleted"]);
    only_reauth.max_attempts = Some(3);
    only_reauth.outbox_cap = Some(2);
    outbox.insert_endpoint(&all).await.unwrap();
    outbox.insert_endpoint(&only_reauth).await.unwrap();
    assert!(outbox.insert_endpoint(&all).await.is_err(), "ids are unique");
    assert_eq!(
        outbox.list_endpoints().await.unwrap(),
        [all.clone(), only_reauth.clone()]
    );

    // The secret is stored encrypted, bound to its row.
    let raw = store
        .webhook_outbox()
        .get_endpoint("all")
        .await
        .unwrap()
        .unwrap()
        .secret;
    assert_eq!(raw.expose(), "whsec_secret-of-all");

    // Filters: an underscore is not a wildcard.
    assert_eq!(outbox.push("msg_1", "refreshed", "{}").await.unwrap(), ["all"]);
    let mut to = outbox.push("msg_2", "needs_reauth", "{}").await.unwrap();
    to.sort();
    assert_eq!(to, ["all", "only-reauth"]);
    assert_eq!(outbox.push("msg_3", "needsXreauth", "{}").await.unwrap(), ["all"]);

    // A disabled endpoint gets nothing new.
    let mut disabled = all.clone();
    disabled.enabled = false;
    assert!(outbox.update_endpoint(&disabled).await.unwrap());
    assert_eq!(outbox.push("msg_4", "deleted", "{}").await.unwrap(), ["only-reauth"]);
    assert_eq!(outbox.push("msg_5", "deleted", "{}").await.unwrap(), ["only-reauth"]);
    assert_eq!(outbox.count("all").await.unwrap(), 3);

    // Failed attempts are counted on the row.
    let front = outbox.front("all").await.unwrap().unwrap();
    assert_eq!((front.message_id.as_str(), front.attempts), ("msg_1", 0));
    outbox.record_failure(front.seq, "http_500").await.unwrap();
    outbox.record_failure(front.seq, "http_503").await.unwrap();
    let front = outbox.front("all").await.unwrap().unwrap();
    assert_eq!((front.attempts, front.event_type.as_str()), (2, "refreshed"));

    // Dead letter: kept with its attempts and last error, the next one is in front.
    assert!(outbox.dead_letter(front.seq, DeadLetterReason::Attempts).await.unwrap());
    assert_eq!(outbox.front("all").await.unwrap().unwrap().message_id, "msg_2");
    let letters = outbox.list_dead_letters(Some("all"), 10).await.unwrap();
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(
        (
            letter.message_id.as_str(),
            letter.attempts,
            letter.last_error.as_deref(),
            letter.reason
        ),
        ("msg_1", 2, Some("http_503"), DeadLetterReason::Attempts)
    );
    assert!(letter.first_attempted_at.is_some());

    // The cap keeps the newest two: msg_2 goes to dead letter.
    assert_eq!(outbox.count("only-reauth").await.unwrap(), 3);
    assert_eq!(outbox.enforce_cap("only-reauth", 2).await.unwrap(), 1);
    assert_eq!(outbox.enforce_cap("only-reauth", 2).await.unwrap(), 0);
    assert_eq!(outbox.front("only-reauth").await.unwrap().unwrap().message_id, "msg_4");
    let capped = outbox.list_dead_letters(Some("only-reauth"), 10).await.unwrap();
    assert_eq!(
        capped
            .iter()
            .map(|l| (l.message_id.as_str(), l.reason))
            .collect::<Vec<_>>(),
        [("msg_2", DeadLetterReason::Cap)]
    );
    assert_eq!(outbox.list_dead_letters(None, 10).await.unwrap().len(), 2);

    // Replay: back at the end of the queue with its webhook-id, attempts from zero.
    assert_eq!(
        outbox.replay_dead_letter(&letter.id).await.unwrap(),
        ReplayOutcome::Queued {
            endpoint_id: "all".to_owned()
        }
    );
    assert_eq!(
        outbox.replay_dead_letter(&letter.id).await.unwrap(),
        ReplayOutcome::NotFound
    );
    assert!(outbox.list_dead_letters(Some("all"), 10).await.unwrap().is_empty());
    let mut queued = Vec::new();
    while let Some(message) = outbox.front("all").await.unwrap() {
        queued.push((message.message_id.clone(), message.attempts));
        outbox.remove(message.seq).await.unwrap();
    }
    assert_eq!(
        queued,
        [
            ("msg_2".to_owned(), 0),
            ("msg_3".to_owned(), 0),
            ("msg_1".to_owned(), 0)
        ]
    );
    assert_eq!(outbox.replay_endpoint_dead_letters("only-reauth").await.unwrap(), 1);
    assert_eq!(outbox.count("only-reauth").await.unwrap(), 3);

    // Rotation keeps the previous secret, encrypted too.
    let mut rotated = only_reauth.clone();
    rotated.previous_secret = Some(rotated.secret.clone());
    rotated.secret = SecretString::new("whsec_new");
    rotated.previous_secret_expires_at = Some(Utc::now().trunc_subsecs(3));
    assert!(outbox.update_endpoint(&rotated).await.unwrap());
    let read = outbox.get_endpoint("only-reauth").await.unwrap().unwrap();
    assert_eq!(read.secret.expose(), "whsec_new");
    assert_eq!(
        read.previous_secret.as_ref().map(SecretString::expose),
        Some("whsec_secret-of-only-reauth")
    );

    // Deleting an endpoint takes its queue and dead letters with it.
    outbox.enforce_cap("only-reauth", 0).await.unwrap();
    assert!(outbox.delete_endpoint("only-reauth").await.unwrap());
    assert!(!outbox.delete_endpoint("only-reauth").await.unwrap());
    assert_eq!(outbox.count("only-reauth").await.unwrap(), 0);
    assert!(
        outbox
            .list_dead_letters(Some("only-reauth"), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(outbox.get_endpoint("only-reauth").await.unwrap().is_none());
}

#[tokio::test]
async fn sqlite_keeps_webhook_endpoints_filters_caps_and_dead_letters() {
    endpoints_filters_cap_dead_letters_and_replay(Backend::Sqlite).await;
}

#[tokio::test]
async fn postgres_keeps_webhook_endpoints_filters_caps_and_dead_letters() {
    endpoints_filters_cap_dead_letters_and_replay(Backend::Postgres).await;
}
