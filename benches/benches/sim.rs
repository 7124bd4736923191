//! Simulator speed: events per second on a small federation.
//! Run: `cargo bench -p nymstr-benches --bench sim`.

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nymstr_sim::{Scenario, run};

const SCENARIO: &str = r#"
seed = 5
duration = "2m"
[clients]
count = 200
join_spread = "10s"
[workload.dm]
rate_per_client_per_min = 2.0
[[faults]]
at = "1m"
kind = "crash"
node = 0
restart_after = "10s"
"#;

fn sim(c: &mut Criterion) {
    let sc = Scenario::parse(SCENARIO).expect("parses");
    let events = run(sc.clone()).events;
    let mut g = c.benchmark_group("sim");
    g.throughput(Throughput::Elements(events));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    g.bench_function("small_federation_events", |b| b.iter(|| run(sc.clone())));
    g.finish();
}

criterion_group!(benches, sim);
criterion_main!(benches);
