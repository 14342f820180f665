//! The built-in example kinds (`sleep`, `hash`, `echo`, `flaky`, `poison`) are on only
//! where they are asked for: with the memory broker (the embedded demo) by default, with
//! a durable broker only by `--builtin-kinds true` or `builtin_kinds = true` in the file.

use std::io::Write;

use clap::Parser;
use serde_json::json;
use surge_common::broker::BrokerKind;
use surge_common::config::KindsArgs;
use surge_common::kinds::KindRegistry;
use surge_common::storage::Storage;
use surge_common::testing;

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    kinds: KindsArgs,
}

async fn registry(flags: &[&str], broker: BrokerKind) -> KindRegistry {
    // SURGE_BUILTIN_KINDS and SURGE_CONFIG must not be set in the test's environment
    // (scripts/test.sh and CI set neither).
    let cli = Cli::try_parse_from(std::iter::once("surge").chain(flags.iter().copied())).unwrap();
    let storage = Storage::connect(&testing::temp_sqlite_url()).await.unwrap();
    cli.kinds
        .registry(
            KindRegistry::builder(),
            &storage,
            broker,
            &surge_common::config::CallbackArgs::default(),
        )
        .unwrap()
}

fn has_builtins(registry: &KindRegistry) -> bool {
    ["sleep", "hash", "echo", "flaky", "poison"]
        .iter()
        .all(|name| registry.get(name).is_some())
}

/// A config file with `text` in the temporary directory; its path.
fn config_file(text: &str) -> String {
    let path = std::env::temp_dir().join(format!("surge-builtins-{}.toml", uuid::Uuid::new_v4()));
    std::fs::File::create(&path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn built_in_kinds_are_off_by_default_with_a_durable_broker() {
    assert!(has_builtins(&registry(&[], BrokerKind::Memory).await));
    for broker in [BrokerKind::Rabbitmq, BrokerKind::Kafka] {
        let registry = registry(&[], broker).await;
        assert_eq!(registry.names().count(), 0, "{broker:?}: {registry:?}");
        // The refusal says why and how to turn them on, naming the field.
        let refused = registry.validate("sleep", &json!({"ms": 1})).unwrap_err();
        assert_eq!(refused.field, "kind");
        assert!(
            refused.message.contains("--builtin-kinds true"),
            "{}",
            refused.message
        );
    }
}

#[tokio::test]
async fn the_flag_and_the_file_turn_them_on_or_off() {
    let on = config_file("builtin_kinds = true\n");
    let off = config_file("builtin_kinds = false\n");
    let (on_path, off_path) = (on.as_str(), off.as_str());
    let cases: [(&[&str], BrokerKind, bool); 6] = [
        (&["--builtin-kinds", "true"], BrokerKind::Rabbitmq, true),
        (&["--config", on_path], BrokerKind::Kafka, true),
        (&["--config", off_path], BrokerKind::Memory, false),
        (&["--builtin-kinds", "false"], BrokerKind::Memory, false),
        // The flag wins over the file.
        (
            &["--config", on_path, "--builtin-kinds", "false"],
            BrokerKind::Rabbitmq,
            false,
        ),
        (
            &["--config", off_path, "--builtin-kinds", "true"],
            BrokerKind::Rabbitmq,
            true,
        ),
    ];
    for (flags, broker, expected) in cases {
        let registry = registry(flags, broker).await;
        assert_eq!(has_builtins(&registry), expected, "{flags:?} {broker:?}");
    }
}
