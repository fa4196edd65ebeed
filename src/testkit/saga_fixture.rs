//! Given/when/then for one saga instance, with a virtual clock, without a runtime (as Axon's
//! `SagaTestFixture`).

use crate::domain::{Association, Routing, Saga, Step};

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
    instances: Vec<Instance<S>>,
    now: i64,
}

/// One instance, as the manager keeps it: state, association values, recorded compensations,
/// pending deadlines.
struct Instance<S: Saga> {
    state: S,
    associations: Vec<Association>,
    compensations: Vec<S::Command>,
    deadlines: Vec<(i64, String)>,
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
            instances: Vec::new(),
            now: 0,
        }
    }
}

type Effects<C> = (Vec<C>, Vec<String>, Vec<String>);

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

    /// Delivers `event`, routed as the manager routes it: by association value, starting a
    /// new instance when a starting event finds none.
    pub fn when(mut self, event: S::Event) -> SagaThen<S> {
        let (sent, set, cancelled) = self.deliver(&event);
        SagaThen {
            fixture: self,
            sent,
            set,
            cancelled,
        }
    }

    /// Moves the clock `seconds` forward, firing the deadlines that fall due, in due order
    /// (a deadline set by a firing one fires too if it falls due in the same span).
    pub fn when_time_elapses(mut self, seconds: u64) -> SagaThen<S> {
        let until = self
            .now
            .saturating_add(i64::try_from(seconds).unwrap_or(i64::MAX / 2));
        let (mut sent, mut set, mut cancelled) = (Vec::new(), Vec::new(), Vec::new());
        loop {
            let next = self
                .instances
                .iter()
                .enumerate()
                .filter(|(_, i)| !i.ended)
                .flat_map(|(n, i)| {
                    i.deadlines
                        .iter()
                        .map(move |(due, name)| (*due, n, name.clone()))
                })
                .filter(|(due, _, _)| *due <= until)
                .min();
            let Some((due, index, name)) = next else {
                break;
            };
            self.now = due;
            let instance = &mut self.instances[index];
            instance
                .deadlines
                .retain(|(d, n)| !(*d == due && *n == name));
            let step = instance.state.on_deadline(&name, due);
            let (s, d, c) = record(instance, step, due);
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

    /// The state of the first instance still going (or of the last one, if all ended).
    pub fn state(&self) -> Option<&S> {
        self.instances
            .iter()
            .find(|i| !i.ended)
            .or(self.instances.last())
            .map(|i| &i.state)
    }

    fn deliver(&mut self, event: &S::Event) -> Effects<S::Command> {
        let Some(routing) = S::routing(event) else {
            return Default::default();
        };
        let (association, starts) = match routing {
            Routing::Start(a) => (a, true),
            Routing::To(a) => (a, false),
        };
        let mut targets: Vec<usize> = self
            .instances
            .iter()
            .enumerate()
            .filter(|(_, i)| !i.ended && i.associations.contains(&association))
            .map(|(n, _)| n)
            .collect();
        if targets.is_empty() && starts {
            self.instances.push(Instance {
                state: S::default(),
                associations: vec![association],
                compensations: Vec::new(),
                deadlines: Vec::new(),
                ended: false,
            });
            targets.push(self.instances.len() - 1);
        }
        let (mut sent, mut set, mut cancelled) = (Vec::new(), Vec::new(), Vec::new());
        for index in targets {
            let now = self.now;
            let instance = &mut self.instances[index];
            let step = instance.state.handle(event, now);
            let (s, d, c) = record(instance, step, now);
            sent.extend(s);
            set.extend(d);
            cancelled.extend(c);
        }
        (sent, set, cancelled)
    }
}

/// Applies a step to an instance as the manager does; answers what it sent, set, cancelled.
fn record<S: Saga>(
    instance: &mut Instance<S>,
    step: Step<S::Command>,
    now: i64,
) -> Effects<S::Command> {
    let mut sent = Vec::new();
    instance.compensations.extend(step.undo);
    for send in step.send {
        sent.push(send.command);
        if let Some(compensation) = send.compensation {
            instance.compensations.push(compensation);
        }
    }
    if step.compensate {
        sent.extend(instance.compensations.drain(..).rev());
    }
    for name in &step.cancel_deadlines {
        instance.deadlines.retain(|(_, n)| n != name);
    }
    let set: Vec<String> = step.set_deadlines.iter().map(|d| d.name.clone()).collect();
    for deadline in step.set_deadlines {
        let after = i64::try_from(deadline.after_seconds).unwrap_or(i64::MAX / 2);
        instance
            .deadlines
            .push((now.saturating_add(after), deadline.name));
    }
    for association in step.associate {
        if !instance.associations.contains(&association) {
            instance.associations.push(association);
        }
    }
    instance
        .associations
        .retain(|a| !step.dissociate.contains(a));
    if step.end {
        instance.ended = true;
        instance.deadlines.clear();
        instance.associations.clear();
    }
    (sent, set, step.cancel_deadlines)
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

    /// The commands sent, in order (to check them piecemeal).
    pub fn sent(&self) -> &[S::Command] {
        &self.sent
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

    /// Asserts no instance goes on: the saga ended (or never started).
    #[track_caller]
    pub fn expect_ended(self) -> Self {
        assert!(
            self.fixture.instances.iter().all(|i| i.ended),
            "a saga instance is still going"
        );
        self
    }

    /// Asserts an instance goes on.
    #[track_caller]
    pub fn expect_active(self) -> Self {
        assert!(
            self.fixture.instances.iter().any(|i| !i.ended),
            "no saga instance is going"
        );
        self
    }

    /// Asserts how many instances go on.
    #[track_caller]
    pub fn expect_instances(self, live: usize) -> Self {
        let going = self.fixture.instances.iter().filter(|i| !i.ended).count();
        assert_eq!(going, live, "instances going");
        self
    }

    /// Back to the fixture, to deliver more.
    pub fn and(self) -> SagaFixture<S> {
        self.fixture
    }
}
