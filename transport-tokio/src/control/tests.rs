//! The control server's state machine: removals, expiry and endpoint changes in flight.

use super::*;

fn control_with_node() -> (Arc<Control>, NodeRecord) {
    let (store, record) = store::memory_store_with_node();
    let c = Control::new(store, Control::policy(ALLOW_ALL).unwrap(), vec![]).unwrap();
    (c, record)
}

/// Audit #19: an endpoint change in flight while the admin removes the node must not
/// bring it back into the tailnet.
#[test]
fn a_change_in_flight_does_not_revive_a_removed_node() {
    let (c, mut record) = control_with_node();
    assert!(c.inner.lock().unwrap().tailnet.get(record.id).is_some());
    c.retire(record.id); // the admin's remove/expire lands first
    record.endpoints = vec!["203.0.113.1:41641".parse().unwrap()];
    assert!(!c.update_live(&record), "refused");
    assert!(c.inner.lock().unwrap().tailnet.get(record.id).is_none());
}

/// Audit #6: a stream that does not read is closed once its queue is full, instead of
/// growing the server's memory.
#[test]
fn a_stream_that_falls_behind_is_closed_not_buffered() {
    let (c, record) = control_with_node();
    let (tx, mut rx) = mpsc::channel(STREAM_QUEUE);
    c.inner
        .lock()
        .unwrap()
        .streams
        .entry(record.id)
        .or_default()
        .push_back(tx);
    for _ in 0..STREAM_QUEUE * 3 {
        Control::publish(
            &mut c.inner.lock().unwrap(),
            vec![(record.id, Delta::PeerRemove { id: 99 })],
        );
    }
    let mut queued = 0;
    while let Ok(m) = rx.try_recv() {
        assert!(matches!(m, MapMessage::Delta(_)));
        queued += 1;
    }
    assert_eq!(queued, STREAM_QUEUE);
    assert!(
        matches!(rx.try_recv(), Err(mpsc::error::TryRecvError::Disconnected)),
        "the stream was closed so the node resyncs"
    );
    assert!(c.inner.lock().unwrap().streams[&record.id].is_empty());
}
