//! Given/when/then for one saga instance, with a virtual clock, without a runtime (as Axon's
//! `SagaTestFixture`).

use crate::domain::{Routing, Saga, Step};

/// One saga instance under test: its state, its pending deadlines and the time.
///
/// ```
/// # use nursery::domain::{Routing, Saga, Step, Association};
/// # use serde::{Deserialize, Serialize};
/// #[derive(Clone, Debug, Default, Serialize, Deserialize)]
/// struct Reminder { reminded: bool }
/// #[derive(Clone, Debug)]
/// enum Ev { Planted(String), Watered(String) }
/// #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
/// enum Cmd { Remind(String) }
/// impl Saga for Reminder {
///     const NAME: &'static str = "reminder";
///     type Event = Ev;
///     type Command = Cmd;
///     fn routing(event: &Ev) -> Option<Routing> {
///         match event {
///             Ev::Planted(pot) => Some(Routing::Start(Association::new("pot", pot))),
///             Ev::Watered(pot) => Some(Routing::To(Association::new("pot", pot))),
///         }
///     }
///     fn handle(&mut self, event: &Ev, _now: i64) -> Step<Cmd> {
///         match event {
///             Ev::Planted(_) => Step::nothing().deadline("water", 3600),
///             Ev::Watered(_) => Step::nothing().cancel("water").end(),
///         }
///     }
///     fn on_deadline(&mut self, _name: &str, _now: i64) -> Step<Cmd> {
///         self.reminded = true;
///         Step::nothing().send(Cmd::Remind("p".into())).end()
///     }
/// }
///
/// use nursery::testkit::SagaFixture;
/// SagaFixture::<Reminder>::new()
///     .given([Ev::Planted("p".into())])
///     .when_time_elapses(3599)
///     .expect_no_commands()
///     .and()
///     .when_time_elapses(1)
///     .expect_commands([Cmd::Remind("p".into())])
///     .expect_ended();
/// ```
pub struct SagaFixture<S: Saga> {
    state: Option<S>,
    deadlines: Vec<(i64, String)>,
    compensations: Vec<S::Command>,
    now: i64,
    ended: bool,
}

/// What one event or elapsed time made the saga do.
pub struct SagaThen<S: Saga> {
    fixture: SagaFixture<S>,
    sent: Vec<S::Command>,
    set: Vec<String>,
    cancelled: Vec<String>,
}

impl<S: Saga> Default for SagaFixture<S> {
    fn default() -> Self {
        Self {
            state: None,
            deadlines: Vec::new(),
            compensations: Vec::new(),
            now: 0,
            ended: false,
        }
    }
}

impl<S: Saga> SagaFixture<S> {
    /// No instance yet, the clock at 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// The saga after `events` (what they sent is not checked).
    pub fn given(mut self, events: impl IntoIterator<Item = S::Event>) -> Self {
        for event in events {
            self.deliver(&event);
        }
        self
    }

    /// Delivers `event`.
    pub fn when(mut self, event: S::Event) -> SagaThen<S> {
        let (sent, set, cancelled) = self.deliver(&event);
        SagaThen {
            fixture: self,
            sent,
            set,
            cancelled,
        }
    }

    /// Moves the clock `seconds` forward, firing the deadlines that fall due, in order.
    pub fn when_time_elapses(mut self, seconds: u64) -> SagaThen<S> {
        let until = self.now + i64::try_from(seconds).unwrap_or(i64::MAX / 2);
        let (mut sent, mut set, mut cancelled) = (Vec::new(), Vec::new(), Vec::new());
        loop {
            self.deadlines.sort();
            let Some(index) = self.deadlines.iter().position(|(due, _)| *due <= until) else {
                break;
            };
            let (due, name) = self.deadlines.remove(index);
            self.now = due;
            let Some(state) = self.state.as_mut().filter(|_| !self.ended) else {
                break;
            };
            let step = state.on_deadline(&name, due);
            let (s, d, c) = self.record(step);
            sent.extend(s);
            set.extend(d);
            cancelled.extend(c);
        }
        self.now = until;
        SagaThen {
            fixture: self,
            sent,
            set,
            cancelled,
        }
    }

    /// The instance's state, if one started.
    pub fn state(&self) -> Option<&S> {
        self.state.as_ref()
    }

    fn deliver(&mut self, event: &S::Event) -> (Vec<S::Command>, Vec<String>, Vec<String>) {
        if self.ended {
            return Default::default();
        }
        let step = match (S::routing(event), self.state.as_mut()) {
            (None, _) | (Some(Routing::To(_)), None) => return Default::default(),
            (Some(_), Some(state)) => state.handle(event, self.now),
            (Some(Routing::Start(_)), None) => {
                self.state.insert(S::default()).handle(event, self.now)
            }
        };
        self.record(step)
    }

    fn record(&mut self, step: Step<S::Command>) -> (Vec<S::Command>, Vec<String>, Vec<String>) {
        let mut sent = Vec::new();
        for send in step.send {
            sent.push(send.command);
            if let Some(compensation) = send.compensation {
                self.compensations.push(compensation);
            }
        }
        if step.compensate {
            sent.extend(self.compensations.drain(..).rev());
        }
        for name in &step.cancel_deadlines {
            self.deadlines.retain(|(_, n)| n != name);
        }
        let set: Vec<String> = step.set_deadlines.iter().map(|d| d.name.clone()).collect();
        for deadline in step.set_deadlines {
            let after = i64::try_from(deadline.after_seconds).unwrap_or(i64::MAX / 2);
            self.deadlines.push((self.now + after, deadline.name));
        }
        if step.end {
            self.ended = true;
            self.deadlines.clear();
        }
        (sent, set, step.cancel_deadlines)
    }
}

impl<S: Saga> SagaThen<S> {
    /// Asserts exactly these commands were sent, in order.
    #[track_caller]
    pub fn expect_commands(self, expected: impl IntoIterator<Item = S::Command>) -> Self {
        let expected: Vec<S::Command> = expected.into_iter().collect();
        assert_eq!(
            self.sent, expected,
            "the saga sent other commands than expected"
        );
        self
    }

    /// Asserts no command was sent.
    #[track_caller]
    pub fn expect_no_commands(self) -> Self {
        self.expect_commands([])
    }

    /// Asserts a deadline named `name` was set.
    #[track_caller]
    pub fn expect_deadline_set(self, name: &str) -> Self {
        assert!(
            self.set.iter().any(|n| n == name),
            "no deadline {name} was set (set: {:?})",
            self.set
        );
        self
    }

    /// Asserts a deadline named `name` was cancelled.
    #[track_caller]
    pub fn expect_deadline_cancelled(self, name: &str) -> Self {
        assert!(
            self.cancelled.iter().any(|n| n == name),
            "no deadline {name} was cancelled"
        );
        self
    }

    /// Asserts the saga ended.
    #[track_caller]
    pub fn expect_ended(self) -> Self {
        assert!(self.fixture.ended, "the saga did not end");
        self
    }

    /// Asserts the saga goes on.
    #[track_caller]
    pub fn expect_active(self) -> Self {
        assert!(
            self.fixture.state.is_some() && !self.fixture.ended,
            "the saga is not active"
        );
        self
    }

    /// Back to the fixture, to deliver more.
    pub fn and(self) -> SagaFixture<S> {
        self.fixture
    }
}
