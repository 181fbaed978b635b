//! The admin API's transport, through the real binary and raw TCP: the header-read
//! timeout closes slow and silent clients, the idle timeout closes quiet keep-alive
//! connections, the connection cap makes further connections wait, and `/metrics`
//! needs credentials unless it has its own address. Over TLS: the admin API serves its
//! certificate files, follows a valid replacement and keeps its certificate when the
//! replacement is broken, refuses plain HTTP, and the CLI trusts a private CA.

use std::time::Duration;
use tokenvisor_tests::service::{Service, answer, field};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

fn start(env: &[(&str, &str)]) -> (Service, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let env: Vec<(&str, String)> = env.iter().map(|(key, value)| (*key, (*value).to_owned())).collect();
    let service = Service::start(std::path::Path::new(env!("CARGO_BIN_EXE_tokenvisor")), dir.path(), &env);
    (service, dir)
}

fn addr(service: &Service) -> String {
    service.base.trim_start_matches("http://").to_owned()
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: tokenvisor\r\n\r\n";

/// Reads one response (headers and a `Content-Length` body); `None` if none came
/// within `wait` or the connection closed first.
async fn read_response(stream: &mut TcpStream, wait: Duration) -> Option<String> {
    let read = async {
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buffer.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buffer).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|line| {
                        let (name, value) = line.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if body.len() >= length {
                    return Some(text);
                }
            }
        }
    };
    tokio::time::timeout(wait, read).await.ok().flatten()
}

/// Waits until the server closes `stream` (EOF or reset), reading and dropping what it
/// sends; the time it took, or `None` if it stayed open for `wait`.
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> Option<Duration> {
    let started = Instant::now();
    let read = async {
        let mut chunk = [0u8; 1024];
        while let Ok(n) = stream.read(&mut chunk).await {
            if n == 0 {
                break;
            }
        }
    };
    tokio::time::timeout(wait, read).await.ok().map(|()| started.elapsed())
}

/// A client that trickles its headers (a byte every 200 ms) and one that sends nothing
/// are both closed after the header timeout (1 s here); a prompt client is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_silent_clients_are_closed_after_the_header_timeout() {
    let (service, _dir) = start(&[
        ("TOKENVISOR_ADMIN_HEADER_TIMEOUT", "1s"),
        ("TOKENVISOR_ADMIN_IDLE_TIMEOUT", "30s"),
    ]);
    let addr = addr(&service);

    let silent = TcpStream::connect(&addr).await.unwrap();
    let trickling = TcpStream::connect(&addr).await.unwrap();
    let started = Instant::now();
    let (mut reader, mut writer) = trickling.into_split();
    let trickle = tokio::spawn(async move {
        if writer
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: tokenvisor\r\nX-Slow: ")
            .await
            .is_err()
        {
            return;
        }
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if writer.write_all(b"a").await.is_err() {
                return;
            }
        }
    });
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        let mut chunk = [0u8; 1024];
        while let Ok(n) = reader.read(&mut chunk).await {
            if n == 0 {
                break;
            }
        }
        started.elapsed()
    })
    .await
    .expect("the trickling client was still connected after 5 s (header timeout 1 s)");
    assert!(closed >= Duration::from_millis(800), "closed too early: {closed:?}");
    trickle.abort();

    let mut silent = silent;
    let waited = closed_within(&mut silent, Duration::from_secs(3))
        .await
        .expect("the silent client was still connected (header timeout 1 s)");
    assert!(started.elapsed() < Duration::from_secs(6), "{waited:?}");

    // A client that sends its request at once is answered.
    let mut prompt = TcpStream::connect(&addr).await.unwrap();
    prompt.write_all(HEALTHZ).await.unwrap();
    let response = read_response(&mut prompt, Duration::from_secs(5))
        .await
        .expect("an answer");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}

/// A keep-alive connection that is quiet after its response is closed after the idle
/// timeout (1 s here; the header timeout is longer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let (service, _dir) = start(&[
        ("TOKENVISOR_ADMIN_HEADER_TIMEOUT", "30s"),
        ("TOKENVISOR_ADMIN_IDLE_TIMEOUT", "1s"),
    ]);
    let mut stream = TcpStream::connect(addr(&service)).await.unwrap();
    stream.write_all(HEALTHZ).await.unwrap();
    let response = read_response(&mut stream, Duration::from_secs(5))
        .await
        .expect("an answer");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        !response.to_ascii_lowercase().contains("connection: close"),
        "{response}"
    );
    let waited = closed_within(&mut stream, Duration::from_secs(4))
        .await
        .expect("the idle keep-alive connection was still open after 4 s (idle timeout 1 s)");
    assert!(waited >= Duration::from_millis(700), "closed too early: {waited:?}");
}

/// With the cap at 5, five open connections are served and a sixth waits (it is
/// accepted by the kernel, not answered) until one of the five closes; then it is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_connection_cap_a_connection_waits_for_a_free_slot() {
    let (service, _dir) = start(&[
        ("TOKENVISOR_ADMIN_HEADER_TIMEOUT", "30s"),
        ("TOKENVISOR_ADMIN_IDLE_TIMEOUT", "30s"),
        ("TOKENVISOR_ADMIN_MAX_CONNECTIONS", "5"),
    ]);
    let addr = addr(&service);
    let mut held = Vec::new();
    for n in 0..5 {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        stream.write_all(HEALTHZ).await.unwrap();
        let response = read_response(&mut stream, Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("connection {n} within the cap was not served"));
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        held.push(stream);
    }
    let mut sixth = TcpStream::connect(&addr).await.unwrap();
    sixth.write_all(HEALTHZ).await.unwrap();
    assert!(
        read_response(&mut sixth, Duration::from_millis(1500)).await.is_none(),
        "a sixth connection was served while five were open (cap 5)"
    );
    // The held ones still work.
    held[1].write_all(HEALTHZ).await.unwrap();
    assert!(read_response(&mut held[1], Duration::from_secs(5)).await.is_some());

    drop(held.remove(0));
    let response = read_response(&mut sixth, Duration::from_secs(5))
        .await
        .expect("the waiting connection was not served after a slot freed");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}

/// By default `/metrics` needs the admin token (`/openapi.json` and `/healthz` stay
/// open); with `TOKENVISOR_METRICS_ADDR` it answers there without credentials and the
/// admin address no longer serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_the_admin_token_unless_they_have_their_own_address() {
    let (service, _dir) = start(&[]);
    let url = format!("{}/metrics", service.base);
    let anonymous = answer(service.http.get(&url).send().await.unwrap()).await;
    assert_eq!(anonymous.status, 401, "{anonymous:?}");
    assert_eq!(anonymous.code(), "unauthorized");
    let wrong = answer(
        service
            .http
            .get(&url)
            .bearer_auth("not-the-admin-token-0000")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(wrong.status, 401, "{wrong:?}");
    assert!(service.metrics().await.contains("tokenvisor_"));
    for open in ["/openapi.json", "/healthz"] {
        let response = service
            .http
            .get(format!("{}{open}", service.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{open}");
    }
    drop(service);

    let (mut service, _dir) = start(&[("TOKENVISOR_METRICS_ADDR", "127.0.0.1:0")]);
    let line = service.wait_for_log("metrics listening", Duration::from_secs(10));
    let metrics_addr = field(&line, "addr").unwrap_or_else(|| panic!("no addr in {line:?}"));
    let open = service
        .http
        .get(format!("http://{metrics_addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(open.status().as_u16(), 200);
    assert!(open.text().await.unwrap().contains("tokenvisor_"));
    let on_admin = service.get("/metrics").await;
    assert_eq!(on_admin.status, 404, "{on_admin:?}");
    assert_eq!(on_admin.code(), "metrics_disabled");
}

/// A test certificate authority and the leaf certificates for `127.0.0.1` it signs.
struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

/// A leaf: its PEM, its key's PEM, its DER.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

impl TestCa {
    fn new() -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "tokenvisor test CA");
        let cert = params.self_signed(&key).unwrap();
        Self { cert, key }
    }

    /// A certificate for `127.0.0.1` and `name`, with serial number `serial`.
    fn leaf(&self, name: &str, serial: u64) -> Leaf {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

/// Replaces `path`'s content at once (written beside it, then renamed over it).
fn replace_file(path: &std::path::Path, content: &str) {
    let temporary = path.with_extension("new");
    std::fs::write(&temporary, content).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

/// The certificate a new TLS connection to `addr` is shown (verified against `ca`).
async fn presented_certificate(addr: &str, ca: &TestCa) -> Vec<u8> {
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert.der().clone()).unwrap();
    let config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let server_name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector.connect(server_name, tcp).await.expect("TLS handshake");
    tls.get_ref().1.peer_certificates().expect("a certificate")[0].to_vec()
}

/// An https client that trusts `ca` only.
fn https_client(ca: &TestCa) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.cert.pem().as_bytes()).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// The certificate new connections get, once it is `expected` (within `wait`).
async fn presented_within(addr: &str, ca: &TestCa, expected: &[u8], wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    loop {
        if presented_certificate(addr, ca).await == expected {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_the_admin_api_follows_its_certificate_files_and_keeps_the_old_one_when_the_new_is_broken() {
    let ca = TestCa::new();
    let first = ca.leaf("first.test", 1);
    let files = tempfile::tempdir().unwrap();
    let cert_path = files.path().join("tls.crt");
    let key_path = files.path().join("tls.key");
    let ca_path = files.path().join("ca.pem");
    std::fs::write(&cert_path, &first.cert_pem).unwrap();
    std::fs::write(&key_path, &first.key_pem).unwrap();
    std::fs::write(&ca_path, ca.cert.pem()).unwrap();
    let (mut service, _dir) = start(&[
        ("TOKENVISOR_ADMIN_TLS_CERT", cert_path.to_str().unwrap()),
        ("TOKENVISOR_ADMIN_TLS_KEY", key_path.to_str().unwrap()),
        ("TOKENVISOR_ADMIN_TLS_RELOAD", "1s"),
        ("TOKENVISOR_ADMIN_HEADER_TIMEOUT", "1s"),
    ]);
    let addr = addr(&service);
    let https = format!("https://{addr}");
    let client = https_client(&ca);

    // https with the test CA: served, authenticated routes included.
    let health = client.get(format!("{https}/healthz")).send().await.expect("https");
    assert_eq!(health.status(), 200);
    let listed = client
        .get(format!("{https}/v1/integrations"))
        .bearer_auth(&service.token)
        .send()
        .await
        .expect("https");
    assert_eq!(listed.status(), 200);
    assert_eq!(presented_certificate(&addr, &ca).await, first.der);
    // Without the CA the certificate is not trusted; plain HTTP gets no answer.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let untrusting = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    assert!(untrusting.get(format!("{https}/healthz")).send().await.is_err());
    let plain = untrusting.get(format!("http://{addr}/healthz")).send().await;
    assert!(
        plain.as_ref().map_or(true, |response| response.status() != 200),
        "plain HTTP was served: {plain:?}"
    );
    // A client that never starts the handshake is closed after the header timeout.
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    let closed = closed_within(&mut silent, Duration::from_secs(5)).await;
    assert!(
        closed.is_some_and(|after| after < Duration::from_secs(3)),
        "a silent TLS client held its connection: {closed:?}"
    );

    // The dashboard's cookie is Secure: the public URL defaults to https.
    let signed_in = client
        .post(format!("{https}/ui/sign-in"))
        .form(&[("token", service.token.as_str())])
        .send()
        .await
        .expect("sign in");
    let cookie = signed_in
        .headers()
        .get(reqwest::header::SET_COOKIE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(cookie.contains("; Secure"), "{cookie:?}");

    // The CLI talks to it with TOKENVISOR_ADMIN_CA, and not without.
    let cli = |ca: Option<&std::path::Path>| {
        let mut command =
            tokenvisor_tests::process::command(std::path::Path::new(env!("CARGO_BIN_EXE_tokenvisor")), &service.dir);
        command
            .env("TOKENVISOR_ADMIN_URL", &https)
            .env("TOKENVISOR_ADMIN_TOKEN", &service.token)
            .env_remove("TOKENVISOR_ADMIN_CA")
            .args(["integrations", "list"]);
        if let Some(ca) = ca {
            command.env("TOKENVISOR_ADMIN_CA", ca);
        }
        command.output().unwrap()
    };
    let trusted = cli(Some(&ca_path));
    assert!(trusted.status.success(), "{}", String::from_utf8_lossy(&trusted.stderr));
    assert!(!cli(None).status.success(), "the CLI trusted an unknown CA");

    // A new certificate (another serial and name): new connections get it within the
    // reload interval, without a restart.
    let second = ca.leaf("second.test", 2);
    replace_file(&key_path, &second.key_pem);
    replace_file(&cert_path, &second.cert_pem);
    assert!(
        presented_within(&addr, &ca, &second.der, Duration::from_secs(5)).await,
        "the new certificate was not served"
    );
    service.wait_for_log("admin API TLS certificate reloaded", Duration::from_secs(5));

    // A broken replacement, then a certificate with a key that is not its own: both
    // refused, the second certificate stays.
    replace_file(
        &cert_path,
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
    );
    service.wait_for_log("new admin API TLS certificate refused", Duration::from_secs(5));
    assert_eq!(presented_certificate(&addr, &ca).await, second.der);
    let third = ca.leaf("third.test", 3);
    replace_file(&cert_path, &third.cert_pem);
    service.wait_for_log("new admin API TLS certificate refused", Duration::from_secs(5));
    assert_eq!(presented_certificate(&addr, &ca).await, second.der);
    let health = client.get(format!("{https}/healthz")).send().await.expect("https");
    assert_eq!(health.status(), 200);
}
