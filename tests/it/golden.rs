//! Golden payloads: a stored sample of every event revision, in both formats, must still decode
//! into today's event. Adding an event type or a revision without a sample fails here.
//! `NURSERY_BLESS=1 cargo test golden` writes the missing samples of current revisions (old
//! revisions are written once, by the test that knew their shape, and never rewritten).

use std::path::{Path, PathBuf};

use chrono::Utc;
use nursery::domain::EventSet;
use nursery::store::{Codec, Metadata, PayloadFormat, RecordedEvent, StreamId};
use serde::Serialize;
use uuid::Uuid;

use crate::fixtures::{Planted, PotEvent, Pruned, Watered, upcasters};

fn dir(aggregate: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(aggregate)
}

fn file(aggregate: &str, event_type: &str, revision: u32, format: PayloadFormat) -> PathBuf {
    let extension = match format {
        PayloadFormat::MessagePack => "msgpack",
        PayloadFormat::Json => "json",
    };
    dir(aggregate).join(format!("{event_type}.v{revision}.{extension}"))
}

fn bless() -> bool {
    std::env::var_os("NURSERY_BLESS").is_some()
}

/// Reads a sample, writing it first when blessing and it is missing.
fn sample<T: Serialize>(
    aggregate: &str,
    event_type: &str,
    revision: u32,
    format: PayloadFormat,
    value: &T,
) -> Vec<u8> {
    let path = file(aggregate, event_type, revision, format);
    if !path.exists() && bless() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, format.encode(value).unwrap()).unwrap();
    }
    std::fs::read(&path).unwrap_or_else(|_| {
        panic!(
            "missing golden sample {} (NURSERY_BLESS=1 writes it)",
            path.display()
        )
    })
}

/// Checks that the sample of `event_type` at `revision` decodes, through the codec's upcasters,
/// into `expected`.
fn check<E: EventSet + PartialEq, T: Serialize>(
    codec: &Codec,
    aggregate: &str,
    event_type: &str,
    revision: u32,
    written: &T,
    expected: &E,
) {
    for format in [PayloadFormat::MessagePack, PayloadFormat::Json] {
        let payload = sample(aggregate, event_type, revision, format, written);
        let record = RecordedEvent {
            stream: StreamId::new(aggregate, "golden"),
            sequence: 1,
            position: 1,
            event_id: Uuid::nil(),
            event_type: event_type.into(),
            revision,
            format,
            payload,
            metadata: Metadata::default(),
            recorded_at: Utc::now(),
        };
        let decoded: E = codec.decode_event(&record).unwrap_or_else(|e| {
            panic!("golden {event_type} v{revision} ({format:?}) no longer decodes: {e}")
        });
        assert_eq!(
            &decoded, expected,
            "golden {event_type} v{revision} ({format:?})"
        );
    }
}

#[test]
fn every_pot_event_revision_still_decodes() {
    let codec = Codec::default().with_upcasters(upcasters());
    let samples: Vec<PotEvent> = vec![
        Planted {
            species: "Nephrolepis exaltata".into(),
        }
        .into(),
        Watered {
            millilitres: 250,
            source: "rain".into(),
        }
        .into(),
        Pruned { leaves: 3 }.into(),
    ];
    for (event_type, revision) in PotEvent::types() {
        let event = samples
            .iter()
            .find(|e| e.event_type() == *event_type)
            .unwrap_or_else(|| panic!("no golden sample for {event_type}: add one"));
        check(&codec, "Pot", event_type, *revision, event, event);
    }

    #[derive(Serialize)]
    struct WateredV1 {
        ml: u32,
    }
    check(
        &codec,
        "Pot",
        "Watered",
        1,
        &WateredV1 { ml: 120 },
        &PotEvent::from(Watered {
            millilitres: 120,
            source: "tap".into(),
        }),
    );
}
