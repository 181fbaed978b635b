//! A token endpoint in front of the fake provider that changes the body of the next
//! successful answers (hostile provider answers on top of a real rotation): the fake
//! processes the request as usual (rotates, counts), then the proxy edits the JSON it
//! answered before passing it on. One request per connection (`Connection: close`).

use serde_json::Value;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

type Edit = Box<dyn FnOnce(&mut serde_json::Map<String, Value>) + Send>;

#[derive(Default)]
struct Shared {
    edits: Mutex<VecDeque<Edit>>,
    rewritten: AtomicU64,
}

/// The proxy; stops when dropped.
pub struct AnswerProxy {
    url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for AnswerProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl AnswerProxy {
    /// Listens on loopback and forwards every POST to `upstream` (the fake's token URL).
    pub async fn start(upstream: String) -> AnswerProxy {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let address = listener.local_addr().expect("proxy address");
        let client = reqwest::Client::builder().build().expect("proxy client");
        let shared = Arc::new(Shared::default());
        let serving = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let (client, upstream, shared) = (client.clone(), upstream.clone(), serving.clone());
                tokio::spawn(async move {
                    let _ = serve(socket, &client, &upstream, &shared).await;
                });
            }
        });
        AnswerProxy {
            url: format!("http://{address}/oauth/token"),
            shared,
            task,
        }
    }

    /// The token URL to register instead of the fake's.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The next successful token answer (one carrying an `access_token`) is passed on
    /// after `edit` changed its JSON object. Edits queue up, one per answer.
    pub fn rewrite_next_answer(&self, edit: impl FnOnce(&mut serde_json::Map<String, Value>) + Send + 'static) {
        self.shared.edits.lock().unwrap().push_back(Box::new(edit));
    }

    /// How many answers were rewritten so far.
    pub fn rewritten(&self) -> u64 {
        self.shared.rewritten.load(Ordering::SeqCst)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

async fn serve(
    mut socket: TcpStream,
    client: &reqwest::Client,
    upstream: &str,
    shared: &Shared,
) -> std::io::Result<()> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let header_end = loop {
        let read = socket.read(&mut chunk).await?;
        if read == 0 {
            return Ok(());
        }
        buffer.extend_from_slice(&chunk[..read]);
        if let Some(position) = find(&buffer, b"\r\n\r\n") {
            break position + 4;
        }
    };
    let head = String::from_utf8_lossy(&buffer[..header_end]).into_owned();
    let mut forwarded = Vec::new();
    let mut content_length = 0usize;
    for line in head.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim().to_owned());
        match name.as_str() {
            "content-length" => content_length = value.parse().unwrap_or(0),
            "content-type" | "authorization" | "accept" => forwarded.push((name, value)),
            _ => {}
        }
    }
    while buffer.len() < header_end + content_length {
        let read = socket.read(&mut chunk).await?;
        if read == 0 {
            return Ok(());
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
    let body = buffer[header_end..header_end + content_length].to_vec();
    let mut request = client.post(upstream).body(body);
    for (name, value) in forwarded {
        request = request.header(name, value);
    }
    let (status, mut answer) = match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.bytes().await.map(|b| b.to_vec()).unwrap_or_default())
        }
        Err(_) => (502, Vec::new()),
    };
    if status == 200
        && let Ok(Value::Object(mut object)) = serde_json::from_slice::<Value>(&answer)
        && object.contains_key("access_token")
    {
        let edit = shared.edits.lock().unwrap().pop_front();
        if let Some(edit) = edit {
            edit(&mut object);
            shared.rewritten.fetch_add(1, Ordering::SeqCst);
            answer = serde_json::to_vec(&Value::Object(object)).expect("json");
        }
    }
    let head = format!(
        "HTTP/1.1 {status} Proxied\r\ncontent-type: application/json\r\ncache-control: no-store\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        answer.len()
    );
    socket.write_all(head.as_bytes()).await?;
    socket.write_all(&answer).await?;
    socket.shutdown().await
}
