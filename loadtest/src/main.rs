//! Roomcast load generator. Placeholder until the benchmarks issue fills it in: it will
//! drive controller and display clients against gateway URLs and report latency, loss and
//! throughput (see the open issue "Load generator and benchmarks").

fn main() {
    eprintln!("roomcast-loadtest is not implemented yet; see the open benchmarks issue");
    std::process::exit(2);
}
