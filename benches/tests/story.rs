//! The demo's story keeps its promises, embedded (memory broker, SQLite): called directly,
//! an API with a limit refuses part of a burst; through Surge, with an HTTP kind pointing
//! at it, every request is accepted and succeeds, and the API — by its own count — never
//! has more than its limit in flight and refuses nothing.
//! (How fast is the benchmark's business; nothing here asserts a timing.)

use std::sync::Arc;
use std::time::Duration;

use surge_benches::story::{self, StoryConfig};
use surge_common::broker::memory::MemoryBroker;
use surge_common::storage::Storage;
use surge_common::testing;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_story_on_the_embedded_default() {
    let storage = Storage::connect(&testing::temp_sqlite_url()).await.unwrap();
    let config = StoryConfig {
        jobs: 40,
        limit: 20,
        workers: 1,
        // Long enough that the 40 direct requests all arrive while the first 20 work.
        job_ms: 300,
        drain_timeout: Duration::from_secs(120),
        config_dir: std::env::temp_dir(),
        progress: false,
    };
    let report = story::run(Arc::new(MemoryBroker::new()), storage, &config)
        .await
        .unwrap();
    println!("{report}");

    // Directly: the API refused what it could not take, and never took more than 20.
    let direct = &report.direct;
    assert!(direct.refused > 0, "{report}");
    assert_eq!(direct.service.refused as usize, direct.refused, "{report}");
    assert_eq!(direct.succeeded + direct.refused + direct.failed, 40);
    assert!(direct.service.peak <= 20, "{report}");

    // Through Surge: all accepted, all succeeded once, the API never over its limit and
    // never refusing.
    let surge = &report.surge;
    assert_eq!(surge.accepted, 40, "{report}");
    assert_eq!(surge.succeeded, 40, "{report}");
    assert_eq!((surge.lost, surge.duplicates), (0, 0), "{report}");
    assert!(report.service.peak <= 20, "{report}");
    assert!(surge.peak_in_flight <= 20, "{report}");
    assert_eq!(report.service.refused, 0, "{report}");
    assert_eq!(report.service.served, 40, "{report}");
    // The backlog exceeded the limit, so the API was kept busy at it.
    assert!(report.service.peak > 1, "{report}");
    assert!(report.violations().is_empty(), "{report}");

    // The picture of both runs is written.
    let chart = std::env::temp_dir().join(format!(
        "surge-story-test-{}.svg",
        uuid::Uuid::new_v4().simple()
    ));
    story::write_chart(&report, &chart).unwrap();
    let svg = std::fs::read_to_string(&chart).unwrap();
    let _ = std::fs::remove_file(&chart);
    assert!(svg.contains("<svg") && svg.contains("through Surge"));
}
