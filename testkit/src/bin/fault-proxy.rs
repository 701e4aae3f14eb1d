//! `fault-proxy LISTEN_PORT UPSTREAM_PORT CONTROL_PORT`: the test kit's fault proxy as a
//! process, for `make chaos` (scripts/chaos.sh). Forwards 127.0.0.1:LISTEN_PORT to
//! 127.0.0.1:UPSTREAM_PORT; takes one command per connection to 127.0.0.1:CONTROL_PORT
//! (`delay MS`, `blackhole`, `heal`, `cut`, `restore`; see `testkit::Proxy`) and answers
//! `ok`, or `error: ...`.

use std::net::SocketAddr;
use std::process::ExitCode;

use testkit::Proxy;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> ExitCode {
    let ports: Result<Vec<u16>, _> = std::env::args().skip(1).map(|a| a.parse()).collect();
    let [listen, upstream, control] = ports.as_deref().unwrap_or_default() else {
        eprintln!("usage: fault-proxy LISTEN_PORT UPSTREAM_PORT CONTROL_PORT");
        return ExitCode::from(64);
    };
    let local = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let proxy = match Proxy::bind(local(*listen), local(*upstream)).await {
        Ok(proxy) => proxy,
        Err(e) => {
            eprintln!("fault-proxy: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let control = match TcpListener::bind(local(*control)).await {
        Ok(control) => control,
        Err(e) => {
            eprintln!("fault-proxy: cannot listen on {control}: {e}");
            return ExitCode::FAILURE;
        }
    };
    loop {
        let Ok((stream, _)) = control.accept().await else {
            continue;
        };
        let (read, mut write) = stream.into_split();
        let mut line = String::new();
        if BufReader::new(read).read_line(&mut line).await.is_err() {
            continue;
        }
        let answer = match proxy.command(&line) {
            Ok(()) => "ok\n".to_string(),
            Err(e) => format!("error: {e}\n"),
        };
        let _ = write.write_all(answer.as_bytes()).await;
    }
}
