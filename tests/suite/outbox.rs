//! The webhook outbox on both backends: messages wait per endpoint, oldest first, until
//! removed, and survive reopening the database.

use tokenvisor_core::SecretString;
use tokenvisor_store::sql::{EndpointSource, WebhookEndpoint};
use tokenvisor_tests::databases::{TestDatabase, open, test_keyring};
use tokenvisor_tests::on_both_backends;

on_both_backends!(messages_wait_per_endpoint_in_order_until_removed_and_survive_a_reopen);

async fn messages_wait_per_endpoint_in_order_until_removed_and_survive_a_reopen(database: TestDatabase) {
    let store = open(&database, test_keyring()).await;
    let outbox = store.webhook_outbox();
    let endpoints = ["a".to_owned(), "b".to_owned()];
    let now = chrono::Utc::now();
    for id in &endpoints {
        outbox
            .insert_endpoint(&WebhookEndpoint {
                id: id.clone(),
                url: format!("https://{id}.example/hook"),
                event_types: vec![],
                enabled: true,
                source: EndpointSource::Api,
                secret: SecretString::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
                previous_secret: None,
                previous_secret_expires_at: None,
                max_attempts: None,
                max_age_seconds: None,
                outbox_cap: None,
                created_at: now,
                updated_at: now,
            })
            .await
            .expect("endpoint added");
    }
    for i in 0..3 {
        let mut queued_for = outbox
            .push(&format!("msg_{i}"), "refreshed", &format!("{{\"n\":{i}}}"))
            .await
            .expect("queued");
        queued_for.sort();
        assert_eq!(queued_for, endpoints);
    }
    assert_eq!(outbox.count(&endpoints[0]).await.expect("count"), 3);
    let first = outbox.front(&endpoints[0]).await.expect("front").expect("a message");
    assert_eq!((first.message_id.as_str(), first.body.as_str()), ("msg_0", "{\"n\":0}"));
    outbox.remove(first.seq).await.expect("removed");
    // Removing it for one endpoint leaves the other endpoint's copy.
    assert_eq!(outbox.count(&endpoints[0]).await.expect("count"), 2);
    assert_eq!(outbox.count(&endpoints[1]).await.expect("count"), 3);
    assert!(outbox.count("unknown").await.expect("count") == 0);
    assert!(outbox.front("unknown").await.expect("front").is_none());

    let reopened = open(&database, test_keyring()).await.webhook_outbox();
    let next = reopened.front(&endpoints[0]).await.expect("front").expect("a message");
    assert_eq!(next.message_id, "msg_1");
    let other = reopened.front(&endpoints[1]).await.expect("front").expect("a message");
    assert_eq!(other.message_id, "msg_0");
}
