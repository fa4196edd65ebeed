//! Given/when/then for one aggregate, without a runtime.

use std::fmt::Debug;

use crate::domain::Aggregate;

/// A fixture for aggregate `A`: the events that already happened.
///
/// ```
/// # use nursery::domain::{Aggregate, Command};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
/// # pub struct Planted { pub species: String }
/// # nursery::event_set! { pub enum PotEvent { Planted } }
/// # #[derive(Clone, Debug, Default, Serialize, Deserialize)]
/// # struct Pot { planted: bool }
/// # #[derive(Debug, PartialEq, thiserror::Error)]
/// # #[error("already planted")]
/// # struct AlreadyPlanted;
/// # struct Plant(String);
/// # impl Command for Plant { fn name(&self) -> &'static str { "Plant" } }
/// # impl Aggregate for Pot {
/// #     const TYPE: &'static str = "Pot";
/// #     type Command = Plant;
/// #     type Event = PotEvent;
/// #     type Error = AlreadyPlanted;
/// #     fn decide(&self, Plant(species): &Plant) -> Result<Vec<PotEvent>, AlreadyPlanted> {
/// #         if self.planted { return Err(AlreadyPlanted) }
/// #         Ok(vec![Planted { species: species.clone() }.into()])
/// #     }
/// #     fn apply(&mut self, _: &PotEvent) { self.planted = true }
/// # }
/// use nursery::testkit::AggregateFixture;
///
/// AggregateFixture::<Pot>::given([])
///     .when(Plant("fern".into()))
///     .expect_events([Planted { species: "fern".into() }.into()]);
///
/// AggregateFixture::<Pot>::given([Planted { species: "fern".into() }.into()])
///     .when(Plant("ivy".into()))
///     .expect_error(AlreadyPlanted);
/// ```
pub struct AggregateFixture<A: Aggregate> {
    state: A,
}

/// The outcome of a command on a fixture, to check.
pub struct Then<A: Aggregate> {
    state: A,
    result: Result<Vec<A::Event>, A::Error>,
}

impl<A: Aggregate> AggregateFixture<A> {
    /// The aggregate after `events`.
    pub fn given(events: impl IntoIterator<Item = A::Event>) -> Self {
        let mut state = A::default();
        for event in events {
            state.apply(&event);
        }
        Self { state }
    }

    /// Decides `command` against the given state.
    pub fn when(self, command: A::Command) -> Then<A> {
        let result = self.state.decide(&command);
        Then {
            state: self.state,
            result,
        }
    }

    /// The state the given events built.
    pub fn state(&self) -> &A {
        &self.state
    }
}

impl<A: Aggregate> Then<A>
where
    A::Event: PartialEq,
    A::Error: Debug,
{
    /// Asserts the command recorded exactly `expected`, and returns the state after them.
    #[track_caller]
    #[allow(clippy::panic, reason = "a failed expectation fails the test")]
    pub fn expect_events(self, expected: impl IntoIterator<Item = A::Event>) -> A {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        match self.result {
            Ok(events) => {
                assert_eq!(
                    events, expected,
                    "the command recorded other events than expected"
                );
                let mut state = self.state;
                state.apply_all(&events);
                state
            }
            Err(error) => {
                panic!("expected events {expected:?}, but the command was rejected: {error:?}")
            }
        }
    }

    /// Asserts the command recorded events that `check` accepts (for events with generated
    /// parts), and returns the state after them.
    #[track_caller]
    #[allow(clippy::panic, reason = "a failed expectation fails the test")]
    pub fn expect_events_matching(self, check: impl FnOnce(&[A::Event]) -> bool) -> A {
        match self.result {
            Ok(events) => {
                assert!(check(&events), "unexpected events {events:?}");
                let mut state = self.state;
                state.apply_all(&events);
                state
            }
            Err(error) => panic!("expected events, but the command was rejected: {error:?}"),
        }
    }

    /// Asserts the command recorded nothing and was not rejected.
    #[track_caller]
    pub fn expect_no_events(self) -> A {
        self.expect_events([])
    }

    /// Asserts the command was rejected with an error equal to `expected`.
    #[track_caller]
    #[allow(clippy::panic, reason = "a failed expectation fails the test")]
    pub fn expect_error(self, expected: A::Error)
    where
        A::Error: PartialEq,
    {
        match self.result {
            Err(error) => assert_eq!(error, expected),
            Ok(events) => {
                panic!("expected the error {expected:?}, but the command recorded {events:?}")
            }
        }
    }

    /// Asserts the command was rejected with an error matching `check`.
    #[track_caller]
    #[allow(clippy::panic, reason = "a failed expectation fails the test")]
    pub fn expect_error_matching(self, check: impl FnOnce(&A::Error) -> bool) {
        match self.result {
            Err(error) => assert!(check(&error), "unexpected error {error:?}"),
            Ok(events) => panic!("expected an error, but the command recorded {events:?}"),
        }
    }
}
