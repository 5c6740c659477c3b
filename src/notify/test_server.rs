//! A loopback HTTP(S) server for tests: one connection per scripted
//! answer, every request recorded.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

/// One request a test server received.
#[derive(Debug, Clone)]
pub(crate) struct Got {
    pub(crate) line: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Got {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A server on 127.0.0.1 that answers one connection per scripted answer
/// (`"503"`, or `"429\r\nRetry-After: 5"`: a status and extra header
/// lines), then stops listening.
pub(crate) struct Server {
    pub(crate) port: u16,
    got: Arc<Mutex<Vec<Got>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    pub(crate) fn start(answers: &[&str], tls: Option<Arc<rustls::ServerConfig>>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let log = got.clone();
        let answers: Vec<String> = answers.iter().map(|a| a.to_string()).collect();
        let thread = std::thread::spawn(move || {
            for answer in answers {
                let Ok((tcp, _)) = listener.accept() else {
                    return;
                };
                let _ = tcp.set_read_timeout(Some(StdDuration::from_secs(10)));
                let _ = tcp.set_write_timeout(Some(StdDuration::from_secs(10)));
                match &tls {
                    Some(cfg) => {
                        let Ok(conn) = rustls::ServerConnection::new(cfg.clone()) else {
                            continue;
                        };
                        let mut s = rustls::StreamOwned::new(conn, tcp);
                        serve_one(&mut s, &answer, &log);
                    }
                    None => {
                        let mut s = tcp;
                        serve_one(&mut s, &answer, &log);
                    }
                }
            }
        });
        Server {
            port,
            got,
            thread: Some(thread),
        }
    }

    pub(crate) fn url(&self, scheme: &str) -> String {
        format!("{scheme}://127.0.0.1:{}/hook/T0K3N", self.port)
    }

    /// What it received, once every scripted answer was given.
    pub(crate) fn finish(mut self) -> Vec<Got> {
        if let Some(t) = self.thread.take() {
            // A connection that never comes would hang the thread: poke it.
            for _ in 0..20 {
                if t.is_finished() {
                    break;
                }
                let _ = TcpStream::connect(("127.0.0.1", self.port));
                std::thread::sleep(StdDuration::from_millis(50));
            }
            let _ = t.join();
        }
        self.got.lock().unwrap().clone()
    }
}

fn serve_one(s: &mut (impl Read + Write), answer: &str, log: &Mutex<Vec<Got>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 65_536 {
            return;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    log.lock().unwrap().push(Got {
        line,
        headers,
        body,
    });
    let (status, extra) = answer.split_once("\r\n").unwrap_or((answer, ""));
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!("{extra}\r\n")
    };
    let _ = write!(
        s,
        "HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n{extra}\r\n{{}}"
    );
    let _ = s.flush();
}
