//! TLS on both sides: Sluice verifies an upstream against a CA from the config, and serves TLS
//! to monitors. Certificates are generated fresh for each test.

use std::time::Duration;

use sluice_feed::{FeedConfig, TlsIdentity};
use sluice_tests::pb::EchoRequest;
use sluice_tests::pb::feed_client::FeedClient;
use sluice_tests::*;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

const LIMIT: Duration = Duration::from_secs(20);

async fn tls_feed(pki: &TestPki) -> sluice_feed::FeedHandle {
    let identity = TlsIdentity {
        cert_pem: pki.cert_pem.clone().into_bytes(),
        key_pem: pki.key_pem.clone().into_bytes(),
    };
    sluice_feed::spawn(
        ([127, 0, 0, 1], 0).into(),
        FeedConfig::default(),
        Some(identity),
    )
    .await
    .expect("TLS feed starts")
}

fn write(dir: &tempfile::TempDir, name: &str, contents: &str) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, contents).expect("write PEM");
    path
}

#[tokio::test]
async fn sluice_reaches_a_tls_upstream_verified_by_a_configured_ca() {
    let pki = TestPki::generate();
    let upstream = tls_feed(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(&[]);
    let mut e = endpoint("secure", &format!("https://{}", upstream.addr));
    e.ca_file = Some(write(&dir, "ca.pem", &pki.ca_pem));
    e.tls_server_name = Some("localhost".into());
    config.endpoints.push(e);
    let proxy = sluice(config).await;
    let mut c = client(proxy.addr()).await;
    let reply = bounded(
        LIMIT,
        "echo over TLS",
        c.echo(as_monitor(
            EchoRequest {
                payload: vec![9; 10].into(),
                text: "tls".into(),
            },
            "m",
        )),
    )
    .await
    .unwrap()
    .into_inner();
    assert_eq!(reply.text, "tls");
    assert_eq!(upstream.stats.snapshot().calls_total, 1);
}

#[tokio::test]
async fn an_upstream_signed_by_another_ca_is_refused_clearly() {
    let pki = TestPki::generate();
    let other = TestPki::generate();
    let upstream = tls_feed(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(&[]);
    let mut e = endpoint("impostor", &format!("https://{}", upstream.addr));
    e.ca_file = Some(write(&dir, "ca.pem", &other.ca_pem));
    e.tls_server_name = Some("localhost".into());
    config.endpoints.push(e);
    let proxy = sluice(config).await;
    let mut c = client(proxy.addr()).await;
    let status = bounded(
        LIMIT,
        "echo",
        c.echo(as_monitor(EchoRequest::default(), "m")),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("TLS handshake"), "{status:?}");
    assert_eq!(upstream.stats.snapshot().calls_total, 0);
}

#[tokio::test]
async fn monitors_can_connect_over_tls() {
    let pki = TestPki::generate();
    let upstream = feed("plain").await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(&[&upstream]);
    config.server.tls = Some(sluice_config::ServerTls {
        cert_file: write(&dir, "cert.pem", &pki.cert_pem),
        key_file: write(&dir, "key.pem", &pki.key_pem),
        client_ca_file: None,
    });
    let proxy = sluice(config).await;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://{}", proxy.addr()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("TLS connect to sluice");
    let mut c = FeedClient::new(channel);
    let mut stream = bounded(
        LIMIT,
        "subscribe over TLS",
        c.subscribe(as_monitor(subscribe("t", 0.0, 16, 10), "m")),
    )
    .await
    .unwrap()
    .into_inner();
    let mut n = 0;
    while stream.message().await.unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 10);

    // A plaintext client is not served.
    let plain = Channel::from_shared(format!("http://{}", proxy.addr()))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plain {
        let status = FeedClient::new(channel)
            .echo(as_monitor(EchoRequest::default(), "m"))
            .await
            .unwrap_err();
        assert_ne!(status.code(), Code::Ok);
    }
}

#[tokio::test]
async fn unusable_tls_files_are_reported_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(&[]);
    config.endpoints.push(endpoint("e", "http://127.0.0.1:1"));
    config.server.tls = Some(sluice_config::ServerTls {
        cert_file: write(&dir, "cert.pem", "not a certificate"),
        key_file: write(&dir, "key.pem", "not a key"),
        client_ca_file: None,
    });
    let error = sluice_proxy::Proxy::bind(std::sync::Arc::new(config))
        .await
        .err()
        .expect("bind fails");
    let text = error.to_string();
    assert!(
        text.contains("cert.pem") && text.contains("CERTIFICATE"),
        "{text}"
    );
}

#[tokio::test]
async fn a_client_certificate_names_its_monitor() {
    let pki = TestPki::generate();
    let upstream = feed("plain").await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(&[&upstream]);
    config.server.reject_unknown_monitors = true;
    // The monitor has a token, which a certificate makes unnecessary.
    config.monitors.push(sluice_config::MonitorConfig {
        token: Some("unused".into()),
        ..monitor("svc-a", sluice_config::TrafficClass::Realtime)
    });
    config.server.tls = Some(sluice_config::ServerTls {
        cert_file: write(&dir, "cert.pem", &pki.cert_pem),
        key_file: write(&dir, "key.pem", &pki.key_pem),
        client_ca_file: Some(write(&dir, "ca.pem", &pki.ca_pem)),
    });
    let proxy = sluice(config).await;
    let connect = |identity: Option<(String, String)>| {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&pki.ca_pem))
            .domain_name("localhost");
        if let Some((cert, key)) = identity {
            tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        let endpoint = Channel::from_shared(format!("https://{}", proxy.addr()))
            .unwrap()
            .tls_config(tls)
            .unwrap();
        async move { endpoint.connect().await.map(FeedClient::new) }
    };

    // Certified as svc-a: served as svc-a without a header or a token.
    let mut certified = connect(Some(pki.client_cert("svc-a")))
        .await
        .expect("mTLS connect");
    bounded(LIMIT, "echo", certified.echo(EchoRequest::default()))
        .await
        .expect("served as the certified monitor");
    let calls = proxy.view().monitor_calls();
    assert!(calls.iter().any(|(id, _)| &**id == "svc-a"), "{calls:?}");
    // A header naming someone else is refused.
    let claimed = bounded(
        LIMIT,
        "claim",
        certified.echo(as_monitor(EchoRequest::default(), "svc-b")),
    )
    .await
    .unwrap_err();
    assert_eq!(claimed.code(), Code::Unauthenticated, "{claimed:?}");
    assert!(claimed.message().contains("certificate"), "{claimed:?}");

    // A certificate naming a monitor the config does not know is refused like that monitor.
    let mut stranger = connect(Some(pki.client_cert("svc-z")))
        .await
        .expect("mTLS connect");
    let refused = bounded(LIMIT, "echo", stranger.echo(EchoRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");

    // Without a certificate there is no connection to speak of.
    let anonymous = match connect(None).await {
        Ok(mut client) => bounded(LIMIT, "echo", client.echo(EchoRequest::default()))
            .await
            .map(|_| ()),
        Err(error) => Err(tonic::Status::unavailable(error.to_string())),
    };
    assert!(
        anonymous.is_err(),
        "a monitor without a certificate is not served"
    );
    assert_eq!(upstream.stats.snapshot().calls_total, 1);
    proxy.shutdown().await;
}
