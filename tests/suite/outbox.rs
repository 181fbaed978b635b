//! The webhook outbox on both backends: messages wait per endpoint, oldest first, until
//! removed, and survive reopening the database.

use tokenvisor_tests::databases::{TestDatabase, open, test_keyring};
use tokenvisor_tests::on_both_backends;

on_both_backends!(messages_wait_per_endpoint_in_order_until_removed_and_survive_a_reopen);

async fn messages_wait_per_endpoint_in_order_until_removed_and_survive_a_reopen(database: TestDatabase) {
    let store = open(&database, test_keyring()).await;
    let outbox = store.webhook_outbox();
    let endpoints = ["https://a.example/hook".to_owned(), "https://b.example/hook".to_owned()];
    for i in 0..3 {
        outbox
            .push(&endpoints, &format!("msg_{i}"), &format!("{{\"n\":{i}}}"))
            .await
            .expect("queued");
    }
    assert_eq!(outbox.count(&endpoints[0]).await.expect("count"), 3);
    let first = outbox.front(&endpoints[0]).await.expect("front").expect("a message");
    assert_eq!((first.message_id.as_str(), first.body.as_str()), ("msg_0", "{\"n\":0}"));
    outbox.remove(first.seq).await.expect("removed");
    // Removing it for one endpoint leaves the other endpoint's copy.
    assert_eq!(outbox.count(&endpoints[0]).await.expect("count"), 2);
    assert_eq!(outbox.count(&endpoints[1]).await.expect("count"), 3);
    assert!(outbox.count("https://unknown.example/").await.expect("count") == 0);
    assert!(outbox.front("https://unknown.example/").await.expect("front").is_none());

    let reopened = open(&database, test_keyring()).await.webhook_outbox();
    let next = reopened.front(&endpoints[0]).await.expect("front").expect("a message");
    assert_eq!(next.message_id, "msg_1");
    let other = reopened.front(&endpoints[1]).await.expect("front").expect("a message");
    assert_eq!(other.message_id, "msg_0");
}
