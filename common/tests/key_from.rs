//! `key_from` on a kind in the configuration file: a job whose request names no key takes
//! its fairness key from the payload (a JSON pointer) or from a request header; a key the
//! request names wins; a bad `key_from` stops the start naming the key.

use serde_json::json;
use surge_common::job::JobRequest;
use surge_common::kinds::file::SurgeConfig;
use surge_common::kinds::KindRegistry;
use surge_common::storage::Storage;
use surge_common::testing;

const CONFIG: &str = r#"
[kinds.by_payload]
url = "http://127.0.0.1:9/work"
key_from = "/tenant/id"

[kinds.by_header]
url = "http://127.0.0.1:9/work"
key_from = "header:X-Tenant-Id"

[kinds.plain]
url = "http://127.0.0.1:9/work"
"#;

fn request(kind: &str, payload: serde_json::Value, key: Option<&str>) -> JobRequest {
    serde_json::from_value(json!({"kind": kind, "payload": payload, "key": key})).unwrap()
}

#[tokio::test]
async fn keys_come_from_the_payload_or_a_header_unless_the_request_names_one() {
    let storage = Storage::connect(&testing::temp_sqlite_url()).await.unwrap();
    let config = SurgeConfig::parse(CONFIG, &|_| None).unwrap();
    let kinds = KindRegistry::builder()
        .with_config(&config, &storage)
        .unwrap()
        .build();
    let key = |r: JobRequest| r.into_job(&kinds).map(|j| j.key);

    let by_payload = |p| request("by_payload", p, None);
    assert_eq!(
        key(by_payload(json!({"tenant": {"id": "acme"}}))),
        Ok(Some("acme".into()))
    );
    assert_eq!(
        key(by_payload(json!({"tenant": {"id": 42}}))),
        Ok(Some("42".into()))
    );
    assert_eq!(
        key(by_payload(json!({"tenant": {}}))),
        Ok(None),
        "nothing there: keyless"
    );
    assert_eq!(key(by_payload(json!({"tenant": {"id": [1]}}))), Ok(None));
    let named = request(
        "by_payload",
        json!({"tenant": {"id": "acme"}}),
        Some("mine"),
    );
    assert_eq!(
        key(named),
        Ok(Some("mine".into())),
        "the request's own key wins"
    );
    let long = by_payload(json!({"tenant": {"id": "x".repeat(300)}}));
    let refused = long.into_job(&kinds).unwrap_err();
    assert_eq!(refused.field, "payload/tenant/id", "{refused:?}");

    let headers = |name: &str| (name == "x-tenant-id").then_some("globex");
    let mut from_header = request("by_header", json!({}), None);
    from_header.take_key_from_header(&kinds, headers);
    assert_eq!(key(from_header), Ok(Some("globex".into())));
    let mut no_header = request("by_header", json!({}), None);
    no_header.take_key_from_header(&kinds, |_| None);
    assert_eq!(key(no_header), Ok(None));
    let mut plain = request("plain", json!({"tenant": {"id": "acme"}}), None);
    plain.take_key_from_header(&kinds, headers);
    assert_eq!(
        key(plain),
        Ok(None),
        "a kind without key_from keeps today's behaviour"
    );
}

#[test]
fn a_bad_key_from_names_the_key() {
    for bad in ["tenant_id", "header:", "header:X Tenant", "header:Ümlaut"] {
        let text = format!("[kinds.k]\nurl = \"http://127.0.0.1:9/\"\nkey_from = {bad:?}\n");
        let error = SurgeConfig::parse(&text, &|_| None).unwrap_err();
        assert_eq!(error.key, "kinds.k.key_from", "{bad}: {error:?}");
    }
}
