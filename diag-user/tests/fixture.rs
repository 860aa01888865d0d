//! A real recording made by format version 1 (5 loopback connections on
//! port 47999), kept in the repository: every later reader must read it,
//! and mutations of it must never panic the reader. Needs no root.

use diag_common::user::AnyEvent;
use diag_user::{
    record::{
        format::{Item, parse_all},
        reader::{Reader, Record},
    },
    view::report::Review,
};
use proptest::prelude::*;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/v1-small.diag");

#[test]
fn version_1_recording_reads_back_exactly() {
    let mut r = Reader::open(FIXTURE.as_ref()).expect("the fixture opens");
    assert_eq!(r.version, 1);
    assert_eq!(r.header.hostname, "fixture");
    assert!(
        r.header
            .probes
            .iter()
            .any(|p| p == "sock:inet_sock_set_state")
    );
    let mut events = Vec::new();
    let mut tables = 0;
    for rec in r.by_ref() {
        match rec {
            Record::Events(e) => events.extend(e),
            Record::Table(_) => tables += 1,
            Record::Damage(d) => panic!("the fixture is not damaged: {d}"),
            _ => {}
        }
    }
    assert!(r.ended, "finished cleanly");
    assert!(tables >= 1);
    // 5 connections x 10 transitions, plus the listener's listen and close.
    assert_eq!(events.len(), 52);
    assert!(events.iter().all(|e| matches!(e, AnyEvent::TcpState(_))));
    let header = Reader::open(FIXTURE.as_ref()).unwrap().header;
    let review = Review::build(header, Reader::open(FIXTURE.as_ref()).unwrap(), || true);
    let totals = review.last.expect("a snapshot").totals;
    assert_eq!(
        (
            totals.active_opens,
            totals.passive_opens,
            totals.closes,
            totals.time_waits
        ),
        (5, 5, 10, 5)
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Mutations of the real file: flips and cuts never panic, and every
    /// frame that survives is one of the original frames.
    #[test]
    fn mutated_fixture_never_panics(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 0..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let good = std::fs::read(FIXTURE).unwrap();
        let (_, original) = parse_all(&good).unwrap();
        let originals: Vec<_> = original.into_iter().filter_map(|i| match i { Item::Frame(f) => Some((f.kind, f.payload)), _ => None }).collect();
        let mut bad = good.clone();
        for (i, x) in flips {
            let at = 16 + i.index(bad.len() - 16);
            bad[at] ^= x;
        }
        let end = 16 + cut.index(bad.len() - 16 + 1);
        if let Ok((_, items)) = parse_all(&bad[..end]) {
            for i in items {
                if let Item::Frame(f) = i {
                    prop_assert!(originals.contains(&(f.kind, f.payload)));
                }
            }
        }
    }
}
