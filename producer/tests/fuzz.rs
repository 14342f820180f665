//! Property tests over job decoding and request parsing: arbitrary bytes and arbitrary
//! JSON never panic, every failure is classified (400 or 422), and whatever is accepted
//! round-trips through the wire encoding. Bounded: a fixed number of cases per property,
//! so CI time stays predictable.

use proptest::prelude::*;
use serde_json::Value;
use surge_common::job::{Job, JobRequest};
use surge_common::kinds::KindRegistry;
use surge_producer::body::decode;
use surge_producer::error::ApiError;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 2_000,
        ..ProptestConfig::default()
    }
}

/// Arbitrary JSON, a few levels deep.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::String),
        prop_oneof![
            Just("sleep"),
            Just("hash"),
            Just("echo"),
            Just("flaky"),
            Just("poison"),
            Just("kind"),
            Just("payload"),
            Just("ms"),
            Just("rounds"),
            Just("failures")
        ]
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("kind".to_owned()),
                    Just("payload".to_owned()),
                    Just("key".to_owned()),
                    Just("ms".to_owned()),
                    Just("rounds".to_owned()),
                    Just("failures".to_owned()),
                    Just("data".to_owned()),
                    "[a-z]{1,6}",
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn classified(result: Result<JobRequest, ApiError>) -> Option<JobRequest> {
    match result {
        Ok(request) => Some(request),
        Err(ApiError::MalformedJson(_)) | Err(ApiError::Invalid(_)) => None,
        Err(other) => panic!("unexpected error class: {other:?}"),
    }
}

fn accepted_jobs_round_trip(request: JobRequest) {
    let kinds = KindRegistry::builtin();
    if let Ok(job) = request.into_job(&kinds) {
        let decoded = Job::decode(&job.encode()).expect("an accepted job decodes");
        assert_eq!(decoded, job);
        kinds
            .validate(&job.kind, &job.payload)
            .expect("an accepted payload stays valid");
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Some(request) = classified(decode::<JobRequest>(&bytes)) {
            accepted_jobs_round_trip(request);
        }
        let _ = decode::<Vec<JobRequest>>(&bytes);
        let _ = Job::decode(&bytes);
    }

    #[test]
    fn arbitrary_json_never_panics(value in json()) {
        let bytes = value.to_string().into_bytes();
        if let Some(request) = classified(decode::<JobRequest>(&bytes)) {
            accepted_jobs_round_trip(request);
        }
        let _ = Job::decode(&bytes);
    }

    #[test]
    fn job_shaped_json_is_accepted_or_names_a_field(kind in prop_oneof![
            Just("sleep"), Just("hash"), Just("echo"), Just("flaky"), Just("poison"), Just("other")
        ], payload in json()) {
        let body = serde_json::json!({ "kind": kind, "payload": payload }).to_string();
        match decode::<JobRequest>(body.as_bytes()) {
            Ok(request) => match request.into_job(&KindRegistry::builtin()) {
                Ok(job) => prop_assert_eq!(job.kind.as_str(), kind),
                Err(invalid) => prop_assert!(invalid.field == "kind" || invalid.field.starts_with("payload"), "{}", invalid),
            },
            Err(ApiError::Invalid(_)) | Err(ApiError::MalformedJson(_)) => {}
            Err(other) => prop_assert!(false, "unexpected error class: {:?}", other),
        }
    }
}
