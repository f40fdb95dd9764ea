//! The mock against a real tonic client on loopback: what a Yellowstone client relies on.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;
use yellowstone_grpc_proto::geyser::geyser_client::GeyserClient;
use yellowstone_grpc_proto::geyser::subscribe_update::UpdateOneof;
use yellowstone_grpc_proto::geyser::{
    SubscribeReplayInfoRequest, SubscribeRequest, SubscribeRequestFilterSlots,
    SubscribeRequestPing, SubscribeUpdate,
};

use super::*;

const WAIT: Duration = Duration::from_secs(5);

async fn mock(access: AccessConfig) -> GeyserHandle {
    spawn(
        ([127, 0, 0, 1], 0).into(),
        GeyserConfig {
            chain: ChainConfig {
                slot_interval: Duration::from_millis(10),
                replay_slots: 50,
                ..ChainConfig::default()
            },
            access,
            ping_interval: Duration::from_millis(150),
        },
    )
    .await
    .expect("mock starts")
}

async fn client(handle: &GeyserHandle) -> GeyserClient<Channel> {
    let channel = Channel::from_shared(format!("http://{}", handle.addr))
        .expect("url")
        .connect()
        .await
        .expect("connects");
    GeyserClient::new(channel)
}

fn slots() -> SubscribeRequest {
    let mut request = SubscribeRequest::default();
    request
        .slots
        .insert("slots".into(), SubscribeRequestFilterSlots::default());
    request
}

/// Opens a subscription; its sender stays open for pings and filter changes.
async fn subscribe(
    client: &mut GeyserClient<Channel>,
    first: SubscribeRequest,
) -> Result<
    (
        mpsc::Sender<SubscribeRequest>,
        tonic::Streaming<SubscribeUpdate>,
    ),
    tonic::Status,
> {
    let (sender, receiver) = mpsc::channel(8);
    sender.send(first).await.expect("queued");
    let updates = client
        .subscribe(ReceiverStream::new(receiver))
        .await?
        .into_inner();
    Ok((sender, updates))
}

async fn next(updates: &mut tonic::Streaming<SubscribeUpdate>) -> SubscribeUpdate {
    tokio::time::timeout(WAIT, updates.next())
        .await
        .expect("an update in time")
        .expect("stream open")
        .expect("an update")
}

fn slot_of(update: &SubscribeUpdate) -> Option<u64> {
    match &update.update_oneof {
        Some(UpdateOneof::Slot(slot)) => Some(slot.slot),
        _ => None,
    }
}

#[tokio::test]
async fn subscriptions_get_slots_in_order_and_pongs_and_pings() {
    let handle = mock(AccessConfig::default()).await;
    let mut client = client(&handle).await;
    let (sender, mut updates) = subscribe(&mut client, slots()).await.expect("subscribed");
    let first = next(&mut updates).await;
    assert_eq!(first.filters, ["slots"]);
    let mut last = slot_of(&first).expect("a slot update");
    sender
        .send(SubscribeRequest {
            ping: Some(SubscribeRequestPing { id: 7 }),
            ..Default::default()
        })
        .await
        .expect("ping sent");
    let (mut pong, mut ping) = (false, false);
    while !(pong && ping) {
        let update = next(&mut updates).await;
        match update.update_oneof {
            Some(UpdateOneof::Pong(p)) => pong = p.id == 7,
            Some(UpdateOneof::Ping(_)) => ping = true,
            Some(UpdateOneof::Slot(slot)) => {
                assert_eq!(slot.slot, last + 1, "slots in order, none skipped");
                last = slot.slot;
            }
            other => panic!("unexpected update {other:?}"),
        }
    }
    // The ping did not replace the filters.
    assert!(slot_of(&next(&mut updates).await).is_some());
    handle.stop();
}

#[tokio::test]
async fn from_slot_replays_the_window_and_refuses_beyond_it() {
    let handle = mock(AccessConfig::default()).await;
    let mut client = client(&handle).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let info = client
        .subscribe_replay_info(SubscribeReplayInfoRequest {})
        .await
        .expect("replay info")
        .into_inner();
    let first = info.first_available.expect("slots kept");
    let from = first + 3;
    let (_sender, mut updates) = subscribe(
        &mut client,
        SubscribeRequest {
            from_slot: Some(from),
            ..slots()
        },
    )
    .await
    .expect("subscribed");
    assert_eq!(slot_of(&next(&mut updates).await), Some(from));
    assert_eq!(slot_of(&next(&mut updates).await), Some(from + 1));

    let (_sender, mut refused) = subscribe(
        &mut client,
        SubscribeRequest {
            from_slot: Some(first.saturating_sub(100)),
            ..slots()
        },
    )
    .await
    .expect("the call starts");
    let status = tokio::time::timeout(WAIT, refused.next())
        .await
        .expect("an answer in time")
        .expect("an item")
        .expect_err("too old");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("first available slot"),
        "{status}"
    );
    handle.stop();
}

#[tokio::test]
async fn tokens_and_account_limits_are_enforced() {
    let handle = mock(AccessConfig {
        tokens: [("secret".to_owned(), "acme".to_owned())].into(),
        max_subscriptions: Some(1),
        max_filters: Some(1),
        ..AccessConfig::default()
    })
    .await;
    let mut client = client(&handle).await;
    let status = subscribe(&mut client, slots()).await.expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated);

    let mut authed = GeyserClient::with_interceptor(
        Channel::from_shared(format!("http://{}", handle.addr))
            .expect("url")
            .connect()
            .await
            .expect("connects"),
        |mut request: tonic::Request<()>| {
            request
                .metadata_mut()
                .insert(TOKEN_HEADER, "secret".parse().expect("ascii"));
            Ok(request)
        },
    );
    let (sender, mut updates) = {
        let (sender, receiver) = mpsc::channel(8);
        sender.send(slots()).await.expect("queued");
        let updates = authed
            .subscribe(ReceiverStream::new(receiver))
            .await
            .expect("first subscription admitted")
            .into_inner();
        (sender, updates)
    };
    assert!(slot_of(&next(&mut updates).await).is_some());
    let (extra_sender, extra_receiver) = mpsc::channel(8);
    extra_sender.send(slots()).await.expect("queued");
    let status = authed
        .subscribe(ReceiverStream::new(extra_receiver))
        .await
        .expect_err("over the subscription limit");
    assert_eq!(status.code(), Code::ResourceExhausted);

    // Two filters where one is allowed: the stream ends with the reason.
    let mut two = slots();
    two.slots
        .insert("more".into(), SubscribeRequestFilterSlots::default());
    sender.send(two).await.expect("sent");
    let status = loop {
        match tokio::time::timeout(WAIT, updates.next()).await {
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(status))) => break status,
            other => panic!("expected an error status, got {other:?}"),
        }
    };
    assert_eq!(status.code(), Code::InvalidArgument);
    let refused = handle
        .stats
        .snapshot()
        .into_iter()
        .find(|(name, _)| *name == "refused");
    assert_eq!(refused, Some(("refused", 1)));
    handle.stop();
}

#[tokio::test]
async fn two_mocks_serve_the_same_updates_for_a_slot() {
    let (one, two) = (
        mock(AccessConfig::default()).await,
        mock(AccessConfig::default()).await,
    );
    let request = || {
        let mut request = slots();
        request.accounts.insert("all".into(), Default::default());
        request
    };
    let (_a, mut from_one) = subscribe(&mut client(&one).await, request())
        .await
        .expect("one");
    let (_b, mut from_two) = subscribe(&mut client(&two).await, request())
        .await
        .expect("two");
    // Skip to a slot both streams have from its start.
    let start = slot_of(&next(&mut from_one).await).expect("a slot first") + 2;
    let collect = async |updates: &mut tonic::Streaming<SubscribeUpdate>| {
        let mut seen = Vec::new();
        loop {
            let update = next(updates).await;
            match slot_of(&update) {
                Some(slot) if slot == start + 1 => return seen,
                Some(slot) if slot == start => seen.push(update.update_oneof),
                _ if !seen.is_empty() => seen.push(update.update_oneof),
                _ => {}
            }
        }
    };
    let a = collect(&mut from_one).await;
    let b = collect(&mut from_two).await;
    assert!(a.len() > 1, "{a:?}");
    assert_eq!(a, b);
    one.stop();
    two.stop();
}
