//! The admin API's transport, through the real binary and raw TCP: the header-read
//! timeout closes slow and silent clients, the idle timeout closes quiet keep-alive
//! connections, the connection cap makes further connections wait, and `/metrics`
//! needs credentials unless it has its own address.

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
