//! A `llm-npu serve` process on stories260K for the tests that talk to one over HTTP.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Server {
    pub child: Child,
    pub addr: String,
    /// The model it serves.
    pub model: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start(args: &[&str]) -> Option<Server> {
    start_with_env(args, &[])
}

/// `start` with these environment variables set for the server.
pub fn start_with_env(args: &[&str], env: &[(&str, &std::path::Path)]) -> Option<Server> {
    let models = super::shared_models("llm-npu serve")?;
    let template = super::story_template();
    let model = models.join("stories260K-gguf/tinyllamas-stories-260k-f32.gguf");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_llm-npu"));
    cmd.args(["serve", "-m", model.to_str().unwrap(), "--port", "0", "--header-timeout", "1", "--chat-template", template.to_str().unwrap()]).args(args);
    cmd.envs(env.iter().copied());
    let mut child = cmd.stderr(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("the server printed its address").unwrap();
        if let Some(rest) = line.split("on http://").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    // Keep draining stderr so the server never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    Some(Server { child, addr, model })
}

/// One HTTP/1.1 request; (status, body).
pub fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    (status, body)
}

